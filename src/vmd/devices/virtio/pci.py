"""The virtio 1.x PCI transport (virtio 1.2, 4.1), with MSI-X and legacy INTx interrupts.

BAR 0 (32-bit memory, 16 KiB) holds the virtio structures the capabilities point at:

    0x0000  common configuration (4.1.4.3)
    0x1000  ISR status (4.1.4.5)
    0x2000  device-specific configuration (4.1.4.6)
    0x3000  notifications: queue n at 0x3000 + 4 n (notify_off_multiplier 4, 4.1.4.4); each is an
            ioeventfd, so a guest's kick wakes the VM's event thread without a trip through a vCPU thread.

BAR 1 (32-bit memory, 4 KiB) holds the MSI-X table at 0 and its pending-bit array at 0x800 (PCI 3.0, 6.8.2).
With MSI-X enabled, each vector is an MSI route with an irqfd; without it, the device raises INTx and sets
ISR bits, which the driver clears by reading ISR.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable

from vmd.devices.base import IrqLine, MsiVector, Platform
from vmd.devices.pci import CAP_ID_MSIX, CAP_ID_VENDOR, COMMAND, COMMAND_INTX_DISABLE, PciDevice
from vmd.devices.virtio.queue import QueueError, Virtqueue

log = logging.getLogger("vmd.virtio")

VIRTIO_VENDOR = 0x1AF4
VIRTIO_MODERN_DEVICE_BASE = 0x1040  # device id = 0x1040 + virtio device type (4.1.2.1)

# Device status bits (2.1)
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# Feature bits (6)
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32

# Capability types (4.1.4)
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 1, 2, 3, 4, 5

COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
BAR_SIZE = 0x4000
NOTIFY_MULTIPLIER = 4
MSIX_BAR_SIZE = 0x1000
MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET = 0x000, 0x800
NO_VECTOR = 0xFFFF

# MSI-X message control (PCI 3.0, 6.8.2.3)
MSIX_ENABLE = 1 << 15
MSIX_FUNCTION_MASK = 1 << 14

ISR_QUEUE = 1
ISR_CONFIG = 2


class VirtioDevice:
    """Device logic behind the transport. Subclasses set the class attributes and serve queue_notify."""

    device_type = 0
    pci_class = 0xFF0000
    queue_sizes: tuple[int, ...] = (256,)
    device_features = 0

    transport: VirtioPciTransport

    def attach(self, transport: VirtioPciTransport) -> None:
        self.transport = transport

    @property
    def config(self) -> bytes:
        """The device configuration space (override for devices that have one)."""
        return b""

    def config_read(self, offset: int, size: int) -> int:
        data = self.config
        if offset + size > len(data):
            return 0
        return int.from_bytes(data[offset : offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Most device configuration is read-only."""

    def queue_notify(self, queue: Virtqueue) -> None:
        """The driver made buffers available on queue (called on the event thread)."""

    def driver_ok(self) -> None:
        """The driver finished setting the device up."""

    def reset(self) -> None:
        """The driver reset the device: forget every request."""

    def close(self) -> None:
        """The VM is going away."""


COMMON_FIELDS = {  # offset: (name, size)
    0x00: ("device_feature_select", 4), 0x04: ("device_feature", 4), 0x08: ("driver_feature_select", 4),
    0x0C: ("driver_feature", 4), 0x10: ("config_msix_vector", 2), 0x12: ("num_queues", 2),
    0x14: ("device_status", 1), 0x15: ("config_generation", 1), 0x16: ("queue_select", 2),
    0x18: ("queue_size", 2), 0x1A: ("queue_msix_vector", 2), 0x1C: ("queue_enable", 2),
    0x1E: ("queue_notify_off", 2), 0x20: ("queue_desc_lo", 4), 0x24: ("queue_desc_hi", 4),
    0x28: ("queue_driver_lo", 4), 0x2C: ("queue_driver_hi", 4), 0x30: ("queue_device_lo", 4),
    0x34: ("queue_device_hi", 4), 0x38: ("queue_notify_data", 2), 0x3A: ("queue_reset", 2),
}
COMMON_SIZE = 0x3C


