"""A client waiting for a VM (vmctl wait, stop -w, start) that goes away is forgotten at once: nothing in
vmd keeps it, its buffers or its socket (issue 9: waiter closures kept gone clients alive)."""

from __future__ import annotations

import gc
import json
import os
import socket
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmd.daemon.core as core
from vmd.daemon.core import Daemon
from vmd.daemon.registry import RUNNING


class _FakeProcess:
    pid = 4242

    def send(self, command: str) -> None:
        pass

    def kill(self) -> None:
        pass

    def resident_guest_bytes(self) -> None:
        return None


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    daemon = Daemon(str(tmp_path / "vmd.sock"), str(tmp_path / "vm.conf"), lambda path: ([], core.Settings()))
    for name in ("one", "two"):
        entry = daemon.registry.add(core.VmDefinition(name=name, memory=16 << 20), configured=True, uid=0)
        entry.process, entry.state, entry.run_uid = _FakeProcess(), RUNNING, 0  # type: ignore[assignment]
    yield daemon
    daemon.control.shutdown()


def _pump(daemon: Daemon, rounds: int = 20) -> None:
    for _ in range(rounds):
        for key, mask in daemon.selector.select(0.01):
            key.data(mask)


@pytest.mark.parametrize("request_", [
    {"command": "wait", "target": "one"},
    {"command": "stop", "target": "one", "wait": True},
    {"command": "stop", "all": True, "wait": True},
], ids=["wait", "stop -w", "stop -a -w"])
def test_a_waiting_client_that_goes_away_is_freed(daemon: Daemon, request_: dict[str, Any]) -> None:
    gc.disable()  # freed by reference counting alone: no cycle may hold it
    try:
        refs = []
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(daemon.socket_path)
            sock.sendall(json.dumps({"version": 1, **request_}).encode() + b"\n")
            _pump(daemon)
            (client,) = daemon.control.clients
            refs.append(weakref.ref(client))
            del client
            sock.close()
            _pump(daemon)
        for entry in daemon.registry.entries.values():
            assert entry.stop_waiters == [] and entry.start_waiters == []
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()
