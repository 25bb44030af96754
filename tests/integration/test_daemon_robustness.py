"""vmd against hostile or careless clients: wrong types in requests, races, leaks."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_daemon import Vmd


@pytest.fixture
def daemon(tmp_path: Path, guests: dict[str, Path]) -> Iterator[Vmd]:
    vmd = Vmd(tmp_path, f'vm "rootvm" {{\n disable\n memory 16M\n boot "{guests["demo"]}"\n}}\n')
    vmd.start()
    yield vmd
    vmd.stop()


def _request(vmd: Vmd, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(vmd.socket)
        sock.sendall(json.dumps({"version": 1, **request}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile().readline())
        return reply


BAD_START_FIELDS: list[dict[str, Any]] = [
    {"disks": [1]}, {"disks": "abc"}, {"disks": [{"path": 1}]}, {"disks": [{"path": "/x", "format": "vmdk"}]},
    {"nics": "x"}, {"local_nics": "x"}, {"nics": -1}, {"switches": [1]}, {"switches": "abc"}, {"append": 1},
    {"cpu": {}}, {"boot_device": "floppy"}, {"vcpus": True}, {"memory": 1.5e9}, {"cdrom": 1}, {"initrd": 7},
    {"vcpus": "x"}, {"memory": -1}, {"memory": [1]},
]


@pytest.mark.parametrize("fields", BAD_START_FIELDS, ids=lambda f: json.dumps(f))
def test_start_with_wrong_field_types_is_einval_and_leaves_nothing_behind(daemon: Vmd, guests: dict[str, Path],
                                                                         fields: dict[str, Any]) -> None:
    reply = _request(daemon, {"command": "start", "target": "adhoc", "kernel": str(guests["demo"]),
                              "memory": 16 << 20, **fields})
    assert reply["ok"] is False and reply["errno"] == "EINVAL", reply
    assert "internal error" not in reply["error"] and "\n" not in reply["error"]
    assert "adhoc" not in daemon.status()
    # and the name is still free: a good start works
    good = _request(daemon, {"command": "start", "target": "adhoc", "kernel": str(guests["demo"]),
                             "memory": 16 << 20})
    assert good["ok"] is True, good
    assert daemon.vmctl("stop", "-f", "-w", "adhoc").returncode == 0


def test_instance_with_garbage_disks_is_einval(daemon: Vmd) -> None:
    reply = _request(daemon, {"command": "start", "target": "inst", "instance_of": "rootvm", "disks": [1]})
    assert reply["ok"] is False and reply["errno"] == "EINVAL" and "internal error" not in reply["error"], reply
    assert "inst" not in daemon.status()
