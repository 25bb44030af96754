"""Graceful shutdown through ACPI: the acpi test guest finds vmd's tables, and SIGTERM or vmctl stop press
its power button, after which it powers off through PM1a_CNT (tests/guests/src/acpi.c)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Run
from .test_daemon import Vmd
from .test_guests import _read_until, _spawn


def test_the_guest_finds_and_checks_the_tables(guests: dict[str, Path], vmd_run: Callable[..., Run]) -> None:
    result = vmd_run("-m", "32M", "-p", "2", "-b", str(guests["acpi"]), "--append", "tests=tables", "acpi")
    assert result.returncode == 0, result
    for check in ("rsdp", "rsdt", "xsdt", "fadt", "dsdt", "s5", "madt"):
        assert f"ok {check}\r\n" in result.stdout or f"ok {check}\n" in result.stdout, result.stdout
    assert "rsdp at e0000 revision 2" in result.stdout
    assert "fadt sci 9 smi_cmd 0 acpi_enable 0 pm1a_evt 600/4 pm1a_cnt 604 pm_tmr 608" in result.stdout
    assert "madt lapic uid=1 id=1 flags=1" in result.stdout
    assert "madt ioapic id=2 addr=fec00000 gsi=0" in result.stdout
    assert "madt iso bus=0 irq=9 gsi=9 flags=d" in result.stdout
    assert "ALL OK" in result.stdout


def test_sigterm_presses_the_power_button(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "-b", str(guests["acpi"]), "acpi")
    try:
        _read_until(process, b"acpi ready")
        process.send_signal(signal.SIGTERM)
        seen = _read_until(process, b"ok powerbutton")
        assert b"power button" in seen
        assert process.wait(timeout=30) == 0  # an ACPI poweroff, not a stop
        assert process.stderr is not None
        assert b"FAIL" not in seen + process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_stops_a_guest_that_does_not_listen(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "-b", str(guests["multiboot"]), "--append", "tests=serial", "deaf")
    try:
        _read_until(process, b"ready>")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) != 0  # stopped at once: interrupted
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _read_tty(fd: int, until: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the VM process closed the pty
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_vmctl_stop_asks_the_guest_to_power_off(tmp_path: Path, guests: dict[str, Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("the daemon runs VM processes as _vmd and needs root")
    daemon = Vmd(tmp_path, f'vm "acpi" {{\n    disable\n    memory 32M\n    boot "{guests["acpi"]}"\n}}\n')
    daemon.start()
    try:
        started = daemon.vmctl("start", "acpi")
        assert started.returncode == 0, started
        tty = re.search(r"tty (/dev/pts/\d+)", started.stderr + started.stdout)
        assert tty, started
        fd = os.open(tty.group(1), os.O_RDWR | os.O_NOCTTY)
        try:
            assert b"acpi ready" in _read_tty(fd, b"acpi ready")
            # read the console while vmctl waits: it is gone once the VM has powered off
            stopping = subprocess.Popen([sys.executable, "-m", "vmd.ctl.main", "stop", "-w", "acpi"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
            seen = _read_tty(fd, b"ok powerbutton")
            out, err = stopping.communicate(timeout=60)
        finally:
            os.close(fd)
        assert stopping.returncode == 0, (out, err)
        assert b"power button" in seen, seen
        assert b"FAIL" not in seen
        daemon.wait_state("acpi", "stopped")
        assert "ACPI poweroff" in daemon.log.read_text()
    finally:
        daemon.stop()
