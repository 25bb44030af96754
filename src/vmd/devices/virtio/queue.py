"""Split virtqueues (virtio 1.2, 2.7): walking descriptor chains the guest offers, returning used buffers.

Everything here comes from a guest and is checked: ring addresses and sizes, descriptor indexes, addresses
and lengths against guest memory, chain lengths (at most the queue size, so loops end), indirect tables
(2.7.5.3: one level, a whole number of descriptors, never combined with NEXT), and what one chain holds:
at most VIRTQ_MAX_CHAIN_BUFFERS buffers (IOV_MAX: one readv takes them all) and VIRTQ_MAX_CHAIN_BYTES bytes,
direct and indirect descriptors counted together. A violation raises QueueError; the device then sets
DEVICE_NEEDS_RESET (2.1.2) and stops using the queue.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from vmd.limits import VIRTQ_MAX_CHAIN_BUFFERS, VIRTQ_MAX_CHAIN_BYTES
from vmd.memory import GuestMemory, GuestMemoryError

# Descriptor flags (2.7.5)
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# Ring flags (2.7.6, 2.7.8)
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

DESCRIPTOR = struct.Struct("<QIHH")  # addr, len, flags, next (2.7.5)
USED_ELEM = struct.Struct("<II")  # id, len (2.7.8)
U16 = struct.Struct("<H")
MAX_QUEUE_SIZE = 32768  # 2.7: a power of two up to 32768
MAX_INDIRECT = 1024  # descriptors in one indirect table; also the chain limit with indirect tables


class QueueError(Exception):
    """The guest broke the virtqueue rules."""


@dataclass
class Chain:
    """One request: the head index, the device-readable buffers, then the device-writable ones."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_length(self) -> int:
        return sum(len(view) for view in self.readable)

    @property
    def writable_length(self) -> int:
        return sum(len(view) for view in self.writable)

    def read_all(self) -> bytes:
        return b"".join(bytes(view) for view in self.readable)


def split_views(views: list[memoryview], first: int) -> tuple[list[memoryview], list[memoryview]]:
    """Split a buffer list after `first` bytes: (the first `first` bytes, the rest). Raises if too short."""
    head: list[memoryview] = []
    rest: list[memoryview] = []
    need = first
    for view in views:
        if need >= len(view):
            head.append(view)
            need -= len(view)
        elif need > 0:
            head.append(view[:need])
            rest.append(view[need:])
            need = 0
        else:
            rest.append(view)
    if need:
        raise QueueError(f"buffers hold {first - need} bytes, {first} needed")
    return head, rest


def tail_views(views: list[memoryview], last: int) -> tuple[list[memoryview], list[memoryview]]:
    """Split a buffer list before its last `last` bytes: (everything else, the last `last` bytes)."""
    total = sum(len(view) for view in views)
    if total < last:
        raise QueueError(f"buffers hold {total} bytes, {last} needed")
    return split_views(views, total - last)


def copy_into(views: list[memoryview], data: bytes | memoryview) -> int:
    """Scatter data into views; returns the bytes written."""
    done = 0
    for view in views:
        if done >= len(data):
            break
        chunk = min(len(view), len(data) - done)
        view[:chunk] = data[done : done + chunk]
        done += chunk
    return done


