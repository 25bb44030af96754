"""fw_cfg: the legacy data port, the file directory and DMA, driven as SeaBIOS drives them."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.devices.fw_cfg import (
    FW_CFG_FILE_DIR,
    FW_CFG_ID,
    FW_CFG_NB_CPUS,
    FW_CFG_RAM_SIZE,
    FW_CFG_SIGNATURE,
    FwCfg,
    FwCfgError,
    seabios_files,
)
from vmd.memory import E820Entry, GuestMemory

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(4 * MiB)
    yield mem
    mem.close()


def select(fw: FwCfg, key: int) -> None:
    fw.pio_write(0, 2, key)


def read_data(fw: FwCfg, n: int) -> bytes:
    return bytes(fw.pio_read(1, 1) for _ in range(n))


def dma(fw: FwCfg, memory: GuestMemory, access: int, control: int, length: int, address: int) -> int:
    memory.write(access, struct.pack(">IIQ", control, length, address))
    high, low = access >> 32, access & 0xFFFFFFFF
    fw.pio_write(4, 4, int.from_bytes(high.to_bytes(4, "big"), "little"))  # outl(cpu_to_be32(high))
    fw.pio_write(8, 4, int.from_bytes(low.to_bytes(4, "big"), "little"))
    return int.from_bytes(memory.read(access, 4), "big")


def test_signature_and_id(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    select(fw, FW_CFG_SIGNATURE)
    assert read_data(fw, 4) == b"QEMU"
    assert read_data(fw, 2) == b"\0\0"  # past the end
    select(fw, FW_CFG_ID)
    assert int.from_bytes(read_data(fw, 4), "little") == 3
    # the DMA address register reads "QEMU CFG"
    raw = fw.pio_read(4, 4).to_bytes(4, "little") + fw.pio_read(8, 4).to_bytes(4, "little")
    assert raw == b"QEMU CFG"
    assert int.from_bytes(raw, "big") == 0x51454D5520434647


def test_wide_data_reads(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    select(fw, FW_CFG_SIGNATURE)
    assert fw.pio_read(1, 2).to_bytes(2, "little") == b"QE"
    assert fw.pio_read(1, 4).to_bytes(4, "little") == b"MU\0\0"


def test_numeric_items(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    fw.add_u64(FW_CFG_RAM_SIZE, 512 * MiB)
    fw.add_u16(FW_CFG_NB_CPUS, 4)
    select(fw, FW_CFG_RAM_SIZE)
    assert int.from_bytes(read_data(fw, 8), "little") == 512 * MiB
    select(fw, FW_CFG_NB_CPUS)
    assert read_data(fw, 2) == b"\x04\x00"
    select(fw, 0x1234)  # missing item reads zeros
    assert read_data(fw, 4) == bytes(4)
    with pytest.raises(FwCfgError):
        fw.add_item(0x20, b"x")


def parse_directory(blob: bytes) -> list[tuple[int, int, str]]:
    count = int.from_bytes(blob[:4], "big")
    out = []
    for i in range(count):
        size, key, _, name = struct.unpack(">IHH56s", blob[4 + 64 * i: 4 + 64 * (i + 1)])
        out.append((size, key, name.rstrip(b"\0").decode()))
    return out


def test_file_directory_sorted(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    fw.add_file("etc/e820", b"x" * 40)
    fw.add_file("bootorder", b"HALT\0")
    fw.add_file("etc/screen-and-debug", bytes(8))
    select(fw, FW_CFG_FILE_DIR)
    count = int.from_bytes(read_data(fw, 4), "big")
    assert count == 3
    select(fw, FW_CFG_FILE_DIR)
    entries = parse_directory(read_data(fw, 4 + 64 * count))
    assert entries == [(5, 0x20, "bootorder"), (40, 0x21, "etc/e820"), (8, 0x22, "etc/screen-and-debug")]
    assert fw.file_key("etc/e820") == 0x21
    select(fw, 0x20)
    assert read_data(fw, 5) == b"HALT\0"


def test_dma_read_select_skip(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    key = fw.add_file("etc/e820", bytes(range(60)))
    access, buf = 0x1000, 0x2000
    memory.write(buf, b"\xAA" * 128)
    assert dma(fw, memory, access, (key << 16) | 0x08 | 0x02, 10, buf) == 0
    assert memory.read(buf, 10) == bytes(range(10))
    assert dma(fw, memory, access, 0x04, 20, 0) == 0  # skip 20
    assert dma(fw, memory, access, 0x02, 40, buf) == 0  # 30 bytes left, then zeros
    assert memory.read(buf, 40) == bytes(range(30, 60)) + bytes(10)
    assert memory.read(buf + 40, 1) == b"\xAA"
    # select only
    assert dma(fw, memory, access, (FW_CFG_SIGNATURE << 16) | 0x08, 0, 0) == 0
    assert read_data(fw, 4) == b"QEMU"
    # the address register is zero again after an operation
    assert fw.pio_read(4, 4).to_bytes(4, "little") == b"QEMU"


def test_dma_errors_do_not_raise(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    access = 0x1000
    assert dma(fw, memory, access, (FW_CFG_SIGNATURE << 16) | 0x0A, 4, 0xFFFF_0000_0000) & 1
    assert dma(fw, memory, access, (FW_CFG_SIGNATURE << 16) | 0x0A, 0xFFFFFFFF, 0x1000) & 1
    assert dma(fw, memory, access, (FW_CFG_SIGNATURE << 16) | 0x18, 4, 0x2000) & 1  # writes refused
    # the access structure itself out of range: nothing happens, nothing raises
    fw.pio_write(4, 4, 0x01000000)
    fw.pio_write(8, 4, 0)


def test_seabios_files() -> None:
    e820 = [E820Entry(0, 0xA0000, 1), E820Entry(0x100000, 0x1F00000, 1)]
    files = seabios_files(e820, bootorder="/pci@i0cf8/*@2\nHALT")
    assert files["etc/e820"] == struct.pack("<QQIQQI", 0, 0xA0000, 1, 0x100000, 0x1F00000, 1)
    assert len(files["etc/e820"]) == 40
    assert files["bootorder"].startswith(b"/pci@i0cf8/*@2\nHALT")
    assert files["etc/screen-and-debug"] == bytes(8)


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 11), st.sampled_from([1, 2, 4]),
                         st.integers(0, 0xFFFFFFFF)), max_size=100)


@settings(max_examples=200, deadline=None)
@given(ops, st.binary(min_size=16, max_size=16))
def test_random_accesses_never_raise(accesses: list[tuple[bool, int, int, int]], desc: bytes) -> None:
    mem = GuestMemory(2 * MiB)
    try:
        fw = FwCfg(mem)
        fw.add_file("etc/e820", bytes(100))
        mem.write(0, desc)
        for write, offset, size, value in accesses:
            if write:
                fw.pio_write(offset, size, value)
            else:
                assert 0 <= fw.pio_read(offset, size) < (1 << (8 * size))
        mem.write(0, desc)
        fw.pio_write(4, 4, 0)
        fw.pio_write(8, 4, 0)  # a DMA transfer from a random descriptor at address 0
    finally:
        mem.close()
