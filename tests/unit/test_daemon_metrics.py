"""The metrics endpoint's parts: request parsing and HTTP answers, the checks on what a VM process reports,
the exposition, the server on a selector, and how the daemon waits for the VMs' counters."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vmd.config.spec import MetricsSpec
from vmd.daemon import core
from vmd.daemon.core import Daemon
from vmd.daemon.metrics import MAX_CONNECTIONS, MetricsError, MetricsServer, http_response, parse_request, render
from vmd.daemon.registry import RUNNING, VmDefinition
from vmd.daemon.stats import clean_report, vm_stats

REPORT = {"vcpu_ns": [1_500_000_000, 2_000_000], "kvm_exits_total": 10, "kvm_exits": {"io": 3, "mmio": 5},
          "disks": [{"reads": 1, "read_bytes": 512, "writes": 2, "write_bytes": 8192, "flushes": 2, "errors": 1}],
          "nics": [{"rx_packets": 1, "rx_bytes": 60, "rx_dropped": 0, "tx_packets": 2, "tx_bytes": 120,
                    "tx_dropped": 1, "injected": 3}]}


@pytest.mark.parametrize("head, outcome", [
    (b"GET /metrics HTTP/1.1\r\nHost: x", (0, "GET")),
    (b"HEAD / HTTP/1.0", (0, "HEAD")),
    (b"GET /metrics?x=1 HTTP/1.0", (0, "GET")),
    (b"POST /metrics HTTP/1.0", (405, None)),
    (b"GET /metric HTTP/1.0", (404, None)),
    (b"GET /metrics", (400, None)),
    (b"GET  /metrics HTTP/1.0", (400, None)),
    (b"GET /metrics FTP/1.0", (400, None)),
    (b"GET /metrics HTTP/3", (505, None)),
    (b"\xc3\xa9 / HTTP/1.0", (400, None)),
    (b"", (400, None)),
])
def test_parse_request(head: bytes, outcome: tuple[int, str | None]) -> None:
    assert parse_request(head) == outcome


def test_http_response() -> None:
    assert http_response(404) == (b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                  b"Content-Length: 14\r\nConnection: close\r\n\r\n404 Not Found\n")
    assert http_response(200, b"abc", "t", head=True).endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")


def test_clean_report_keeps_what_it_knows() -> None:
    report = clean_report(REPORT)
    assert report is not None
    assert report["nics"][0] == {k: v for k, v in REPORT["nics"][0].items() if k != "injected"}  # type: ignore[index]
    assert report["kvm_exits"] == {"io": 3, "mmio": 5}
    assert clean_report({}) == {"vcpu_ns": [], "kvm_exits_total": 0, "kvm_exits": {}, "disks": [], "nics": []}


@pytest.mark.parametrize("bad", [
    None, [], "x",
    {"vcpu_ns": [-1]},
    {"vcpu_ns": [True]},
    {"vcpu_ns": [0] * 65},
    {"vcpu_ns": "1"},
    {"kvm_exits_total": 1.5},
    {"kvm_exits_total": 1 << 64},
    {"kvm_exits": {f"r{i}": 1 for i in range(33)}},
    {"disks": [{}] * 5},
    {"disks": [{"reads": "1"}]},
    {"nics": [1]},
])
def test_clean_report_refuses_what_a_vm_process_may_not_send(bad: object) -> None:
    assert clean_report(bad) is None


def test_clean_report_drops_odd_exit_reason_names() -> None:
    report = clean_report({"kvm_exits": {"io": 1, "Bad Name": 2, "x" * 40: 3, "a\n": 4}})
    assert report is not None and report["kvm_exits"] == {"io": 1}


def test_vm_stats_names_the_devices() -> None:
    stats = vm_stats(clean_report(REPORT), 123, ["/d0"], ["tap7"])
    assert stats is not None
    assert stats["vcpu_seconds"] == [1.5, 0.002]
    assert stats["rss_bytes"] == 123
    assert stats["disks"][0]["path"] == "/d0" and stats["nics"][0]["interface"] == "tap7"
    assert vm_stats(None, 1, [], []) is None


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_render() -> None:
    rows = [{"id": 1, "name": "web", "owner": "joe", "state": RUNNING, "vcpus": 2, "maxmem": 1 << 29,
             "stats": vm_stats(clean_report(REPORT), 20 << 20, ["/srv/web.img"], ["tap0"])},
            {"id": 2, "name": "off", "owner": "root", "state": "stopped", "vcpus": 1, "maxmem": 1 << 20,
             "stats": None}]
    samples = _samples(render(rows))
    web = (("id", "1"), ("name", "web"), ("owner", "joe"))
    assert samples[("vmd_vm_state", (*web, ("state", "running")))] == 1
    assert samples[("vmd_vm_state", (*web, ("state", "paused")))] == 0
    assert samples[("vmd_vm_vcpus", web)] == 2
    assert samples[("vmd_vm_memory_bytes", web)] == 1 << 29
    assert samples[("vmd_vm_rss_bytes", web)] == 20 << 20
    assert samples[("vmd_vm_vcpu_seconds_total", (*web, ("vcpu", "1")))] == 0.002
    assert samples[("vmd_vm_kvm_exits_total", web)] == 10
    assert samples[("vmd_vm_kvm_exits_by_reason_total", (*web, ("reason", "mmio")))] == 5
    disk = tuple(sorted((*web, ("disk", "0"), ("path", "/srv/web.img"))))
    assert samples[("vmd_disk_write_bytes_total", disk)] == 8192
    assert samples[("vmd_disk_errors_total", disk)] == 1
    nic = tuple(sorted((*web, ("nic", "0"), ("interface", "tap0"))))
    assert samples[("vmd_nic_tx_dropped_total", nic)] == 1
    assert samples[("vmd_nic_rx_bytes_total", nic)] == 60
    off = (("id", "2"), ("name", "off"), ("owner", "root"))
    assert samples[("vmd_vm_state", (*off, ("state", "stopped")))] == 1
    assert not any(labels == off for name, labels in samples if name == "vmd_vm_rss_bytes")


# -- the server on a selector -----------------------------------------------------------------------------------

class Loop:
    """Just enough of the daemon's loop: a selector and timers."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers: list[list[Any]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        timer = [time.monotonic() + delay, callback, False]

        class Handle:
            def cancel(self) -> None:
                timer[2] = True

        self.timers.append(timer)
        return Handle()

    def pump(self, seconds: float = 0.3) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, mask in self.selector.select(0.02):
                key.data(mask)
            for timer in list(self.timers):
                if not timer[2] and timer[0] <= time.monotonic():
                    timer[2] = True
                    timer[1]()


