"""The control socket on its own: pipelined requests, and clients that do not read their answers."""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmd.daemon.control import ACCEPT_PAUSE, Client, ControlServer
from vmd.limits import CONTROL_CLIENTS_MAX, CONTROL_CLIENTS_PER_UID, CONTROL_INPUT_MAX


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    selector = selectors.DefaultSelector()

    def handler(client: Client, request: dict[str, Any]) -> None:
        client.respond({"echo": request.get("n"), "padding": "x" * int(request.get("pad", 0))})

    control = ControlServer(str(tmp_path / "vmd.sock"), selector, handler)
    yield control
    control.shutdown()


def _pump(control: ControlServer, rounds: int = 200) -> None:
    for _ in range(rounds):
        for key, mask in control.selector.select(0.01):
            key.data(mask)


def test_many_pipelined_requests_are_all_answered(server: ControlServer) -> None:
    count = 3000
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server.path)
        payload = b"".join(json.dumps({"version": 1, "command": "x", "n": i}).encode() + b"\n" for i in range(count))
        sock.setblocking(False)
        answers: list[dict[str, Any]] = []
        buffer = b""
        while len(answers) < count:
            if payload:
                try:
                    payload = payload[sock.send(payload):]
                except BlockingIOError:
                    pass
            _pump(server, 1)
            try:
                buffer += sock.recv(1 << 20)
            except BlockingIOError:
                pass
            *lines, buffer = buffer.split(b"\n")
            answers += [json.loads(line) for line in lines]
        assert [a["ok"] for a in answers] == [True] * count, [a for a in answers if not a["ok"]][:1]
        assert [a["echo"] for a in answers] == list(range(count))


def test_a_client_that_never_reads_cannot_grow_vmd_without_bound(server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server.path)
        sock.setblocking(False)
        request = json.dumps({"version": 1, "command": "x", "pad": 10000}).encode() + b"\n"
        for _ in range(400):  # 400 requests of 60 bytes each asking for 10 kB: 4 MB of answers nobody reads
            try:
                sock.send(request * 10)
            except BlockingIOError:
                pass
            _pump(server, 2)
        (client,) = server.clients
        assert len(client.outbuf) + len(client.inbuf) < 2 << 20


# -- issue 9: no client can take vmd down -------------------------------------------------------------------


def _lines(sock: socket.socket, control: ControlServer, count: int) -> list[dict[str, Any]]:
    buffer = b""
    for _ in range(500):
        _pump(control, 1)
        try:
            buffer += sock.recv(1 << 16)
        except BlockingIOError:
            pass
        if buffer.count(b"\n") >= count:
            break
    return [json.loads(line) for line in buffer.split(b"\n")[:count]]


def test_a_deeply_nested_request_is_refused_and_the_loop_goes_on(server: ControlServer) -> None:
    """1000 `[` raised RecursionError out of the event loop: vmd died with every VM."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server.path)
        sock.setblocking(False)
        sock.sendall(b"[" * 1000 + b"\n" + json.dumps({"version": 1, "command": "x", "n": 7}).encode() + b"\n")
        first, second = _lines(sock, server, 2)
    assert first["ok"] is False and first["errno"] == "EINVAL"
    assert first["error"] == "malformed request: nested too deeply"
    assert second == {"version": 1, "ok": True, "echo": 7, "padding": ""}


@pytest.fixture
def pending_server(tmp_path: Path) -> Iterator[ControlServer]:
    """A server whose "wait" is answered only when the test says so (as vmctl wait for a running VM)."""
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    waiting: list[Client] = []

    def handler(client: Client, request: dict[str, Any]) -> None:
        if request.get("command") == "wait":
            waiting.append(client)
        else:
            client.respond({"echo": request.get("n")})

    control = ControlServer(str(tmp_path / "vmd.sock"), selectors.DefaultSelector(), handler)
    control.waiting = waiting  # type: ignore[attr-defined]
    yield control
    control.shutdown()


def test_the_input_of_a_client_with_a_pending_request_is_bounded(pending_server: ControlServer) -> None:
    """300 MiB of short lines behind a pending `wait` grew vmd by 300 MB: now it stops reading that client
    when one more request is buffered, and goes on once the answer is out."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(pending_server.path)
        sock.setblocking(False)
        sock.sendall(json.dumps({"version": 1, "command": "wait"}).encode() + b"\n")
        _pump(pending_server, 5)
        (client,) = pending_server.clients
        chunk = b"x\n" * 32768
        sent = 0
        for _ in range(400):  # offers 26 MB; the kernel's socket buffer takes a little, vmd the bound
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
            _pump(pending_server, 1)
            assert len(client.inbuf) <= CONTROL_INPUT_MAX
        assert sent < 8 << 20
        pending_server.waiting[0].respond({"done": True})  # type: ignore[attr-defined]
        (answer,) = _lines(sock, pending_server, 1)
        assert answer["done"] is True


