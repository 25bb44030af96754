"""A tiny virtio 1.x PCI driver for unit tests: drives a transport through its config space and BARs,
exactly as a guest would, over a fake platform (no KVM)."""

from __future__ import annotations

import struct
from collections.abc import Callable

from vmd.devices.base import Bus, RecordingIrq
from vmd.devices.pci import COMMAND, COMMAND_MASTER, COMMAND_MEMORY
from vmd.devices.virtio.pci import (
    F_VERSION_1,
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VirtioDevice,
    VirtioPciTransport,
)
from vmd.memory import GuestMemory, MiB

BAR0, BAR1 = 0xE000_0000, 0xE001_0000
DESC, AVAIL, USED = 0x10000, 0x14000, 0x18000
BUFFERS = 0x40000
RING_STRIDE = 0xC000  # queue n's rings sit at DESC/AVAIL/USED + n * RING_STRIDE (below BUFFERS for n < 3)


def rings(queue: int) -> tuple[int, int, int]:
    """Guest addresses of queue n's descriptor table, available ring and used ring."""
    offset = RING_STRIDE * queue
    return DESC + offset, AVAIL + offset, USED + offset


class FakeVector:
    def __init__(self) -> None:
        self.message: tuple[int, int] | None = None
        self.fired = 0

    def program(self, address: int, data: int) -> None:
        self.message = (address, data)

    def fire(self) -> None:
        self.fired += 1

    def close(self) -> None:
        pass


class FakePlatform:
    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.vectors: list[FakeVector] = []
        self.intx = RecordingIrq()
        self.doorbells: list[tuple[int, Callable[[], None]]] = []

    def msi_vector(self) -> FakeVector:
        self.vectors.append(FakeVector())
        return self.vectors[-1]

    def intx_line(self, irq: int) -> RecordingIrq:
        return self.intx

    def add_doorbell(self, address: int, length: int, pio: bool, callback: Callable[[], None]) -> object:
        self.doorbells.append((address, callback))
        return (address, callback)

    def remove_doorbell(self, handle: object) -> None:
        self.doorbells.remove(handle)  # type: ignore[arg-type]

    def call_soon(self, callback: Callable[[], None]) -> None:
        callback()


