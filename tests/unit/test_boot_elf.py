"""ELF boot paths: OpenBSD boot protocol, PVH and multiboot, on synthetic kernels in a real GuestMemory."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmd.boot
from vmd.boot import load_kernel
from vmd.boot.state import BootError, BootOptions, flat_segment
from vmd.memory import GuestMemory, MiB

PT_LOAD, PT_NOTE, PT_RANDOMIZE = 1, 4, 0x65A3DBE6
RWX = 7


def build_elf(segments: list[tuple[int, int, bytes, int]], entry: int, *, is64: bool = True,
              notes: list[tuple[bytes, int, bytes]] | None = None,
              sections: list[tuple[bytes, int, bytes, int]] | None = None,
              machine: int | None = None, prefix: bytes = b"") -> bytes:
    """An x86 ELF executable.

    segments: (p_type, paddr, file bytes, memsz); sections: (name, type, data, link).

    prefix is placed right after the program headers (for a multiboot header in the first 8 KiB)."""
    ehsize, phsize, shsize = (64, 56, 64) if is64 else (52, 32, 40)
    phdrs = list(segments)
    note_blob = b""
    for owner, note_type, desc in notes or []:
        name = owner + b"\0"
        note_blob += struct.pack("<III", len(name), len(desc), note_type)
        note_blob += name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)
    if note_blob:
        phdrs.append((PT_NOTE, 0, note_blob, len(note_blob)))
    offset = ehsize + phsize * len(phdrs) + len(prefix)
    body = bytearray(prefix)
    table = b""
    for p_type, paddr, data, memsz in phdrs:
        offset = (offset + 15) & ~15
        body += bytes(offset - (ehsize + phsize * len(phdrs) + len(body)))
        if is64:
            vaddr = paddr | 0xFFFFFFFF80000000
            table += struct.pack("<IIQQQQQQ", p_type, RWX, offset, vaddr, paddr, len(data), memsz, 16)
        else:
            table += struct.pack("<IIIIIIII", p_type, offset, paddr, paddr, len(data), memsz, RWX, 16)
        body += data
        offset += len(data)
    shoff = shnum = shstrndx = 0
    if sections:
        names = b"\0" + b"".join(name + b"\0" for name, _t, _d, _l in sections) + b".shstrtab\0"
        all_sections = [*sections, (b".shstrtab", 3, names, 0)]
        headers = [bytes(shsize)]
        name_at = 1
        for name, sh_type, data, link in all_sections:
            data_at = ehsize + phsize * len(phdrs) + len(body)
            body += data
            layout = "<IIQQQQIIQQ" if is64 else "<IIIIIIIIII"
            headers.append(struct.pack(layout, name_at, sh_type, 0, 0, data_at, len(data), link, 0, 1, 0))
            name_at += len(name) + 1
        body += bytes(-len(body) % 8)
        shoff = ehsize + phsize * len(phdrs) + len(body)
        body += b"".join(headers)
        shnum, shstrndx = len(headers), len(headers) - 1
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + bytes(9)
    machine = machine if machine is not None else (62 if is64 else 3)
    layout = "<HHIQQQIHHHHHH" if is64 else "<HHIIIIIHHHHHH"
    header = struct.pack(layout, 2, machine, 1, entry, ehsize, shoff, 0, ehsize, phsize, len(phdrs),
                         shsize, shnum, shstrndx)
    return ident + header + table + bytes(body)


def multiboot_header(flags: int, fields: tuple[int, ...] = ()) -> bytes:
    magic = 0x1BADB002
    checksum = -(magic + flags) & 0xFFFFFFFF
    return struct.pack("<III", magic, flags, checksum) + struct.pack(f"<{len(fields)}I", *fields)


@pytest.fixture(scope="module")
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory(64 * MiB)
    yield memory
    memory.close()


def write(tmp_path: Path, data: bytes, name: str = "kernel") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def u32(mem: GuestMemory, address: int) -> int:
    return mem.read_u32(address)


# -- OpenBSD ------------------------------------------------------------------------------------------

CODE = b"\xf4" * 100  # hlt


def test_openbsd_elf64(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x1000000, CODE, 0x2000), (PT_RANDOMIZE, 0x1001000, bytes(64), 64)],
                       entry=0xFFFFFFFF81000000)
    plan = load_kernel(write(tmp_path, kernel), mem, BootOptions())
    assert plan.kind == "openbsd-elf64"
    assert plan.needs_mptable and plan.e820 == mem.e820()
    assert mem.read(0x1000000, len(CODE)) == CODE
    assert mem.read(0x1000000 + len(CODE), 0x2000 - len(CODE)).count(0) >= 0x2000 - len(CODE) - 64
    assert mem.read(0x1001000, 64) != bytes(64)  # random data (a 2^-512 chance of a false failure)
    cpu = plan.cpu
    assert cpu.rip == 0x1000000  # entry masked with 0x0FFFFFFF
    assert cpu.cr0 & 0x80000001 == 0x80000001 and cpu.efer & 0x500 == 0x500 and cpu.cr3 == 0x11000
    # compatibility mode, as vmd's CS 0x08 with access rights 0xC09F (execute/read, conforming, accessed)
    assert cpu.cs == replace(flat_segment(0x08, code=True), type=0xF)
    assert cpu.gdt_base == 0x10000
    # page tables: PML4 -> PDPT -> PD, 1 GiB of 2 MiB pages
    assert mem.read_u64(0x11000) & ~0xFFF == 0x12000
    assert mem.read_u64(0x12000) & ~0xFFF == 0x13000
    assert mem.read_u64(0x13000 + 8 * 5) == (5 << 21) | 0x83
    # stack: RSP = 0x10000 - 36, then howto, bootdev, apiver, end, extmem, basemem, bootargs size, bootargs
    rsp = cpu.gprs["rsp"]
    assert rsp == 0x10000 - 36
    words = struct.unpack("<9I", mem.read(rsp, 36))
    assert words[0] == 0 and words[1] == 0 and words[2] == 0xA0000004 and words[3] == 0x0E
    assert words[4] >= 0x1002000 and words[5] == 0 and words[6] == 0 and words[8] == 0x2000
    # bootargs: MEMMAP record, CONSDEV record, END
    e820 = mem.e820()
    kind, size, next_size = struct.unpack("<III", mem.read(0x2000, 12))
    assert kind == 0 and size == next_size == 12 + 20 * (len(e820) + 1)
    for i, entry in enumerate(e820):
        assert struct.unpack("<QQI", mem.read(0x200C + 20 * i, 20)) == (entry.address, entry.size, entry.type)
    assert struct.unpack("<QQI", mem.read(0x200C + 20 * len(e820), 20)) == (0, 0, 0)
    cons = 0x2000 + size
    kind, csize, _ = struct.unpack("<III", mem.read(cons, 12))
    dev, speed, addr = struct.unpack("<iiQ", mem.read(cons + 12, 16))
    assert kind == 5 and (dev, speed, addr) == (0x800, 115200, 0x3F8)
    end = cons + csize
    assert u32(mem, end) == 0xFFFFFFFF
    assert words[7] == end + 4 - 0x2000


def test_openbsd_symbols_copied(tmp_path: Path, mem: GuestMemory) -> None:
    symtab = bytes(24) + struct.pack("<IBBHQQ", 1, 0, 0, 1, 0x1000000, 0)
    strtab = b"\0start\0"
    kernel = build_elf([(PT_LOAD, 0x1000000, CODE, 0x1000)], entry=0x1000000,
                       sections=[(b".symtab", 2, symtab, 2), (b".strtab", 3, strtab, 0)])
    plan = load_kernel(write(tmp_path, kernel), mem, BootOptions())
    end = mem.read_u32(plan.cpu.gprs["rsp"] + 16)
    elf_at = 0x1001000
    assert mem.read(elf_at, 4) == b"\x7fELF"
    assert mem.read_u64(elf_at + 0x20) == 0 and mem.read_u64(elf_at + 0x28) == 64  # e_phoff, e_shoff
    shnum = mem.read_u16(elf_at + 0x3C)
    assert shnum == 4
    sym_header = elf_at + 64 + 64  # section 1
    assert mem.read_u32(sym_header + 4) == 2
    sym_offset = mem.read_u64(sym_header + 24)
    assert mem.read(elf_at + sym_offset, len(symtab)) == symtab
    assert end > elf_at + sym_offset + len(symtab)


def test_openbsd_elf32_4m_pages_with_a_paging_off_fallback(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x200000, CODE, 0x1000)], entry=0xD0200000, is64=False)
    plan = load_kernel(write(tmp_path, kernel), mem, BootOptions(cmdline="-s -d"))
    assert plan.kind == "openbsd-elf32"
    paged = plan.cpu  # as vmd: paging on, 4 MiB pages identity-mapping 4 GiB, CR3 0x12000, CR4.PSE
    assert paged.cr0 & 0x80000001 == 0x80000001 and paged.cr3 == 0x12000 and paged.cr4 == 0x10
    assert paged.efer == 0 and paged.rip == 0x0200000
    assert mem.read_u32(0x12000 + 4 * 3) == (3 << 22) | 0x83 and mem.read_u32(0x12000 + 4 * 1023) >> 22 == 1023
    assert plan.cpu_fallback is not None
    cpu = plan.cpu_fallback  # as /boot: paging off, for a KVM that cannot start in 32-bit paging mode
    assert cpu.rip == 0x0200000 and not cpu.cr0 & 0x80000000 and cpu.cr0 & 1 and cpu.efer == 0
    assert cpu.cs.db == 1 and cpu.cs.l == 0 and cpu.cs.selector == 0x08 and cpu.ss.selector == 0x10
    assert cpu.gprs["rsp"] == 0x10000 - 36
    assert mem.read_u32(0x10000 - 32) == 0x2 | 0x40  # howto: RB_SINGLE | RB_KDB


def test_openbsd_refuses_initrd_and_other_cmdline(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = write(tmp_path, build_elf([(PT_LOAD, 0x1000000, CODE, 0x100)], entry=0x1000000))
    initrd = write(tmp_path, b"x", "initrd")
    with pytest.raises(BootError, match="take no initrd"):
        load_kernel(kernel, mem, BootOptions(initrd=initrd))
    with pytest.raises(BootError, match="boot flags"):
        load_kernel(kernel, mem, BootOptions(cmdline="root=/dev/sd0a"))


@pytest.mark.parametrize(("segments", "message"), [
    ([(PT_LOAD, 0x8000000, CODE, 0x100)], "outside guest memory"),
    ([(PT_LOAD, 0x3FFF000, CODE, 0x2000)], "outside guest memory"),
    ([(PT_LOAD, 0x1000, CODE, 0x100)], "overlaps the boot pages"),
    ([(PT_NOTE, 0x1000000, b"", 0)], "no loadable segments"),
])
def test_bad_segments(tmp_path: Path, mem: GuestMemory, segments: list[tuple[int, int, bytes, int]],
                      message: str) -> None:
    path = write(tmp_path, build_elf(segments, entry=0x1000000))
    with pytest.raises(BootError, match=message) as info:
        load_kernel(path, mem, BootOptions())
    assert str(info.value).startswith(f"{path}: ")


def test_bad_headers(tmp_path: Path, mem: GuestMemory) -> None:
    good = build_elf([(PT_LOAD, 0x1000000, CODE, 0x100)], entry=0x1000000)
    cases = [
        (good[:40], "truncated ELF header"),
        (good[:4] + b"\x03" + good[5:], "unsupported ELF class"),
        (good[:5] + b"\x02" + good[6:], "little-endian"),
        (build_elf([(PT_LOAD, 0x1000000, CODE, 0x100)], entry=0, machine=40), "machine 40"),
        (build_elf([(PT_LOAD, 0x1000000, CODE, 0x100)], entry=0, is64=False, machine=62), "not i386"),
        (good[:100], "program headers .* past the end"),
        (good[: len(good) - 50], "past the end of the file"),
        (good[:0x38] + b"\x00\x00" + good[0x3A:], "no program headers"),
        (good[:0x36] + b"\x20\x00" + good[0x38:], "program header size"),
    ]
    for data, message in cases:
        with pytest.raises(BootError, match=message):
            load_kernel(write(tmp_path, data), mem, BootOptions())


# -- PVH ------------------------------------------------------------------------------------------------

def test_pvh(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x1000000, CODE, 0x3000)], entry=0xFFFFFFFF81000000,
                       notes=[(b"GNU", 3, b"abcd"), (b"Xen", 18, struct.pack("<Q", 0x1000040))])
    initrd = b"initrd!" * 300
    plan = load_kernel(write(tmp_path, kernel), mem,
                       BootOptions(cmdline="console=ttyS0", initrd=write(tmp_path, initrd, "initrd")))
    assert plan.kind == "pvh"
    cpu = plan.cpu
    assert cpu.rip == 0x1000040 and cpu.cr0 & 1 and not cpu.cr0 & 0x80000000 and cpu.cs.db == 1
    info = cpu.gprs["rbx"]
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, _ = struct.unpack(
        "<IIIIQQQQII", mem.read(info, 56))
    assert (magic, version, flags, nr_modules, rsdp) == (0x336EC578, 1, 0, 1, 0)
    assert mem.read(cmdline, 14) == b"console=ttyS0\0"
    e820 = mem.e820()
    assert entries == len(e820)
    for i, entry in enumerate(e820):
        want = (entry.address, entry.size, entry.type, 0)
        assert struct.unpack("<QQII", mem.read(memmap + 24 * i, 24)) == want
    paddr, size, mod_cmdline, _ = struct.unpack("<QQQQ", mem.read(modlist, 32))
    assert size == len(initrd) and mem.read(paddr, size) == initrd and mod_cmdline == 0
    assert paddr % 4096 == 0 and paddr >= 0x1003000


def test_pvh_note_wins_over_multiboot(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x100000, CODE, 0x1000)], entry=0x100000, is64=False,
                       notes=[(b"Xen", 18, struct.pack("<I", 0x100010))], prefix=multiboot_header(3))
    assert load_kernel(write(tmp_path, kernel), mem, BootOptions()).kind == "pvh"


# -- multiboot -------------------------------------------------------------------------------------------

def check_multiboot_info(mem: GuestMemory, info: int, cmdline: bytes, initrd: bytes | None,
                         name: str) -> None:
    flags, lower, upper, _bootdev, cmdline_at, mods_count, mods_at = struct.unpack("<7I", mem.read(info, 28))
    assert flags & 0x245 == 0x245  # mem, cmdline, mmap, loader name
    assert lower == 640 and upper == (64 * MiB - MiB) // 1024
    assert mem.read(cmdline_at, len(cmdline) + 1) == cmdline + b"\0"
    mmap_length, mmap_at = struct.unpack("<II", mem.read(info + 44, 8))
    e820 = mem.e820()
    assert mmap_length == 24 * len(e820)
    for i, entry in enumerate(e820):
        want = (20, entry.address, entry.size, entry.type)
        assert struct.unpack("<IQQI", mem.read(mmap_at + 24 * i, 24)) == want
    assert mem.read(mem.read_u32(info + 64), 4) == b"vmd\0"
    if initrd is None:
        assert not flags & 8
        return
    assert flags & 8 and mods_count == 1
    start, end, string, _ = struct.unpack("<IIII", mem.read(mods_at, 16))
    assert start % 4096 == 0 and mem.read(start, end - start) == initrd
    assert mem.read(string, len(name) + 1) == name.encode() + b"\0"


def test_multiboot_elf(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x100000, CODE, 0x5000)], entry=0x100000, is64=False,
                       prefix=multiboot_header(3))
    initrd = bytes(range(256)) * 20
    initrd_path = write(tmp_path, initrd, "initrd")
    plan = load_kernel(write(tmp_path, kernel), mem, BootOptions(cmdline="a=b", initrd=initrd_path))
    assert plan.kind == "multiboot"
    cpu = plan.cpu
    assert cpu.gprs["rax"] == 0x2BADB002 and cpu.rip == 0x100000 and not cpu.cr0 & 0x80000000
    check_multiboot_info(mem, cpu.gprs["rbx"], f"{tmp_path / 'kernel'} a=b".encode(), initrd, initrd_path)
    module = mem.read_u32(mem.read_u32(cpu.gprs["rbx"] + 24))
    assert module >= 0x105000


def test_multiboot_aout_kludge(tmp_path: Path, mem: GuestMemory) -> None:
    load = 0x200000
    # header at file offset 64; file offset 0 loads at load; bss up to load + 0x3000
    header = multiboot_header(0x10003, (load + 64, load, 0, load + 0x3000, load + 0x100))
    image = bytes(64) + header + bytes(0x100 - 64 - len(header)) + CODE
    path = write(tmp_path, image)
    plan = load_kernel(path, mem, BootOptions())
    assert plan.kind == "multiboot" and plan.cpu.rip == load + 0x100
    assert mem.read(load, len(image)) == image
    assert mem.read(load + len(image), 0x3000 - len(image)) == bytes(0x3000 - len(image))
    check_multiboot_info(mem, plan.cpu.gprs["rbx"], path.encode(), None, "")


def test_multiboot_errors(tmp_path: Path, mem: GuestMemory) -> None:
    cases = [
        (bytes(64) + multiboot_header(0x10000, (0x200040, 0x200000, 0x100000, 0, 0x200000)),
         "below load_addr"),
        (bytes(64) + multiboot_header(0x10000, (0x200040, 0x300000, 0, 0, 0x200000)), "above header_addr"),
        (bytes(64) + multiboot_header(0x10000, (0x200000, 0x100000, 0, 0, 0x200000)), "before the start"),
        (bytes(64) + multiboot_header(0x10008, (0x200040, 0x200000, 0, 0, 0x200000)), "unsupported features"),
        (bytes(64) + multiboot_header(0x10000, (0x4000040, 0x4000000, 0, 0, 0x4000040)), "outside guest memory"),
        (bytes(64) + multiboot_header(0x10000, (0x200040, 0x200000, 0, 0, 0x9000000)), "entry point"),
        (bytes(64) + multiboot_header(0x10000, (0x200040, 0x200000, 0x300000, 0, 0x200000)), "shorter"),
    ]
    for data, message in cases:
        with pytest.raises(BootError, match=message):
            load_kernel(write(tmp_path, data + bytes(32)), mem, BootOptions())


def test_multiboot_bad_checksum_is_not_multiboot(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x1000000, CODE, 0x100)], entry=0x1000000,
                       prefix=struct.pack("<III", 0x1BADB002, 0, 0))
    assert load_kernel(write(tmp_path, kernel), mem, BootOptions()).kind == "openbsd-elf64"


def test_initrd_too_large(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0x100000, CODE, 0x1000)], entry=0x100000, is64=False,
                       prefix=multiboot_header(0))
    big = tmp_path / "big"
    with open(big, "wb") as handle:
        handle.truncate(64 * MiB)
    with pytest.raises(BootError, match="does not fit"):
        load_kernel(write(tmp_path, kernel), mem, BootOptions(initrd=str(big)))
    with pytest.raises(BootError, match="initrd .*missing.*No such file"):
        load_kernel(write(tmp_path, kernel), mem, BootOptions(initrd=str(tmp_path / "missing")))


# -- fuzz -------------------------------------------------------------------------------------------------

SEEDS = [
    build_elf([(PT_LOAD, 0x1000000, CODE, 0x2000), (PT_RANDOMIZE, 0x1001000, bytes(8), 8)], entry=0x1000000,
              sections=[(b".symtab", 2, bytes(48), 2), (b".strtab", 3, b"\0a\0", 0)]),
    build_elf([(PT_LOAD, 0x200000, CODE, 0x1000)], entry=0x200000, is64=False),
    build_elf([(PT_LOAD, 0x1000000, CODE, 0x1000)], entry=0,
              notes=[(b"Xen", 18, struct.pack("<I", 0x1000000))]),
    build_elf([(PT_LOAD, 0x100000, CODE, 0x1000)], entry=0x100000, is64=False, prefix=multiboot_header(3)),
    bytes(64) + multiboot_header(0x10003, (0x200040, 0x200000, 0, 0x203000, 0x200100)) + CODE,
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                                    max_size=8), cut=st.integers(0, 600))
def test_fuzz_mutated_elf(tmp_path: Path, mem: GuestMemory, seed: bytes, edits: list[tuple[int, int]],
                          cut: int) -> None:
    data = bytearray(seed)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    if cut:
        data = data[: max(1, len(data) - cut)]
    path = write(tmp_path, bytes(data), "fuzz")
    with mock.patch.object(vmd.boot, "SAFETY_NET", ()):
        try:
            load_kernel(path, mem, BootOptions())
        except BootError as error:
            assert str(error).startswith(path + ": ")


def test_openbsd_bootargs_carry_the_boot_mac_for_net_boot() -> None:
    from vmd.boot.elf import BOOTARG_BOOTMAC, BOOTARG_END, openbsd_bootargs
    from vmd.memory import E820Entry

    plain = openbsd_bootargs([E820Entry(0, 0xA0000, 1)])
    with_mac = openbsd_bootargs([E820Entry(0, 0xA0000, 1)], bytes.fromhex("fee1bbd10203"))
    records = []
    offset = 0
    while True:
        kind = int.from_bytes(with_mac[offset : offset + 4], "little")
        if kind == BOOTARG_END:
            break
        size = int.from_bytes(with_mac[offset + 4 : offset + 8], "little")
        records.append((kind, with_mac[offset + 12 : offset + size]))
        offset += size
    assert records[-1] == (BOOTARG_BOOTMAC, bytes.fromhex("fee1bbd10203") + b"\0\0")
    assert len(with_mac) == len(plain) + 20


def test_multiboot_kernel_over_the_boot_pages_gets_its_structures_elsewhere(tmp_path: Path,
                                                                           mem: GuestMemory) -> None:
    code = bytes(range(256)) * 0x100  # 64 KiB, 0x8000-0x18000: over the zero page, stack, GDT, page tables
    kernel = build_elf([(PT_LOAD, 0x8000, code, len(code))], entry=0x8000, is64=False,
                       prefix=multiboot_header(3))
    path = write(tmp_path, kernel)
    plan = load_kernel(path, mem, BootOptions(cmdline="x=1"))
    image_start, image_end = 0x8000, 0x8000 + len(code)
    cpu = plan.cpu
    info = cpu.gprs["rbx"]
    cmdline_at = mem.read_u32(info + 16)
    for what, address in (("info", info), ("cmdline", cmdline_at), ("gdt", cpu.gdt_base),
                          ("stack", cpu.gprs["rsp"] - 16)):
        assert not image_start <= address < image_end, (what, hex(address))
    assert mem.read(image_start, len(code)) == code  # nothing of ours was written over the kernel
    check_multiboot_info(mem, info, f"{path} x=1".encode(), None, "")


def test_a_kernel_in_the_bios_area_moves_the_mp_and_acpi_tables(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = build_elf([(PT_LOAD, 0xF0000, CODE, 0x100), (PT_LOAD, 0x1000000, CODE, 0x100)], entry=0x1000000)
    plan = load_kernel(write(tmp_path, kernel), mem, BootOptions())
    assert plan.kind == "openbsd-elf64"
    assert plan.acpi_address == 0xE0000
    assert not 0xF0000 <= plan.mptable_address < 0xF0100 and 0xE0000 <= plan.mptable_address < 0x100000
    full = build_elf([(PT_LOAD, 0xE0000, CODE, 0x20000), (PT_LOAD, 0x1000000, CODE, 0x100)], entry=0x1000000)
    with pytest.raises(BootError, match="no room for the ACPI tables"):
        load_kernel(write(tmp_path, full), mem, BootOptions())
