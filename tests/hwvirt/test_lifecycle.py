"""A Linux guest's life under vmd: 2 vCPUs, the console detached and re-attached, pause and
unpause with the guest's clock right afterwards, a reboot from inside on the same tty, and `vmctl stop`.
(The 4-vCPU guest is test_smp.py's.)"""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from collections.abc import Iterator

import pytest

from .conftest import Console, Vmd, kit_cmdline, kit_file

pytestmark = pytest.mark.hwvirt


@pytest.fixture(scope="module")
def vmd() -> Iterator[Vmd]:
    daemon = Vmd(f"""
vm "life" {{
    disable
    memory 1G
    vcpus 2
    boot "{kit_file('vmlinuz')}"
    initrd "{kit_file('initrd.img')}"
    append "{kit_cmdline()}"
}}
""")
    yield daemon
    daemon.close()


def _boot_life(vmd: Vmd) -> Console:
    vmd.must("start", "life")
    console = vmd.console("life")
    console.expect(r"vmd guest kit: ready", timeout=300)
    console.wait_shell(timeout=60)
    return console


@pytest.fixture(scope="module")
def booted(vmd: Vmd) -> Iterator[list[Console]]:
    """The guest these tests share, booted once: a list holding its console, which `life` replaces if the
    guest stops answering."""
    consoles = [_boot_life(vmd)]
    yield consoles
    consoles[0].close()


@pytest.fixture
def life(vmd: Vmd, booted: list[Console]) -> Console:
    """The shared guest, answering its shell; one that stopped answering under an earlier (failed) test is
    replaced by a fresh boot, so that one stuck guest fails one test, not every test after it."""
    console = booted[0]
    if vmd.status().get("life", {}).get("state") == "running" and console.answers(timeout=30):
        return console
    console.close()
    vmd.vmctl("stop", "-f", "-w", "life", timeout=120)
    booted[0] = _boot_life(vmd)
    return booted[0]


def test_every_cpu_is_online(life: Console) -> None:
    assert life.must("nproc").strip() == "2"
    assert life.must("cat /sys/devices/system/cpu/online").strip() == "0-1"


def _vmctl_console(vmd: Vmd, name: str, keys: list[tuple[bytes, bytes]], timeout: float = 60) -> bytes:
    """Run `vmctl console name` on a terminal of its own: for each (send, until), type send and read until
    until shows up. Returns everything it printed; vmctl must have exited by the end."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(vmd.env)
        os.execv(sys.executable, [sys.executable, "-m", "vmd.ctl.main", "console", name])
    seen = b""
    try:
        # vmctl flushes what was typed before it put the terminal in raw mode (as cu does): press return until
        # the guest's prompt shows that it is attached, as a user would
        deadline = time.monotonic() + timeout
        while b"vmd-kit# " not in seen:
            assert time.monotonic() < deadline, f"vmctl console never showed the guest's prompt: {seen!r}"
            os.write(fd, b"\r")
            if select.select([fd], [], [], 2.0)[0]:
                seen += os.read(fd, 4096)
        for send, until in keys:
            os.write(fd, send)
            deadline = time.monotonic() + timeout
            while until not in seen:
                assert time.monotonic() < deadline, f"{until!r} not seen; vmctl console printed {seen!r}"
                if select.select([fd], [], [], 0.5)[0]:
                    try:
                        seen += os.read(fd, 4096)
                    except OSError:
                        break
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, seen)
    finally:
        os.close(fd)
    return seen


def test_vmctl_console_detaches_and_attaches_again(vmd: Vmd, life: Console) -> None:
    first = _vmctl_console(vmd, "life", [(b"echo first-$((6*7))\r", b"first-42"),
                                         (b"\r~.", b"[EOT]")])
    assert b"first-42" in first
    second = _vmctl_console(vmd, "life", [(b"echo second-$((6*7))\r", b"second-42"),
                                          (b"\r~.", b"[EOT]")])
    assert b"second-42" in second
    assert vmd.status()["life"]["state"] == "running"
    assert life.must("echo still-here").strip() == "still-here"


def test_pause_stops_the_guest_and_its_clock_is_right_after_unpause(vmd: Vmd, life: Console) -> None:
    life.send("while :; do echo tick; sleep 1; done &\r")
    life.expect(r"tick", timeout=30)
    vmd.must("pause", "life")
    assert vmd.status()["life"]["state"] == "paused"
    life.drain(2)  # whatever was in flight arrives
    before = life.seen
    life.drain(8)
    assert life.seen == before, "the paused guest went on printing"
    vmd.must("unpause", "life")
    assert vmd.status()["life"]["state"] == "running"
    life.expect(r"tick", timeout=30)
    life.must("kill %1; wait", timeout=60)
    guest = int(life.must("date +%s").strip())
    assert abs(guest - time.time()) < 5, f"the guest's clock is {guest - time.time():+.0f} s off after a pause"


def test_reboot_inside_restarts_the_vm_on_the_same_tty(vmd: Vmd, life: Console) -> None:
    tty = vmd.status()["life"]["tty"]
    life.send("reboot\r")
    life.expect(r"vmd guest kit: ready", timeout=300)  # a new boot, seen on the console we kept open
    life.wait_shell(timeout=60)
    row = vmd.status()["life"]
    assert row["state"] == "running" and row["tty"] == tty
    assert life.must("nproc").strip() == "2"


def test_vmctl_stop_is_a_clean_power_off(vmd: Vmd, life: Console) -> None:
    vmd.must("stop", "life")
    life.expect(r"vmd guest kit: file systems synced and unmounted", timeout=120)
    life.expect(r"reboot: Power down", timeout=60)
    vmd.wait_state("life", "stopped", timeout=60)
    log = vmd.log.read_text()
    assert re.search(r"life.*(power|shut)", log, re.I), log

