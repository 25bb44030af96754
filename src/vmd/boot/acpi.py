"""ACPI tables for the vmd platform: RSDP, RSDT, XSDT, FADT, FACS, DSDT and MADT.

References are to the ACPI Specification 6.4, chapter 5 (ACPI software programming model). The
tables describe what docs/platform.md lists: the fixed-hardware PM registers of devices/acpi_pm.py
(not hardware-reduced), the SCI on ISA IRQ 9 (level, active high), one local APIC per vCPU, the
I/O APIC at 0xFEC00000 with id = number of vCPUs, ISA IRQ 0 on GSI 2, and the PCI reset register
0xCF9. The DSDT holds the ``\\_S5`` sleep package (the soft-off SLP_TYP value) and ``\\_SB.PCI0``, the
PCI root bridge with its resources and a _PRT giving each slot's INTx GSI (the routes of the MP table).

Two ways to hand them to a guest:

* direct boot: ``write_tables`` puts the RSDP where the boot loader placed the ACPI area (0xE0000 unless
  the kernel is there; always in 0xE0000-0xFFFFF, found by the legacy scan, 5.2.5.1) and the other tables
  after it. The boot loaders also pass the RSDP address (PVH start_info.rsdp_paddr, Linux
  boot_params.acpi_rsdp_addr).
* BIOS boot: ``fw_cfg_files`` gives SeaBIOS the QEMU fw_cfg files "etc/acpi/rsdp", "etc/acpi/tables" and
  "etc/table-loader", a list of linker/loader commands (QEMU hw/acpi/bios-linker-loader.c) that make
  SeaBIOS place the blobs, patch the pointers between them and fix the checksums.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from vmd.acpi_layout import (
    PM1_CNT_LEN,
    PM1_CNT_OFFSET,
    PM1_EVT_LEN,
    PM1_EVT_OFFSET,
    PM_BASE,
    PM_TMR_LEN,
    PM_TMR_OFFSET,
    SCI_IRQ,
    SLP_TYP_S5,
)
from vmd.boot.x86 import ACPI_AREA_ADDRESS, ACPI_AREA_SIZE
from vmd.memory import IOAPIC_ADDRESS, LAPIC_ADDRESS, PCI_MMIO_END, PCI_MMIO_START, GuestMemory

TABLES_OFFSET = 0x40  # from the RSDP: 64-byte aligned, as the FACS must be (5.2.10)

OEM_ID = b"VMD   "
OEM_TABLE_ID = b"VMD     "
OEM_REVISION = 1
CREATOR_ID = b"VMD "
CREATOR_REVISION = 1

PCI_CONFIG_PORT = 0xCF8  # devices/pci.py: configuration mechanism #1, 0xCF8-0xCFF
RESET_PORT = 0xCF9  # devices/pci.py: PIIX reset control register
RESET_VALUE = 0x06  # RST_CPU | SYS_RST: hard reset
RTC_CENTURY_INDEX = 0x32  # devices/rtc.py keeps the century in CMOS byte 0x32

# fw_cfg file names and linker/loader commands (QEMU hw/acpi/bios-linker-loader.c)
FW_CFG_RSDP = "etc/acpi/rsdp"
FW_CFG_TABLES = "etc/acpi/tables"
FW_CFG_LOADER = "etc/table-loader"
LOADER_FILENAME_SIZE = 56
LOADER_ENTRY_SIZE = 128
LOADER_ALLOCATE, LOADER_ADD_POINTER, LOADER_ADD_CHECKSUM = 1, 2, 3
LOADER_ZONE_HIGH, LOADER_ZONE_FSEG = 1, 2


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes data sum to zero (mod 256)."""
    return -sum(data) & 0xFF


# -- 5.2.3.2 Generic Address Structure -----------------------------------------------------------------

GAS = struct.Struct("<BBBBQ")
GAS_SYSTEM_IO = 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3


def gas_io(port: int, bits: int, access: int) -> bytes:
    return GAS.pack(GAS_SYSTEM_IO, bits, 0, access, port)


# -- 5.2.6 System Description Table Header --------------------------------------------------------------

SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")  # 36 bytes
SDT_CHECKSUM_OFFSET = 9


