"""Guest physical memory: one memfd, mapped once, split around the PCI hole below 4 GiB.

Layout (all guests, whatever the boot method):

    [0, 640 KiB)                    RAM
    [640 KiB, 1 MiB)                backed by RAM but reported as reserved (VGA hole, option ROMs,
                                    the BIOS copy below 1 MiB)
    [1 MiB, min(size, HOLE_START))  RAM
    [HOLE_START, 4 GiB)             no RAM: PCI MMIO windows, I/O APIC, local APIC, firmware ROM
    [4 GiB, ...)                    the rest of RAM, when the size asks for more than fits below

Extra regions (firmware ROM at the top of 4 GiB) are separate memfds added with add_region().
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from vmd.limits import SIZE_MIN, VMM_MAX_VM_MEM_SIZE

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LOW_RAM_END = 640 * KiB
HIGH_MEMORY_START = 1 * MiB
HOLE_START = 0xE000_0000  # start of the PCI hole; RAM never reaches past it below 4 GiB
FOUR_GIB = 4 * GiB
PCI_MMIO_START = HOLE_START
PCI_MMIO_END = 0xFEC0_0000  # exclusive: I/O APIC and LAPIC follow
IOAPIC_ADDRESS = 0xFEC0_0000
LAPIC_ADDRESS = 0xFEE0_0000

# e820 types (ACPI 6.4, table 15.312)
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4


class GuestMemoryError(Exception):
    """A guest-physical access outside guest memory."""


@dataclass(frozen=True)
class E820Entry:
    address: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass
class Region:
    """A run of guest-physical memory backed by host memory."""

    guest_address: int
    size: int
    mapping: mmap.mmap
    host_offset: int  # offset of guest_address inside mapping
    fd: int  # memfd backing the mapping (for KVM memory slots and other processes)
    file_offset: int  # offset of guest_address inside fd
    read_only: bool = False
    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.view = memoryview(self.mapping)[self.host_offset : self.host_offset + self.size]

    @property
    def end(self) -> int:
        return self.guest_address + self.size


class GuestMemory:
    """Guest RAM backed by a memfd, with bounds-checked zero-copy views by guest-physical address."""

    def __init__(self, size: int, name: str = "vmd-ram") -> None:
        if size < SIZE_MIN:
            raise GuestMemoryError(f"memory size {size >> 10} KiB is too small (minimum {SIZE_MIN >> 20} MiB)")
        if size > VMM_MAX_VM_MEM_SIZE:  # guest physical ranges stay below 128 GiB, as on OpenBSD
            raise GuestMemoryError(
                f"memory size {size >> 20} MiB is too large (maximum {VMM_MAX_VM_MEM_SIZE >> 30} GiB)")
        if size % 4096:
            raise GuestMemoryError("memory size must be a multiple of 4 KiB")
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self._mapping = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        low = min(size, HOLE_START)
        self.regions: list[Region] = [Region(0, low, self._mapping, 0, self.fd, 0)]
        if size > low:
            self.regions.append(Region(FOUR_GIB, size - low, self._mapping, low, self.fd, low))
        self.low_ram_end = low
        self.high_ram_end = FOUR_GIB + (size - low) if size > low else 0

    # -- regions --------------------------------------------------------------------------------------

    def add_region(self, guest_address: int, data: bytes | int, read_only: bool = False,
                   name: str = "vmd-rom") -> Region:
        """Add a separately backed region (firmware ROM, for instance); data gives contents or a size."""
        size = data if isinstance(data, int) else len(data)
        size = (size + 4095) & ~4095
        for region in self.regions:
            if guest_address < region.end and region.guest_address < guest_address + size:
                raise GuestMemoryError(f"region at {guest_address:#x} overlaps guest memory")
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if not isinstance(data, int):
            mapping[: len(data)] = data
        region = Region(guest_address, size, mapping, 0, fd, 0, read_only)
        self.regions.append(region)
        return region

    def ram_regions(self) -> list[Region]:
        return [r for r in self.regions if r.mapping is self._mapping]

    def e820(self) -> list[E820Entry]:
        """The RAM map every boot method reports (vmd's create_memory_map)."""
        entries = [
            E820Entry(0, LOW_RAM_END, E820_RAM),
            E820Entry(LOW_RAM_END, HIGH_MEMORY_START - LOW_RAM_END, E820_RESERVED),
        ]
        if self.low_ram_end > HIGH_MEMORY_START:
            entries.append(E820Entry(HIGH_MEMORY_START, self.low_ram_end - HIGH_MEMORY_START, E820_RAM))
        if self.high_ram_end:
            entries.append(E820Entry(FOUR_GIB, self.high_ram_end - FOUR_GIB, E820_RAM))
        return entries

    # -- access ----------------------------------------------------------------------------------------

    def _find(self, address: int, length: int) -> Region:
        if address < 0 or length < 0:
            raise GuestMemoryError(f"bad guest address {address:#x} length {length}")
        for region in self.regions:
            if region.guest_address <= address and address + length <= region.end:
                return region
        raise GuestMemoryError(f"guest range {address:#x}+{length:#x} is outside guest memory")

    def contains(self, address: int, length: int) -> bool:
        try:
            self._find(address, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, address: int, length: int, writable: bool = True) -> memoryview:
        """A zero-copy view of guest memory [address, address+length); raises GuestMemoryError. A view to
        write through (writable) is refused in a read-only region (the firmware ROM), as the guest's own
        writes there are; a view only read from is not."""
        region = self._find(address, length)
        if writable and region.read_only:
            raise GuestMemoryError(f"guest range {address:#x}+{length:#x} is read-only memory")
        start = address - region.guest_address
        return region.view[start : start + length]

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.view(address, length, writable=False))

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        self.view(address, len(data))[:] = data

    def read_u8(self, address: int) -> int:
        return self.view(address, 1, writable=False)[0]

    def read_u16(self, address: int) -> int:
        return int.from_bytes(self.view(address, 2, writable=False), "little")

    def read_u32(self, address: int) -> int:
        return int.from_bytes(self.view(address, 4, writable=False), "little")

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.view(address, 8, writable=False), "little")

    def write_u8(self, address: int, value: int) -> None:
        self.view(address, 1)[0] = value & 0xFF

    def write_u16(self, address: int, value: int) -> None:
        self.view(address, 2)[:] = (value & 0xFFFF).to_bytes(2, "little")

    def write_u32(self, address: int, value: int) -> None:
        self.view(address, 4)[:] = (value & 0xFFFF_FFFF).to_bytes(4, "little")

    def write_u64(self, address: int, value: int) -> None:
        self.view(address, 8)[:] = (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")

    def host_address(self, region: Region) -> int:
        """The host virtual address of a region's first byte (for KVM_SET_USER_MEMORY_REGION)."""
        import ctypes

        buffer = (ctypes.c_char * 1).from_buffer(region.mapping, region.host_offset)
        return ctypes.addressof(buffer)

    def close(self) -> None:
        """Release the memory. Views still held elsewhere (a device's rings) keep their pages alive until
        they go; the file descriptors are closed at once."""
        for region in self.regions:
            try:
                region.view.release()
            except BufferError:
                pass
        mappings = [r.mapping for r in self.regions if r.mapping is not self._mapping] + [self._mapping]
        fds = [r.fd for r in self.regions if r.mapping is not self._mapping] + [self.fd]
        self.regions = []
        for mapping in mappings:
            try:
                mapping.close()
            except BufferError:
                pass
        for fd in fds:
            os.close(fd)