class Driver:
    """Sets a device up (3.1.1) and submits descriptor chains (on queue 0 unless told otherwise)."""

    def __init__(self, device: VirtioDevice, memory_size: int = 4 * MiB) -> None:
        self.memory = GuestMemory(memory_size)
        self.platform = FakePlatform(self.memory)
        self.transport = VirtioPciTransport(device, self.platform, intx_irq=10)
        self.transport.set_bar_address(0, BAR0)
        self.transport.set_bar_address(1, BAR1)
        self.transport.config_write(COMMAND, 2, COMMAND_MEMORY | COMMAND_MASTER)
        self.avail_idxs = [0] * len(self.transport.queues)
        self.used_seens = [0] * len(self.transport.queues)
        self.sizes = [16] * len(self.transport.queues)
        self.next_buffer = BUFFERS

    # queue 0's driver-side indexes, under their original names
    @property
    def avail_idx(self) -> int:
        return self.avail_idxs[0]

    @avail_idx.setter
    def avail_idx(self, value: int) -> None:
        self.avail_idxs[0] = value

    @property
    def used_seen(self) -> int:
        return self.used_seens[0]

    @used_seen.setter
    def used_seen(self, value: int) -> None:
        self.used_seens[0] = value

    @property
    def queue_size(self) -> int:
        return self.sizes[0]

    @queue_size.setter
    def queue_size(self, value: int) -> None:
        self.sizes[0] = value

    # -- register access through the buses, as a guest -----------------------------------------------
    def common_write(self, offset: int, size: int, value: int) -> None:
        self.platform.mmio.write(BAR0 + offset, size, value)

    def common_read(self, offset: int, size: int) -> int:
        return self.platform.mmio.read(BAR0 + offset, size)

    def device_features(self) -> int:
        self.common_write(0x00, 4, 0)
        low = self.common_read(0x04, 4)
        self.common_write(0x00, 4, 1)
        return low | (self.common_read(0x04, 4) << 32)

    def setup(self, features: int | None = None, queue_size: int = 16, msix: bool = False, queues: int = 1) -> int:
        """Negotiate features and enable the first `queues` queues (queue n on MSI-X vector n with msix)."""
        self.common_write(0x14, 1, 0)
        self.common_write(0x14, 1, STATUS_ACKNOWLEDGE)
        self.common_write(0x14, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = self.device_features()
        chosen = offered if features is None else features
        for select in (0, 1):
            self.common_write(0x08, 4, select)
            self.common_write(0x0C, 4, (chosen >> (32 * select)) & 0xFFFF_FFFF)
        self.common_write(0x14, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        assert self.common_read(0x14, 1) & STATUS_FEATURES_OK or not chosen & F_VERSION_1
        if msix:
            self.enable_msix()
        for queue in range(queues):
            self.sizes[queue] = queue_size
            self.common_write(0x16, 2, queue)
            self.common_write(0x18, 2, queue_size)
            if msix:
                self.common_write(0x1A, 2, queue)
            for offset, address in zip((0x20, 0x28, 0x30), rings(queue), strict=True):
                self.common_write(offset, 4, address)
                self.common_write(offset + 4, 4, 0)
            self.common_write(0x1C, 2, 1)
        self.common_write(0x14, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        return chosen

    def enable_msix(self) -> None:
        cap = self.transport.msix_cap
        self.transport.config_write(cap + 2, 2, 1 << 15)
        for vector in range(self.transport.vectors):
            base = BAR1 + 16 * vector
            self.platform.mmio.write(base, 4, 0xFEE0_0000)
            self.platform.mmio.write(base + 4, 4, 0)
            self.platform.mmio.write(base + 8, 4, 0x40 + vector)
            self.platform.mmio.write(base + 12, 4, 0)  # unmask

    # -- buffers and requests --------------------------------------------------------------------------
    def buffer(self, data: bytes | int) -> int:
        size = data if isinstance(data, int) else len(data)
        address = self.next_buffer
        self.next_buffer += (size + 15) & ~15
        if not isinstance(data, int):
            self.memory.write(address, data)
        return address

    def submit(self, parts: list[tuple[int, int, bool]], head: int = 0, kick: bool = True, queue: int = 0) -> int:
        """parts: (address, length, device-writable). Writes descriptors head.. and makes the chain available."""
        desc, avail, _used = rings(queue)
        size = self.sizes[queue]
        for i, (address, length, writable) in enumerate(parts):
            flags = (1 if i + 1 < len(parts) else 0) | (2 if writable else 0)
            struct.pack_into("<QIHH", self.memory.view(desc, 16 * size), 16 * (head + i),
                             address, length, flags, head + i + 1)
        index = self.avail_idxs[queue]
        self.memory.write_u16(avail + 4 + 2 * (index % size), head)
        self.avail_idxs[queue] = (index + 1) & 0xFFFF
        self.memory.write_u16(avail + 2, self.avail_idxs[queue])
        if kick:
            self.kick(queue)
        return head

    def kick(self, queue: int = 0) -> None:
        self.platform.mmio.write(BAR0 + 0x3000 + 4 * queue, 2, queue)

    def used(self, queue: int = 0) -> list[tuple[int, int]]:
        """New used-ring entries since the last call: (head, written length)."""
        used = rings(queue)[2]
        index = self.memory.read_u16(used + 2)
        entries = []
        while self.used_seens[queue] != index:
            slot = self.used_seens[queue] % self.sizes[queue]
            entries.append(struct.unpack("<II", self.memory.read(used + 4 + 8 * slot, 8)))
            self.used_seens[queue] = (self.used_seens[queue] + 1) & 0xFFFF
        return entries

    def status(self) -> int:
        return self.common_read(0x14, 1)
