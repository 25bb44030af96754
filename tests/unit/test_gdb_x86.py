"""gdb's x86 register files (vmd.gdb_x86): the 'g' packet layout, the target description, KVM's state."""

from __future__ import annotations

import gzip
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmd.gdb_x86 import (
    AMD64,
    FEATURE_CORE,
    FEATURE_SSE,
    I386,
    CpuState,
    RegisterError,
    abridged_tag,
    full_tag_word,
    image_bits,
    layout_for,
)
from vmd.kvm import structs as k

AMD64_CORE = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)] + [
    "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs"] + [f"st{i}" for i in range(8)] + [
    "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
I386_CORE = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags", "cs", "ss", "ds", "es", "fs",
             "gs"] + [f"st{i}" for i in range(8)] + ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff",
                                                     "fop"]


def state() -> CpuState:
    regs, sregs, fpu = k.kvm_regs(), k.kvm_sregs(), k.kvm_fpu()
    for i, name in enumerate(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")):
        setattr(regs, name, 0x1111_1111_0000_0000 | (i + 1))
    regs.r15 = 0xF15
    regs.rip = 0xFFFF_FFFF_8100_0000
    regs.rflags = 0x246
    sregs.cs.selector, sregs.ss.selector, sregs.fs.base = 0x10, 0x18, 0x7000
    sregs.cr0, sregs.cr3, sregs.efer = 0x8000_0011, 0x1000, 0x500
    fpu.fcw, fpu.mxcsr = 0x37F, 0x1F80
    fpu.xmm[16:32] = list(range(16))  # xmm1
    return CpuState(regs, sregs, fpu)


def test_g_packet_sizes_are_gdbs() -> None:
    # amd64: 16 GPRs + rip (8 bytes), eflags and 6 selectors (4), 8 x87 (10), 8 x87 control (4), 16 xmm, mxcsr
    assert AMD64.g_size == 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 == 536
    assert I386.g_size == 8 * 4 + 4 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 8 * 16 + 4 == 308


def test_amd64_g_packet() -> None:
    s = state()
    data = AMD64.encode_g(s)
    assert len(data) == 536
    assert struct.unpack_from("<Q", data, 0)[0] == s.regs.rax
    assert struct.unpack_from("<Q", data, 6 * 8)[0] == s.regs.rbp  # rbp before rsp, as gdb numbers them
    assert struct.unpack_from("<Q", data, 7 * 8)[0] == s.regs.rsp
    assert struct.unpack_from("<Q", data, 15 * 8)[0] == 0xF15
    assert struct.unpack_from("<QII", data, 128) == (0xFFFF_FFFF_8100_0000, 0x246, 0x10)
    assert struct.unpack_from("<I", data, 144)[0] == 0x18  # ss
    assert struct.unpack_from("<I", data, 164 + 80)[0] == 0x37F  # fctrl after the selectors and st0-st7
    assert data[276 + 16 : 276 + 32] == bytes(range(16))  # xmm1, after the 8 x87 control words
    assert struct.unpack_from("<I", data, 536 - 4)[0] == 0x1F80


def test_i386_g_packet_truncates_and_orders_as_gdb() -> None:
    s = state()
    data = I386.encode_g(s)
    assert len(data) == 308
    eax, ecx, edx, ebx, esp, ebp, esi, edi, eip, eflags = struct.unpack_from("<10I", data)
    assert (eax, ecx, edx, ebx) == (1, 3, 4, 2)
    assert (esp, ebp, esi, edi) == (7, 8, 5, 6)
    assert eip == 0x8100_0000 and eflags == 0x246


def test_writing_a_32_bit_register_keeps_the_upper_half() -> None:
    s = state()
    number = [r.name for r in I386.registers].index("eax")
    I386.set(s, number, (0xDEAD).to_bytes(4, "little"))
    assert s.regs.rax == 0x1111_1111_0000_DEAD
    assert "regs" in s.dirty


def test_unchanged_registers_are_not_written_back() -> None:
    s = state()
    AMD64.decode_g(s, AMD64.encode_g(s))
    assert s.dirty == set()


def test_g_round_trip_with_changes() -> None:
    s = state()
    data = bytearray(AMD64.encode_g(s))
    data[0:8] = (42).to_bytes(8, "little")
    data[276 : 276 + 16] = b"\x55" * 16  # xmm0
    AMD64.decode_g(s, bytes(data))
    assert s.regs.rax == 42 and bytes(s.fpu.xmm[0:16]) == b"\x55" * 16
    assert s.dirty == {"regs", "fpu"}
    assert AMD64.encode_g(s) == bytes(data)


def test_a_g_packet_that_cannot_be_applied_changes_nothing() -> None:
    s = state()
    data = bytearray(AMD64.encode_g(s))
    data[0:8] = (42).to_bytes(8, "little")
    data[140:144] = (0x23).to_bytes(4, "little")  # cs, in protected mode
    with pytest.raises(RegisterError, match="real mode"):
        AMD64.decode_g(s, bytes(data))
    assert s.regs.rax != 42 and s.dirty == set()
    with pytest.raises(RegisterError):
        AMD64.decode_g(s, bytes(data[:-1]))


def test_segment_in_real_mode_sets_the_base() -> None:
    s = state()
    s.sregs.cr0 = 0x10
    number = [r.name for r in AMD64.registers].index("ds")
    AMD64.set(s, number, (0x1234).to_bytes(4, "little"))
    assert (s.sregs.ds.selector, s.sregs.ds.base) == (0x1234, 0x12340)


def test_system_registers_are_outside_the_g_packet() -> None:
    s = state()
    names = [r.name for r in AMD64.registers]
    assert names[names.index("mxcsr") + 1 :] == ["fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    assert AMD64.get(s, names.index("cr0")) == (0x8000_0011).to_bytes(8, "little")
    assert AMD64.get(s, names.index("fs_base")) == (0x7000).to_bytes(8, "little")
    AMD64.set(s, names.index("cr3"), (0x2000).to_bytes(8, "little"))
    assert s.sregs.cr3 == 0x2000 and s.dirty == {"sregs"}
    with pytest.raises(RegisterError):
        AMD64.set(s, names.index("cr3"), b"\0" * 4)


def test_x87_tag_word() -> None:
    fpr = bytearray(128)
    assert full_tag_word(0, 0, bytes(fpr)) == 0xFFFF  # all empty
    fpr[0:10] = (1 << 63).to_bytes(8, "little") + (0x3FFF).to_bytes(2, "little")  # ST(0) = 1.0: valid
    fpr[16:26] = bytes(10)  # ST(1) = 0: zero
    fpr[32:42] = bytes(8) + b"\xff\x7f"  # ST(2) = infinity-ish: special
    top = 5  # ST(i) is physical register (5 + i) % 8
    word = full_tag_word(0b1110_0000, top << 11, bytes(fpr))
    assert (word >> 10) & 3 == 0 and (word >> 12) & 3 == 1 and (word >> 14) & 3 == 2
    assert word & 0x3FF == 0x3FF  # physical 0-4 empty
    assert abridged_tag(word) == 0b1110_0000


def test_target_description() -> None:
    for layout, core, xmms, arch in ((AMD64, AMD64_CORE, 16, "i386:x86-64"), (I386, I386_CORE, 8, "i386")):
        root = ET.fromstring(layout.target_xml())
        assert root.findtext("architecture") == arch
        features = {f.get("name"): f for f in root.findall("feature")}
        assert [r.get("name") for r in features[FEATURE_CORE].findall("reg")] == core
        assert [r.get("name") for r in features[FEATURE_SSE].findall("reg")] == [f"xmm{i}" for i in range(xmms)] + [
            "mxcsr"]
        regs = root.findall("feature/reg")
        assert [int(r.get("regnum", -1)) for r in regs] == list(range(len(layout.registers)))
        assert sum(int(r.get("bitsize", 0)) for r in regs[: len(layout.g_registers)]) == layout.g_size * 8
        defined = {t.get("id") for f in root.findall("feature") for t in f if t.tag in ("flags", "vector", "union")}
        for feature in root.findall("feature"):  # a type is used only in the feature that defines it
            local = {t.get("id") for t in feature if t.tag in ("flags", "vector", "union")}
            for reg in feature.findall("reg"):
                assert reg.get("type") not in defined - local


def _elf(bits: int) -> bytes:
    return b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(57)


def test_image_bits(tmp_path: Path) -> None:
    for name, data, bits in (("k32", _elf(32), 32), ("k64", _elf(64), 64), ("gz", gzip.compress(_elf(64)), 64),
                             ("bz", b"\xeb\x3c" + bytes(600), None), ("badgz", b"\x1f\x8bnot gzip", None),
                             ("empty", b"", None)):
        path = tmp_path / name
        path.write_bytes(data)
        assert image_bits(str(path)) == bits, name
    assert image_bits(str(tmp_path / "missing")) is None
    assert image_bits(None) is None


def test_layout_choice() -> None:
    pe, pg, lma = 1, 1 << 31, 1 << 10
    assert layout_for(pe, 0, 32) is I386  # multiboot, OpenBSD/i386
    assert layout_for(pe, 0, None) is I386  # a.out kludge, 32-bit bzImage entry
    assert layout_for(pe, 0, 64) is AMD64  # PVH entry of a 64-bit vmlinux
    assert layout_for(pe | pg, lma, 64) is AMD64
    assert layout_for(pe | pg, lma, None) is AMD64  # 64-bit bzImage entry
    assert layout_for(0x10, 0, None) is AMD64  # firmware, real mode


def test_the_stub_adds_no_heavy_imports_to_the_vm_process() -> None:
    """xml.sax.saxutils, for one, imports urllib: about 7 MiB more in every VM process."""
    import subprocess
    import sys

    code = ("import sys, vmd.cli, vmd.vmproc\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('urllib', 'xml', 'email', 'http')))")
    src = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
