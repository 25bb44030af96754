"""The control socket on its own: pipelined requests, and clients that do not read their answers."""

from __future__ import annotations

import json
import os
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmd.daemon.control import Client, ControlServer
from vmd.limits import CONTROL_INPUT_MAX


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
