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
    """Sets a device up (3.1.1) and submits descriptor chains on queue 0."""

    def __init__(self, device: VirtioDevice, memory_size: int = 4 * MiB) -> None:
        self.memory = GuestMemory(memory_size)
        self.platform = FakePlatform(self.memory)
        self.transport = VirtioPciTransport(device, self.platform, intx_irq=10)
        self.transport.set_bar_address(0, BAR0)
        self.transport.set_bar_address(1, BAR1)
        self.transport.config_write(COMMAND, 2, COMMAND_MEMORY | COMMAND_MASTER)
        self.avail_idx = 0
        self.used_seen = 0
        self.next_buffer = BUFFERS

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

    def setup(self, features: int | None = None, queue_size: int = 16, msix: bool = False) -> int:
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
        self.queue_size = queue_size
        self.common_write(0x16, 2, 0)
        self.common_write(0x18, 2, queue_size)
        if msix:
            self.enable_msix()
            self.common_write(0x1A, 2, 0)
        for offset, address in ((0x20, DESC), (0x28, AVAIL), (0x30, USED)):
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

    def submit(self, parts: list[tuple[int, int, bool]], head: int = 0, kick: bool = True) -> int:
        """parts: (address, length, device-writable). Writes descriptors head.. and makes the chain available."""
        for i, (address, length, writable) in enumerate(parts):
            flags = (1 if i + 1 < len(parts) else 0) | (2 if writable else 0)
            struct.pack_into("<QIHH", self.memory.view(DESC, 16 * self.queue_size), 16 * (head + i),
                             address, length, flags, head + i + 1)
        self.memory.write_u16(AVAIL + 4 + 2 * (self.avail_idx % self.queue_size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(AVAIL + 2, self.avail_idx)
        if kick:
            self.kick()
        return head

    def kick(self, queue: int = 0) -> None:
        self.platform.mmio.write(BAR0 + 0x3000 + 4 * queue, 2, queue)

    def used(self) -> list[tuple[int, int]]:
        """New used-ring entries since the last call: (head, written length)."""
        index = self.memory.read_u16(USED + 2)
        entries = []
        while self.used_seen != index:
            slot = self.used_seen % self.queue_size
            entries.append(struct.unpack("<II", self.memory.read(USED + 4 + 8 * slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return entries

    def status(self) -> int:
        return self.common_read(0x14, 1)