class Virtqueue:
    """One split virtqueue as the driver configured it through the transport."""

    def __init__(self, memory: GuestMemory, index: int, max_size: int) -> None:
        self.memory = memory
        self.index = index
        self.max_size = max_size
        self.lock = threading.Lock()  # serialises used-ring updates from several workers
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.msix_vector = 0xFFFF
        self.event_idx = False
        self.last_avail = 0
        self.used_idx = 0
        self.signalled_used = 0
        self.broken = False

    def activate(self, event_idx: bool) -> None:
        """Check the driver's ring addresses (2.7: alignment and size) and start serving the queue."""
        size = self.size
        if size == 0 or size & (size - 1) or size > min(self.max_size, MAX_QUEUE_SIZE):
            raise QueueError(f"queue {self.index}: bad size {size}")
        if self.desc_addr % 16 or self.avail_addr % 2 or self.used_addr % 4:
            raise QueueError(f"queue {self.index}: misaligned rings")
        for address, length in ((self.desc_addr, 16 * size), (self.avail_addr, 6 + 2 * size),
                                (self.used_addr, 6 + 8 * size)):
            if not self.memory.contains(address, length):
                raise QueueError(f"queue {self.index}: ring at {address:#x}+{length:#x} is outside guest memory")
        self.desc = self.memory.view(self.desc_addr, 16 * size, writable=False)
        self.avail = self.memory.view(self.avail_addr, 6 + 2 * size, writable=False)
        try:
            self.used = self.memory.view(self.used_addr, 6 + 8 * size)
        except GuestMemoryError:
            raise QueueError(f"queue {self.index}: used ring at {self.used_addr:#x} is in read-only memory") from None
        self.event_idx = event_idx
        self.ready = True

    # -- the available ring ---------------------------------------------------------------------------
    def avail_idx(self) -> int:
        return int(U16.unpack_from(self.avail, 2)[0])

    def has_work(self) -> bool:
        return self.ready and not self.broken and self.avail_idx() != self.last_avail

    def pop(self) -> Chain | None:
        """The next chain the driver made available, or None."""
        if not self.ready or self.broken:
            return None
        avail_idx = self.avail_idx()
        pending = (avail_idx - self.last_avail) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.size:
            raise QueueError(f"queue {self.index}: avail index moved by {pending} (queue size {self.size})")
        head = U16.unpack_from(self.avail, 4 + 2 * (self.last_avail % self.size))[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:  # ask to be notified of the next buffer (2.7.10: avail_event)
            U16.pack_into(self.used, 4 + 8 * self.size, self.last_avail)
        return self._walk(head)

    def _walk(self, head: int) -> Chain:
        size = self.size
        if head >= size:
            raise QueueError(f"queue {self.index}: head {head} out of range")
        chain = Chain(head)
        table, table_size, index = self.desc, size, head
        seen = 0
        indirect = False
        limit = size
        buffers = total = 0
        while True:
            seen += 1
            if seen > limit:
                raise QueueError(f"queue {self.index}: descriptor chain longer than {limit} (a loop?)")
            address, length, flags, following = DESCRIPTOR.unpack_from(table, 16 * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect:
                    raise QueueError(f"queue {self.index}: nested indirect table")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise QueueError(f"queue {self.index}: indirect descriptor with NEXT")
                if length == 0 or length % 16 or length // 16 > MAX_INDIRECT:
                    raise QueueError(f"queue {self.index}: bad indirect table length {length}")
                table = self._guest(address, length, writable=False)
                table_size, index, indirect, seen, limit = length // 16, 0, True, 0, length // 16
                continue
            buffers += 1
            total += length
            if buffers > VIRTQ_MAX_CHAIN_BUFFERS:
                raise QueueError(f"queue {self.index}: chain of more than {VIRTQ_MAX_CHAIN_BUFFERS} buffers")
            if total > VIRTQ_MAX_CHAIN_BYTES:
                raise QueueError(f"queue {self.index}: chain of more than {VIRTQ_MAX_CHAIN_BYTES >> 20} MiB")
            view = self._guest(address, length, writable=bool(flags & VIRTQ_DESC_F_WRITE))
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append(view)
            else:
                if chain.writable:
                    raise QueueError(f"queue {self.index}: readable descriptor after a writable one")
                chain.readable.append(view)
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            if following >= table_size:
                raise QueueError(f"queue {self.index}: next {following} out of range")
            index = following

    def _guest(self, address: int, length: int, writable: bool) -> memoryview:
        try:
            return self.memory.view(address, length, writable)
        except GuestMemoryError as error:
            where = "in read-only memory" if self.memory.contains(address, length) else "outside guest memory"
            raise QueueError(f"queue {self.index}: buffer {address:#x}+{length:#x} is {where}") from error

    # -- the used ring --------------------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return a chain to the driver with `written` bytes written into its buffers (2.7.8)."""
        with self.lock:
            slot = self.used_idx % self.size
            USED_ELEM.pack_into(self.used, 4 + 8 * slot, head, written)
            self.used_idx = (self.used_idx + 1) & 0xFFFF
            U16.pack_into(self.used, 2, self.used_idx)  # x86 keeps stores in order: element before index

    def needs_interrupt(self) -> bool:
        """Should the driver be interrupted for what was pushed since the last interrupt? (2.7.7, 2.7.10)"""
        with self.lock:
            new, old = self.used_idx, self.signalled_used
            if new == old:
                return False
            self.signalled_used = new
            if self.event_idx:
                used_event = U16.unpack_from(self.avail, 4 + 2 * self.size)[0]
                return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
            return not U16.unpack_from(self.avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT
