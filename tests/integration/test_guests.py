"""Boot each test guest through `vmd run` and check what it reports over the serial console."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT, Run, vmd_command

MiB = 1 << 20


def fnv1a32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def assert_all_ok(result: Run) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "ALL OK" in result.lines, result.stdout
    assert not [line for line in result.lines if line.startswith("FAIL")], result.stdout


def field(result: Run, pattern: str) -> str:
    match = re.search(pattern, result.stdout, re.M)
    assert match, f"{pattern!r} not in:\n{result.stdout}"
    return match.group(1)


@pytest.fixture
def initrd(tmp_path: Path) -> Path:
    path = tmp_path / "initrd.img"
    path.write_bytes(os.urandom(3 * 4096 + 123))
    return path


def test_multiboot_gets_memory_map_cmdline_initrd_and_platform(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                               initrd: Path) -> None:
    data = initrd.read_bytes()
    append = (f"tests=pit0,mem,cmdline,initrd,pci,mptable,rtc,pit,ioapic,lapic mem={48 * MiB} expect=hello-world"
              f" initrd_size={len(data)} initrd_sum={fnv1a32(data):08x}")
    before = time.time()
    result = vmd_run("-m", "48M", "-b", str(guests["multiboot"]), "--initrd", str(initrd), "--append", append, "mb")
    after = time.time()
    assert_all_ok(result)
    assert field(result, r"^expect (\S+)") == "hello-world"
    assert field(result, r"cpus=(\d+)") == "1"
    assert field(result, r"irq0_pin=(\d+)") == "2"
    assert re.search(r"00:00\.0 8086:1237 class 060000", result.stdout)
    rtc = int(field(result, r"^rtc (\d+)"))
    assert before - 1 <= rtc <= after + 1, (before, rtc, after)


@pytest.mark.parametrize("variant", ["multiboot-ld", "multiboot-low"])
def test_multiboot_kernels_linked_anywhere_boot_with_their_path_as_argv0(
        vmd_run: Callable[..., Run], guests: dict[str, Path], initrd: Path, variant: str) -> None:
    """Linked by a plain `ld -Ttext=0x100000` (an ELF-header segment at 0xff000, in the BIOS area where vmd's
    MP and ACPI tables live) or at 0x8000 (over vmd's usual boot pages): both boot, as under GRUB and QEMU,
    and the command line starts with the kernel's path."""
    data = initrd.read_bytes()
    kernel = str(guests[variant])
    append = (f"tests=mem,cmdline,initrd,pci,mptable,ioapic,lapic mem={48 * MiB} expect=x"
              f" initrd_size={len(data)} initrd_sum={fnv1a32(data):08x}")
    result = vmd_run("-m", "48M", "-b", kernel, "--initrd", str(initrd), "--append", append, "mb")
    assert_all_ok(result)
    assert field(result, r"^cmdline (.*)$").strip() == f"{kernel} {append}"


def test_multiboot_memory_above_4g(vmd_run: Callable[..., Run], guests: dict[str, Path]) -> None:
    size = 5 << 30
    result = vmd_run("-m", "5G", "-b", str(guests["multiboot"]), "--append", f"tests=mem mem={size}", "big")
    assert_all_ok(result)
    assert re.search(r"0*100000000-", result.stdout), result.stdout  # a RAM range starts at 4 GiB


def test_two_vcpus_are_listed_in_the_mp_table(vmd_run: Callable[..., Run], guests: dict[str, Path]) -> None:
    result = vmd_run("-m", "32M", "-p", "2", "-b", str(guests["multiboot"]), "--append", "tests=mptable", "smp")
    assert_all_ok(result)
    assert field(result, r"cpus=(\d+)") == "2"
    assert field(result, r"ioapic_id=(\d+)") == "2"


@pytest.mark.parametrize("guest", ["openbsd64", "openbsd32"])
def test_openbsd_boot_protocol(vmd_run: Callable[..., Run], guests: dict[str, Path], guest: str) -> None:
    assert_all_ok(vmd_run("-m", "32M", "-b", str(guests[guest]), guest))


def test_pvh_gets_start_info_cmdline_and_initrd(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                 initrd: Path) -> None:
    data = initrd.read_bytes()
    append = (f"tests=mem,cmdline,initrd,pci,mptable,rtc,pit mem={32 * MiB} expect=pvh-ok"
              f" initrd_size={len(data)} initrd_sum={fnv1a32(data):08x}")
    result = vmd_run("-m", "32M", "-b", str(guests["pvh"]), "--initrd", str(initrd), "--append", append, "pvh")
    assert_all_ok(result)
    assert field(result, r"^expect (\S+)") == "pvh-ok"


def test_gzip_compressed_kernel_boots(vmd_run: Callable[..., Run], guests: dict[str, Path], tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "openbsd64.gz"
    packed.write_bytes(gzip.compress(guests["openbsd64"].read_bytes()))
    assert_all_ok(vmd_run("-m", "32M", "-b", str(packed), "gz"))


def test_debug_exit_failure_status(vmd_run: Callable[..., Run], guests: dict[str, Path]) -> None:
    # The cmdline check fails without its token: the guest reports FAILED and writes 1 to port 0xf4.
    result = vmd_run("-m", "32M", "-b", str(guests["multiboot"]), "--append", "tests=cmdline", "fail")
    assert result.returncode == 3, result
    assert "FAILED 1" in result.lines


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen(vmd_command("run", *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def _read_until(process: subprocess.Popen[bytes], token: bytes, timeout: float = 30.0) -> bytes:
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while token not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    assert token in seen, seen
    return seen


def test_serial_input_reaches_the_guest_by_interrupt(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "-b", str(guests["multiboot"]), "--append", "tests=serial", "serial")
    try:
        _read_until(process, b"ready>")
        assert process.stdin is not None
        process.stdin.write(b"typed on the console\r")
        process.stdin.flush()
        seen = _read_until(process, b"ALL OK")
        assert b"got typed on the console" in seen
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_demo_shell(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "-b", str(guests["demo"]), "demo")
    try:
        _read_until(process, b"vmd-demo# ")
        assert process.stdin is not None
        for command, expect in ((b"help", b"poweroff"), (b"pci", b"8086:1237"), (b"echo round trip", b"round trip"),
                                (b"mem", b"0000000000100000-0000000001ffffff ram"), (b"date", b"Z")):
            process.stdin.write(command + b"\r")
            process.stdin.flush()
            assert expect in _read_until(process, b"vmd-demo# ")
        process.stdin.write(b"poweroff\r")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_i8042_reset_reboots_the_guest(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "-b", str(guests["demo"]), "demo")
    try:
        _read_until(process, b"vmd-demo# ")
        assert process.stdin is not None
        process.stdin.write(b"reboot\r")
        process.stdin.flush()
        seen = _read_until(process, b"vmd-demo# ")
        assert b"vmd demo guest" in seen  # the banner again: the VM was built anew
        process.stdin.write(b"poweroff\r")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_no_reboot_exits_on_reset(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "--no-reboot", "-b", str(guests["demo"]), "demo")
    try:
        _read_until(process, b"vmd-demo# ")
        assert process.stdin is not None
        process.stdin.write(b"reboot\r")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_pty_console_path_is_printed(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "--console", "pty", "-b", str(guests["demo"]), "demo")
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()
        match = re.search(r"console on (/dev/pts/\d+)", line)
        assert match, line
        fd = os.open(match.group(1), os.O_RDWR | os.O_NOCTTY)
        try:
            seen = b""
            deadline = time.monotonic() + 30
            os.write(fd, b"\r")
            while b"vmd-demo# " not in seen and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.1)[0]:
                    seen += os.read(fd, 4096)
            assert b"vmd-demo# " in seen
            os.write(fd, b"poweroff\r")
            assert process.wait(timeout=30) == 0
        finally:
            os.close(fd)
    finally:
        process.kill()


def test_sigterm_stops_the_vm(guests: dict[str, Path]) -> None:
    process = _spawn("-m", "32M", "-b", str(guests["demo"]), "demo")
    try:
        _read_until(process, b"vmd-demo# ")
        process.terminate()
        assert process.wait(timeout=30) == 130
    finally:
        process.kill()


def test_host_cpu_template_runs_a_guest(vmd_run: Callable[..., Run], guests: dict[str, Path]) -> None:
    assert_all_ok(vmd_run("-m", "32M", "--cpu", "host", "-b", str(guests["openbsd64"]), "host"))


def test_bzimage_64bit_boot_protocol(vmd_run: Callable[..., Run], guests: dict[str, Path], initrd: Path) -> None:
    data = initrd.read_bytes()
    append = (f"tests=mem,cmdline,initrd,pci,mptable,rtc,pit mem={64 * MiB} expect=bz-ok"
              f" initrd_size={len(data)} initrd_sum={fnv1a32(data):08x}")
    result = vmd_run("-m", "64M", "-b", str(guests["bzimage"]), "--initrd", str(initrd), "--append", append, "bz")
    assert_all_ok(result)
    assert field(result, r"^expect (\S+)") == "bz-ok"
    assert field(result, r"^entry (\d+)") == "64"


def test_seabios_finds_memory_through_fw_cfg_and_boots_an_option_rom(vmd_run: Callable[..., Run],
                                                                      guests: dict[str, Path]) -> None:
    # No -b: Debian's SeaBIOS is the firmware. It reads the e820 map and the option ROM from fw_cfg and
    # starts the ROM's boot entry, which checks INT 15h E820 and reports the RAM it sees.
    result = vmd_run("-m", "64M", "--option-rom", str(guests["biosboot"]), "bios", timeout=240)
    assert_all_ok(result)
    assert field(result, r"^memtotal (\d+)") == str(64 * MiB)
    # RAM from 1 MiB up to (nearly) 64 MiB: SeaBIOS keeps the top pages for the ACPI tables it installs
    match = re.search(r"^memmap 0*100000-([0-9a-f]+) type 1$", result.stdout, re.M)
    assert match and 63 * MiB <= int(match.group(1), 16) <= 64 * MiB, result.stdout
    # The firmware below 4 GiB is ROM (KVM_MEM_READONLY): a write over its reset vector is lost.
    assert "ok rom" in result.lines, result.stdout


@pytest.mark.parametrize("vcpus", [2, 4])
def test_aps_start(vmd_run: Callable[..., Run], guests: dict[str, Path], vcpus: int) -> None:
    # The guest sends INIT, STARTUP, STARTUP to every AP of the MP table; each AP runs a real-mode
    # trampoline at 0x8000, switches to protected mode and checks in with its LAPIC id.
    result = vmd_run("-m", "32M", "-p", str(vcpus), "-b", str(guests["multiboot"]), "--append", "tests=smp",
                     f"smp{vcpus}")
    assert_all_ok(result)
    assert "ok smp" in result.lines, result.stdout
    match = re.search(r"^smp cpus (\d+) started (\d+) ids (\S+)$", result.stdout, re.M)
    assert match, result.stdout
    assert int(match.group(1)) == vcpus
    assert int(match.group(2)) == vcpus - 1
    assert sorted(int(i) for i in match.group(3).split(",")) == list(range(1, vcpus))
