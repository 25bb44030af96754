"""Linux bzImage loading (Documentation/arch/x86/boot.rst) on synthetic images."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmd.boot import load_kernel
from vmd.boot.state import BootError, BootOptions
from vmd.memory import GuestMemory, MiB


def build_bzimage(*, version: int = 0x020F, xloadflags: int = 1, setup_sects: int = 4, loadflags: int = 1,
                  cmdline_size: int = 2047, initrd_addr_max: int = 0x7FFFFFFF, pref_address: int = 0x1000000,
                  init_size: int = 0x800000, kernel: bytes = b"\x90" * 0x4000) -> bytes:
    setup = bytearray((max(setup_sects, 1) + 1) * 512 if setup_sects else 5 * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x66"  # jmp: the header ends at 0x202 + 0x66 = 0x268
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)  # kernel_alignment
    setup[0x234] = 1
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


@pytest.fixture(scope="module")
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory(64 * MiB)
    yield memory
    memory.close()


def write(tmp_path: Path, data: bytes, name: str = "bzImage") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_bzimage_64(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = bytes(range(256)) * 64
    image = build_bzimage(kernel=kernel)
    initrd = b"\xAB" * 10000
    plan = load_kernel(write(tmp_path, image), mem,
                       BootOptions(cmdline="console=ttyS0", initrd=write(tmp_path, initrd, "initrd")))
    assert plan.kind == "linux-bzimage"
    cpu = plan.cpu
    assert cpu.rip == 0x100200 and cpu.gprs["rsi"] == 0x7000
    assert cpu.cr0 & 0x80000001 == 0x80000001 and cpu.cs.l == 1 and cpu.cs.selector == 0x10
    assert cpu.ds.selector == 0x18 and cpu.cr3 == 0x11000
    assert mem.read_u64(0x12000 + 8 * 3) & ~0xFFF == 0x16000  # 4 GiB mapped
    gdt = struct.unpack("<4Q", mem.read(cpu.gdt_base, 32))
    assert gdt[2] == 0x00AF9B000000FFFF and gdt[3] == 0x00CF93000000FFFF
    assert mem.read(0x100000, len(kernel)) == kernel
    zero = mem.read(0x7000, 4096)
    assert zero[0x1F1:0x268].startswith(image[0x1F1:0x210])  # the setup header was copied
    assert zero[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", zero, 0x1FE)[0] == 0xAA55
    assert zero[0x210] == 0xFF and zero[0x211] & 0x81 == 0x81
    cmdline_ptr = struct.unpack_from("<I", zero, 0x228)[0]
    assert cmdline_ptr == 0x20000 and mem.read(cmdline_ptr, 14) == b"console=ttyS0\0"
    ramdisk, size = struct.unpack_from("<II", zero, 0x218)
    assert size == len(initrd) and ramdisk % 4096 == 0 and ramdisk + size <= 64 * MiB
    assert ramdisk >= 0x1000000 + 0x800000 and mem.read(ramdisk, size) == initrd
    e820 = mem.e820()
    assert zero[0x1E8] == len(e820)
    for i, entry in enumerate(e820):
        assert struct.unpack_from("<QQI", zero, 0x2D0 + 20 * i) == (entry.address, entry.size, entry.type)


def test_bzimage_32bit_protocol(tmp_path: Path, mem: GuestMemory) -> None:
    plan = load_kernel(write(tmp_path, build_bzimage(xloadflags=0, setup_sects=0)), mem, BootOptions())
    cpu = plan.cpu
    assert cpu.rip == 0x100000 and cpu.gprs["rsi"] == 0x7000
    assert cpu.cr0 & 1 and not cpu.cr0 & 0x80000000 and cpu.efer == 0
    assert cpu.cs.selector == 0x10 and cpu.cs.db == 1 and cpu.ss.selector == 0x18
    gdt = struct.unpack("<4Q", mem.read(cpu.gdt_base, 32))
    assert gdt[2] == 0x00CF9B000000FFFF
    assert mem.read_u32(0x7000 + 0x21C) == 0  # no initrd


def test_initrd_below_initrd_addr_max(tmp_path: Path, mem: GuestMemory) -> None:
    image = build_bzimage(initrd_addr_max=0x2FFFFFF)
    load_kernel(write(tmp_path, image), mem, BootOptions(initrd=write(tmp_path, b"x" * 5000, "initrd")))
    ramdisk, size = struct.unpack("<II", mem.read(0x7218, 8))
    assert ramdisk + size <= 0x3000000 and ramdisk == (0x3000000 - 5000) & ~0xFFF


@pytest.mark.parametrize(("kwargs", "options", "message"), [
    ({"version": 0x0205}, {}, "too old"),
    ({"loadflags": 0}, {}, "zImage"),
    ({"kernel": b""}, {}, "no protected-mode code"),
    ({"init_size": 0x4000000}, {}, "needs memory up to"),
    ({"cmdline_size": 10}, {"cmdline": "x" * 11}, "command line too long"),
    ({"initrd_addr_max": 0x17FFFFF}, {"initrd": "big"}, "does not fit"),
])
def test_bzimage_errors(tmp_path: Path, mem: GuestMemory, kwargs: dict[str, object], options: dict[str, str],
                        message: str) -> None:
    if options.get("initrd") == "big":
        options = {"initrd": write(tmp_path, b"y" * 0x100000, "initrd")}
    image = build_bzimage(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(BootError, match=message):
        load_kernel(write(tmp_path, image), mem, BootOptions(**options))  # type: ignore[arg-type]


def test_truncated_header(tmp_path: Path, mem: GuestMemory) -> None:
    with pytest.raises(BootError, match="truncated Linux kernel header"):
        load_kernel(write(tmp_path, build_bzimage()[:0x230]), mem, BootOptions())
