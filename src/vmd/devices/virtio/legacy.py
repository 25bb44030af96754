"""A legacy (virtio 0.9.5) PCI transport: one I/O BAR holding the whole register file, INTx interrupts only.

OpenBSD's vmd keeps exactly one such device, vmmci (the VMM control interface); everything else it offers
is modern virtio 1.x (pci.py). The layout of I/O BAR 0 is the "legacy interface" of virtio 1.2, 4.1.4.8
(virtio 0.9.5, 2.1 "PCI discovery" and 2.2 "Device configuration"), without MSI-X:

    0x00  host (device) features     32 bits, read-only
    0x04  guest (driver) features    32 bits, read-write
    0x08  queue address              32 bits, read-write: the page frame number (4096-byte pages) of the
                                     selected queue's rings, 0 to stop using the queue
    0x0C  queue size                 16 bits, read-only: 0 when the selected queue does not exist
    0x0E  queue select               16 bits, read-write
    0x10  queue notify               16 bits, write: a queue index
    0x12  device status              8 bits, read-write; writing 0 resets the device
    0x13  ISR status                 8 bits, read-only; reading it clears it and lowers INTx
    0x14  device-specific configuration (no MSI-X capability, so it starts right here)

A legacy queue lives in one physically contiguous area (virtio 1.2, 2.7 "Legacy Interfaces: A Note on
Virtqueue Layout"): the descriptor table at PFN * 4096, the available ring straight after it, the used ring
at the next 4096-byte boundary.

Subclasses provide the device: `host_features`, `device_config_read`/`device_config_write`, and the
`device_reset`, `driver_ok` and `queue_notify` hooks. Interrupts are level INTx: `interrupt_queue()` and
`interrupt_config()` set ISR bits (bit 0 queue, bit 1 configuration change) and raise the line, which stays
up until the driver reads ISR.
"""

from __future__ import annotations

import logging
import threading

from vmd.devices.base import Bus, IrqLine
from vmd.devices.pci import COMMAND, COMMAND_INTX_DISABLE, PciDevice
from vmd.devices.virtio.queue import QueueError, Virtqueue
from vmd.memory import GuestMemory

log = logging.getLogger("vmd.virtio.legacy")

# Register offsets in I/O BAR 0 (virtio 1.2, 4.1.4.8)
HOST_FEATURES = 0x00
GUEST_FEATURES = 0x04
QUEUE_PFN = 0x08
QUEUE_SIZE = 0x0C
QUEUE_SELECT = 0x0E
QUEUE_NOTIFY = 0x10
DEVICE_STATUS = 0x12
ISR_STATUS = 0x13
DEVICE_CONFIG = 0x14  # VIRTIO_PCI_CONFIG_OFF without MSI-X (OpenBSD: VIRTIO_CONFIG_DEVICE_CONFIG_NOMSI)
HEADER_SIZE = DEVICE_CONFIG

# Device status bits (virtio 1.2, 2.1; the same values in 0.9.5)
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FAILED = 0x80

ISR_QUEUE = 1
ISR_CONFIG = 2

LEGACY_PAGE = 4096  # VIRTIO_PCI_QUEUE_ADDR_SHIFT 12 and the legacy ring alignment


def legacy_ring_addresses(pfn: int, size: int) -> tuple[int, int, int]:
    """(descriptor table, available ring, used ring) of a legacy queue of `size` entries at page `pfn`."""
    desc = pfn * LEGACY_PAGE
    avail = desc + 16 * size
    used = (avail + 6 + 2 * size + LEGACY_PAGE - 1) & ~(LEGACY_PAGE - 1)
    return desc, avail, used


def _bar_size(config_size: int) -> int:
    size = 32
    while size < HEADER_SIZE + config_size:
        size *= 2
    return size


