"""A VM process that cannot be made (fork fails, no fds left) must not take vmd down or leave a ghost VM."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmd.daemon.core as core
import vmd.daemon.vmstart as vmstart
from vmd.daemon.core import Daemon
from vmd.daemon.permissions import Peer


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\0" * 512)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(vmstart, "spawn", fail)
    definition = core.VmDefinition(name="auto", memory=16 << 20, kernel=str(kernel))
    daemon = Daemon(str(tmp_path / "vmd.sock"), str(tmp_path / "vm.conf"),
                    lambda path: ([definition], core.Settings(stagger_parallel=1)))
    daemon.kernel = str(kernel)  # type: ignore[attr-defined]
    yield daemon
    daemon.control.shutdown()


def test_autostart_survives_a_failing_spawn(daemon: Daemon) -> None:
    daemon.configure("vm.conf", replace=True)
    daemon._autostart_batch()  # raised OSError out of the event loop: vmd died
    assert daemon.registry.find("auto") is not None


class _Client:
    def __init__(self) -> None:
        self.peer = Peer(0, 0, 0, frozenset({0}))
        self.answers: list[Any] = []

    def respond(self, payload: dict[str, Any]) -> None:
        self.answers.append(payload)

    def fail(self, error: Any) -> None:
        self.answers.append(error)


def test_an_ad_hoc_vm_whose_spawn_fails_is_forgotten(daemon: Daemon) -> None:
    client = _Client()
    with pytest.raises(Exception):  # noqa: B017 - the control server turns it into an error reply
        daemon.handle_request(client, {"command": "start", "target": "adhoc",  # type: ignore[arg-type]
                                        "kernel": daemon.kernel, "memory": 16 << 20})  # type: ignore[attr-defined]
    assert daemon.registry.find("adhoc") is None
