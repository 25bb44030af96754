"""What one guest request may make a device do (issue 9, hostile rings): a chain holds at most IOV_MAX
buffers and VIRTQ_MAX_CHAIN_BYTES bytes, direct and indirect descriptors together, or the queue is broken
(DEVICE_NEEDS_RESET); and no device copies a whole chain before it knows the request's size is sane."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from vmd.devices.virtio.blk import S_IOERR, VirtioBlk
from vmd.devices.virtio.pci import F_INDIRECT_DESC, F_VERSION_1, STATUS_NEEDS_RESET
from vmd.devices.virtio.rng import VirtioRng
from vmd.limits import IOV_MAX, VIRTQ_MAX_CHAIN_BYTES
from vmd.memory import MiB

from .test_virtio import RawImage
from .test_virtio_net import TX, Net
from .virtio_driver import Driver, rings

T_DISCARD = 11


def _offer_with_table(driver: Driver, direct: list[tuple[int, int, bool]], table: list[tuple[int, int, bool]],
                      queue: int = 0, kick: bool = True) -> None:
    """Make a chain available: the direct descriptors (address, length, device-writable), then one that
    points at an indirect table holding `table`."""
    table_address = driver.buffer(16 * len(table))
    for i, (address, length, writable) in enumerate(table):
        flags = (1 if i + 1 < len(table) else 0) | (2 if writable else 0)
        driver.memory.write(table_address + 16 * i, struct.pack("<QIHH", address, length, flags, i + 1))
    desc, avail, _used = rings(queue)
    for i, (address, length, writable) in enumerate(direct):
        driver.memory.write(desc + 16 * i, struct.pack("<QIHH", address, length, 1 | (2 if writable else 0), i + 1))
    driver.memory.write(desc + 16 * len(direct), struct.pack("<QIHH", table_address, 16 * len(table), 4, 0))
    index = driver.avail_idxs[queue]
    driver.memory.write_u16(avail + 4 + 2 * (index % driver.sizes[queue]), 0)
    driver.avail_idxs[queue] = (index + 1) & 0xFFFF
    driver.memory.write_u16(avail + 2, driver.avail_idxs[queue])
    if kick:
        driver.kick(queue)


def test_a_chain_of_more_than_iov_max_buffers_breaks_the_queue() -> None:
    # One direct buffer and a full indirect table: 1025 buffers. virtio-rng used to hand them all to readv,
    # which raised EINVAL out of the notify, and the chain never came back.
    driver = Driver(VirtioRng())
    driver.setup(features=F_VERSION_1 | F_INDIRECT_DESC)
    buffer = driver.buffer(16)
    _offer_with_table(driver, [(buffer, 16, True)], [(buffer, 16, True)] * IOV_MAX)
    assert driver.status() & STATUS_NEEDS_RESET
    assert driver.used() == []


def test_exactly_iov_max_buffers_are_served() -> None:
    driver = Driver(VirtioRng())
    driver.setup(features=F_VERSION_1 | F_INDIRECT_DESC)
    buffer = driver.buffer(16)
    _offer_with_table(driver, [], [(buffer, 16, True)] * IOV_MAX)
    assert not driver.status() & STATUS_NEEDS_RESET
    assert driver.used() == [(0, 16 * IOV_MAX)]


def test_a_chain_larger_than_the_byte_bound_breaks_the_queue() -> None:
    # 600 descriptors over one 1 MiB buffer: 600 MiB in one request, from a guest with 8 MiB of RAM.
    driver = Driver(VirtioRng(), memory_size=8 * MiB)
    driver.setup(features=F_VERSION_1 | F_INDIRECT_DESC)
    buffer = driver.buffer(MiB)
    count = VIRTQ_MAX_CHAIN_BYTES // MiB + 88
    _offer_with_table(driver, [], [(buffer, MiB, True)] * count)
    assert driver.status() & STATUS_NEEDS_RESET
    assert driver.used() == []


def test_a_huge_discard_is_refused_without_copying_it(tmp_path: Path) -> None:
    # A DISCARD whose data-out is 300 MiB (one 1 MiB buffer 300 times): its segment list may be 32 segments,
    # 512 bytes, so it is refused by its length, not joined first (the join took a 64 MiB guest to 8 GB).
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(64 * 512))
    device = VirtioBlk(RawImage(disk))
    driver = Driver(device, memory_size=8 * MiB)
    driver.setup(features=F_VERSION_1 | F_INDIRECT_DESC)
    header = driver.buffer(struct.pack("<IIQ", T_DISCARD, 0, 0))
    payload = driver.buffer(MiB)
    status = driver.buffer(1)
    tracemalloc.start()
    try:
        _offer_with_table(driver, [], [(header, 16, False), *[(payload, MiB, False)] * 300, (status, 1, True)])
        deadline = time.monotonic() + 10
        while not (entries := driver.used()) and time.monotonic() < deadline:
            time.sleep(0.005)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        device.close()
    assert entries == [(0, 1)]
    assert driver.memory.read_u8(status) == S_IOERR
    assert peak < 8 * MiB, f"the device allocated {peak >> 20} MiB for a refused request"


@pytest.fixture
def net() -> Net:
    device = Net(features=F_VERSION_1 | F_INDIRECT_DESC)
    yield device
    device.close()


def test_a_transmit_chain_larger_than_any_frame_is_dropped_without_copying_it(net: Net) -> None:
    # 200 MiB "frame" (a 1 MiB buffer 200 times): no frame is larger than a GSO packet, 64 KiB; it used to be
    # joined (1279 x 1 MiB took 1.3 GB per packet) and written to the tap.
    driver = net.driver
    buffer = driver.buffer(MiB)
    driver.memory.write(buffer, bytes(12) + b"\xff" * 6 + bytes.fromhex("fee1bad00001") + b"\x08\x00")
    tracemalloc.start()
    try:
        _offer_with_table(driver, [], [(buffer, MiB, False)] * 200, queue=TX)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert driver.used(TX) == [(0, 0)]
    assert net.tap_packets() == []
    assert net.device.stats.tx_dropped == 1
    assert not driver.status() & STATUS_NEEDS_RESET
    assert peak < 8 * MiB, f"the device allocated {peak >> 20} MiB for a dropped frame"


def test_a_transmit_chain_of_more_than_iov_max_buffers_never_reaches_the_tap(net: Net) -> None:
    # More buffers than writev takes were joined into one packet and sent; now the ring is broken.
    driver = net.driver
    frame = driver.buffer(64)
    driver.memory.write(frame, bytes(12) + b"\xff" * 6 + bytes.fromhex("fee1bad00001") + b"\x08\x00")
    _offer_with_table(driver, [(frame, 64, False)], [(frame, 64, False)] * IOV_MAX, queue=TX)
    assert driver.status() & STATUS_NEEDS_RESET
    assert net.tap_packets() == []
    assert driver.used(TX) == []
