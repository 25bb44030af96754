"""The metrics endpoint of a real vmd (vm.conf `metrics socket`): a VM's disk counters move while its guest
writes, and `vmctl status --json` shows the same counters as the scrape."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_daemon import Vmd

ROUNDS = 200000  # more 4 KiB write + flush rounds than the test waits for: the guest is still writing


def _config(guests: dict[str, Path], disk: Path, metrics: str) -> str:
    return f"""
metrics socket "{metrics}"
vm "io" {{
    disable
    memory 32M
    boot "{guests['virtio_blk']}"
    append "tests=durable rounds={ROUNDS} irq=msix"
    disk "{disk}" format raw
}}
vm "idle" {{
    disable
    memory 16M
    boot "{guests['demo']}"
}}
"""


@pytest.fixture
def vmd(tmp_path: Path, guests: dict[str, Path]) -> Iterator[Vmd]:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate((4096 + 8 * ROUNDS) * 512)
    daemon = Vmd(tmp_path, "")
    daemon.config.write_text(_config(guests, disk, f"{daemon.socket_dir}/metrics.sock"))
    daemon.start()  # returns once the control socket is there; the metrics socket comes right after it
    try:
        _wait("the metrics socket", lambda: _listening(f"{daemon.socket_dir}/metrics.sock"), timeout=10)
        yield daemon
    finally:
        daemon.stop()


def _listening(path: str) -> bool:
    """The socket is there and listens (between its bind and its listen, a connect is refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _http(path: str, request: bytes, timeout: float = 10) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(request)
        except BrokenPipeError:  # refused (503) and closed before the request went out: its answer is there
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(vmd: Vmd) -> Samples:
    answer = _http(f"{vmd.socket_dir}/metrics.sock", b"GET /metrics HTTP/1.1\r\nHost: vmd\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n"), head
    assert b"Content-Type: text/plain; version=0.0.4" in head
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The one sample of this metric whose labels include these."""
    found = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= set(ls)]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def _row(vmd: Vmd, name: str) -> dict[str, object]:
    result = vmd.vmctl("status", "--json", name)
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    return rows[0]  # type: ignore[no-any-return]


def _wait(what: str, check, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_counters_move_during_disk_io_and_status_json_agrees(vmd: Vmd) -> None:
    assert vmd.vmctl("start", "io").returncode == 0
    vmd.wait_state("io", "running")
    io = {"name": "io"}
    first = _wait("the guest's first writes", lambda: (s := _scrape(vmd)) and
                  _value(s, "vmd_disk_writes_total", **io) > 0 and s)
    vmid = str(_row(vmd, "io")["id"])
    assert _value(first, "vmd_vm_state", name="io", id=vmid, owner="root", state="running") == 1
    assert _value(first, "vmd_vm_state", name="io", state="stopped") == 0
    assert _value(first, "vmd_vm_state", name="idle", state="stopped") == 1
    assert _value(first, "vmd_vm_vcpus", **io) == 1
    assert _value(first, "vmd_vm_memory_bytes", **io) == 32 << 20
    assert _value(first, "vmd_vm_rss_bytes", **io) > 1 << 20
    time.sleep(1.5)
    second = _scrape(vmd)
    for name in ("vmd_disk_writes_total", "vmd_disk_write_bytes_total", "vmd_disk_flushes_total",
                 "vmd_vm_kvm_exits_total", "vmd_vm_vcpu_seconds_total"):
        assert _value(second, name, **io) > _value(first, name, **io), name
    writes = _value(second, "vmd_disk_writes_total", **io)
    assert _value(second, "vmd_disk_write_bytes_total", **io) == 4096 * writes  # durable writes 4 KiB blocks
    assert _value(second, "vmd_disk_errors_total", **io, disk="0") == 0
    assert _value(second, "vmd_vm_kvm_exits_by_reason_total", **io, reason="mmio") > 0  # the queue notifies

    # paused, the counters hold still: the scrape and vmctl status --json must show the same numbers
    assert vmd.vmctl("pause", "io").returncode == 0
    time.sleep(1.0)
    scraped = _scrape(vmd)
    row = _row(vmd, "io")
    assert row["state"] == "paused"
    assert _value(scraped, "vmd_vm_state", **io, state="paused") == 1
    stats = row["stats"]
    assert isinstance(stats, dict)
    (disk,) = stats["disks"]
    assert disk["path"].endswith("disk.raw")
    for key in ("reads", "read_bytes", "writes", "write_bytes", "flushes", "errors"):
        assert _value(scraped, f"vmd_disk_{key}_total", **io, disk="0", path=disk["path"]) == disk[key], key
    assert disk["writes"] >= writes
    assert _value(scraped, "vmd_vm_kvm_exits_total", **io) == stats["kvm_exits_total"]
    for reason, count in stats["kvm_exits"].items():
        assert _value(scraped, "vmd_vm_kvm_exits_by_reason_total", **io, reason=reason) == count, reason
    (seconds,) = stats["vcpu_seconds"]
    assert abs(_value(scraped, "vmd_vm_vcpu_seconds_total", **io, vcpu="0") - seconds) < 0.05
    assert stats["nics"] == []

    # the text status keeps OpenBSD's columns, with no counters in it
    text = vmd.vmctl("status", "io")
    assert text.stdout.splitlines()[0] == "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME"
    assert len(text.stdout.splitlines()) == 2

    assert vmd.vmctl("stop", "-f", "io").returncode == 0
    vmd.wait_state("io", "stopped")
    after = _scrape(vmd)
    assert _value(after, "vmd_vm_state", **io, state="stopped") == 1
    assert not any(n == "vmd_disk_writes_total" and ("name", "io") in ls for n, ls in after)
    assert _row(vmd, "io")["stats"] is None


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /metrics HTTP/1.0\r\n\r\n", b"405"),
    (b"GET /other HTTP/1.0\r\n\r\n", b"404"),
    (b"GET /metrics\r\n\r\n", b"400"),
    (b"\xff\xfe garbage\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
    (b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
    (b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 20000, b"431"),
])
def test_bad_requests_get_an_http_error(vmd: Vmd, request_bytes: bytes, status: bytes) -> None:
    answer = _http(f"{vmd.socket_dir}/metrics.sock", request_bytes)
    assert answer.startswith(b"HTTP/1.0 " + status + b" "), answer[:80]
    assert b"Traceback" not in answer
    assert vmd.alive()


def test_connections_are_bounded_and_time_out(vmd: Vmd) -> None:
    path = f"{vmd.socket_dir}/metrics.sock"
    time.sleep(0.5)  # the fixture's probe connection is gone by now
    idle = []
    for _ in range(4):  # MAX_CONNECTIONS scrapers that send nothing
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        idle.append(sock)
    try:
        time.sleep(0.3)
        assert _http(path, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503 ")
        idle[0].settimeout(20)
        started = time.monotonic()
        assert idle[0].recv(100) == b""  # closed by vmd after its timeout
        assert 5 < time.monotonic() - started < 15
        _wait("a free connection", lambda: _http(path, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 "))
    finally:
        for sock in idle:
            sock.close()
    head = _http(path, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")


def test_reload_moves_and_stops_the_endpoint(vmd: Vmd) -> None:
    first, second = f"{vmd.socket_dir}/metrics.sock", f"{vmd.socket_dir}/other.sock"
    config = vmd.config.read_text()
    vmd.config.write_text(config.replace(first, second))
    assert vmd.vmctl("reload").returncode == 0
    assert not Path(first).exists()
    assert _http(second, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")
    vmd.config.write_text(config.replace(f'metrics socket "{first}"', "metrics socket relative"))
    assert vmd.vmctl("reload").returncode != 0  # a broken file changes nothing
    assert _http(second, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")
    vmd.config.write_text(config.replace(f'metrics socket "{first}"', ""))
    assert vmd.vmctl("reload").returncode == 0
    assert not Path(second).exists()
    vmd.config.write_text(config.replace(first, "/nonexistent-dir/metrics.sock"))
    assert vmd.vmctl("reload").returncode == 0  # an endpoint that cannot listen is logged; vmd runs on
    assert vmd.alive() and vmd.vmctl("status").returncode == 0
    assert "metrics: cannot listen on /nonexistent-dir/metrics.sock: No such file or directory" in \
        vmd.log.read_text()
