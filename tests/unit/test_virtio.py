"""The virtio PCI transport, split virtqueues against hostile drivers, virtio-rng and virtio-blk (no KVM)."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmd.devices.pci import CAP_ID_MSIX, CAP_ID_VENDOR
from vmd.devices.virtio.blk import F_RO, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT, VirtioBlk
from vmd.devices.virtio.pci import (
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
    VirtioDevice,
)
from vmd.devices.virtio.queue import QueueError, Virtqueue
from vmd.devices.virtio.rng import VirtioRng
from vmd.memory import FOUR_GIB, GuestMemory, MiB

from .virtio_driver import AVAIL, DESC, USED, Driver


class EchoDevice(VirtioDevice):
    """Returns every chain at once, writing its readable bytes reversed into its writable buffers."""

    device_type = 0x3F
    queue_sizes = (16,)

    def queue_notify(self, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            data = chain.read_all()[::-1]
            written = 0
            for view in chain.writable:
                piece = data[written : written + len(view)]
                view[: len(piece)] = piece
                written += len(piece)
            queue.push(chain.head, written)
        self.transport.interrupt(queue)


def test_the_device_presents_virtio_capabilities_and_msix() -> None:
    driver = Driver(EchoDevice())
    caps = driver.transport.capabilities()
    kinds = [driver.transport.config[offset + 3] for offset, cap_id in caps if cap_id == CAP_ID_VENDOR]
    assert sorted(kinds) == [1, 2, 3, 4]  # common, notify, ISR, device
    assert CAP_ID_MSIX in [cap_id for _, cap_id in caps]
    assert driver.transport.config_read(0, 2) == 0x1AF4
    assert driver.transport.config_read(2, 2) == 0x1040 + 0x3F


def test_features_must_include_version_1_and_only_offered_bits() -> None:
    driver = Driver(EchoDevice())
    offered = driver.device_features()
    assert offered & F_VERSION_1 and offered & F_EVENT_IDX and offered & F_INDIRECT_DESC
    driver.common_write(0x14, 1, 3)
    driver.common_write(0x08, 4, 0)
    driver.common_write(0x0C, 4, 0)  # no VERSION_1
    driver.common_write(0x14, 1, 3 | STATUS_FEATURES_OK)
    assert not driver.status() & STATUS_FEATURES_OK


def test_a_chain_round_trip_with_intx_and_isr() -> None:
    driver = Driver(EchoDevice())
    driver.setup(features=F_VERSION_1)
    out, back = driver.buffer(b"hello"), driver.buffer(8)
    driver.submit([(out, 5, False), (back, 8, True)])
    assert driver.used() == [(0, 5)]
    assert driver.memory.read(back, 5) == b"olleh"
    assert driver.platform.intx.level
    assert driver.common_read(0x1000, 1) == 1  # ISR: queue interrupt, and reading it acknowledges
    assert not driver.platform.intx.level
    assert driver.common_read(0x1000, 1) == 0


def test_msix_vectors_fire_and_masked_ones_stay_pending() -> None:
    driver = Driver(EchoDevice())
    driver.setup(features=F_VERSION_1, msix=True)
    driver.submit([(driver.buffer(b"x"), 1, False), (driver.buffer(1), 1, True)])
    vector = driver.transport._msi[0]
    assert vector is not None and vector.fired == 1 and vector.message == (0xFEE0_0000, 0x40)
    assert True not in driver.platform.intx.history  # MSI-X on: INTx stays quiet
    driver.platform.mmio.write(0xE001_0000 + 12, 4, 1)  # mask vector 0
    driver.submit([(driver.buffer(b"y"), 1, False), (driver.buffer(1), 1, True)], head=2)
    assert vector.fired == 1
    assert driver.platform.mmio.read(0xE001_0800, 8) & 1  # pending bit
    driver.platform.mmio.write(0xE001_0000 + 12, 4, 0)  # unmask: the pending message goes out
    assert vector.fired == 2
    assert not driver.platform.mmio.read(0xE001_0800, 8) & 1


def test_event_idx_suppresses_interrupts_until_used_event() -> None:
    driver = Driver(EchoDevice())
    driver.setup(features=F_VERSION_1 | F_EVENT_IDX)
    driver.memory.write_u16(AVAIL + 4 + 2 * 16, 5)  # used_event: interrupt me when used idx passes 5
    for head in range(0, 8, 2):
        driver.platform.intx.history.clear()
        driver.submit([(driver.buffer(b"a"), 1, False), (driver.buffer(1), 1, True)], head=head)
        assert not driver.platform.intx.history
    assert driver.memory.read_u16(USED + 4 + 8 * 16) == 4  # avail_event tells the driver where we are
    # used idx 5 reaches used_event without passing it (virtio 1.1, 2.6.7.2: vring_need_event): still quiet
    driver.submit([(driver.buffer(b"a"), 1, False), (driver.buffer(1), 1, True)], head=8)
    assert not driver.platform.intx.history
    # used idx 6 passes it: now the driver hears of it
    driver.submit([(driver.buffer(b"a"), 1, False), (driver.buffer(1), 1, True)], head=10)
    assert driver.platform.intx.history


def test_indirect_descriptors() -> None:
    driver = Driver(EchoDevice())
    driver.setup(features=F_VERSION_1 | F_INDIRECT_DESC)
    out, back = driver.buffer(b"abc"), driver.buffer(3)
    table = driver.buffer(32)
    driver.memory.write(table, struct.pack("<QIHH", out, 3, 1, 1) + struct.pack("<QIHH", back, 3, 2, 0))
    struct.pack_into("<QIHH", driver.memory.view(DESC, 16), 0, table, 32, 4, 0)  # one INDIRECT descriptor
    driver.memory.write_u16(AVAIL + 4, 0)
    driver.memory.write_u16(AVAIL + 2, 1)
    driver.kick()
    assert driver.used() == [(0, 3)]
    assert driver.memory.read(back, 3) == b"cba"


@pytest.mark.parametrize("case", ["loop", "outside", "head", "nested", "next_and_indirect", "jump", "rom"])
def test_broken_rings_set_needs_reset_and_leave_memory_alone(case: str) -> None:
    driver = Driver(EchoDevice())
    driver.setup(features=F_VERSION_1 | F_INDIRECT_DESC)
    desc = driver.memory.view(DESC, 16 * 16)
    if case == "loop":
        struct.pack_into("<QIHH", desc, 0, driver.buffer(4), 4, 1, 1)
        struct.pack_into("<QIHH", desc, 16, driver.buffer(4), 4, 1, 0)
        head = 0
    elif case == "outside":
        struct.pack_into("<QIHH", desc, 0, 64 * MiB, 4096, 0, 0)
        head = 0
    elif case == "head":
        head = 99
    elif case == "nested":
        inner = driver.buffer(16)
        driver.memory.write(inner, struct.pack("<QIHH", inner, 16, 4, 0))
        struct.pack_into("<QIHH", desc, 0, inner, 16, 4, 0)
        head = 0
    elif case == "next_and_indirect":
        struct.pack_into("<QIHH", desc, 0, driver.buffer(16), 16, 4 | 1, 1)
        head = 0
    elif case == "rom":  # a buffer for the device to write, in the firmware's read-only image
        rom = driver.memory.add_region(FOUR_GIB - 0x1000, b"\xea" * 16, read_only=True)
        struct.pack_into("<QIHH", desc, 0, driver.buffer(4), 4, 1, 1)
        struct.pack_into("<QIHH", desc, 16, rom.guest_address, 16, 2, 0)
        head = 0
    else:  # the avail index jumps further than the queue holds
        driver.memory.write_u16(AVAIL + 2, 40)
        driver.kick()
        assert driver.status() & STATUS_NEEDS_RESET
        return
    driver.memory.write_u16(AVAIL + 4, head)
    driver.memory.write_u16(AVAIL + 2, 1)
    driver.kick()
    assert driver.status() & STATUS_NEEDS_RESET
    assert driver.used() == []
    if case == "rom":
        assert driver.memory.read(FOUR_GIB - 0x1000, 16) == b"\xea" * 16
    driver.common_write(0x14, 1, 0)  # a reset brings the device back
    assert driver.status() == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.binary(min_size=16 * 8, max_size=16 * 8), avail=st.lists(st.integers(0, 0xFFFF), min_size=1,
                                                                             max_size=8),
       idx=st.integers(0, 0xFFFF))
def test_hostile_descriptor_tables_never_escape(table: bytes, avail: list[int], idx: int) -> None:
    memory = GuestMemory(2 * MiB)
    try:
        queue = Virtqueue(memory, 0, 8)
        queue.size, queue.desc_addr, queue.avail_addr, queue.used_addr = 8, DESC, AVAIL, USED
        memory.write(DESC, table)
        for i, head in enumerate(avail):
            memory.write_u16(AVAIL + 4 + 2 * i, head)
        memory.write_u16(AVAIL + 2, idx)
        queue.activate(event_idx=True)
        for _ in range(10):
            try:
                chain = queue.pop()
            except QueueError:
                break
            if chain is None:
                break
            for view in chain.readable + chain.writable:
                assert len(view) <= 2 * MiB
    finally:
        memory.close()


def test_rng_fills_buffers_with_random_bytes() -> None:
    driver = Driver(VirtioRng())
    driver.setup(features=F_VERSION_1)
    first, second = driver.buffer(64), driver.buffer(4096)
    driver.submit([(first, 64, True), (second, 4096, True)])
    assert driver.used() == [(0, 4160)]
    data = driver.memory.read(first, 64) + driver.memory.read(second, 4096)
    assert len(set(data)) > 200


class RawImage:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.read_only = read_only
        self.flushes = 0

    def preadv(self, buffers: list[memoryview], offset: int) -> int:
        return os.preadv(self.fd, buffers, offset)

    def pwritev(self, buffers: list[memoryview], offset: int) -> int:
        return os.pwritev(self.fd, buffers, offset)

    def flush(self) -> None:
        self.flushes += 1
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        os.pwrite(self.fd, bytes(length), offset)

    def write_zeroes(self, offset: int, length: int) -> None:
        os.pwrite(self.fd, bytes(length), offset)

    def close(self) -> None:
        os.close(self.fd)


def _blk_request(driver: Driver, kind: int, sector: int, data: bytes | int, head: int = 0) -> tuple[int, bytes]:
    header = driver.buffer(struct.pack("<IIQ", kind, 0, sector))
    status = driver.buffer(1)
    parts = [(header, 16, False)]
    if isinstance(data, bytes) and data:
        parts.append((driver.buffer(data), len(data), False))
    elif isinstance(data, int) and data:
        payload = driver.buffer(data)
        parts.append((payload, data, True))
    parts.append((status, 1, True))
    driver.submit(parts, head=head)
    deadline = time.monotonic() + 5
    while not (entries := driver.used()) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert entries, "no completion"
    result = driver.memory.read(parts[1][0], data) if isinstance(data, int) and data else b""
    return driver.memory.read_u8(status), result


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 2 * 64)  # 64 sectors
    return path


def test_blk_reads_writes_flushes_and_reports_its_id(disk: Path) -> None:
    image = RawImage(disk)
    device = VirtioBlk(image, serial="vmd-disk-0")
    driver = Driver(device)
    driver.setup(features=F_VERSION_1)
    assert driver.common_read(0x2000, 8) == 64  # capacity in sectors
    status, data = _blk_request(driver, T_IN, 1, 1024)
    assert status == S_OK and data == (bytes(range(256)) * 4)
    status, _ = _blk_request(driver, T_OUT, 2, b"\xab" * 512, head=3)
    assert status == S_OK
    status, _ = _blk_request(driver, T_FLUSH, 0, b"", head=6)
    assert status == S_OK and image.flushes == 1
    assert disk.read_bytes()[1024:1536] == b"\xab" * 512
    status, ident = _blk_request(driver, T_GET_ID, 0, 20, head=9)
    assert status == S_OK and ident.rstrip(b"\0") == b"vmd-disk-0"
    status, _ = _blk_request(driver, T_IN, 63, 1024, head=12)  # past the end
    assert status == S_IOERR
    status, _ = _blk_request(driver, 99, 0, b"", head=0)
    assert status == S_UNSUPP
    # vmd's metrics: what completed, and the two requests that failed (the read past the end, the unknown type)
    assert vars(device.stats) == {"reads": 1, "read_bytes": 1024, "writes": 1, "write_bytes": 512, "flushes": 1,
                                  "errors": 2}
    device.close()


def test_blk_read_only_refuses_writes(disk: Path) -> None:
    device = VirtioBlk(RawImage(disk, read_only=True))
    driver = Driver(device)
    assert driver.device_features() & F_RO
    driver.setup(features=F_VERSION_1 | F_RO)
    before = disk.read_bytes()
    status, _ = _blk_request(driver, T_OUT, 0, b"\x00" * 512)
    assert status == S_IOERR
    assert disk.read_bytes() == before
    device.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([0xE000_0000, 0xE001_0000]), st.integers(0, 0x3FFF),
                          st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1), st.booleans()),
                max_size=60))
def test_a_guest_poking_the_bars_at_random_never_breaks_the_device_model(accesses: list[tuple[int, int, int, int,
                                                                                               bool]]) -> None:
    """Whatever a driver writes to or reads from the virtio BARs, no exception leaves the device model."""
    driver = Driver(EchoDevice(), memory_size=2 * MiB)
    try:
        for bar, offset, size, value, write in accesses:
            if bar == 0xE001_0000:
                offset %= 0x1000
            address = bar + offset
            if write:
                driver.platform.mmio.write(address, size, value & ((1 << (8 * size)) - 1))
            else:
                driver.platform.mmio.read(address, size)
    finally:
        driver.memory.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)),
                max_size=40))
def test_random_pci_config_writes_keep_bars_and_buses_consistent(writes: list[tuple[int, int, int]]) -> None:
    """BAR moves, decode on/off, MSI-X enable/mask from random config writes: no exception, and the MMIO bus
    holds exactly the BARs that decode."""
    driver = Driver(EchoDevice(), memory_size=2 * MiB)
    try:
        transport = driver.transport
        for offset, size, value in writes:
            if offset + size <= 256:
                transport.config_write(offset, size, value & ((1 << (8 * size)) - 1))
        for index in (0, 1):
            address = transport.bar_mapping(index)
            if address is not None:
                entry = driver.platform.mmio.find(address)
                assert entry is not None and entry[0] == address
    finally:
        driver.memory.close()
