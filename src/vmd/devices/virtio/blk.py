"""virtio-blk, the block device (virtio 1.2, 5.2), on a disk image (vmd.disk).

The event thread pops requests and hands each to a worker thread, which reads or writes the image straight
into or out of guest memory (preadv/pwritev on memoryviews of guest RAM: no intermediate copy), then returns
the chain and interrupts the driver. Several requests are in flight at once. A FLUSH completes only after
every write submitted before it has completed and the image has been synced to stable storage.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import Any

from vmd.devices.virtio.pci import VirtioDevice
from vmd.devices.virtio.queue import Chain, QueueError, Virtqueue, copy_into, split_views, tail_views
from vmd.devices.virtio.workers import RequestWorkers

log = logging.getLogger("vmd.virtio.blk")

VIRTIO_ID_BLOCK = 2
SECTOR = 512

# Feature bits (5.2.3)
F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# Request types and status (5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20

HEADER = struct.Struct("<IIQ")  # type, reserved, sector
SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags (5.2.6: discard / write zeroes)
SEGMENT_UNMAP = 1

QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2  # data descriptors in one request: the chain minus header and status
SIZE_MAX = 1 << 20  # largest data descriptor we promise to take (bytes)
MAX_DISCARD_SECTORS = 1 << 22
MAX_DISCARD_SEG = 32
WORKERS = 4


@dataclass
class BlkStats:
    """What the disk has served, for vmd's metrics: completed reads and writes and their bytes, flushes, and
    the requests that ended with an error status (IOERR or UNSUPP, 5.2.6). The worker threads add to these
    with plain `+=` (no lock per request): under the GIL a lost update needs a thread switch between the
    load and the store of one attribute, which CPython 3.11 only makes at calls and backward jumps."""

    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    flushes: int = 0
    errors: int = 0


class VirtioBlk(VirtioDevice):
    device_type = VIRTIO_ID_BLOCK
    pci_class = 0x018000  # mass storage, other (as QEMU's virtio-blk)
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, image: Any, serial: str = "", read_only: bool = False, workers: int = WORKERS) -> None:
        """image: a vmd.disk image (size, read_only, preadv, pwritev, flush, discard, write_zeroes, close)."""
        self.image = image
        self.read_only = read_only or bool(getattr(image, "read_only", False))
        self.serial = serial.encode()[:ID_BYTES]
        self.capacity = image.size // SECTOR
        self.device_features = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES
        if self.read_only:
            self.device_features = (self.device_features | F_RO) & ~(F_DISCARD | F_WRITE_ZEROES)
        self._workers = RequestWorkers("vioblk", workers)
        self._generation = 0  # bumped on reset: completions of an older generation are dropped
        self._order = threading.Condition()
        self._submitted = 0  # requests handed to workers, in order
        self._writes_in_flight: set[int] = set()
        self.stats = BlkStats()

    @property
    def config(self) -> bytes:
        # struct virtio_blk_config (5.2.4)
        return struct.pack(
            "<QIIHBBIBBHIBBHIIIIIB3x",
            self.capacity, SIZE_MAX, SEG_MAX, 0, 0, 0, SECTOR,
            0, 0, 0, 0,  # topology: physical_block_exp, alignment_offset, min_io_size, opt_io_size
            0, 0, 1,  # writeback, unused0, num_queues
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # discard limits and sector alignment
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # write zeroes limits, may unmap
        )

    # -- requests -------------------------------------------------------------------------------------
    def queue_notify(self, queue: Virtqueue) -> None:
        generation = self._generation
        while True:
            chain = queue.pop()
            if chain is None:
                return
            with self._order:
                self._submitted += 1
                ticket = self._submitted
            self._workers.submit(self._serve, queue, chain, ticket, generation)

    def _serve(self, queue: Virtqueue, chain: Chain, ticket: int, generation: int) -> None:
        try:
            written = self._handle(chain, ticket)
        except QueueError as error:
            self.transport.fail(str(error))
            return
        except Exception:  # a bug here must not kill the worker or leave the request hanging
            log.exception("virtio-blk request failed")
            return
        if generation != self._generation:
            return
        queue.push(chain.head, written)
        self.transport.interrupt(queue)

    def _handle(self, chain: Chain, ticket: int) -> int:
        header_views, data_out = split_views(chain.readable, HEADER.size)
        header = b"".join(bytes(v) for v in header_views)
        kind, _reserved, sector = HEADER.unpack(header)
        if not chain.writable:
            raise QueueError("virtio-blk request without a status byte")
        data_in, status_views = tail_views(chain.writable, 1)
        status_view = status_views[-1]

        stats = self.stats

        def done(status: int, written: int = 0) -> int:
            status_view[0] = status
            if status != S_OK:
                stats.errors += 1
            return written + 1

        if kind == T_IN:
            length = sum(len(v) for v in data_in)
            if not self._in_range(sector, length):
                return done(S_IOERR)
            try:
                count = self.image.preadv(data_in, sector * SECTOR)
            except OSError as error:
                log.warning("read error at sector %d: %s", sector, error)
                return done(S_IOERR)
            stats.reads += 1
            stats.read_bytes += count
            return done(S_OK, count)
        if kind == T_OUT:
            length = sum(len(v) for v in data_out)
            if self.read_only or not self._in_range(sector, length):
                return done(S_IOERR)
            with self._order:
                self._writes_in_flight.add(ticket)
            try:
                self.image.pwritev(data_out, sector * SECTOR)
            except OSError as error:
                log.warning("write error at sector %d: %s", sector, error)
                return done(S_IOERR)
            finally:
                with self._order:
                    self._writes_in_flight.discard(ticket)
                    self._order.notify_all()
            stats.writes += 1
            stats.write_bytes += length
            return done(S_OK)
        if kind == T_FLUSH:
            with self._order:  # every write submitted before this flush has completed (5.2.6.2)
                self._order.wait_for(lambda: not any(t < ticket for t in self._writes_in_flight))
            try:
                self.image.flush()
            except OSError as error:
                log.warning("flush failed: %s", error)
                return done(S_IOERR)
            stats.flushes += 1
            return done(S_OK)
        if kind == T_GET_ID:
            copy_into(data_in, self.serial.ljust(ID_BYTES, b"\0")[: sum(len(v) for v in data_in)])
            return done(S_OK, min(ID_BYTES, sum(len(v) for v in data_in)))
        if kind in (T_DISCARD, T_WRITE_ZEROES):
            if self.read_only:
                return done(S_IOERR)
            size = sum(len(v) for v in data_out)  # checked before anything is copied: at most 32 segments
            if not size or size % SEGMENT.size or size // SEGMENT.size > MAX_DISCARD_SEG:
                return done(S_IOERR)
            payload = b"".join(bytes(v) for v in data_out)
            for start, count, flags in SEGMENT.iter_unpack(payload):
                if count > MAX_DISCARD_SECTORS or not self._in_range(start, count * SECTOR) or flags & ~SEGMENT_UNMAP:
                    return done(S_UNSUPP if flags & ~SEGMENT_UNMAP else S_IOERR)
            try:
                for start, count, _flags in SEGMENT.iter_unpack(payload):
                    if kind == T_DISCARD:
                        self.image.discard(start * SECTOR, count * SECTOR)
                    else:
                        self.image.write_zeroes(start * SECTOR, count * SECTOR)
            except OSError as error:
                log.warning("discard/write zeroes failed: %s", error)
                return done(S_IOERR)
            return done(S_OK)
        return done(S_UNSUPP)

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector + length // SECTOR <= self.capacity

    # -- lifecycle ------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._generation += 1

    def close(self) -> None:
        self._generation += 1
        self._workers.close()
        try:
            self.image.flush()
        except OSError:
            pass
        self.image.close()
