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