def _exchange(loop: Loop, path: str, data: bytes, seconds: float = 0.3) -> bytes:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(data)
    loop.pump(seconds)
    client.setblocking(False)
    answer = b""
    try:
        while chunk := client.recv(65536):
            answer += chunk
    except BlockingIOError:
        pass
    client.close()
    return answer


def test_server_answers_later_and_never_with_a_traceback(tmp_path: Path) -> None:
    loop = Loop()
    pending: list[Callable[[], None]] = []
    rows: list[dict[str, Any]] = [{"id": 1, "name": "x", "owner": "root", "state": "stopped", "vcpus": 1,
                                   "maxmem": 1 << 20, "stats": None}]
    server = MetricsServer(MetricsSpec(socket=str(tmp_path / "m.sock")), loop.selector, loop.call_later,
                           pending.append, lambda: rows)
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / "m.sock"))
        client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        loop.pump(0.1)
        assert len(pending) == 1  # the answer waits for the VMs' counters
        pending[0]()
        loop.pump(0.1)
        answer = client.recv(10000)
        assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b'\nvmd_vm_vcpus{id="1",name="x",owner="root"} 1.0\n' in answer
        client.close()
        loop.pump(0.1)
        assert server.connections == set()

        def broken(done: Callable[[], None]) -> None:
            raise RuntimeError("bug")

        server.refresh = broken
        answer = _exchange(loop, str(tmp_path / "m.sock"), b"GET / HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 500 Internal Server Error\r\n") and b"bug" not in answer
        server.refresh = lambda done: done()
        rows.append({"id": 2})  # a row the exposition cannot take: a bug of ours, answered 500 too
        answer = _exchange(loop, str(tmp_path / "m.sock"), b"GET / HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 500 Internal Server Error\r\n") and b"Traceback" not in answer
    finally:
        server.close()
    assert not (tmp_path / "m.sock").exists()


