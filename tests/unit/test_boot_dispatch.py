"""load_kernel: file handling, gzip, format detection, BIOS images, and that bad input is only BootError."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmd.boot
from vmd.boot import load_kernel
from vmd.boot.bios import default_firmware
from vmd.boot.state import BootError, BootOptions, CpuState
from vmd.memory import GuestMemory, MiB


@pytest.fixture(scope="module")
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory(64 * MiB)
    yield memory
    memory.close()


def write(tmp_path: Path, data: bytes, name: str = "image") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def elf64(paddr: int = 0x1000000) -> bytes:
    """A minimal ELF64 x86-64 executable with one PT_LOAD of 16 bytes."""
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, paddr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, paddr, paddr, 16, 16, 16)
    return header + phdr + b"\xf4" * 16


def test_missing_directory_empty(tmp_path: Path, mem: GuestMemory) -> None:
    with pytest.raises(BootError, match=r"missing: No such file or directory$"):
        load_kernel(str(tmp_path / "missing"), mem, BootOptions())
    with pytest.raises(BootError, match=f"^{tmp_path}: is a directory$"):
        load_kernel(str(tmp_path), mem, BootOptions())
    with pytest.raises(BootError, match="empty file"):
        load_kernel(write(tmp_path, b""), mem, BootOptions())


def test_unreadable(tmp_path: Path, mem: GuestMemory) -> None:
    path = write(tmp_path, b"x" * 100)
    os.chmod(path, 0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(BootError, match="Permission denied"):
        load_kernel(path, mem, BootOptions())


def test_gzip_kernel(tmp_path: Path, mem: GuestMemory) -> None:
    plan = load_kernel(write(tmp_path, gzip.compress(elf64())), mem, BootOptions())
    assert plan.kind == "openbsd-elf64" and mem.read(0x1000000, 16) == b"\xf4" * 16


def test_corrupt_gzip(tmp_path: Path, mem: GuestMemory) -> None:
    data = bytearray(gzip.compress(elf64() * 10))
    data[20] ^= 0xFF
    with pytest.raises(BootError, match="gzip"):
        load_kernel(write(tmp_path, bytes(data)), mem, BootOptions())
    with pytest.raises(BootError, match="truncated gzip"):
        load_kernel(write(tmp_path, gzip.compress(elf64())[:-30]), mem, BootOptions())
    with pytest.raises(BootError, match="not a kernel or firmware image"):
        load_kernel(write(tmp_path, gzip.compress(b"just some text" * 10)), mem, BootOptions())


def test_gzip_bomb(tmp_path: Path) -> None:
    small = GuestMemory(4 * MiB)
    try:
        with pytest.raises(BootError, match="larger than guest memory"):
            load_kernel(write(tmp_path, gzip.compress(bytes(8 * MiB))), small, BootOptions())
    finally:
        small.close()


# JMP F000:E05B and padding: the last 16 bytes of SeaBIOS
RESET_VECTOR = bytes.fromhex("ea5be000f030362f32332f393900fc00")


def test_bios_image(tmp_path: Path, mem: GuestMemory) -> None:
    # not a page multiple, ending with a far jump at the reset vector as SeaBIOS does
    image = bytes(range(256)) * 1024 + b"tail" * 996 + RESET_VECTOR
    plan = load_kernel(write(tmp_path, image), mem, BootOptions())
    assert plan.kind == "bios" and not plan.needs_mptable
    assert plan.cpu == CpuState.reset_vector()
    assert plan.firmware is not None and len(plan.firmware) % 4096 == 0 and plan.firmware.endswith(image)
    assert mem.read(0x100000 - 128 * 1024, 128 * 1024) == image[-128 * 1024 :]
    assert plan.e820 == mem.e820()


def test_bios_sizes(tmp_path: Path, mem: GuestMemory) -> None:
    with pytest.raises(BootError, match=r"bios image too small$"):
        load_kernel(write(tmp_path, b"x" * 14), mem, BootOptions())
    with pytest.raises(BootError, match=r"bios image too large \(> 4 MiB\)$"):
        load_kernel(write(tmp_path, b"x" * (4 * MiB + 1)), mem, BootOptions())
    plan = load_kernel(write(tmp_path, RESET_VECTOR[:15]), mem, BootOptions())
    assert plan.firmware is not None and len(plan.firmware) == 4096
    assert mem.read(0x100000 - 15, 15) == RESET_VECTOR[:15]


def test_bios_without_a_reset_vector_jump_is_not_a_firmware(tmp_path: Path, mem: GuestMemory) -> None:
    with pytest.raises(BootError, match=r"not an ELF kernel, bzImage or BIOS image"):
        load_kernel(write(tmp_path, b"y" * 4096), mem, BootOptions())
    plan = load_kernel(write(tmp_path, b"\x90" * 100 + b"\x90\x90\xe9\x00\x10" + bytes(11)), mem, BootOptions())
    assert plan.kind == "bios"


def test_bios_with_initrd_is_an_error(tmp_path: Path, mem: GuestMemory) -> None:
    with pytest.raises(BootError, match="not a kernel"):
        load_kernel(write(tmp_path, b"z" * 100), mem, BootOptions(initrd=write(tmp_path, b"i", "initrd")))


def test_default_firmware() -> None:
    with mock.patch("os.path.isfile", return_value=False):
        with pytest.raises(BootError, match="seabios"):
            default_firmware()
    with mock.patch("os.path.isfile", side_effect=lambda p: p.endswith("/bios.bin")):
        assert default_firmware() == "/usr/share/seabios/bios.bin"


def test_elf_needs_ram(tmp_path: Path) -> None:
    small = GuestMemory(4 * MiB)
    try:
        with pytest.raises(BootError, match="outside guest memory"):
            load_kernel(write(tmp_path, elf64()), small, BootOptions())
    finally:
        small.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(min_size=0, max_size=3000),
    st.binary(max_size=200).map(lambda tail: b"\x7fELF" + tail),
    st.binary(max_size=200).map(lambda tail: b"\x7fELF\x02\x01\x01" + bytes(9) + tail),
    st.binary(max_size=200).map(lambda tail: b"\x7fELF\x01\x01\x01" + bytes(9) + tail),
    st.binary(max_size=100).map(lambda tail: b"\x1f\x8b" + tail),
    st.binary(max_size=2000).map(gzip.compress),
    st.binary(max_size=0x300).map(
        lambda tail: bytes(0x1FE) + b"\x55\xaa" + b"\xeb\x66HdrS" + tail[:4] + bytes(0x400) + tail),
    st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=40)).map(
        lambda t: struct.pack("<III", 0x1BADB002, t[0], -(0x1BADB002 + t[0]) & 0xFFFFFFFF) + t[1]),
))
def test_fuzz_random_input_only_boot_error(tmp_path: Path, mem: GuestMemory, data: bytes) -> None:
    path = write(tmp_path, data, "fuzz")
    with mock.patch.object(vmd.boot, "SAFETY_NET", ()):
        try:
            plan = load_kernel(path, mem, BootOptions(cmdline="-s"))
        except BootError as error:
            assert str(error).startswith(path + ": ")
        else:
            assert plan.cpu is not None and plan.e820


def test_file_larger_than_memory_is_not_read(tmp_path: Path, mem: GuestMemory) -> None:
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.truncate(65 * MiB)
    with pytest.raises(BootError, match="file too large"):
        load_kernel(str(path), mem, BootOptions())


def test_reading_a_kernel_costs_its_size_not_the_guest_memory(tmp_path: Path) -> None:
    """A 5 GiB guest on a 4 GiB host: the kernel was read with a buffer as large as guest memory (capped at
    4 GiB), and boot.read_image died with MemoryError. Read what the file holds."""
    import tracemalloc

    kernel = write(tmp_path, elf64())
    tracemalloc.start()
    try:
        data, compressed = vmd.boot.read_image(kernel, 5 << 30)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == elf64() and not compressed
    assert peak < 8 * MiB, peak
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = os.fork()
    if writer == 0:
        with open(fifo, "wb") as pipe:
            pipe.write(elf64())
        os._exit(0)
    try:
        assert vmd.boot.read_image(str(fifo), 5 << 30) == (elf64(), False)
    finally:
        os.waitpid(writer, 0)
