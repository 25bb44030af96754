"""x86 structures every direct boot shares: the fixed low-memory layout, the GDT, identity page tables,
e820 helpers and the Intel MP table.

Fixed guest-physical layout of a direct (non-BIOS) boot; see docs/platform.md:

    0x00000 - 0x00FFF  left zero (real-mode IVT / BDA: no EBDA pointer, no base-memory size)
    0x02000            OpenBSD boot arguments page (vmd BOOTARGS_PAGE)
    0x03000 - 0x06FFF  boot information area: PVH hvm_start_info, multiboot info, module lists,
                       memory maps and module strings (bump-allocated by BootInfoArea)
    0x07000            Linux zero page (struct boot_params)
    0x0F000            boot stack page (vmd STACK_PAGE); stack top 0x10000
    0x10000            GDT (vmd GDT_PAGE): null, 0x08 code32, 0x10 data, 0x18 code64;
                       the Linux boot-protocol GDT (0x10 code, 0x18 data) follows at 0x10080
    0x11000            PML4, 0x12000 PDPT, 0x13000 - 0x16FFF up to four page directories;
                       for OpenBSD/i386, a 4 MiB-page directory at 0x12000 instead
    0x20000 - 0x2FFFF  kernel command line
    0xE0000 - 0xE3FFF  ACPI RSDP (at 0xE0000) and tables (boot/acpi.py, written by the machine)
    0xF0000 - 0xF07FF  MP floating pointer and configuration table (written by the machine)

Kernels booted with vmd's own protocols (OpenBSD, Linux, PVH) must stay clear of [0, LOW_BOOT_END), as with
OpenBSD's vmd. A Multiboot kernel may be linked anywhere in RAM: where it covers these pages, the structures
its boot needs move to free memory (place_boot_area). The ACPI and MP tables go to their usual addresses when
the kernel leaves them free, else wherever it leaves room in 0xE0000-0xFFFFF (place_tables), the range where
operating systems look for them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from vmd.memory import (
    E820_RAM,
    E820_RESERVED,
    IOAPIC_ADDRESS,
    LAPIC_ADDRESS,
    E820Entry,
    GiB,
    GuestMemory,
)

PAGE_SIZE = 0x1000

BOOTARGS_PAGE = 0x2000
BOOT_INFO_START = 0x3000
BOOT_INFO_END = 0x7000
ZERO_PAGE = 0x7000
STACK_PAGE = 0xF000
STACK_TOP = STACK_PAGE + PAGE_SIZE
GDT_ADDRESS = 0x10000
LINUX_GDT_ADDRESS = 0x10080
PML4_ADDRESS = 0x11000
PDPT_ADDRESS = 0x12000
PD_ADDRESS = 0x13000  # first of up to four page directories
CMDLINE_ADDRESS = 0x20000
CMDLINE_MAX = 0x10000  # bytes, including the terminating NUL
LOW_BOOT_END = 0x30000  # everything below is ours during a direct boot
ACPI_AREA_ADDRESS = 0xE0000
ACPI_AREA_SIZE = 0x4000  # the RSDP and every table (boot/acpi.py checks they fit)
MPTABLE_ADDRESS = 0xF0000
MPTABLE_SIZE = 0x800  # floating pointer and configuration table for 254 CPUs would not fit; 64 do
TABLE_WINDOW = (0xE0000, 0x100000)  # where the legacy scans for the RSDP and the MP floating pointer look

# Reserved ranges a kernel image booted with a fixed layout may not overwrite: (start, end, what).
BOOT_AREAS: tuple[tuple[int, int, str], ...] = (
    (0, LOW_BOOT_END, "the boot pages below 0x30000"),
)

# GDT selectors of the vmd GDT (vmd loadfile_elf.c push_gdt)
SEL_CODE32 = 0x08
SEL_DATA = 0x10
SEL_CODE64 = 0x18
# Linux boot protocol (Documentation/arch/x86/boot.rst, "32-bit/64-bit boot protocol"): __BOOT_CS, __BOOT_DS
LINUX_SEL_CODE = 0x10
LINUX_SEL_DATA = 0x18


class BadImage(Exception):
    """A kernel or firmware file that cannot be booted; str() is the reason (load_kernel adds the path)."""


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def align_down(value: int, alignment: int) -> int:
    return value & ~(alignment - 1)


# -- destination checks ------------------------------------------------------------------------------

def check_destination(mem: GuestMemory, address: int, size: int, what: str,
                      areas: tuple[tuple[int, int, str], ...] = BOOT_AREAS) -> None:
    """Refuse a load of size bytes at address outside RAM or over the fixed boot areas."""
    if size == 0:
        return
    if address < 0 or size < 0 or not mem.contains(address, size):
        raise BadImage(f"{what} at {address:#x}-{address + size:#x} is outside guest memory"
                       f" ({mem.size >> 20} MiB)")
    for start, end, name in areas:
        if address < end and start < address + size:
            raise BadImage(f"{what} at {address:#x}-{address + size:#x} overlaps {name}")


# -- placement around what the kernel occupies ---------------------------------------------------------

Ranges = list[tuple[int, int]]  # [start, end) of guest-physical memory


def find_free(occupied: Ranges, size: int, alignment: int, windows: Ranges, prefer: int | None = None) -> int | None:
    """The preferred address when [prefer, prefer+size) is free, else the lowest aligned address in one of
    the windows where size bytes clash with no occupied range; None when there is none."""

    def clash(address: int) -> tuple[int, int] | None:
        return next(((s, e) for s, e in occupied if s < address + size and address < e), None)

    if prefer is not None and clash(prefer) is None:
        return prefer
    for low, high in windows:
        address = align_up(low, alignment)
        while address + size <= high:
            hit = clash(address)
            if hit is None:
                return address
            address = align_up(hit[1], alignment)
    return None


def place_tables(occupied: Ranges) -> tuple[int, int]:
    """Addresses for the ACPI area (RSDP first) and the MP table: vmd's usual ones when the kernel leaves
    them free, else room it leaves in 0xE0000-0xFFFFF. Returns (acpi address, MP table address)."""
    acpi = find_free(occupied, ACPI_AREA_SIZE, 64, [TABLE_WINDOW], prefer=ACPI_AREA_ADDRESS)
    if acpi is None:
        raise BadImage("the kernel leaves no room for the ACPI tables between 0xE0000 and 0x100000")
    mptable = find_free([*occupied, (acpi, acpi + ACPI_AREA_SIZE)], MPTABLE_SIZE, 16, [TABLE_WINDOW],
                        prefer=MPTABLE_ADDRESS)
    if mptable is None:
        raise BadImage("the kernel leaves no room for the MP table between 0xE0000 and 0x100000")
    return acpi, mptable


@dataclass
class BootArea:
    """Where a direct boot's own structures go: vmd's fixed pages (the defaults), or a block of free memory
    for a Multiboot kernel that covers them."""

    info_start: int = BOOT_INFO_START
    info_end: int = BOOT_INFO_END
    stack_top: int = STACK_TOP
    gdt: int = GDT_ADDRESS
    cmdline: int = CMDLINE_ADDRESS


BOOT_AREA_INFO_SIZE = BOOT_INFO_END - BOOT_INFO_START


def place_boot_area(mem: GuestMemory, occupied: Ranges, cmdline_size: int) -> BootArea:
    """vmd's fixed boot pages if the kernel leaves them free; else one block, in free RAM below the PCI
    hole, holding the boot information, a stack page, the GDT and the command line."""
    fixed = BootArea()
    if all(end <= BOOT_INFO_START or LOW_BOOT_END <= start for start, end in occupied):
        return fixed
    cmdline_room = align_up(cmdline_size + 1, 16)
    size = BOOT_AREA_INFO_SIZE + PAGE_SIZE + PAGE_SIZE + cmdline_room  # info, stack, GDT page, command line
    windows = [(PAGE_SIZE, 0x9F000), (0x100000, mem.low_ram_end)]
    base = find_free(occupied, size, PAGE_SIZE, windows)
    if base is None:
        raise BadImage(f"the kernel leaves no room in guest memory ({mem.size >> 20} MiB) for its boot information")
    stack_page = base + BOOT_AREA_INFO_SIZE
    return BootArea(info_start=base, info_end=stack_page, stack_top=stack_page + PAGE_SIZE,
                    gdt=stack_page + PAGE_SIZE, cmdline=stack_page + 2 * PAGE_SIZE)


def low_ram_top(mem: GuestMemory) -> int:
    """The end of the RAM that starts at 1 MiB (below the PCI hole)."""
    return mem.low_ram_end


# -- GDT (Intel SDM vol. 3, 3.4.5 segment descriptors) ----------------------------------------------

def gdt_entry(base: int, limit: int, access: int, flags: int) -> int:
    """An 8-byte segment descriptor. access: P/DPL/S/type byte; flags: G, D/B, L, AVL nibble."""
    return ((limit & 0xFFFF)
            | (base & 0xFF_FFFF) << 16
            | (access & 0xFF) << 40
            | ((limit >> 16) & 0xF) << 48
            | (flags & 0xF) << 52
            | ((base >> 24) & 0xFF) << 56)


CODE32_DESCRIPTOR = gdt_entry(0, 0xFFFFF, 0x9B, 0xC)  # present, execute/read, accessed; G=1 D=1
DATA_DESCRIPTOR = gdt_entry(0, 0xFFFFF, 0x93, 0xC)  # present, read/write, accessed; G=1 B=1
CODE64_DESCRIPTOR = gdt_entry(0, 0xFFFFF, 0x9B, 0xA)  # present, execute/read, accessed; G=1 L=1


def write_gdt(mem: GuestMemory, address: int = GDT_ADDRESS) -> tuple[int, int]:
    """The vmd GDT (at 0x10000): null, 0x08 code32, 0x10 data, 0x18 code64. Returns (base, limit)."""
    entries = (0, CODE32_DESCRIPTOR, DATA_DESCRIPTOR, CODE64_DESCRIPTOR)
    mem.write(address, struct.pack("<4Q", *entries))
    return address, len(entries) * 8 - 1


def write_linux_gdt(mem: GuestMemory, long_mode: bool) -> tuple[int, int]:
    """A GDT with __BOOT_CS at 0x10 and __BOOT_DS at 0x18, as boot.rst asks. Returns (base, limit)."""
    code = CODE64_DESCRIPTOR if long_mode else CODE32_DESCRIPTOR
    entries = (0, 0, code, DATA_DESCRIPTOR)
    mem.write(LINUX_GDT_ADDRESS, struct.pack("<4Q", *entries))
    return LINUX_GDT_ADDRESS, len(entries) * 8 - 1


# -- identity page tables (Intel SDM vol. 3, 4.5 4-level paging) ------------------------------------

PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_PS = 1 << 7  # 2 MiB page in a page-directory entry


def write_identity_page_tables(mem: GuestMemory, gib: int = 1) -> int:
    """Identity-map the first gib GiB (1 to 4) with 2 MiB pages. Returns CR3 (the PML4 address).

    vmd maps 1 GiB for OpenBSD kernels (push_pt_64); Linux and other 64-bit entries get 4 GiB so the
    kernel, initrd and the APIC MMIO below 4 GiB are all reachable.
    """
    if not 1 <= gib <= 4:
        raise ValueError("identity map covers 1 to 4 GiB")
    mem.write(PML4_ADDRESS, struct.pack("<Q", PDPT_ADDRESS | PTE_PRESENT | PTE_WRITE) + bytes(PAGE_SIZE - 8))
    pdpt = [PD_ADDRESS + i * PAGE_SIZE | PTE_PRESENT | PTE_WRITE for i in range(gib)]
    mem.write(PDPT_ADDRESS, struct.pack(f"<{gib}Q", *pdpt) + bytes(PAGE_SIZE - 8 * gib))
    for i in range(gib):
        base = i * GiB
        pd = [base + (j << 21) | PTE_PRESENT | PTE_WRITE | PTE_PS for j in range(512)]
        mem.write(PD_ADDRESS + i * PAGE_SIZE, struct.pack("<512Q", *pd))
    return PML4_ADDRESS


PDE_4M_PAGES = 1024


def write_pse_page_directory(mem: GuestMemory) -> int:
    """A 32-bit page directory at 0x12000 identity-mapping 4 GiB with 4 MiB pages (CR4.PSE), as vmd's
    push_pt_32 writes for i386 kernels. Returns CR3."""
    entries = [(i << 22) | PTE_PRESENT | PTE_WRITE | PTE_PS for i in range(PDE_4M_PAGES)]
    mem.write(PDPT_ADDRESS, struct.pack(f"<{PDE_4M_PAGES}I", *entries))
    return PDPT_ADDRESS


# -- e820 (ACPI 6.4, 15.1 INT 15H E820H) -------------------------------------------------------------

# addr, size, type: 20 bytes, as in boot_params.e820_table and OpenBSD's bios_memmap_t
E820_ENTRY = struct.Struct("<QQI")


def pack_e820(entries: Iterable[E820Entry]) -> bytes:
    return b"".join(E820_ENTRY.pack(e.address, e.size, e.type) for e in entries)


def e820_reserve(entries: list[E820Entry], address: int, size: int) -> list[E820Entry]:
    """A copy of entries with [address, address+size) carved out of RAM and reported reserved."""
    end = address + size
    result: list[E820Entry] = []
    for entry in entries:
        if entry.type != E820_RAM or entry.end <= address or end <= entry.address:
            result.append(entry)
            continue
        if entry.address < address:
            result.append(E820Entry(entry.address, address - entry.address, E820_RAM))
        lo, hi = max(entry.address, address), min(entry.end, end)
        result.append(E820Entry(lo, hi - lo, E820_RESERVED))
        if end < entry.end:
            result.append(E820Entry(end, entry.end - end, E820_RAM))
    return result


# -- bump allocator for the boot information area ----------------------------------------------------

class BootInfoArea:
    """Hands out 8-byte aligned pieces of [BOOT_INFO_START, BOOT_INFO_END), zeroing it first."""

    def __init__(self, mem: GuestMemory, start: int = BOOT_INFO_START, end: int = BOOT_INFO_END) -> None:
        self._mem = mem
        self._next = start
        self._end = end
        mem.write(start, bytes(end - start))

    def put(self, data: bytes, alignment: int = 8) -> int:
        address = align_up(self._next, alignment)
        if address + len(data) > self._end:
            raise BadImage("boot information does not fit in the boot information area")
        self._mem.write(address, data)
        self._next = address + len(data)
        return address


def encode_cmdline(cmdline: str, limit: int = CMDLINE_MAX - 1) -> bytes:
    """The command line as the kernel gets it, without the NUL; refused when it holds one or is too long."""
    data = cmdline.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise BadImage("the kernel command line contains a NUL byte")
    if len(data) > min(limit, CMDLINE_MAX - 1):
        raise BadImage(f"command line too long ({len(data)} bytes, at most {min(limit, CMDLINE_MAX - 1)})")
    return data


def write_cmdline(mem: GuestMemory, cmdline: str, limit: int = CMDLINE_MAX - 1,
                  address: int = CMDLINE_ADDRESS) -> tuple[int, int]:
    """Write the NUL-terminated command line (at 0x20000). Returns (address, length without the NUL)."""
    data = encode_cmdline(cmdline, limit)
    mem.write(address, data + b"\0")
    return address, len(data)


# -- Intel MultiProcessor Specification 1.4 ----------------------------------------------------------

# table 4-1: signature, config table pointer, length (16-byte units), spec rev, checksum, feature bytes 1-5
MP_FLOATING = struct.Struct("<4sIBBBB4s")
MP_HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")  # table 4-2: configuration table header (44 bytes)
MP_PROCESSOR = struct.Struct("<BBBBII8s")  # table 4-4 (20 bytes)
MP_BUS = struct.Struct("<BB6s")  # table 4-8
MP_IOAPIC = struct.Struct("<BBBBI")  # table 4-10
MP_INTERRUPT = struct.Struct("<BBHBBBB")  # tables 4-12 (I/O interrupt) and 4-14 (local interrupt)

MP_SPEC_REV = 4  # 1.4
MP_ENTRY_PROCESSOR, MP_ENTRY_BUS, MP_ENTRY_IOAPIC, MP_ENTRY_IOINT, MP_ENTRY_LINT = range(5)
MP_INT, MP_NMI, MP_SMI, MP_EXTINT = range(4)  # table 4-13 interrupt types
MP_CPU_ENABLED, MP_CPU_BSP = 1, 2
MP_LAPIC_VERSION = 0x14  # KVM's local APIC version register
MP_IOAPIC_VERSION = 0x11
MP_CPU_SIGNATURE = 0x0600  # family 6
MP_CPU_FEATURES = (1 << 0) | (1 << 9)  # CPUID.1:EDX FPU, APIC
MP_PCI_BUS, MP_ISA_BUS = 0, 1
MP_FLAGS_LEVEL_HIGH = 0x0D


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def write_mptable(mem: GuestMemory, vcpus: int, irq0_pin: int = 2,
                  pci_routes: Iterable[tuple[int, int, int]] = (), level_irqs: Iterable[int] = (),
                  address: int = MPTABLE_ADDRESS) -> None:
    """Write an MP spec 1.4 floating pointer at address (0xF0000; 16-byte aligned, in 0xE0000-0xFFFFF where
    the spec's scan finds it) and the configuration table right after it, in at most MPTABLE_SIZE bytes.

    One processor entry per vCPU (APIC ids 0..vcpus-1, BSP 0), buses PCI 0 and ISA 1, one I/O APIC
    (id = vcpus, 0xFEC00000), ISA IRQ 0-15 to I/O APIC pins (IRQ 0 to irq0_pin, IRQ 2 skipped, others
    identity), ExtINT on LINT0 and NMI on LINT1 of every local APIC.

    irq0_pin is 2 as on PCs (QEMU routes GSI 0 to I/O APIC pin 2); a machine that keeps KVM's default
    GSI routing (GSI n -> pin n) must pass 0. pci_routes: (device, INTx pin 0-3 for A-D, I/O APIC pin).
    level_irqs: ISA IRQs that are level-triggered and active high (the ACPI SCI, IRQ 9), as the MADT's
    interrupt source overrides say; the others conform to the ISA bus (edge, active high).
    """
    level = set(level_irqs)
    if not 1 <= vcpus <= 254:
        raise ValueError("the MP table holds 1 to 254 processors")
    ioapic_id = vcpus
    entries: list[bytes] = []
    for apic_id in range(vcpus):
        flags = MP_CPU_ENABLED | (MP_CPU_BSP if apic_id == 0 else 0)
        entries.append(MP_PROCESSOR.pack(MP_ENTRY_PROCESSOR, apic_id, MP_LAPIC_VERSION, flags,
                                         MP_CPU_SIGNATURE, MP_CPU_FEATURES, bytes(8)))
    entries.append(MP_BUS.pack(MP_ENTRY_BUS, MP_PCI_BUS, b"PCI   "))
    entries.append(MP_BUS.pack(MP_ENTRY_BUS, MP_ISA_BUS, b"ISA   "))
    entries.append(MP_IOAPIC.pack(MP_ENTRY_IOAPIC, ioapic_id, MP_IOAPIC_VERSION, 1, IOAPIC_ADDRESS))
    for irq in range(16):
        if irq == 2:
            continue  # the cascade: IRQ 2 never reaches the I/O APIC
        pin = irq0_pin if irq == 0 else irq
        # Flags (MP spec 1.4, table 4-12): 0 conforms to the bus; 0x0D is active high (polarity 01b),
        # level triggered (trigger mode 11b)
        flags = MP_FLAGS_LEVEL_HIGH if irq in level else 0
        entries.append(MP_INTERRUPT.pack(MP_ENTRY_IOINT, MP_INT, flags, MP_ISA_BUS, irq, ioapic_id, pin))
    for device, intx, pin in pci_routes:
        # PCI source bus IRQ (MP spec 1.4, D.3): bits 6:2 device number, bits 1:0 INTA#-INTD#.
        # Flags 0x0F: active low (polarity 11b), level triggered (trigger mode 11b).
        entries.append(MP_INTERRUPT.pack(MP_ENTRY_IOINT, MP_INT, 0x0F, MP_PCI_BUS,
                                         (device & 0x1F) << 2 | (intx & 3), ioapic_id, pin))
    entries.append(MP_INTERRUPT.pack(MP_ENTRY_LINT, MP_EXTINT, 0, MP_ISA_BUS, 0, 0xFF, 0))
    entries.append(MP_INTERRUPT.pack(MP_ENTRY_LINT, MP_NMI, 0, MP_ISA_BUS, 0, 0xFF, 1))

    body = b"".join(entries)
    if address % 16 or not TABLE_WINDOW[0] <= address < TABLE_WINDOW[1]:
        raise ValueError(f"MP floating pointer at {address:#x}: not 16-byte aligned in 0xE0000-0xFFFFF")
    table_address = address + MP_FLOATING.size
    length = MP_HEADER.size + len(body)
    if MP_FLOATING.size + length > MPTABLE_SIZE:
        raise ValueError(f"MP table for {vcpus} CPUs does not fit in {MPTABLE_SIZE} bytes")
    header = MP_HEADER.pack(b"PCMP", length, MP_SPEC_REV, 0, b"OpenBSD ", b"vmd         ", 0, 0,
                            len(entries), LAPIC_ADDRESS, 0, 0, 0)
    table = bytearray(header + body)
    table[7] = _checksum(bytes(table))
    floating = bytearray(MP_FLOATING.pack(b"_MP_", table_address, 1, MP_SPEC_REV, 0, 0, bytes(4)))
    floating[10] = _checksum(bytes(floating))
    mem.write(address, bytes(floating) + bytes(table))