class LegacyVirtioPci(PciDevice):
    """A virtio 0.9 PCI function. `pio` is the I/O bus the BAR is placed on when the guest enables it; the
    machine may instead call `pio_read`/`pio_write` with offsets into the BAR itself."""

    host_features = 0
    config_size = 0  # bytes of device-specific configuration after the header

    def __init__(self, vendor_id: int, device_id: int, class_code: int, subsystem_vendor_id: int,
                 subsystem_id: int, intx: IrqLine, *, revision: int = 0, pio: Bus | None = None,
                 memory: GuestMemory | None = None, queue_sizes: tuple[int, ...] = (),
                 interrupt_line: int | None = None) -> None:
        super().__init__(vendor_id, device_id, class_code, revision=revision,
                         subsystem_vendor_id=subsystem_vendor_id, subsystem_id=subsystem_id, interrupt_pin=1)
        if queue_sizes and memory is None:
            raise ValueError("a legacy virtio device with queues needs guest memory")
        self.intx = intx
        self.pio = pio
        self.lock = threading.RLock()
        self.queues = [Virtqueue(memory, i, size) for i, size in enumerate(queue_sizes)] \
            if memory is not None else []
        self.bar_size = _bar_size(self.config_size)
        if interrupt_line is not None:
            self.config[0x3C] = interrupt_line & 0xFF
        self.add_bar(0, self.bar_size, io=True)
        self._port: int | None = None
        self._reset_registers()

    # -- state ----------------------------------------------------------------------------------------
    def _reset_registers(self) -> None:
        self.status = 0
        self.guest_features = 0
        self.queue_select = 0
        self.isr = 0
        self.queue_pfns = [0] * len(self.queues)
        for queue in self.queues:
            queue.reset()
        self.intx.set_level(False)

    @property
    def negotiated(self) -> int:
        return self.guest_features

    @property
    def driver_ready(self) -> bool:
        return bool(self.status & STATUS_DRIVER_OK)

    # -- hooks for the device -------------------------------------------------------------------------
    def device_config_read(self, offset: int, size: int) -> int:
        """A read of the device-specific configuration (offset from its start)."""
        return 0

    def device_config_write(self, offset: int, size: int, value: int) -> None:
        """A write to the device-specific configuration."""

    def device_reset(self) -> None:
        """The driver wrote status 0."""

    def driver_ok(self) -> None:
        """The driver set DRIVER_OK."""

    def queue_notify(self, queue: Virtqueue) -> None:
        """The driver kicked queue."""

    # -- BAR placement --------------------------------------------------------------------------------
    def bar_changed(self, index: int, old: int | None, new: int | None) -> None:
        if index != 0:
            return
        self._port = new
        if self.pio is not None and not self.place_bar(self.pio, 0, new, self.pio_read, self.pio_write):
            self._port = None

    @property
    def port(self) -> int | None:
        """Where BAR 0 decodes now, or None."""
        return self._port

    # -- the register file ----------------------------------------------------------------------------
    def pio_read(self, offset: int, size: int) -> int:
        if offset >= DEVICE_CONFIG:
            if offset + size > DEVICE_CONFIG + self.config_size:
                return (1 << (8 * size)) - 1
            return self.device_config_read(offset - DEVICE_CONFIG, size)
        with self.lock:
            queue = self._selected()
            header = b"".join((
                self.host_features.to_bytes(4, "little"),
                self.guest_features.to_bytes(4, "little"),
                (self.queue_pfns[self.queue_select] if queue is not None else 0).to_bytes(4, "little"),
                (queue.max_size if queue is not None else 0).to_bytes(2, "little"),
                self.queue_select.to_bytes(2, "little"),
                b"\0\0",  # queue notify reads as 0
                bytes((self.status, self.isr)),
            ))
            value = int.from_bytes(header[offset : offset + size].ljust(size, b"\xff"), "little")
            if offset <= ISR_STATUS < offset + size:  # reading ISR acknowledges the interrupt
                self.isr = 0
                self.intx.set_level(False)
            return value

    def pio_write(self, offset: int, size: int, value: int) -> None:
        if offset >= DEVICE_CONFIG:
            if offset + size <= DEVICE_CONFIG + self.config_size:
                self.device_config_write(offset - DEVICE_CONFIG, size, value)
            return
        kick: Virtqueue | None = None
        with self.lock:
            if offset == GUEST_FEATURES and size == 4:
                if not self.status & STATUS_DRIVER_OK:
                    self.guest_features = value & self.host_features  # never more than was offered
            elif offset == QUEUE_PFN and size == 4:
                self._set_pfn(value)
            elif offset == QUEUE_SELECT and size in (2, 4):
                self.queue_select = value & 0xFFFF
            elif offset == QUEUE_NOTIFY and size in (2, 4):
                index = value & 0xFFFF
                if index < len(self.queues):
                    kick = self.queues[index]
            elif offset == DEVICE_STATUS and size == 1:
                self._set_status(value & 0xFF)
            # host features, queue size and ISR are read-only; other widths are ignored
        if kick is not None:
            self._kick(kick)

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _set_pfn(self, pfn: int) -> None:
        queue = self._selected()
        if queue is None:
            return
        if pfn == 0:
            queue.reset()
            self.queue_pfns[queue.index] = 0
            return
        if queue.ready:
            return
        queue.size = queue.max_size  # a legacy queue's size is the device's (0.9.5, 2.3)
        queue.desc_addr, queue.avail_addr, queue.used_addr = legacy_ring_addresses(pfn, queue.size)
        try:
            queue.activate(event_idx=False)
        except QueueError as error:
            log.warning("%s: %s", type(self).__name__, error)
            self.status |= STATUS_FAILED
            return
        self.queue_pfns[queue.index] = pfn

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.device_reset()
            self._reset_registers()
            return
        became_ok = value & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK
        self.status = value
        if became_ok:
            self.driver_ok()

    def _kick(self, queue: Virtqueue) -> None:
        if not queue.ready or queue.broken or not self.status & STATUS_DRIVER_OK:
            return
        try:
            self.queue_notify(queue)
        except QueueError as error:
            self.fail(str(error))

    def fail(self, reason: str) -> None:
        """The driver broke the rules. Legacy devices have no NEEDS_RESET: stop serving the queues."""
        log.warning("virtio %s: %s: queues stopped", type(self).__name__, reason)
        with self.lock:
            for queue in self.queues:
                queue.broken = True

    # -- interrupts -----------------------------------------------------------------------------------
    def _raise(self, bit: int) -> None:
        with self.lock:
            self.isr |= bit
            if not self.get(COMMAND, 2) & COMMAND_INTX_DISABLE:
                self.intx.set_level(True)

    def interrupt_queue(self, queue: Virtqueue) -> None:
        if queue.needs_interrupt():
            self._raise(ISR_QUEUE)

    def interrupt_config(self) -> None:
        """A configuration change (virtio 0.9.5, 2.4.3 / 1.2, 4.1.4.5: ISR bit 1)."""
        self._raise(ISR_CONFIG)

    def hard_reset(self) -> None:
        """The machine reset: everything back to power-on state."""
        self.device_reset()
        with self.lock:
            self._reset_registers()
