"""A VM process as vmd runs it: confined by its system-call filter (vmd/sandbox.py), and, given SIGUSR2, writing
what a hung guest needs looking at into vmd's log (vmd(8), SIGNALS): every thread's stack, the console UART's
interrupt state and the timer thread's, while the guest runs on."""

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


def test_the_vm_process_runs_under_its_system_call_filter(vmd: Vmd) -> None:
    pid = vmd.wait_state("idle", "running")["pid"]
    with open(f"/proc/{pid}/status") as status:
        fields = {key: value.strip() for key, _, value in (line.partition(":") for line in status)}
    assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "1", fields
    assert "no system-call filter" not in vmd.log.read_text(errors="replace")
    assert vmd.status()["idle"]["state"] == "running"