def sdt(signature: bytes, revision: int, body: bytes) -> bytearray:
    """A description table: the 36-byte header (length and checksum filled in) and body."""
    table = bytearray(SDT_HEADER.pack(signature, SDT_HEADER.size + len(body), revision, 0, OEM_ID,
                                      OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION) + body)
    table[SDT_CHECKSUM_OFFSET] = checksum(table)
    return table


# -- 5.2.5.3 Root System Description Pointer ---------------------------------------------------------

RSDP = struct.Struct("<8sB6sBIIQB3s")  # 36 bytes (revision 2)
RSDP_CHECKSUM_OFFSET = 8  # over the first 20 bytes (the ACPI 1.0 structure)
RSDP_RSDT_OFFSET = 16
RSDP_XSDT_OFFSET = 24
RSDP_EXT_CHECKSUM_OFFSET = 32  # over all 36 bytes
RSDP_V1_LENGTH = 20


def rsdp(rsdt_address: int, xsdt_address: int) -> bytes:
    data = bytearray(RSDP.pack(b"RSD PTR ", 0, OEM_ID, 2, rsdt_address, RSDP.size, xsdt_address, 0, bytes(3)))
    data[RSDP_CHECKSUM_OFFSET] = checksum(data[:RSDP_V1_LENGTH])
    data[RSDP_EXT_CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)


# -- 5.2.10 Firmware ACPI Control Structure ----------------------------------------------------------

FACS = struct.Struct("<4sIIIIIQB3sI24s")  # 64 bytes, no checksum


def facs() -> bytes:
    # hardware signature, waking vectors (none: no S3), global lock (free), flags 0, version 2
    return FACS.pack(b"FACS", FACS.size, 0, 0, 0, 0, 0, 2, bytes(3), 0, bytes(24))


# -- DSDT: Definition Block with AML (5.2.11.1; chapter 20, ACPI Machine Language) -------------------

AML_ZERO = 0x00
AML_ONE = 0x01
AML_NAME = 0x08
AML_BYTE_PREFIX = 0x0A
AML_WORD_PREFIX = 0x0B
AML_DWORD_PREFIX = 0x0C
AML_QWORD_PREFIX = 0x0E
AML_SCOPE = 0x10
AML_BUFFER = 0x11
AML_PACKAGE = 0x12
AML_EXT_PREFIX = 0x5B
AML_DEVICE = 0x82  # after AML_EXT_PREFIX
AML_ROOT_CHAR = 0x5C  # '\'


def aml_pkg_length(content_length: int) -> bytes:
    """PkgLength (20.2.4): the encoded length counts itself and what follows it."""
    for extra in range(4):
        total = content_length + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra > 0 and total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError("AML package too long")


def aml_integer(value: int) -> bytes:
    """ComputationalData for an integer (20.2.3): ZeroOp, OneOp or the shortest Byte/Word/DWord/QWord."""
    if value == 0:
        return bytes([AML_ZERO])
    if value == 1:
        return bytes([AML_ONE])
    for prefix, size in ((AML_BYTE_PREFIX, 1), (AML_WORD_PREFIX, 2), (AML_DWORD_PREFIX, 4), (AML_QWORD_PREFIX, 8)):
        if 0 <= value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise ValueError(f"AML integer out of range: {value}")


def aml_nameseg(name: str) -> bytes:
    """NameSeg (20.2.2): exactly four characters, padded with '_'."""
    data = name.encode("ascii").ljust(4, b"_")
    if len(data) != 4:
        raise ValueError(f"AML NameSeg is at most 4 characters: {name}")
    return data


def aml_name(name: str, data: bytes) -> bytes:
    """DefName (20.2.5.1): Name(name, data); a leading backslash makes the path absolute."""
    path = bytes([AML_ROOT_CHAR]) + aml_nameseg(name[1:]) if name.startswith("\\") else aml_nameseg(name)
    return bytes([AML_NAME]) + path + data


