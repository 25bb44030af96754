"""Guest memory layout, bounds checks and zero-copy views (no KVM needed)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmd.memory import (
    E820_RAM,
    E820_RESERVED,
    FOUR_GIB,
    HOLE_START,
    GiB,
    GuestMemory,
    GuestMemoryError,
    MiB,
)


@pytest.fixture
def small() -> GuestMemory:
    memory = GuestMemory(16 * MiB)
    yield memory
    memory.close()


def test_small_memory_is_one_region_below_the_hole(small: GuestMemory) -> None:
    assert [(r.guest_address, r.size) for r in small.ram_regions()] == [(0, 16 * MiB)]
    assert small.low_ram_end == 16 * MiB
    assert small.high_ram_end == 0


def test_e820_reports_low_ram_reserved_hole_and_high_ram(small: GuestMemory) -> None:
    assert [(e.address, e.size, e.type) for e in small.e820()] == [
        (0, 640 * 1024, E820_RAM),
        (640 * 1024, 384 * 1024, E820_RESERVED),
        (1 * MiB, 15 * MiB, E820_RAM),
    ]


def test_memory_beyond_the_hole_is_placed_above_4g() -> None:
    memory = GuestMemory(5 * GiB)
    try:
        regions = [(r.guest_address, r.size) for r in memory.ram_regions()]
        assert regions == [(0, HOLE_START), (FOUR_GIB, 5 * GiB - HOLE_START)]
        assert memory.e820()[-1].address == FOUR_GIB
        assert memory.e820()[-1].size == 5 * GiB - HOLE_START
        memory.write_u32(FOUR_GIB + 8, 0xDEADBEEF)  # the memfd is sparse: this costs one page
        assert memory.read_u32(FOUR_GIB + 8) == 0xDEADBEEF
        assert not memory.contains(HOLE_START, 1)
    finally:
        memory.close()


def test_views_are_zero_copy(small: GuestMemory) -> None:
    view = small.view(0x1000, 4)
    view[:] = b"abcd"
    assert small.read(0x1000, 4) == b"abcd"


@pytest.mark.parametrize("address,length", [(16 * MiB - 1, 2), (16 * MiB, 1), (-1, 1), (HOLE_START, 4), (0, -1)])
def test_accesses_outside_memory_are_refused(small: GuestMemory, address: int, length: int) -> None:
    with pytest.raises(GuestMemoryError):
        small.view(address, length)


@given(st.integers(min_value=-(1 << 64), max_value=1 << 64), st.integers(min_value=-10, max_value=1 << 33))
def test_any_range_is_either_inside_or_refused(address: int, length: int) -> None:
    memory = GuestMemory(2 * MiB)
    try:
        if 0 <= address and 0 <= length and address + length <= 2 * MiB:
            assert len(memory.view(address, length)) == length
        else:
            with pytest.raises(GuestMemoryError):
                memory.view(address, length)
    finally:
        memory.close()


def test_rom_region_cannot_overlap_ram(small: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        small.add_region(0x1000, b"x" * 16)
    rom = small.add_region(FOUR_GIB - 0x1000, b"\xea" * 16)
    assert small.read(rom.guest_address, 2) == b"\xea\xea"


def test_a_read_only_region_is_read_but_never_written(small: GuestMemory) -> None:
    rom = small.add_region(FOUR_GIB - 0x1000, b"\xea\x5b\xe0", read_only=True)
    assert small.read(rom.guest_address, 3) == b"\xea\x5b\xe0"
    assert small.read_u8(rom.guest_address) == 0xEA
    assert bytes(small.view(rom.guest_address, 3, writable=False)) == b"\xea\x5b\xe0"
    with pytest.raises(GuestMemoryError, match="read-only"):
        small.write(rom.guest_address, b"\x90")
    with pytest.raises(GuestMemoryError, match="read-only"):
        small.view(rom.guest_address, 16)  # a view to write through, as a device's DMA takes
    assert small.read(rom.guest_address, 1) == b"\xea"
    small.write(0x1000, b"ram")  # RAM stays writable
    assert small.read(0x1000, 3) == b"ram"


@pytest.mark.parametrize("size", [0, 512 * 1024, 129 * GiB, 2 * MiB + 1])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(GuestMemoryError):
        GuestMemory(size)
