"""virtio-scsi with its one CD-ROM, driven through the PCI transport as a guest would (no KVM)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmd.devices.virtio.pci import F_VERSION_1, STATUS_DRIVER_OK, STATUS_NEEDS_RESET
from vmd.devices.virtio.scsi import (
    BLOCK,
    CHECK_CONDITION,
    DATA_PROTECT,
    GOOD,
    ILLEGAL_REQUEST,
    NOT_READY,
    PRODUCT,
    PROFILE_CDROM,
    REVISION,
    S_BAD_TARGET,
    S_FUNCTION_COMPLETE,
    S_FUNCTION_REJECTED,
    S_OK,
    S_OVERRUN,
    VENDOR,
    VirtioScsiCdrom,
)
from vmd.disk import open_image

from .virtio_driver import BUFFERS, Driver

RING_BASE = 0x10000  # queue q: descriptors at RING_BASE + 0x3000 q, avail +0x1000, used +0x2000
QSIZE = 16
SENSE_SIZE = 96
CDB_SIZE = 32
RESP_SIZE = 12 + SENSE_SIZE
LUN0 = bytes((1, 0, 0x40, 0, 0, 0, 0, 0))


class Rings:
    """One split virtqueue as a guest driver keeps it."""

    def __init__(self, driver: ScsiDriver, index: int) -> None:
        self.driver = driver
        self.index = index
        self.desc = RING_BASE + 0x3000 * index
        self.avail = self.desc + 0x1000
        self.used_ring = self.desc + 0x2000
        self.avail_idx = 0
        self.used_seen = 0
        self.next_head = 0

    def submit(self, parts: list[tuple[int, int, bool]], kick: bool = True) -> int:
        memory = self.driver.memory
        head = self.next_head
        for i, (address, length, writable) in enumerate(parts):
            index = (head + i) % QSIZE
            following = (head + i + 1) % QSIZE
            flags = (1 if i + 1 < len(parts) else 0) | (2 if writable else 0)
            memory.write(self.desc + 16 * index, struct.pack("<QIHH", address, length, flags, following))
        self.next_head = (head + len(parts)) % QSIZE
        memory.write_u16(self.avail + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        memory.write_u16(self.avail + 2, self.avail_idx)
        if kick:
            self.driver.kick(self.index)
        return head

    def used(self) -> list[tuple[int, int]]:
        memory = self.driver.memory
        index = memory.read_u16(self.used_ring + 2)
        entries = []
        while self.used_seen != index:
            slot = self.used_seen % QSIZE
            entries.append(struct.unpack("<II", memory.read(self.used_ring + 4 + 8 * slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return entries

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int]]:
        entries: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(entries) < count and time.monotonic() < deadline:
            entries += self.used()
            if len(entries) < count:
                time.sleep(0.002)
        assert len(entries) >= count, f"queue {self.index}: {len(entries)} of {count} completions"
        return entries


class ScsiDriver(Driver):
    """Sets up all three virtio-scsi queues (control, event, request)."""

    def setup_scsi(self) -> None:
        self.common_write(0x14, 1, 0)
        self.common_write(0x14, 1, 1)
        self.common_write(0x14, 1, 3)
        for select in (0, 1):
            self.common_write(0x08, 4, select)
            self.common_write(0x0C, 4, (F_VERSION_1 >> (32 * select)) & 0xFFFF_FFFF)
        self.common_write(0x14, 1, 3 | 8)
        self.rings = [Rings(self, q) for q in range(3)]
        for ring in self.rings:
            self.common_write(0x16, 2, ring.index)
            self.common_write(0x18, 2, QSIZE)
            for offset, address in ((0x20, ring.desc), (0x28, ring.avail), (0x30, ring.used_ring)):
                self.common_write(offset, 4, address)
                self.common_write(offset + 4, 4, 0)
            self.common_write(0x1C, 2, 1)
        self.common_write(0x14, 1, 3 | 8 | STATUS_DRIVER_OK)


@dataclass
class Reply:
    sense_len: int
    residual: int
    status: int
    response: int
    sense: bytes
    data: bytes
    written: int

    @property
    def sense_key(self) -> int:
        return self.sense[2] & 0x0F

    @property
    def asc(self) -> tuple[int, int]:
        return self.sense[12], self.sense[13]


def command(driver: ScsiDriver, cdb: bytes, data_in: int = 0, lun: bytes = LUN0,
            data_in_parts: list[int] | None = None) -> Reply:
    """One request on the request queue; data_in_parts splits the data-in area into several descriptors."""
    driver.next_buffer = BUFFERS
    header = driver.buffer(lun + struct.pack("<QBBB", 7, 0, 0, 0) + cdb.ljust(CDB_SIZE, b"\0")[:CDB_SIZE])
    response = driver.buffer(bytes(RESP_SIZE))  # zeroed, so stale bytes of earlier commands never show
    sizes = data_in_parts if data_in_parts is not None else ([data_in] if data_in else [])
    areas = [(driver.buffer(bytes(size)), size) for size in sizes]
    parts = [(header, 19 + CDB_SIZE, False), (response, RESP_SIZE, True)] + [(a, s, True) for a, s in areas]
    driver.rings[2].submit(parts)
    ((_, written),) = driver.rings[2].wait()
    sense_len, residual, _qualifier, status, code = struct.unpack("<IIHBB", driver.memory.read(response, 12))
    sense = driver.memory.read(response + 12, SENSE_SIZE)
    data = b"".join(driver.memory.read(address, size) for address, size in areas)
    return Reply(sense_len, residual, status, code, sense, data, written)


@pytest.fixture
def iso(tmp_path: Path) -> Path:
    """A small ISO 9660 image (xorriso), or a synthetic 2048-byte-block file when xorriso is missing."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello from the cdrom\n" * 200)
    (root / "pattern.bin").write_bytes(bytes(range(256)) * 64)
    path = tmp_path / "test.iso"
    if shutil.which("xorriso"):
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "VMDTEST", "-o", str(path), str(root)],
                       check=True, capture_output=True)
    else:
        path.write_bytes(b"".join(bytes([i % 256]) * BLOCK for i in range(64)))
    return path