def aml_package(elements: list[bytes]) -> bytes:
    """DefPackage (20.2.5.4) of already-encoded elements."""
    if len(elements) > 0xFF:
        raise ValueError("AML Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([AML_PACKAGE]) + aml_pkg_length(len(body)) + body


def aml_buffer(data: bytes) -> bytes:
    """DefBuffer (20.2.5.4): BufferOp PkgLength BufferSize ByteList."""
    body = aml_integer(len(data)) + data
    return bytes([AML_BUFFER]) + aml_pkg_length(len(body)) + body


def aml_scope(path: str, body: bytes) -> bytes:
    """DefScope (20.2.5.1) over an absolute one-segment path such as \\_SB."""
    name = bytes([AML_ROOT_CHAR]) + aml_nameseg(path.lstrip("\\"))
    return bytes([AML_SCOPE]) + aml_pkg_length(len(name) + len(body)) + name + body


def aml_device(name: str, body: bytes) -> bytes:
    """DefDevice (20.2.5.2)."""
    seg = aml_nameseg(name)
    return bytes([AML_EXT_PREFIX, AML_DEVICE]) + aml_pkg_length(len(seg) + len(body)) + seg + body


def eisa_id(text: str) -> int:
    """EisaId("PNP0A03") as the 32-bit value AML stores (19.6.35): three 5-bit letters and a 16-bit
    product number, big-endian, read as a little-endian DWord."""
    letters = [ord(c) - 0x40 for c in text[:3]]
    vendor = letters[0] << 10 | letters[1] << 5 | letters[2]
    product = int(text[3:], 16)
    return int.from_bytes(vendor.to_bytes(2, "big") + product.to_bytes(2, "big"), "little")


# Resource descriptors (6.4.2 small, 6.4.3 large resource data types)
RES_IO = 0x47  # 6.4.2.5 I/O port descriptor, 8 bytes
RES_END = 0x79  # 6.4.2.9 end tag
RES_DWORD_ADDRESS = 0x87  # 6.4.3.5.2
RES_WORD_ADDRESS = 0x88  # 6.4.3.5.3
ADDRESS_MEMORY, ADDRESS_IO, ADDRESS_BUS = 0, 1, 2
ADDRESS_FIXED = 0x0C  # general flags: _MIF and _MAF (minimum and maximum fixed); producer, positive decode


def res_io(port: int, length: int) -> bytes:
    return struct.pack("<BBHHBB", RES_IO, 1, port, port, 1, length)  # 16-bit decode


def res_word(kind: int, specific: int, minimum: int, maximum: int) -> bytes:
    return struct.pack("<BHBBBHHHHH", RES_WORD_ADDRESS, 13, kind, ADDRESS_FIXED, specific,
                       0, minimum, maximum, 0, maximum - minimum + 1)


def res_dword_memory(minimum: int, maximum: int) -> bytes:
    return struct.pack("<BHBBBIIIII", RES_DWORD_ADDRESS, 23, ADDRESS_MEMORY, ADDRESS_FIXED, 1,  # read-write
                       0, minimum, maximum, 0, maximum - minimum + 1)


def pci_host_crs() -> bytes:
    """The root bridge's _CRS (6.2.2): bus 0-255, the config ports, all other I/O ports, the MMIO window."""
    return b"".join((
        res_word(ADDRESS_BUS, 0, 0, 0xFF),
        res_io(PCI_CONFIG_PORT, 8),
        res_word(ADDRESS_IO, 3, 0x0000, PCI_CONFIG_PORT - 1),  # type-specific 3: ISA and non-ISA ranges
        res_word(ADDRESS_IO, 3, PCI_CONFIG_PORT + 8, 0xFFFF),
        res_dword_memory(PCI_MMIO_START, PCI_MMIO_END - 1),
        bytes([RES_END, 0]),
    ))


def pci_prt(pci_routes: Iterable[tuple[int, int, int]]) -> bytes:
    """_PRT (6.2.13): for each (slot, INTx pin 0-3, GSI), Package{0xSSSSFFFF, pin, 0, GSI}: source 0
    means a fixed global system interrupt (level-triggered, active low, shareable)."""
    entries = [aml_package([aml_integer(slot << 16 | 0xFFFF), aml_integer(pin), aml_integer(0), aml_integer(gsi)])
               for slot, pin, gsi in pci_routes]
    return aml_package(entries)


def dsdt_aml(pci_routes: Iterable[tuple[int, int, int]] = ()) -> bytes:
    """\\_S5 (7.4.2.5: {PM1a SLP_TYP, PM1b SLP_TYP, reserved, reserved}) and \\_SB.PCI0, the PCI root
    bridge (PNP0A03, 6.1.5 _HID) with its resources and interrupt routing."""
    s5 = aml_name("\\_S5", aml_package([aml_integer(SLP_TYP_S5), aml_integer(SLP_TYP_S5),
                                         aml_integer(0), aml_integer(0)]))
    pci0 = aml_device("PCI0", b"".join((
        aml_name("_HID", bytes([AML_DWORD_PREFIX]) + eisa_id("PNP0A03").to_bytes(4, "little")),
        aml_name("_UID", aml_integer(0)),
        aml_name("_BBN", aml_integer(0)),
        aml_name("_CRS", aml_buffer(pci_host_crs())),
        aml_name("_PRT", pci_prt(pci_routes)),
    )))
    return s5 + aml_scope("\\_SB", pci0)


DSDT_REVISION = 2  # 64-bit AML integers


# -- 5.2.9 Fixed ACPI Description Table --------------------------------------------------------------

FADT_REVISION = 6
FADT_MINOR_REVISION = 4
FADT_LENGTH = 276
# FADT offsets (table 5.9)
FADT_FIRMWARE_CTRL = 36
FADT_DSDT = 40
FADT_SCI_INT = 46
FADT_SMI_CMD = 48
FADT_PM1A_EVT_BLK = 56
FADT_PM1A_CNT_BLK = 64
FADT_PM_TMR_BLK = 76
FADT_PM1_EVT_LEN = 88
FADT_PM1_CNT_LEN = 89
FADT_PM_TMR_LEN = 91
FADT_P_LVL2_LAT = 96
FADT_P_LVL3_LAT = 98
FADT_CENTURY = 108
FADT_IAPC_BOOT_ARCH = 109
FADT_FLAGS = 112
FADT_RESET_REG = 116
FADT_RESET_VALUE = 128
FADT_MINOR_VERSION = 131
FADT_X_FIRMWARE_CTRL = 132
FADT_X_DSDT = 140
FADT_X_PM1A_EVT_BLK = 148
FADT_X_PM1A_CNT_BLK = 172
FADT_X_PM_TMR_BLK = 208
# Fixed feature flags (table 5.10)
FADT_F_WBINVD = 1 << 0
FADT_F_PROC_C1 = 1 << 2
FADT_F_PWR_BUTTON = 1 << 4  # set: the power button is a control method device; clear: fixed feature
FADT_F_SLP_BUTTON = 1 << 5  # set: no fixed-feature sleep button
FADT_F_FIX_RTC = 1 << 6  # set: RTC wake status is not in the fixed register space
FADT_F_TMR_VAL_EXT = 1 << 8  # set: 32-bit PM timer; clear: 24-bit
FADT_F_RESET_REG_SUP = 1 << 10
FADT_F_HW_REDUCED_ACPI = 1 << 20
FADT_FLAGS_VALUE = FADT_F_WBINVD | FADT_F_PROC_C1 | FADT_F_SLP_BUTTON | FADT_F_FIX_RTC | FADT_F_RESET_REG_SUP
# IA-PC boot architecture flags (table 5.11)
BOOT_ARCH_LEGACY_DEVICES = 1 << 0  # ISA devices (COM1, RTC) that the DSDT does not list
BOOT_ARCH_8042 = 1 << 1  # clear: we only emulate the i8042 reset line, no keyboard controller
BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
BOOT_ARCH_VALUE = BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_VGA_NOT_PRESENT


def fadt(facs_address: int, dsdt_address: int, pm_base: int = PM_BASE, sci_irq: int = SCI_IRQ) -> bytearray:
    body = bytearray(FADT_LENGTH - SDT_HEADER.size)

    def put(offset: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, body, offset - SDT_HEADER.size, *values)

    def put_bytes(offset: int, data: bytes) -> None:
        body[offset - SDT_HEADER.size : offset - SDT_HEADER.size + len(data)] = data

    put(FADT_FIRMWARE_CTRL, "<I", facs_address)  # X_FIRMWARE_CTRL stays 0: only one may be set
    put(FADT_DSDT, "<I", dsdt_address)
    put(FADT_SCI_INT, "<H", sci_irq)
    put(FADT_SMI_CMD, "<I", 0)  # no SMI command port: always in ACPI mode (SCI_EN reads 1)
    put(FADT_PM1A_EVT_BLK, "<I", pm_base + PM1_EVT_OFFSET)
    put(FADT_PM1A_CNT_BLK, "<I", pm_base + PM1_CNT_OFFSET)
    put(FADT_PM_TMR_BLK, "<I", pm_base + PM_TMR_OFFSET)
    put(FADT_PM1_EVT_LEN, "<B", PM1_EVT_LEN)
    put(FADT_PM1_CNT_LEN, "<B", PM1_CNT_LEN)
    put(FADT_PM_TMR_LEN, "<B", PM_TMR_LEN)
    put(FADT_P_LVL2_LAT, "<H", 101)  # > 100: C2 not supported
    put(FADT_P_LVL3_LAT, "<H", 1001)  # > 1000: C3 not supported
    put(FADT_CENTURY, "<B", RTC_CENTURY_INDEX)
    put(FADT_IAPC_BOOT_ARCH, "<H", BOOT_ARCH_VALUE)
    put(FADT_FLAGS, "<I", FADT_FLAGS_VALUE)
    put_bytes(FADT_RESET_REG, gas_io(RESET_PORT, 8, ACCESS_BYTE))
    put(FADT_RESET_VALUE, "<B", RESET_VALUE)
    put(FADT_MINOR_VERSION, "<B", FADT_MINOR_REVISION)
    put(FADT_X_DSDT, "<Q", dsdt_address)
    put_bytes(FADT_X_PM1A_EVT_BLK, gas_io(pm_base + PM1_EVT_OFFSET, 8 * PM1_EVT_LEN, ACCESS_WORD))
    put_bytes(FADT_X_PM1A_CNT_BLK, gas_io(pm_base + PM1_CNT_OFFSET, 8 * PM1_CNT_LEN, ACCESS_WORD))
    put_bytes(FADT_X_PM_TMR_BLK, gas_io(pm_base + PM_TMR_OFFSET, 8 * PM_TMR_LEN, ACCESS_DWORD))
    return sdt(b"FACP", FADT_REVISION, bytes(body))


# -- 5.2.12 Multiple APIC Description Table ---------------------------------------------------------

MADT_REVISION = 5
MADT_PCAT_COMPAT = 1 << 0  # dual 8259 PICs present (table 5.20)
MADT_LOCAL_APIC = struct.Struct("<BBBBI")  # 5.2.12.2: type 0, length 8, processor UID, APIC id, flags
MADT_IO_APIC = struct.Struct("<BBBBII")  # 5.2.12.3: type 1, length 12, id, reserved, address, GSI base
MADT_ISO = struct.Struct("<BBBBIH")  # 5.2.12.5: type 2, length 10, bus 0 (ISA), source, GSI, flags
MADT_LAPIC_NMI = struct.Struct("<BBBHB")  # 5.2.12.7: type 4, length 6, processor UID, flags, LINT#
LAPIC_ENABLED = 1
# MPS INTI flags (table 5.26): polarity bits 1:0, trigger mode bits 3:2
MPS_ACTIVE_HIGH = 0b01
MPS_LEVEL = 0b11 << 2
MPS_CONFORMING = 0
SCI_FLAGS = MPS_ACTIVE_HIGH | MPS_LEVEL
ALL_PROCESSORS = 0xFF


def madt(vcpus: int, sci_irq: int = SCI_IRQ, irq0_gsi: int = 2) -> bytearray:
    body = bytearray(struct.pack("<II", LAPIC_ADDRESS, MADT_PCAT_COMPAT))
    for index in range(vcpus):
        body += MADT_LOCAL_APIC.pack(0, MADT_LOCAL_APIC.size, index, index, LAPIC_ENABLED)
    body += MADT_IO_APIC.pack(1, MADT_IO_APIC.size, vcpus, 0, IOAPIC_ADDRESS, 0)
    body += MADT_ISO.pack(2, MADT_ISO.size, 0, 0, irq0_gsi, MPS_CONFORMING)
    body += MADT_ISO.pack(2, MADT_ISO.size, 0, sci_irq, sci_irq, SCI_FLAGS)
    body += MADT_LAPIC_NMI.pack(4, MADT_LAPIC_NMI.size, ALL_PROCESSORS, MPS_CONFORMING, 1)  # LINT1 = NMI
    return sdt(b"APIC", MADT_REVISION, bytes(body))


# -- the set of tables -------------------------------------------------------------------------------

@dataclass
class AcpiTables:
    """The RSDP and one blob holding every other table.

    Pointers inside them are ``base`` + offset into the blob. ``pointers`` lists each pointer field
    (file name, offset, size) for the fw_cfg linker, ``checksums`` each (file name, checksum offset,
    start, length) range, and ``offsets`` where each table starts in the blob."""

    rsdp: bytes
    tables: bytes
    base: int
    offsets: dict[str, int]
    pointers: list[tuple[str, int, int]]
    checksums: list[tuple[str, int, int, int]]


def _align(blob: bytearray, alignment: int) -> int:
    blob += bytes(-len(blob) % alignment)
    return len(blob)


def build_tables(vcpus: int, base: int, pm_base: int = PM_BASE, sci_irq: int = SCI_IRQ,
                 pci_routes: Iterable[tuple[int, int, int]] = ()) -> AcpiTables:
    """Lay the tables out from address base (FACS first, 64-byte aligned; base must be too)."""
    if base % 64:
        raise ValueError("the ACPI tables must start 64-byte aligned (FACS)")
    if not 1 <= vcpus <= 254:
        raise ValueError("1 to 254 vCPUs")
    blob = bytearray()
    offsets: dict[str, int] = {}
    pointers: list[tuple[str, int, int]] = []
    checksums: list[tuple[str, int, int, int]] = []

    def add(name: str, table: bytes | bytearray, alignment: int = 8, summed: bool = True) -> int:
        offset = _align(blob, alignment)
        blob.extend(table)
        offsets[name] = offset
        if summed:
            checksums.append((FW_CFG_TABLES, offset + SDT_CHECKSUM_OFFSET, offset, len(table)))
        return offset

    add("FACS", facs(), alignment=64, summed=False)
    add("DSDT", sdt(b"DSDT", DSDT_REVISION, dsdt_aml(pci_routes)))
    fadt_at = add("FACP", fadt(base + offsets["FACS"], base + offsets["DSDT"], pm_base, sci_irq))
    pointers += [(FW_CFG_TABLES, fadt_at + FADT_FIRMWARE_CTRL, 4), (FW_CFG_TABLES, fadt_at + FADT_DSDT, 4),
                 (FW_CFG_TABLES, fadt_at + FADT_X_DSDT, 8)]
    add("APIC", madt(vcpus, sci_irq))
    listed = ("FACP", "APIC")
    rsdt_at = add("RSDT", sdt(b"RSDT", 1, b"".join(struct.pack("<I", base + offsets[n]) for n in listed)))
    pointers += [(FW_CFG_TABLES, rsdt_at + SDT_HEADER.size + 4 * i, 4) for i in range(len(listed))]
    xsdt_at = add("XSDT", sdt(b"XSDT", 1, b"".join(struct.pack("<Q", base + offsets[n]) for n in listed)))
    pointers += [(FW_CFG_TABLES, xsdt_at + SDT_HEADER.size + 8 * i, 8) for i in range(len(listed))]
    pointer = rsdp(base + rsdt_at, base + xsdt_at)
    pointers += [(FW_CFG_RSDP, RSDP_RSDT_OFFSET, 4), (FW_CFG_RSDP, RSDP_XSDT_OFFSET, 8)]
    checksums += [(FW_CFG_RSDP, RSDP_CHECKSUM_OFFSET, 0, RSDP_V1_LENGTH),
                  (FW_CFG_RSDP, RSDP_EXT_CHECKSUM_OFFSET, 0, RSDP.size)]
    return AcpiTables(pointer, bytes(blob), base, offsets, pointers, checksums)


def write_tables(mem: GuestMemory, vcpus: int, pci_routes: Iterable[tuple[int, int, int]] = (),
                 pm_base: int = PM_BASE, sci_irq: int = SCI_IRQ, address: int = ACPI_AREA_ADDRESS) -> int:
    """Direct boot: write the RSDP at address (the ACPI area the boot loader placed, ACPI_AREA_SIZE bytes)
    and the tables after it. Returns the RSDP address. pci_routes: (slot, INTx pin 0-3, GSI), as for
    write_mptable."""
    built = build_tables(vcpus, address + TABLES_OFFSET, pm_base, sci_irq, pci_routes)
    if TABLES_OFFSET + len(built.tables) > ACPI_AREA_SIZE:
        raise ValueError(f"the ACPI tables do not fit in {ACPI_AREA_SIZE} bytes")
    mem.write(address, bytes(ACPI_AREA_SIZE))
    mem.write(address, built.rsdp)
    mem.write(address + TABLES_OFFSET, built.tables)
    return address


# -- QEMU's BIOS linker/loader (hw/acpi/bios-linker-loader.c), executed by SeaBIOS src/fw/romfile_loader.c

def _loader_name(name: str) -> bytes:
    data = name.encode()
    if len(data) >= LOADER_FILENAME_SIZE:
        raise ValueError(f"fw_cfg file name too long: {name}")
    return data.ljust(LOADER_FILENAME_SIZE, b"\0")


def loader_allocate(name: str, alignment: int, zone: int) -> bytes:
    """ALLOCATE: copy file name into guest memory (zone HIGH or FSEG), aligned."""
    entry = struct.pack("<I", LOADER_ALLOCATE) + _loader_name(name) + struct.pack("<IB", alignment, zone)
    return entry.ljust(LOADER_ENTRY_SIZE, b"\0")


def loader_add_pointer(dest: str, src: str, offset: int, size: int) -> bytes:
    """ADD_POINTER: add the address where src was allocated to the size-byte integer at dest+offset."""
    entry = (struct.pack("<I", LOADER_ADD_POINTER) + _loader_name(dest) + _loader_name(src)
             + struct.pack("<IB", offset, size))
    return entry.ljust(LOADER_ENTRY_SIZE, b"\0")


def loader_add_checksum(name: str, offset: int, start: int, length: int) -> bytes:
    """ADD_CHECKSUM: subtract the byte sum of [start, start+length) from the byte at offset."""
    entry = struct.pack("<I", LOADER_ADD_CHECKSUM) + _loader_name(name) + struct.pack("<III", offset, start, length)
    return entry.ljust(LOADER_ENTRY_SIZE, b"\0")


def fw_cfg_files(vcpus: int, pci_routes: Iterable[tuple[int, int, int]] = (), pm_base: int = PM_BASE,
                 sci_irq: int = SCI_IRQ) -> dict[str, bytes]:
    """The fw_cfg files through which SeaBIOS installs our tables (as it does QEMU's).

    The blobs are built at base 0, so each pointer holds an offset into "etc/acpi/tables"; ADD_POINTER
    adds the blob's final address. The checksum bytes are zeroed: ADD_CHECKSUM then computes them
    after every pointer was patched."""
    built = build_tables(vcpus, 0, pm_base, sci_irq, pci_routes)
    files = {FW_CFG_RSDP: bytearray(built.rsdp), FW_CFG_TABLES: bytearray(built.tables)}
    for name, offset, _start, _length in built.checksums:
        files[name][offset] = 0
    commands = [loader_allocate(FW_CFG_RSDP, 16, LOADER_ZONE_FSEG),
                loader_allocate(FW_CFG_TABLES, 64, LOADER_ZONE_HIGH)]
    commands += [loader_add_pointer(dest, FW_CFG_TABLES, offset, size) for dest, offset, size in built.pointers]
    commands += [loader_add_checksum(*entry) for entry in built.checksums]
    return {FW_CFG_RSDP: bytes(files[FW_CFG_RSDP]), FW_CFG_TABLES: bytes(files[FW_CFG_TABLES]),
            FW_CFG_LOADER: b"".join(commands)}
