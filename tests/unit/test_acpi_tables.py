"""ACPI tables (boot/acpi.py): layout, checksums, AML bytes, the fw_cfg linker/loader, boot plumbing."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmd.boot import acpi, load_kernel
from vmd.boot.state import BootOptions
from vmd.boot.x86 import (
    ACPI_AREA_ADDRESS,
    ACPI_AREA_SIZE,
    MP_FLAGS_LEVEL_HIGH,
    MPTABLE_ADDRESS,
    MPTABLE_SIZE,
    BadImage,
    place_tables,
    write_mptable,
)
from vmd.memory import GuestMemory, MiB

from .test_boot_elf import PT_LOAD, build_elf
from .test_boot_linux import build_bzimage

ROUTES = [(1, 0, 10), (2, 0, 11)]


@pytest.fixture(scope="module")
def mem() -> Iterator[GuestMemory]:
    memory = GuestMemory(64 * MiB)
    yield memory
    memory.close()


def tables_by_signature(data: bytes, base: int, rsdp: bytes) -> dict[bytes, bytes]:
    """Follow RSDP -> XSDT -> tables in a blob laid out from base."""
    def at(address: int) -> bytes:
        offset = address - base
        length = struct.unpack_from("<I", data, offset + 4)[0]
        return data[offset : offset + length]

    xsdt = at(struct.unpack_from("<Q", rsdp, 24)[0])
    found = {b"XSDT": xsdt, b"RSDT": at(struct.unpack_from("<I", rsdp, 16)[0])}
    for (address,) in struct.iter_unpack("<Q", xsdt[36:]):
        table = at(address)
        found[table[:4]] = table
    fadt = found[b"FACP"]
    found[b"DSDT"] = at(struct.unpack_from("<Q", fadt, 140)[0])
    found[b"FACS"] = data[struct.unpack_from("<I", fadt, 36)[0] - base :][:64]
    return found


@pytest.fixture
def built() -> acpi.AcpiTables:
    return acpi.build_tables(2, 0xE0040, pci_routes=ROUTES)


def test_rsdp_v2_checksums_and_pointers(built: acpi.AcpiTables) -> None:
    r = built.rsdp
    assert len(r) == 36 and r[:8] == b"RSD PTR " and r[15] == 2
    assert sum(r[:20]) & 0xFF == 0 and sum(r) & 0xFF == 0
    assert struct.unpack_from("<I", r, 20)[0] == 36
    assert struct.unpack_from("<I", r, 16)[0] == 0xE0040 + built.offsets["RSDT"]
    assert struct.unpack_from("<Q", r, 24)[0] == 0xE0040 + built.offsets["XSDT"]


def test_every_table_sums_to_zero_and_rsdt_matches_xsdt(built: acpi.AcpiTables) -> None:
    tables = tables_by_signature(built.tables, built.base, built.rsdp)
    assert set(tables) == {b"RSDT", b"XSDT", b"FACP", b"APIC", b"DSDT", b"FACS"}
    for signature, table in tables.items():
        if signature != b"FACS":  # the FACS has no checksum (5.2.10)
            assert sum(table) & 0xFF == 0, signature
            assert table[10:16] == b"VMD   "
    rsdt = [a for (a,) in struct.iter_unpack("<I", tables[b"RSDT"][36:])]
    xsdt = [a for (a,) in struct.iter_unpack("<Q", tables[b"XSDT"][36:])]
    assert rsdt == xsdt and len(rsdt) == 2
    assert tables[b"FACS"][:4] == b"FACS" and struct.unpack_from("<I", tables[b"FACS"], 4)[0] == 64
    assert built.offsets["FACS"] == 0 and built.base % 64 == 0


def test_fadt_fields(built: acpi.AcpiTables) -> None:
    fadt = tables_by_signature(built.tables, built.base, built.rsdp)[b"FACP"]
    assert len(fadt) == 276 and fadt[8] == 6 and fadt[131] == 4
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<I", fadt, 48)[0] == 0  # SMI_CMD: always ACPI mode
    assert struct.unpack_from("<III", fadt, 56)[0] == 0x600  # PM1a_EVT_BLK
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604  # PM1a_CNT_BLK
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608  # PM_TMR_BLK
    assert (fadt[88], fadt[89], fadt[91]) == (4, 2, 4)
    assert fadt[108] == 0x32  # CENTURY
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert not flags & acpi.FADT_F_HW_REDUCED_ACPI
    assert not flags & acpi.FADT_F_PWR_BUTTON  # a fixed-feature power button
    assert flags & acpi.FADT_F_SLP_BUTTON and flags & acpi.FADT_F_RESET_REG_SUP
    assert not flags & acpi.FADT_F_TMR_VAL_EXT  # 24-bit timer
    assert fadt[116:128] == struct.pack("<BBBBQ", 1, 8, 0, 1, 0xCF9) and fadt[128] == 6  # RESET_REG
    assert struct.unpack_from("<I", fadt, 40)[0] == struct.unpack_from("<Q", fadt, 140)[0]  # DSDT == X_DSDT
    assert struct.unpack_from("<Q", fadt, 132)[0] == 0  # X_FIRMWARE_CTRL unset: FIRMWARE_CTRL is
    assert fadt[148:160] == struct.pack("<BBBBQ", 1, 32, 0, 2, 0x600)
    assert fadt[172:184] == struct.pack("<BBBBQ", 1, 16, 0, 2, 0x604)
    assert fadt[208:220] == struct.pack("<BBBBQ", 1, 32, 0, 3, 0x608)


def test_madt_entries(built: acpi.AcpiTables) -> None:
    madt = tables_by_signature(built.tables, built.base, built.rsdp)[b"APIC"]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    entries, offset = [], 44
    while offset < len(madt):
        entries.append(madt[offset : offset + madt[offset + 1]])
        offset += madt[offset + 1]
    assert entries == [
        bytes([0, 8, 0, 0, 1, 0, 0, 0]),
        bytes([0, 8, 1, 1, 1, 0, 0, 0]),
        bytes([1, 12, 2, 0]) + struct.pack("<II", 0xFEC00000, 0),  # I/O APIC id = vcpus
        bytes([2, 10, 0, 0]) + struct.pack("<IH", 2, 0),  # IRQ 0 -> GSI 2
        bytes([2, 10, 0, 9]) + struct.pack("<IH", 9, 0x0D),  # SCI: level, active high
        bytes([4, 6, 0xFF, 0, 0, 1]),  # NMI on LINT1 of every processor
    ]


def test_dsdt_aml_s5_and_pci_root() -> None:
    aml = acpi.dsdt_aml(ROUTES)
    # Name(\_S5_, Package(4){5, 5, 0, 0})
    assert aml.startswith(bytes([0x08, 0x5C]) + b"_S5_" + bytes([0x12, 0x08, 0x04, 0x0A, 5, 0x0A, 5, 0, 0]))
    rest = aml[15:]
    assert rest[0] == 0x10 and rest[3:8] == b"\\_SB_"  # Scope(\_SB) with a two-byte PkgLength
    assert (rest[1] & 0x0F | rest[2] << 4) == len(rest) - 1
    assert rest[8:10] == bytes([0x5B, 0x82]) and rest[12:16] == b"PCI0"
    assert b"_HID" + bytes([0x0C, 0x41, 0xD0, 0x0A, 0x03]) in rest  # EisaId("PNP0A03")
    prt = rest[rest.index(b"_PRT") + 4 :]
    assert prt[:3] == bytes([0x12, 0x1A, 0x02])
    # Package{0x0001FFFF (slot 1, any function), pin 0 (INTA#), source 0 (a fixed GSI), GSI 10}
    assert prt[3:15] == bytes([0x12, 0x0B, 0x04, 0x0C, 0xFF, 0xFF, 0x01, 0x00, 0x00, 0x00, 0x0A, 10])


def test_aml_encodings() -> None:
    assert acpi.aml_pkg_length(10) == bytes([11])
    assert acpi.aml_pkg_length(62) == bytes([63])
    assert acpi.aml_pkg_length(63) == bytes([0x41, 0x04])  # 65 = 0x41: lead 01b, nibble 1, then 0x04
    encoded = acpi.aml_pkg_length(5000)
    total = 5000 + len(encoded)
    assert encoded[0] >> 6 == len(encoded) - 1
    assert (encoded[0] & 0x0F) | int.from_bytes(encoded[1:], "little") << 4 == total
    assert [acpi.aml_integer(v) for v in (0, 1, 5, 0x1234, 0x12345678)] == [
        b"\x00", b"\x01", b"\x0a\x05", b"\x0b\x34\x12", b"\x0c\x78\x56\x34\x12"]
    assert acpi.eisa_id("PNP0A03") == 0x030AD041
    assert acpi.eisa_id("PNP0501") == 0x0105D041
    crs = acpi.pci_host_crs()
    assert crs.endswith(b"\x79\x00")
    assert b"\x47\x01\xf8\x0c\xf8\x0c\x01\x08" in crs


def test_write_tables_direct_boot(mem: GuestMemory) -> None:
    assert acpi.write_tables(mem, 1, ROUTES) == 0xE0000
    r = mem.read(0xE0000, 36)
    assert r[:8] == b"RSD PTR " and sum(r) & 0xFF == 0
    xsdt = struct.unpack_from("<Q", r, 24)[0]
    assert 0xE0000 < xsdt < 0xF0000 and mem.read(xsdt, 4) == b"XSDT"
    length = struct.unpack_from("<I", mem.read(xsdt, 8), 4)[0]
    assert sum(mem.read(xsdt, length)) & 0xFF == 0


def run_loader(files: dict[str, bytes], addresses: dict[str, int]) -> dict[str, bytearray]:
    """What SeaBIOS's romfile_loader does with "etc/table-loader", with the blobs placed at addresses."""
    blobs: dict[str, bytearray] = {}
    script = files[acpi.FW_CFG_LOADER]
    assert len(script) % 128 == 0

    def name(raw: bytes) -> str:
        return raw.rstrip(b"\0").decode()

    for i in range(0, len(script), 128):
        entry = script[i : i + 128]
        command = struct.unpack_from("<I", entry)[0]
        if command == acpi.LOADER_ALLOCATE:
            file = name(entry[4:60])
            align, zone = struct.unpack_from("<IB", entry, 60)
            assert addresses[file] % align == 0
            assert zone == (acpi.LOADER_ZONE_FSEG if file == acpi.FW_CFG_RSDP else acpi.LOADER_ZONE_HIGH)
            blobs[file] = bytearray(files[file])
        elif command == acpi.LOADER_ADD_POINTER:
            dest, src = name(entry[4:60]), name(entry[60:116])
            offset, size = struct.unpack_from("<IB", entry, 116)
            value = int.from_bytes(blobs[dest][offset : offset + size], "little") + addresses[src]
            blobs[dest][offset : offset + size] = value.to_bytes(size, "little")
        elif command == acpi.LOADER_ADD_CHECKSUM:
            file = name(entry[4:60])
            offset, start, length = struct.unpack_from("<III", entry, 60)
            blob = blobs[file]
            blob[offset] = (blob[offset] - sum(blob[start : start + length])) & 0xFF
        else:
            raise AssertionError(f"unknown loader command {command}")
    return blobs


