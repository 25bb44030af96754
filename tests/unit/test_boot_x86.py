"""GDT, identity page tables, e820 helpers and the MP table (Intel MP spec 1.4)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from vmd.boot.x86 import (
    BadImage,
    BootInfoArea,
    e820_reserve,
    gdt_entry,
    pack_e820,
    write_gdt,
    write_identity_page_tables,
    write_mptable,
)
from vmd.memory import E820_RAM, E820_RESERVED, E820Entry, GuestMemory, MiB


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory(64 * MiB)
    yield memory
    memory.close()


def test_gdt(mem: GuestMemory) -> None:
    base, limit = write_gdt(mem)
    assert (base, limit) == (0x10000, 31)
    null, code32, data, code64 = struct.unpack("<4Q", mem.read(0x10000, 32))
    assert null == 0
    assert code32 == 0x00CF9B000000FFFF
    assert data == 0x00CF93000000FFFF
    assert code64 == 0x00AF9B000000FFFF
    assert gdt_entry(0x12345678, 0xABCDE, 0x93, 0xC) == 0x12CA93345678BCDE


@pytest.mark.parametrize("gib", [1, 4])
def test_identity_page_tables(mem: GuestMemory, gib: int) -> None:
    assert write_identity_page_tables(mem, gib) == 0x11000
    assert mem.read_u64(0x11000) == 0x12003
    for i in range(4):
        pdpte = mem.read_u64(0x12000 + 8 * i)
        assert pdpte == (0x13003 + 0x1000 * i if i < gib else 0)
    # every 2 MiB page maps itself
    for address in (0, 0x200000, 0x3FE00000, 0xFEC00000 if gib == 4 else 0x20000000):
        pdpt_index, pd_index = address >> 30, (address >> 21) & 511
        pde = mem.read_u64((mem.read_u64(0x12000 + 8 * pdpt_index) & ~0xFFF) + 8 * pd_index)
        assert pde == address | 0x83


def test_e820_helpers() -> None:
    entries = [E820Entry(0, 0xA0000, E820_RAM), E820Entry(0x100000, 0x1000000, E820_RAM)]
    carved = e820_reserve(entries, 0x200000, 0x1000)
    assert carved == [E820Entry(0, 0xA0000, E820_RAM), E820Entry(0x100000, 0x100000, E820_RAM),
                      E820Entry(0x200000, 0x1000, E820_RESERVED), E820Entry(0x201000, 0xEFF000, E820_RAM)]
    assert pack_e820(entries[:1]) == struct.pack("<QQI", 0, 0xA0000, 1)


def test_boot_info_area(mem: GuestMemory) -> None:
    area = BootInfoArea(mem, 0x3000, 0x3020)
    assert area.put(b"abc") == 0x3000
    assert area.put(b"d") == 0x3008
    with pytest.raises(BadImage):
        area.put(bytes(32))


def parse_mptable(mem: GuestMemory) -> tuple[bytes, list[bytes]]:
    floating = mem.read(0xF0000, 16)
    assert floating[:4] == b"_MP_" and floating[8] == 1 and floating[9] == 4
    assert sum(floating) & 0xFF == 0
    table_at = struct.unpack_from("<I", floating, 4)[0]
    length = mem.read_u16(table_at + 4)
    table = mem.read(table_at, length)
    assert table[:4] == b"PCMP" and table[6] == 4 and sum(table) & 0xFF == 0
    count = struct.unpack_from("<H", table, 34)[0]
    assert struct.unpack_from("<I", table, 36)[0] == 0xFEE00000
    entries, position = [], 44
    for _ in range(count):
        size = 20 if table[position] == 0 else 8
        entries.append(table[position : position + size])
        position += size
    assert position == length
    return table, entries


@pytest.mark.parametrize("vcpus", [1, 4, 64])
def test_mptable(mem: GuestMemory, vcpus: int) -> None:
    write_mptable(mem, vcpus)
    _table, entries = parse_mptable(mem)
    types = [e[0] for e in entries]
    assert types == sorted(types)  # MP spec 4.3: entries ordered by type
    cpus = [e for e in entries if e[0] == 0]
    assert [c[1] for c in cpus] == list(range(vcpus))
    assert [c[3] for c in cpus] == [3] + [1] * (vcpus - 1)  # enabled; BSP flag on APIC id 0
    buses = {e[1]: e[2:8] for e in entries if e[0] == 1}
    assert buses == {0: b"PCI   ", 1: b"ISA   "}
    (ioapic,) = [e for e in entries if e[0] == 2]
    assert struct.unpack("<BBBBI", ioapic) == (2, vcpus, 0x11, 1, 0xFEC00000)
    ioints = [struct.unpack("<BBHBBBB", e) for e in entries if e[0] == 3]
    routes = {irq: pin for _t, kind, _f, bus, irq, apic, pin in ioints
              if bus == 1 and kind == 0 and apic == vcpus}
    assert routes == {0: 2, **{irq: irq for irq in range(1, 16) if irq != 2}}
    lints = [struct.unpack("<BBHBBBB", e) for e in entries if e[0] == 4]
    assert [(kind, dest, lint) for _t, kind, _f, _b, _i, dest, lint in lints] == [(3, 0xFF, 0), (1, 0xFF, 1)]


def test_mptable_options(mem: GuestMemory) -> None:
    write_mptable(mem, 2, irq0_pin=0, pci_routes=[(3, 0, 16)])
    _table, entries = parse_mptable(mem)
    ioints = [struct.unpack("<BBHBBBB", e) for e in entries if e[0] == 3]
    assert (3, 0, 0, 1, 0, 2, 0) in ioints
    assert (3, 0, 0x0F, 0, 3 << 2, 2, 16) in ioints
    with pytest.raises(ValueError):
        write_mptable(mem, 0)