def test_an_error_while_serving_one_client_closes_that_client_only(server: ControlServer,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    real = json.loads

    def broken(text: Any, *args: Any, **kwargs: Any) -> Any:  # a bug in the decoder, for "boom" only
        if b"boom" in (text if isinstance(text, bytes) else text.encode()):
            raise RuntimeError("a bug")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", broken)
    with socket.socket(socket.AF_UNIX) as bad, socket.socket(socket.AF_UNIX) as good:
        bad.connect(server.path)
        good.connect(server.path)
        good.setblocking(False)
        bad.sendall(b'"boom"\n')
        _pump(server, 20)  # raised RuntimeError out of the loop before
        assert bad.recv(100) == b""  # closed
        good.sendall(json.dumps({"version": 1, "command": "x", "n": 1}).encode() + b"\n")
        assert _lines(good, server, 1)[0]["echo"] == 1
    lines = [r.getMessage() for r in caplog.records if "a bug" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]


class _ListenerWithoutFds:
    """The listening socket of a vmd with no descriptor left: accept fails with EMFILE, as long as it lasts."""

    def __init__(self, sock: socket.socket) -> None:
        self.real, self.accepts = sock, 0

    def accept(self) -> Any:
        self.accepts += 1
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def fileno(self) -> int:
        return self.real.fileno()


def test_out_of_descriptors_without_a_reserve_the_listener_is_paused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE left the listener readable: vmd spun on accept, logging each attempt. With no reserve
    descriptor to refuse the connection with, vmd stops polling the listener, logs once, and tries again
    after ACCEPT_PAUSE (or when a client goes)."""
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    timers: list[tuple[float, Any]] = []
    control = ControlServer(str(tmp_path / "vmd.sock"), selectors.DefaultSelector(),
                            lambda client, request: client.respond({}),
                            call_later=lambda delay, callback: timers.append((delay, callback)))
    real = control.sock
    try:
        assert control._reserve is not None
        os.close(control._reserve)
        control._reserve = None
        monkeypatch.setattr(ControlServer, "_open_reserve", staticmethod(lambda: None))
        control.sock = _ListenerWithoutFds(real)  # type: ignore[assignment]
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(control.path)
            _pump(control, 100)
            assert control.sock.accepts == 1  # type: ignore[attr-defined]
            assert not control.accepting and [delay for delay, _ in timers] == [ACCEPT_PAUSE]
            assert len([r for r in caplog.records if "Too many open files" in r.getMessage()]) == 1
            control.sock = real  # a descriptor is free again
            timers[0][1]()
            _pump(control, 5)
            assert control.accepting and len(control.clients) == 1
            sock.sendall(b'{"version": 1, "command": "x"}\n')
            sock.setblocking(False)
            assert _lines(sock, control, 1)[0]["ok"] is True
    finally:
        control.sock = real
        control.shutdown()


def test_connections_are_capped_per_user_and_in_all_but_root_s(server: ControlServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTROL_CLIENTS_PER_UID for each user, CONTROL_CLIENTS_MAX for all but root; root's always get in."""
    import vmd.daemon.control as control_module

    uids = iter([1000 + n % 10 for n in range(200)] + [1000] + [0] * 5)
    monkeypatch.setattr(control_module, "_peer_ids", lambda conn: (1, next(uids), 1))
    monkeypatch.setattr(control_module.Peer, "lookup", classmethod(lambda cls, uid, gid, pid: cls(uid, gid, pid,
                                                                                                   frozenset())))
    socks = []
    try:
        for _ in range(206):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.path)
            socks.append(sock)
            _pump(server, 1)
        _pump(server, 20)
        by_uid = Counter(client.peer.uid for client in server.clients)
        assert sum(n for uid, n in by_uid.items() if uid) == CONTROL_CLIENTS_MAX
        assert max(n for uid, n in by_uid.items() if uid) <= CONTROL_CLIENTS_PER_UID
        assert by_uid[0] == 5
        refused = socks[200]  # uid 1000 again, past the caps: one line and closed
        refused.settimeout(5)
        assert json.loads(refused.makefile("rb").readline())["error"] == "too many connections"
    finally:
        for sock in socks:
            sock.close()
    _pump(server, 20)
    assert server.clients == set() and not server.per_uid
