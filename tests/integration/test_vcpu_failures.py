"""A vCPU that fails: the message holds the registers and the instruction bytes at RIP, read through the
guest's page tables (KVM_TRANSLATE), or says that RIP is not mapped.

The guests are three-instruction ELF64 kernels, booted the OpenBSD way (compatibility mode, vmd's identity
map of the first GiB, no IDT): an int3, a ud2, and a jump to 3 GiB, which is not mapped."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Run

ENTRY = 0x100000


def elf64(code: bytes) -> bytes:
    """An ELF64 x86-64 executable (gABI) with one 4 KiB PT_LOAD at ENTRY holding code, then nops."""
    header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 0x3E, 1, ENTRY, 64, 0, 0, 64, 56,
                         1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, ENTRY, ENTRY, 0x1000, 0x1000, 0x1000)
    return (header + phdr).ljust(0x1000, b"\0") + code.ljust(0x1000, b"\x90")


@pytest.mark.parametrize("name,code,expected", [
    # this host's KVM cannot emulate int3 (an internal error); a hardware KVM faults with no IDT (a triple fault)
    ("int3", b"\xcc", f"code at {ENTRY:#x}: cc 90 90 90 90 90 90 90 90 90 90 90 90 90 90 90"),
    ("ud2", b"\x0f\x0b", f"code at {ENTRY:#x}: 0f 0b 90 90 90 90 90 90 90 90 90 90 90 90 90 90"),
    ("unmapped", b"\xb8\x00\x00\x00\xc0\xff\xe0", "code at 0xc0000000: unmapped"),  # mov $0xc0000000,%eax; jmp *%eax
])
def test_failure_shows_the_code_at_rip(vmd_run: Callable[..., Run], tmp_path: Path, name: str, code: bytes,
                                       expected: str) -> None:
    kernel = tmp_path / f"{name}.elf"
    kernel.write_bytes(elf64(code))
    result = vmd_run("-m", "32M", "--no-reboot", "-b", str(kernel), "fails", timeout=60)
    assert "Traceback" not in result.stderr
    assert re.search(r"vcpu0: (triple fault|KVM internal error)", result.stderr), result.stderr
    assert "rip=" in result.stderr and "  " + expected in result.stderr.splitlines(), result.stderr


def test_internal_error_is_one_failure_with_registers_and_code(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    kernel = tmp_path / "int3.elf"
    kernel.write_bytes(elf64(b"\xcc"))
    result = vmd_run("-m", "32M", "--no-reboot", "-b", str(kernel), "fails", timeout=60)
    if "KVM internal error" not in result.stderr:
        pytest.skip("this KVM executes int3 (a triple fault here, checked above)")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "vmd: vm fails: vcpu0: KVM internal error (emulation failure)"
    assert lines[-1].strip().startswith(f"code at {ENTRY:#x}: cc")