def test_server_bounds_connections_and_times_them_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vmd.daemon.metrics.TIMEOUT", 0.3)
    loop = Loop()
    path = str(tmp_path / "m.sock")
    server = MetricsServer(MetricsSpec(socket=path), loop.selector, loop.call_later, lambda done: done(), list)
    try:
        idle = []
        for _ in range(MAX_CONNECTIONS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            idle.append(sock)
        loop.pump(0.1)
        assert len(server.connections) == MAX_CONNECTIONS
        assert _exchange(loop, path, b"GET / HTTP/1.0\r\n\r\n", 0.05).startswith(b"HTTP/1.0 503 ")
        loop.pump(0.4)
        assert server.connections == set()
        assert all(sock.recv(10) == b"" for sock in idle)
        assert _exchange(loop, path, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")
        assert _exchange(loop, path, b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 2000).startswith(b"HTTP/1.0 431 ")
    finally:
        server.close()


def test_server_refuses_a_path_that_is_no_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(MetricsError, match=r"^metrics: cannot listen on .*/file: exists and is not a socket$"):
        MetricsServer(MetricsSpec(socket=str(tmp_path / "file")), selectors.DefaultSelector(), Loop().call_later,
                      lambda done: None, list)


def test_server_listens_on_tcp() -> None:
    loop = Loop()
    server = MetricsServer(MetricsSpec(address="127.0.0.1", port=0), loop.selector, loop.call_later,
                           lambda done: done(), list)
    try:
        client = socket.create_connection(server.sock.getsockname())
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        loop.pump(0.2)
        assert client.recv(1000).startswith(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4")
        client.close()
    finally:
        server.close()


# -- the daemon waits for its VMs' counters, boundedly ------------------------------------------------------------

class FakeProcess:
    """What the daemon uses of a VmProcess here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.running = True
        self.sent: list[str] = []
        self.stats: dict[str, Any] | None = None
        self.stats_time = float("-inf")
        self.stats_asked: float | None = None
        self.events: list[dict[str, Any]] = []

    def read_event(self) -> dict[str, Any] | None:
        return self.events.pop(0) if self.events else None

    def send(self, command: str) -> None:
        self.sent.append(command)

    def resident_guest_bytes(self) -> int:
        return 0

    def rss_bytes(self) -> int:
        return 4096


def _daemon(tmp_path: Path) -> tuple[Daemon, Any]:
    daemon = Daemon(str(tmp_path / "vmd.sock"), str(tmp_path / "vm.conf"), lambda path: ([], core.Settings()))
    entry = daemon.registry.add(VmDefinition(name="a", disks=[{"path": "/d"}]), configured=True, uid=0)
    entry.state = RUNNING
    entry.process = FakeProcess(1)  # type: ignore[assignment]
    return daemon, entry


def test_status_json_waits_for_the_counters_and_a_scrape_shares_them(tmp_path: Path) -> None:
    daemon, entry = _daemon(tmp_path)
    answers: list[list[dict[str, Any]]] = []
    try:
        daemon.refresh_stats(lambda: answers.append(daemon.status_rows(stats=True)))
        daemon.refresh_stats(lambda: answers.append(daemon.status_rows(stats=True)))
        assert entry.process.sent == ["stats"] and answers == []  # one request per VM at a time
        entry.process.events.append({"event": "stats", "stats": REPORT})  # the VM process answers
        daemon._vm_event(entry, entry.process)
        assert len(answers) == 2 and answers[0] == answers[1]
        assert answers[0][0]["stats"]["disks"][0]["path"] == "/d"
        answers.clear()
        entry.process.stats_time = time.monotonic()
        daemon.refresh_stats(lambda: answers.append(daemon.status_rows(stats=True)))
        assert len(answers) == 1 and entry.process.sent == ["stats"]  # fresh: not asked again
    finally:
        daemon.control.shutdown()


def test_a_vm_that_does_not_answer_delays_by_the_timeout_only(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "STATS_TIMEOUT", 0.2)
    daemon, entry = _daemon(tmp_path)
    answers: list[object] = []
    try:
        daemon.refresh_stats(lambda: answers.append(1))
        time.sleep(0.25)
        daemon._run_timers()
        assert answers == [1]
        daemon.refresh_stats(lambda: answers.append(2))  # still silent: not asked again, not waited for
        assert answers == [1, 2] and entry.process.sent == ["stats"]
        assert daemon.status_rows(stats=True)[0]["stats"] is None
        entry.process.events.append({"event": "stats", "stats": {"vcpu_ns": [-5]}})  # a lying VM process
        daemon._vm_event(entry, entry.process)
        assert entry.process.stats_asked is None and daemon.status_rows(stats=True)[0]["stats"] is None
    finally:
        daemon.control.shutdown()