@pytest.fixture
def cdrom(iso: Path) -> Iterator[tuple[ScsiDriver, bytes]]:
    device = VirtioScsiCdrom(open_image(str(iso), "raw", writable=False), workers=2)
    driver = ScsiDriver(device)
    driver.setup_scsi()
    try:
        yield driver, iso.read_bytes()
    finally:
        device.close()
        driver.memory.close()


def test_pci_identity_and_config_space(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    assert driver.transport.config_read(2, 2) == 0x1040 + 8
    assert driver.transport.config_read(0x09, 3) == 0x010000
    assert driver.status() & STATUS_DRIVER_OK
    config = struct.unpack("<IIIIIIIHHI", bytes(driver.common_read(0x2000 + i, 1) for i in range(36)))
    num_queues, seg_max, _max_sectors, _per_lun, event_size, sense_size, cdb_size, channel, target, lun = config
    assert (num_queues, event_size, sense_size, cdb_size) == (1, 16, 96, 32)
    assert (channel, target, lun) == (0, 0, 0) and seg_max > 0


def test_inquiry_standard_and_vpd(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    reply = command(driver, bytes((0x12, 0, 0, 0, 96, 0)), 96)
    assert (reply.status, reply.response) == (GOOD, S_OK)
    data = reply.data
    assert data[0] == 0x05 and data[1] & 0x80  # CD/DVD, removable
    assert data[8:16] == VENDOR and data[16:32] == PRODUCT and data[32:36] == REVISION
    assert data[4] + 5 == 36 and reply.residual == 96 - 36
    pages = command(driver, bytes((0x12, 1, 0x00, 0, 255, 0)), 255).data
    assert pages[1] == 0 and list(pages[4 : 4 + pages[3]]) == [0x00, 0x80, 0x83]
    serial = command(driver, bytes((0x12, 1, 0x80, 0, 255, 0)), 255).data
    assert serial[1] == 0x80 and serial[4 : 4 + serial[3]] == b"VMMCD0"
    ident = command(driver, bytes((0x12, 1, 0x83, 0, 255, 0)), 255).data
    assert ident[1] == 0x83 and ident[4] & 0x0F == 2 and ident[5] & 0x0F == 1 and ident[8:16] == VENDOR
    bad = command(driver, bytes((0x12, 1, 0x99, 0, 255, 0)), 255)
    assert bad.status == CHECK_CONDITION and bad.sense_key == ILLEGAL_REQUEST and bad.asc == (0x24, 0)
    bad = command(driver, bytes((0x12, 0, 0x80, 0, 255, 0)), 255)  # a page without EVPD
    assert bad.status == CHECK_CONDITION and bad.asc == (0x24, 0)
    short = command(driver, bytes((0x12, 0, 0, 0, 5, 0)), 96)  # the allocation length cuts the data
    assert short.data[:5] == data[:5] and short.data[5:] == bytes(91) and short.residual == 91


def test_test_unit_ready_and_capacity(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, image = cdrom
    blocks = len(image) // BLOCK
    assert command(driver, bytes(6)).status == GOOD
    reply = command(driver, bytes((0x25,)) + bytes(9), 8)
    assert reply.status == GOOD and struct.unpack(">II", reply.data) == (blocks - 1, 2048)
    reply = command(driver, bytes((0x9E, 0x10)) + bytes(8) + struct.pack(">I", 32) + bytes(2), 32)
    assert reply.status == GOOD and struct.unpack(">QI", reply.data[:12]) == (blocks - 1, 2048)
    reply = command(driver, bytes((0x9E, 0x11)) + bytes(8) + struct.pack(">I", 32) + bytes(2), 32)
    assert reply.status == CHECK_CONDITION and reply.asc == (0x24, 0)


def _read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def test_read_known_sectors(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, image = cdrom
    reply = command(driver, _read10(16, 2), 2 * BLOCK)
    assert (reply.status, reply.response, reply.residual) == (GOOD, S_OK, 0)
    assert reply.data == image[16 * BLOCK : 18 * BLOCK]
    if image[16 * BLOCK + 1 : 16 * BLOCK + 6] == b"CD001":
        assert reply.data[0] == 1  # the primary volume descriptor
    assert reply.written == RESP_SIZE + 2 * BLOCK
    # Scattered over odd-sized descriptors, and READ(6), READ(12), READ(16)
    reply = command(driver, _read10(3, 3), data_in_parts=[100, 4000, 2044])
    assert reply.status == GOOD and reply.data == image[3 * BLOCK : 6 * BLOCK]
    for cdb in (bytes((0x08, 0, 0, 5, 1, 0)), struct.pack(">BBIIBB", 0xA8, 0, 5, 1, 0, 0),
                struct.pack(">BBQIBB", 0x88, 0, 5, 1, 0, 0)):
        reply = command(driver, cdb, BLOCK)
        assert reply.status == GOOD and reply.data == image[5 * BLOCK : 6 * BLOCK], hex(cdb[0])
    # A larger buffer than the transfer: the rest is residual
    reply = command(driver, _read10(1, 1), 3 * BLOCK)
    assert reply.status == GOOD and reply.residual == 2 * BLOCK
    # A zero-length read moves nothing
    reply = command(driver, _read10(0, 0), BLOCK)
    assert reply.status == GOOD and reply.residual == BLOCK


def test_reads_beyond_the_medium_and_into_short_buffers(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, image = cdrom
    blocks = len(image) // BLOCK
    reply = command(driver, _read10(blocks - 1, 2), 2 * BLOCK)
    assert reply.status == CHECK_CONDITION and reply.response == S_OK
    assert reply.sense_key == ILLEGAL_REQUEST and reply.asc == (0x21, 0) and reply.sense_len >= 14
    assert reply.sense[0] == 0x70 and reply.residual == 2 * BLOCK and reply.data == bytes(2 * BLOCK)
    reply = command(driver, struct.pack(">BBQIBB", 0x88, 0, 2**64 - 1, 2**32 - 1, 0, 0), BLOCK)
    assert reply.status == CHECK_CONDITION and reply.asc == (0x21, 0)
    reply = command(driver, _read10(0, 4), BLOCK)  # the data-in buffers cannot hold the transfer
    assert reply.response == S_OVERRUN and reply.data == bytes(BLOCK)
    reply = command(driver, _read10(blocks - 1, 1), BLOCK)
    assert reply.status == GOOD and reply.data == image[(blocks - 1) * BLOCK :]


def test_unknown_opcode_writes_and_bad_luns(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    reply = command(driver, bytes((0xC7,)) + bytes(11))
    assert reply.status == CHECK_CONDITION and reply.sense_key == ILLEGAL_REQUEST and reply.asc == (0x20, 0)
    reply = command(driver, bytes((0x7F,)) + bytes(31))
    assert reply.asc == (0x20, 0)
    reply = command(driver, struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0))
    assert reply.status == CHECK_CONDITION and reply.sense_key == DATA_PROTECT and reply.asc == (0x27, 0)
    for lun in (bytes((1, 1, 0x40, 0, 0, 0, 0, 0)), bytes((1, 0, 0x40, 1, 0, 0, 0, 0)),
                bytes((2, 0, 0, 0, 0, 0, 0, 0)), bytes((1, 0, 0x40, 0, 0, 0, 0, 9))):
        reply = command(driver, bytes(6), 16, lun=lun)
        assert reply.response == S_BAD_TARGET and reply.residual == 16
    assert command(driver, bytes(6), lun=bytes((1, 0, 0, 0, 0, 0, 0, 0))).status == GOOD  # peripheral addressing


def test_hostile_allocation_lengths(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    # Allocation lengths far beyond the buffers: the device writes only what the buffers hold
    for cdb in (bytes((0x12, 0, 0, 0xFF, 0xFF, 0)), bytes((0x46, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0)),
                bytes((0x5A, 0, 0x3F, 0, 0, 0, 0, 0xFF, 0xFF, 0)), bytes((0x43, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0)),
                bytes((0xA0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0))):
        reply = command(driver, cdb, 4)
        assert reply.status == GOOD and reply.residual == 0 and reply.written == RESP_SIZE + 4, hex(cdb[0])
        reply = command(driver, cdb)  # and no data-in buffer at all
        assert reply.status == GOOD and reply.written == RESP_SIZE
    reply = command(driver, bytes((0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0)), 64)  # REPORT LUNS needs 16
    assert reply.status == CHECK_CONDITION and reply.asc == (0x24, 0)


def test_toc_mode_sense_and_disc_information(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, image = cdrom
    blocks = len(image) // BLOCK
    toc = command(driver, bytes((0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0)), 0xFF).data
    length, first, last = struct.unpack(">HBB", toc[:4])
    assert (length, first, last) == (18, 1, 1)
    assert toc[4 + 2] == 1 and struct.unpack(">I", toc[8:12])[0] == 0
    assert toc[12 + 2] == 0xAA and struct.unpack(">I", toc[16:20])[0] == blocks
    msf = command(driver, bytes((0x43, 0x02, 0, 0, 0, 0, 0, 0, 0xFF, 0)), 0xFF).data
    assert msf[8:12] == bytes((0, 0, 2, 0))  # track 1 at 00:02:00
    frames = blocks + 150
    assert msf[16:20] == bytes((0, frames // 4500, frames // 75 % 60, frames % 75))
    session = command(driver, bytes((0x43, 0, 1, 0, 0, 0, 0, 0, 0xFF, 0)), 0xFF).data
    assert struct.unpack(">HBB", session[:4]) == (10, 1, 1) and session[6] == 1
    bad = command(driver, bytes((0x43, 0, 5, 0, 0, 0, 0, 0, 0xFF, 0)), 0xFF)
    assert bad.status == CHECK_CONDITION and bad.asc == (0x24, 0)
    caps = command(driver, bytes((0x1A, 0, 0x2A, 0, 0xFF, 0)), 0xFF).data
    assert caps[0] == 3 + 22  # mode data length: the header after itself, then the 22-byte page
    assert caps[3] == 0 and caps[4] == 0x2A and caps[5] == 0x14
    every = command(driver, bytes((0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 0xFF, 0)), 0xFF).data
    body = every[8 : 2 + struct.unpack(">H", every[:2])[0]]
    codes = []
    while body:
        codes.append(body[0] & 0x3F)
        body = body[2 + body[1] :]
    assert codes == [0x01, 0x2A]
    saved = command(driver, bytes((0x1A, 0, 0xC0 | 0x2A, 0, 0xFF, 0)), 0xFF)
    assert saved.status == CHECK_CONDITION and saved.asc == (0x39, 0)
    disc = command(driver, bytes((0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0)), 34).data
    assert struct.unpack(">H", disc[:2])[0] == 32 and disc[2] & 0x03 == 2
    mechanism = command(driver, bytes((0xBD,)) + bytes(7) + bytes((0, 8, 0, 0)), 8)
    assert mechanism.status == GOOD and mechanism.residual == 0
    luns = command(driver, bytes((0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0)), 16).data
    assert luns == struct.pack(">I", 8) + bytes(12)


def test_get_configuration_and_event_status(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    data = command(driver, bytes((0x46, 0, 0, 0, 0, 0, 0, 0x04, 0, 0)), 1024).data
    length, profile = struct.unpack(">I2xH", data[:8])
    assert profile == PROFILE_CDROM
    features: dict[int, bytes] = {}
    offset = 8
    while offset < length + 4:
        code, flags, size = struct.unpack(">HBB", data[offset : offset + 4])
        features[code] = data[offset : offset + 4 + size]
        offset += 4 + size
    assert {0x0000, 0x0001, 0x0003, 0x0010, 0x001E} <= set(features)
    profiles = features[0x0000][4:]
    listed = {struct.unpack(">H", profiles[i : i + 2])[0]: profiles[i + 2] & 1 for i in range(0, len(profiles), 4)}
    assert listed == {0x0008: 1, 0x0010: 0}
    one = command(driver, bytes((0x46, 2, 0, 0x10, 0, 0, 0, 0x04, 0, 0)), 1024).data
    assert struct.unpack(">I", one[:4])[0] == 4 + 12 and struct.unpack(">H", one[8:10])[0] == 0x0010
    current = command(driver, bytes((0x46, 1, 0, 0, 0, 0, 0, 0x04, 0, 0)), 1024).data
    assert 0x001F not in _feature_codes(current)
    bad = command(driver, bytes((0x46, 3, 0, 0, 0, 0, 0, 0x04, 0, 0)), 1024)
    assert bad.status == CHECK_CONDITION and bad.asc == (0x24, 0)
    first = command(driver, bytes((0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8).data
    assert first[2] == 0x04 and first[3] & 0x10 and first[4] & 0x0F == 2 and first[5] & 0x02  # new medium
    again = command(driver, bytes((0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8).data
    assert again[4] & 0x0F == 0 and again[5] & 0x02
    none = command(driver, bytes((0x4A, 1, 0, 0, 0x02, 0, 0, 0, 8, 0)), 8)
    assert none.status == GOOD and none.data[2] & 0x80
    async_ = command(driver, bytes((0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8)
    assert async_.status == CHECK_CONDITION and async_.asc == (0x24, 0)


def _feature_codes(data: bytes) -> list[int]:
    length = struct.unpack(">I", data[:4])[0]
    codes, offset = [], 8
    while offset < length + 4:
        code, _flags, size = struct.unpack(">HBB", data[offset : offset + 4])
        codes.append(code)
        offset += 4 + size
    return codes


def test_sense_lock_and_eject(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    sense = command(driver, bytes((0x03, 0, 0, 0, 18, 0)), 18)
    assert sense.status == GOOD and sense.data[0] == 0x70 and sense.data[2] == 0
    described = command(driver, bytes((0x03, 1, 0, 0, 18, 0)), 18)
    assert described.data[0] == 0x72
    assert command(driver, bytes((0x1E, 0, 0, 0, 1, 0))).status == GOOD  # prevent removal
    eject = command(driver, bytes((0x1B, 0, 0, 0, 0x02, 0)))
    assert eject.status == CHECK_CONDITION and eject.asc == (0x53, 0x02)
    assert command(driver, bytes((0x1E, 0, 0, 0, 0, 0))).status == GOOD
    assert command(driver, bytes((0x1B, 0, 0, 0, 0x02, 0))).status == GOOD
    assert command(driver, bytes((0x1B, 0, 0, 0, 0x01, 0))).status == GOOD


def test_empty_drive_is_not_ready() -> None:
    device = VirtioScsiCdrom(None)
    driver = ScsiDriver(device)
    driver.setup_scsi()
    try:
        for cdb in (bytes(6), _read10(0, 1), bytes((0x25,)) + bytes(9),
                    bytes((0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0))):
            reply = command(driver, cdb, BLOCK)
            assert reply.status == CHECK_CONDITION and reply.sense_key == NOT_READY and reply.asc == (0x3A, 0)
        inquiry = command(driver, bytes((0x12, 0, 0, 0, 36, 0)), 36)
        assert inquiry.status == GOOD and inquiry.data[8:16] == VENDOR
        config = command(driver, bytes((0x46, 0, 0, 0, 0, 0, 0, 0x04, 0, 0)), 1024).data
        assert struct.unpack(">H", config[6:8])[0] == 0
        events = command(driver, bytes((0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8).data
        assert not events[5] & 0x02
        sense = command(driver, bytes((0x03, 0, 0, 0, 18, 0)), 18).data
        assert sense[2] == NOT_READY and sense[12] == 0x3A
    finally:
        device.close()
        driver.memory.close()


def test_control_queue_tmf_and_async_notification(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    control = driver.rings[0]
    for subtype, lun, expected in ((5, LUN0, S_FUNCTION_COMPLETE), (0, LUN0, S_FUNCTION_COMPLETE),
                                   (2, LUN0, S_FUNCTION_REJECTED), (99, LUN0, S_FUNCTION_REJECTED),
                                   (5, bytes((1, 3, 0x40, 0, 0, 0, 0, 0)), S_BAD_TARGET)):
        driver.next_buffer = BUFFERS
        request = driver.buffer(struct.pack("<II8sQ", 0, subtype, lun, 1))
        response = driver.buffer(b"\xee")
        control.submit([(request, 24, False), (response, 1, True)])
        ((_, written),) = control.wait()
        assert written == 1 and driver.memory.read_u8(response) == expected, (subtype, lun)
    for kind in (1, 2):
        driver.next_buffer = BUFFERS
        request = driver.buffer(struct.pack("<I8sI", kind, LUN0, 0x10))
        response = driver.buffer(b"\xee" * 5)
        control.submit([(request, 16, False), (response, 5, True)])
        control.wait()
        assert struct.unpack("<IB", driver.memory.read(response, 5)) == (0, S_OK)


def test_event_buffers_are_held_until_reset(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    events = driver.rings[1]
    for _ in range(4):
        events.submit([(driver.buffer(16), 16, True)])
    time.sleep(0.05)
    assert events.used() == []
    assert command(driver, bytes(6)).status == GOOD  # the request queue is unaffected
    assert not driver.status() & STATUS_NEEDS_RESET


def test_malformed_requests_break_the_device(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    header = driver.buffer(LUN0 + bytes(11) + bytes(CDB_SIZE))
    response = driver.buffer(RESP_SIZE)
    driver.rings[2].submit([(header, 20, False), (response, RESP_SIZE, True)])  # header cut short
    deadline = time.monotonic() + 5
    while not driver.status() & STATUS_NEEDS_RESET and time.monotonic() < deadline:
        time.sleep(0.002)
    assert driver.status() & STATUS_NEEDS_RESET
    assert driver.rings[2].used() == []
    driver.setup_scsi()  # a reset and a new setup bring it back
    assert command(driver, bytes(6)).status == GOOD


def test_short_response_buffer_breaks_the_device(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    header = driver.buffer(LUN0 + bytes(11) + bytes(CDB_SIZE))
    response = driver.buffer(20)
    driver.rings[2].submit([(header, 19 + CDB_SIZE, False), (response, 20, True)])
    deadline = time.monotonic() + 5
    while not driver.status() & STATUS_NEEDS_RESET and time.monotonic() < deadline:
        time.sleep(0.002)
    assert driver.status() & STATUS_NEEDS_RESET


def test_driver_chosen_cdb_size(cdrom: tuple[ScsiDriver, bytes]) -> None:
    driver, _ = cdrom
    driver.common_write(0x2000 + 24, 4, 6)  # cdb_size 6: READ(10) no longer fits
    assert driver.common_read(0x2000 + 24, 4) == 6
    driver.next_buffer = BUFFERS
    header = driver.buffer(LUN0 + struct.pack("<QBBB", 1, 0, 0, 0) + _read10(0, 1)[:6])
    response = driver.buffer(RESP_SIZE)
    data = driver.buffer(BLOCK)
    driver.rings[2].submit([(header, 19 + 6, False), (response, RESP_SIZE, True), (data, BLOCK, True)])
    driver.rings[2].wait()
    status, sense = driver.memory.read_u8(response + 10), driver.memory.read(response + 12, 18)
    assert status == CHECK_CONDITION and sense[12] == 0x24


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
@given(cdb=st.one_of(st.binary(min_size=1, max_size=CDB_SIZE),
                     st.tuples(st.sampled_from([0x00, 0x03, 0x08, 0x12, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2B, 0x43,
                                                0x46, 0x4A, 0x51, 0x5A, 0x88, 0x9E, 0xA0, 0xA8, 0xBB, 0xBD]),
                               st.binary(min_size=15, max_size=15)).map(lambda t: bytes((t[0],)) + t[1])),
       data_in=st.sampled_from([0, 1, 7, 18, 36, 512, 2048, 4096]))
def test_random_cdbs_always_get_a_status(cdrom: tuple[ScsiDriver, bytes], cdb: bytes, data_in: int) -> None:
    driver, _ = cdrom
    reply = command(driver, cdb, data_in)
    assert reply.response in (S_OK, S_OVERRUN)
    assert reply.status in (GOOD, CHECK_CONDITION)
    assert 0 <= reply.residual <= data_in
    assert reply.written == RESP_SIZE + data_in - reply.residual
    if reply.status == CHECK_CONDITION:
        assert reply.sense_len >= 14 and reply.sense[0] == 0x70
    assert not driver.status() & STATUS_NEEDS_RESET


def test_iso_fixture_is_an_iso(iso: Path) -> None:
    if not shutil.which("xorriso"):
        pytest.skip("xorriso is not installed")
    with open(iso, "rb") as f:
        f.seek(16 * BLOCK)
        assert f.read(6) == b"\x01CD001"
    assert os.path.getsize(iso) % BLOCK == 0