def test_fw_cfg_linker_loader_reproduces_the_direct_boot_tables() -> None:
    files = acpi.fw_cfg_files(2, ROUTES)
    assert set(files) == {"etc/acpi/rsdp", "etc/acpi/tables", "etc/table-loader"}
    base = 0x7FFE000
    blobs = run_loader(files, {"etc/acpi/rsdp": 0xF5A40, "etc/acpi/tables": base})
    reference = acpi.build_tables(2, base, pci_routes=ROUTES)
    assert bytes(blobs["etc/acpi/rsdp"]) == reference.rsdp
    assert bytes(blobs["etc/acpi/tables"]) == reference.tables


def test_loader_entry_format() -> None:
    entry = acpi.loader_add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 16, 4)
    assert len(entry) == 128 and entry[:4] == b"\x02\0\0\0"
    assert entry[4:17] == b"etc/acpi/rsdp" and entry[60:75] == b"etc/acpi/tables"
    assert struct.unpack_from("<IB", entry, 116) == (16, 4)
    with pytest.raises(ValueError):
        acpi.loader_allocate("x" * 56, 16, 1)


def test_mptable_marks_the_sci_level_triggered(mem: GuestMemory) -> None:
    write_mptable(mem, 1, level_irqs=(9,))
    table = mem.read(0xF0010, 0x400)
    flags = {}
    offset = 44
    while table[offset] in (0, 1, 2, 3, 4):
        kind = table[offset]
        if kind == 3 and table[offset + 4] == 1:  # I/O interrupt from the ISA bus
            flags[table[offset + 5]] = struct.unpack_from("<H", table, offset + 2)[0]
        offset += 20 if kind == 0 else 8
        if kind == 4 and table[offset - 8 + 7] == 1:
            break
    assert flags[9] == MP_FLAGS_LEVEL_HIGH and flags[4] == 0