class VirtioPciTransport(PciDevice):
    """A virtio device on PCI, as a modern (non-transitional) virtio 1.x function."""

    def __init__(self, device: VirtioDevice, platform: Platform, intx_irq: int) -> None:
        super().__init__(VIRTIO_VENDOR, VIRTIO_MODERN_DEVICE_BASE + device.device_type, device.pci_class,
                         revision=1, subsystem_vendor_id=VIRTIO_VENDOR,
                         subsystem_id=VIRTIO_MODERN_DEVICE_BASE + device.device_type, interrupt_pin=1)
        self.device = device
        self.platform = platform
        self.memory = platform.memory
        self.lock = threading.RLock()
        self.queues = [Virtqueue(self.memory, i, size) for i, size in enumerate(device.queue_sizes)]
        self.vectors = len(self.queues) + 1
        self.features = device.device_features | F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC
        self.config[0x3C] = intx_irq  # interrupt line: where the MP table routes our INTA#
        self.intx_irq = intx_irq
        self._intx: IrqLine = platform.intx_line(intx_irq)
        self._msix_table = bytearray(16 * self.vectors)
        for vector in range(self.vectors):
            self._msix_table[16 * vector + 12] = 1  # every vector starts masked
        self._msix_pending = 0
        self._msi: list[MsiVector | None] = [None] * self.vectors
        self._doorbells: list[object] = []
        self._bar0: int | None = None
        self._bar1: int | None = None
        self.add_bar(0, BAR_SIZE)
        self.add_bar(1, MSIX_BAR_SIZE)
        self._add_virtio_cap(CAP_COMMON, COMMON_OFFSET, COMMON_SIZE)
        self._add_virtio_cap(CAP_NOTIFY, NOTIFY_OFFSET, NOTIFY_MULTIPLIER * len(self.queues),
                             struct.pack("<I", NOTIFY_MULTIPLIER))
        self._add_virtio_cap(CAP_ISR, ISR_OFFSET, 1)
        self._add_virtio_cap(CAP_DEVICE, DEVICE_OFFSET, max(1, len(device.config)))
        # MSI-X (PCI 3.0, 6.8.2): message control (table size - 1), table and PBA in BAR 1
        self.msix_cap = self.add_capability(
            CAP_ID_MSIX,
            struct.pack("<HII", self.vectors - 1, MSIX_TABLE_OFFSET | 1, MSIX_PBA_OFFSET | 1),
            writable=struct.pack("<HII", MSIX_ENABLE | MSIX_FUNCTION_MASK, 0, 0))
        self.reset_state()
        device.attach(self)

    def _add_virtio_cap(self, cfg_type: int, offset: int, length: int, extra: bytes = b"") -> None:
        # struct virtio_pci_cap (4.1.4): cap_vndr, cap_next, cap_len, cfg_type, bar, id, padding[2], offset, length
        body = struct.pack("<BBBBBBII", 16 + len(extra), cfg_type, 0, 0, 0, 0, offset, length) + extra
        self.add_capability(CAP_ID_VENDOR, body)

    # -- state ----------------------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.config_msix_vector = NO_VECTOR
        self.config_generation = 0
        self.queue_select = 0
        self.isr = 0
        for queue in self.queues:
            queue.reset()
        self._intx.set_level(False)

    @property
    def negotiated(self) -> int:
        return self.driver_features

    # -- BAR placement --------------------------------------------------------------------------------
    def bar_changed(self, index: int, old: int | None, new: int | None) -> None:
        mmio = self.platform.mmio
        if index == 0:
            for handle in self._doorbells:
                self.platform.remove_doorbell(handle)
            self._doorbells = []
            self._bar0 = new
            if self.place_bar(mmio, 0, new, self._bar0_read, self._bar0_write):
                assert new is not None
                for queue in self.queues:
                    address = new + NOTIFY_OFFSET + NOTIFY_MULTIPLIER * queue.index
                    self._doorbells.append(self.platform.add_doorbell(address, 2, False, self._kicker(queue)))
        elif index == 1:
            self._bar1 = new
            self.place_bar(mmio, 1, new, self._msix_read, self._msix_write)

    # -- BAR 0: common configuration, ISR, device configuration, notifications ------------------------
    def _bar0_read(self, offset: int, size: int) -> int:
        if offset < COMMON_SIZE:
            with self.lock:
                return self._common_read(offset, size)
        if offset == ISR_OFFSET:
            with self.lock:
                value, self.isr = self.isr, 0  # reading ISR acknowledges it (4.1.4.5)
                self._intx.set_level(False)
                return value
        if DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            return self.device.config_read(offset - DEVICE_OFFSET, size)
        return 0

    def _bar0_write(self, offset: int, size: int, value: int) -> None:
        if offset < COMMON_SIZE:
            with self.lock:
                self._common_write(offset, size, value)
        elif DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            self.device.config_write(offset - DEVICE_OFFSET, size, value)
            with self.lock:
                self.config_generation = (self.config_generation + 1) & 0xFF
        elif offset >= NOTIFY_OFFSET:
            index = (offset - NOTIFY_OFFSET) // NOTIFY_MULTIPLIER
            if index < len(self.queues):  # a kick the ioeventfd did not catch
                queue = self.queues[index]
                self.platform.call_soon(lambda: self._kick(queue))

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _common_read(self, offset: int, size: int) -> int:
        if 0x20 <= offset < 0x38:  # the 64-bit ring addresses, read as halves (or whole)
            base = offset & ~3
            if size == 8 and offset % 8 == 0:
                return self._common_dword(base) | (self._common_dword(base + 4) << 32)
            return (self._common_dword(base) >> (8 * (offset - base))) & ((1 << (8 * size)) - 1)
        return self._common_value(offset, size)

    def _common_dword(self, base: int) -> int:
        queue = self._selected()
        if queue is None:
            return 0
        address = {0x20: queue.desc_addr, 0x24: queue.desc_addr, 0x28: queue.avail_addr, 0x2C: queue.avail_addr,
                   0x30: queue.used_addr, 0x34: queue.used_addr}[base]
        return (address >> 32) if base % 8 else address & 0xFFFF_FFFF

    def _common_value(self, offset: int, size: int) -> int:
        field = COMMON_FIELDS.get(offset)
        if field is None:
            return 0
        name = field[0]
        queue = self._selected()
        if name == "device_feature_select":
            return self.device_feature_select
        if name == "device_feature":
            return (self.features >> (32 * self.device_feature_select)) & 0xFFFF_FFFF \
                if self.device_feature_select < 2 else 0
        if name == "driver_feature_select":
            return self.driver_feature_select
        if name == "driver_feature":
            return (self.driver_features >> (32 * self.driver_feature_select)) & 0xFFFF_FFFF \
                if self.driver_feature_select < 2 else 0
        if name == "config_msix_vector":
            return self.config_msix_vector
        if name == "num_queues":
            return len(self.queues)
        if name == "device_status":
            return self.status
        if name == "config_generation":
            return self.config_generation
        if name == "queue_select":
            return self.queue_select
        if queue is None:
            return 0
        if name == "queue_size":
            return queue.size
        if name == "queue_msix_vector":
            return queue.msix_vector
        if name == "queue_enable":
            return 1 if queue.ready else 0
        if name == "queue_notify_off":
            return queue.index
        return 0

    def _common_write(self, offset: int, size: int, value: int) -> None:
        if 0x20 <= offset < 0x38:
            queue = self._selected()
            if queue is None or queue.ready:
                return
            if size == 8 and offset % 8 == 0:
                self._common_write(offset, 4, value & 0xFFFF_FFFF)
                self._common_write(offset + 4, 4, value >> 32)
                return
            base = offset & ~3
            attr = {0x20: "desc_addr", 0x24: "desc_addr", 0x28: "avail_addr", 0x2C: "avail_addr",
                    0x30: "used_addr", 0x34: "used_addr"}[base]
            current = getattr(queue, attr)
            shift = 32 if base % 8 else 0
            shift += 8 * (offset - base)
            mask = ((1 << (8 * size)) - 1) << shift
            setattr(queue, attr, (current & ~mask) | ((value << shift) & mask))
            return
        field = COMMON_FIELDS.get(offset)
        if field is None:
            return
        name = field[0]
        if name == "device_feature_select":
            self.device_feature_select = value
        elif name == "driver_feature_select":
            self.driver_feature_select = value
        elif name == "driver_feature":
            if self.driver_feature_select < 2 and not self.status & STATUS_FEATURES_OK:
                shift = 32 * self.driver_feature_select
                self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)
        elif name == "config_msix_vector":
            self.config_msix_vector = value if value < self.vectors else NO_VECTOR
        elif name == "device_status":
            self._set_status(value & 0xFF)
        elif name == "queue_select":
            self.queue_select = value
        else:
            queue = self._selected()
            if queue is None:
                return
            if name == "queue_size" and not queue.ready:
                queue.size = value
            elif name == "queue_msix_vector":
                queue.msix_vector = value if value < self.vectors else NO_VECTOR
            elif name == "queue_enable" and value == 1 and not queue.ready:
                try:
                    queue.activate(bool(self.driver_features & F_EVENT_IDX))
                except QueueError as error:
                    self.fail(str(error))

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.device.reset()
            self.reset_state()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            # 3.1.1: the device refuses features it did not offer, and a 1.x driver must take VERSION_1
            if self.driver_features & ~self.features or not self.driver_features & F_VERSION_1:
                value &= ~STATUS_FEATURES_OK
        became_ok = value & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK
        self.status = value | (self.status & STATUS_NEEDS_RESET)
        if became_ok:
            self.device.driver_ok()

    # -- failures -------------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """The driver broke the rules: DEVICE_NEEDS_RESET (2.1.2), tell it, and stop serving queues."""
        with self.lock:
            if self.status & STATUS_NEEDS_RESET:
                return
            log.warning("virtio %s: %s: device needs reset", type(self.device).__name__, reason)
            self.status |= STATUS_NEEDS_RESET
            for queue in self.queues:
                queue.broken = True
        self.config_changed()

    # -- notifications and interrupts -----------------------------------------------------------------
    def _kicker(self, queue: Virtqueue) -> Callable[[], None]:
        return lambda: self._kick(queue)

    def _kick(self, queue: Virtqueue) -> None:
        if not queue.ready or queue.broken or not self.status & STATUS_DRIVER_OK:
            return
        try:
            self.device.queue_notify(queue)
        except QueueError as error:
            self.fail(str(error))

    def interrupt(self, queue: Virtqueue) -> None:
        """Tell the driver about used buffers on queue, if it wants to know (2.7.7, 2.7.10)."""
        if queue.needs_interrupt():
            self._signal(queue.msix_vector, ISR_QUEUE)

    def config_changed(self) -> None:
        with self.lock:
            self.config_generation = (self.config_generation + 1) & 0xFF
        self._signal(self.config_msix_vector, ISR_CONFIG)

    def _msix_control(self) -> int:
        return self.get(self.msix_cap + 2, 2)

    def _signal(self, vector: int, isr_bit: int) -> None:
        with self.lock:
            control = self._msix_control()
            if control & MSIX_ENABLE:
                if vector >= self.vectors:
                    return
                if control & MSIX_FUNCTION_MASK or self._msix_table[16 * vector + 12] & 1:
                    self._msix_pending |= 1 << vector  # delivered when unmasked (PCI 3.0, 6.8.3.5)
                    return
                route = self._route(vector)
            else:
                self.isr |= isr_bit
                if not self.get(COMMAND, 2) & COMMAND_INTX_DISABLE:
                    self._intx.set_level(True)
                return
        route.fire()

    def _route(self, vector: int) -> MsiVector:
        route = self._msi[vector]
        if route is None:
            route = self.platform.msi_vector()
            self._msi[vector] = route
            entry = self._msix_table[16 * vector : 16 * vector + 12]
            low, high, data = struct.unpack("<III", entry)
            route.program(low | (high << 32), data)
        return route

    # -- BAR 1: the MSI-X table and pending bits (PCI 3.0, 6.8.2.6-7) ---------------------------------
    def _msix_read(self, offset: int, size: int) -> int:
        with self.lock:
            if offset < len(self._msix_table):
                return int.from_bytes(self._msix_table[offset : offset + size], "little")
            if MSIX_PBA_OFFSET <= offset < MSIX_PBA_OFFSET + 8:
                return (self._msix_pending >> (8 * (offset - MSIX_PBA_OFFSET))) & ((1 << (8 * size)) - 1)
            return 0

    def _msix_write(self, offset: int, size: int, value: int) -> None:
        pending: list[MsiVector] = []
        with self.lock:
            if offset + size > len(self._msix_table):
                return
            self._msix_table[offset : offset + size] = value.to_bytes(size, "little")
            vector = offset // 16
            low, high, data, control = struct.unpack_from("<IIII", self._msix_table, 16 * vector)
            if offset % 16 < 12:  # address or data changed: reprogram a route that exists
                route = self._msi[vector]
                if route is not None:
                    route.program(low | (high << 32), data)
            if not control & 1 and self._msix_pending & (1 << vector) \
                    and not self._msix_control() & MSIX_FUNCTION_MASK:
                self._msix_pending &= ~(1 << vector)
                pending.append(self._route(vector))
        for route in pending:
            route.fire()

    def config_write(self, offset: int, size: int, value: int) -> None:
        super().config_write(offset, size, value)
        if offset <= self.msix_cap + 3 and offset + size > self.msix_cap + 2:
            self._deliver_unmasked()

    def _deliver_unmasked(self) -> None:
        fire: list[MsiVector] = []
        with self.lock:
            control = self._msix_control()
            if not control & MSIX_ENABLE or control & MSIX_FUNCTION_MASK:
                return
            for vector in range(self.vectors):
                if self._msix_pending & (1 << vector) and not self._msix_table[16 * vector + 12] & 1:
                    self._msix_pending &= ~(1 << vector)
                    fire.append(self._route(vector))
        for route in fire:
            route.fire()

    def close(self) -> None:
        self.device.close()
        for route in self._msi:
            if route is not None:
                route.close()
        for handle in self._doorbells:
            self.platform.remove_doorbell(handle)
        self._doorbells = []
