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
    0x11000            PML4, 0x12000 PDPT, 0x13000 - 0x16FFF up to four page directories
    0x20000 - 0x2FFFF  kernel command line
    0xE0000 - 0xEFFFF  ACPI RSDP (at 0xE0000) and tables (boot/acpi.py, written by the machine)
    0xF0000 - 0xFFFFF  MP floating pointer and configuration table (written by the machine)

Kernels, initrds and modules must stay clear of [0, LOW_BOOT_END) and of the ACPI and MP table areas.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

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
MPTABLE_ADDRESS = 0xF0000
MPTABLE_END = 0x100000

# Reserved ranges a kernel image may not overwrite: (start, end, what).
BOOT_AREAS: tuple[tuple[int, int, str], ...] = (
    (0, LOW_BOOT_END, "the boot pages below 0x30000"),
    (ACPI_AREA_ADDRESS, MPTABLE_ADDRESS, "the ACPI table area at 0xE0000"),
    (MPTABLE_ADDRESS, MPTABLE_END, "the MP table area at 0xF0000"),
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

def check_destination(mem: GuestMemory, address: int, size: int, what: str) -> None:
    """Refuse a load of size bytes at address outside RAM or over the fixed boot areas."""
    if size == 0:
        return
    if address < 0 or size < 0 or not mem.contains(address, size):
        raise BadImage(f"{what} at {address:#x}-{address + size:#x} is outside guest memory"
                       f" ({mem.size >> 20} MiB)")
    for start, end, name in BOOT_AREAS:
        if address < end and start < address + size:
            raise BadImage(f"{what} at {address:#x}-{address + size:#x} overlaps {name}")


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


def write_gdt(mem: GuestMemory) -> tuple[int, int]:
    """The vmd GDT at 0x10000: null, 0x08 code32, 0x10 data, 0x18 code64. Returns (base, limit)."""
    entries = (0, CODE32_DESCRIPTOR, DATA_DESCRIPTOR, CODE64_DESCRIPTOR)
    mem.write(GDT_ADDRESS, struct.pack("<4Q", *entries))
    return GDT_ADDRESS, len(entries) * 8 - 1


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


def write_cmdline(mem: GuestMemory, cmdline: str, limit: int = CMDLINE_MAX - 1) -> tuple[int, int]:
    """Write the NUL-terminated command line at 0x20000. Returns (address, length without the NUL)."""
    data = cmdline.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise BadImage("the kernel command line contains a NUL byte")
    if len(data) > min(limit, CMDLINE_MAX - 1):
        raise BadImage(f"command line too long ({len(data)} bytes, at most {min(limit, CMDLINE_MAX - 1)})")
    mem.write(CMDLINE_ADDRESS, data + b"\0")
    return CMDLINE_ADDRESS, len(data)


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
                  pci_routes: Iterable[tuple[int, int, int]] = (), level_irqs: Iterable[int] = ()) -> None:
    """Write an MP spec 1.4 floating pointer at 0xF0000 and the configuration table right after it.

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
    table_address = MPTABLE_ADDRESS + MP_FLOATING.size
    length = MP_HEADER.size + len(body)
    if table_address + length > MPTABLE_END:
        raise ValueError("MP table does not fit below 1 MiB")
    header = MP_HEADER.pack(b"PCMP", length, MP_SPEC_REV, 0, b"OpenBSD ", b"vmd         ", 0, 0,
                            len(entries), LAPIC_ADDRESS, 0, 0, 0)
    table = bytearray(header + body)
    table[7] = _checksum(bytes(table))
    floating = bytearray(MP_FLOATING.pack(b"_MP_", table_address, 1, MP_SPEC_REV, 0, 0, bytes(4)))
    floating[10] = _checksum(bytes(floating))
    mem.write(MPTABLE_ADDRESS, bytes(floating) + bytes(table))