def test_the_tables_move_out_of_a_kernel_s_way_within_the_bios_area() -> None:
    assert place_tables([]) == (ACPI_AREA_ADDRESS, MPTABLE_ADDRESS)
    acpi_at, mp_at = place_tables([(0xE0000, 0xE8000), (0xF0000, 0xF0100)])
    assert acpi_at == 0xE8000 and acpi_at % 64 == 0
    assert mp_at == 0xEC000  # 0xF0000 is taken: the first room after the ACPI area
    for start, size in ((acpi_at, ACPI_AREA_SIZE), (mp_at, MPTABLE_SIZE)):
        assert 0xE0000 <= start and start + size <= 0x100000
    with pytest.raises(BadImage, match="no room for the ACPI tables"):
        place_tables([(0xE0000, 0x100000)])
    with pytest.raises(BadImage, match="no room for the MP table"):
        place_tables([(0xE0000, 0xE1000), (0xE5000, 0x100000)])


def test_the_largest_tables_fit_in_the_room_kept_for_them(mem: GuestMemory) -> None:
    routes = [(slot, 0, 16 + slot % 8) for slot in range(32)]
    write_mptable(mem, 64, pci_routes=routes, level_irqs=(9,))
    assert acpi.write_tables(mem, 64, routes) == ACPI_AREA_ADDRESS


def test_pvh_and_linux_get_the_rsdp_address(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = tmp_path / "pvh"
    kernel.write_bytes(build_elf([(PT_LOAD, 0x1000000, b"\x90" * 16, 0x1000)], entry=0x1000000,
                                 notes=[(b"Xen", 18, struct.pack("<Q", 0x1000000))]))
    plan = load_kernel(str(kernel), mem, BootOptions(acpi=True))
    info = plan.cpu.gprs["rbx"]
    assert struct.unpack_from("<Q", mem.read(info + 32, 8))[0] == 0xE0000  # start_info.rsdp_paddr
    bz = tmp_path / "bzImage"
    bz.write_bytes(build_bzimage())
    load_kernel(str(bz), mem, BootOptions(acpi=True))
    assert struct.unpack_from("<Q", mem.read(0x7000 + 0x70, 8))[0] == 0xE0000  # boot_params.acpi_rsdp_addr
    load_kernel(str(bz), mem, BootOptions())
    assert struct.unpack_from("<Q", mem.read(0x7000 + 0x70, 8))[0] == 0
