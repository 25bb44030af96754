"""A VM process given SIGUSR2 writes what a hung guest needs looking at into vmd's log (vmd(8), SIGNALS):
every thread's stack, the console UART's interrupt state and the timer thread's, and the guest runs on."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_daemon import Vmd


@pytest.fixture
def vmd(tmp_path: Path, guests: dict[str, Path]) -> Iterator[Vmd]:
    daemon = Vmd(tmp_path, f"""
vm "idle" {{
    memory 16M
    boot "{guests['demo']}"
}}
""")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_sigusr2_logs_the_threads_and_the_uart_and_the_vm_runs_on(vmd: Vmd) -> None:
    row = vmd.wait_state("idle", "running")
    pid = row["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 20
    while True:
        log = vmd.log.read_text(errors="replace")
        if "timers: thread alive" in log:
            break
        assert time.monotonic() < deadline, f"no diagnosis in the log after SIGUSR2:\n{log}"
        time.sleep(0.2)
    assert "(most recent call first)" in log, log  # faulthandler's stack of each thread
    assert "vm/idle: uart: ier=" in log, log
    assert vmd.status()["idle"]["state"] == "running"
    assert vmd.status()["idle"]["pid"] == pid
