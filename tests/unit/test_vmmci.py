"""The legacy virtio PCI transport and vmmci, driven through I/O ports as OpenBSD's vmmci(4) would (no KVM)."""

from __future__ import annotations

import struct

import pytest

from vmd.devices.base import Bus, ManualScheduler, RecordingIrq
from vmd.devices.pci import BAR0, COMMAND, COMMAND_INTX_DISABLE, COMMAND_IO, PciBus
from vmd.devices.virtio.legacy import (
    DEVICE_CONFIG,
    DEVICE_STATUS,
    GUEST_FEATURES,
    HOST_FEATURES,
    ISR_STATUS,
    QUEUE_NOTIFY,
    QUEUE_PFN,
    QUEUE_SELECT,
    QUEUE_SIZE,
    LegacyVirtioPci,
    legacy_ring_addresses,
)
from vmd.devices.virtio.queue import Virtqueue
from vmd.devices.vmmci import (
    TIMEOUT_LONG,
    TIMEOUT_SHORT,
    VMMCI_F_ACK,
    VMMCI_F_SYNCRTC,
    VMMCI_F_TIMESYNC,
    VMMCI_NONE,
    VMMCI_REBOOT,
    VMMCI_SHUTDOWN,
    VMMCI_SYNCRTC,
    Vmmci,
)
from vmd.memory import GuestMemory, MiB

PORT = 0xC000
ACK, DRIVER, DRIVER_OK = 1, 2, 4


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class Guest:
    """The OpenBSD side: virtio_pci(4) in 0.9 mode with vmmci(4) attached, over the I/O bus."""

    def __init__(self, device: LegacyVirtioPci, pio: Bus) -> None:
        self.device = device
        self.pio = pio
        device.set_bar_address(0, PORT)
        device.config_write(COMMAND, 2, COMMAND_IO)

    def read(self, offset: int, size: int) -> int:
        return self.pio.read(PORT + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.pio.write(PORT + offset, size, value)

    def attach(self, wanted: int = VMMCI_F_TIMESYNC | VMMCI_F_ACK | VMMCI_F_SYNCRTC) -> int:
        self.write(DEVICE_STATUS, 1, 0)  # virtio_device_reset
        assert self.read(DEVICE_STATUS, 1) == 0
        self.write(DEVICE_STATUS, 1, ACK)
        self.write(DEVICE_STATUS, 1, ACK | DRIVER)
        negotiated = self.read(HOST_FEATURES, 4) & wanted
        self.write(GUEST_FEATURES, 4, negotiated)
        self.write(DEVICE_STATUS, 1, ACK | DRIVER | DRIVER_OK)  # virtio_attach_finish
        return negotiated

    def interrupt(self) -> int:
        """The legacy interrupt handler: read (and so acknowledge) ISR."""
        return self.read(ISR_STATUS, 1)

    def config_change(self, ack: bool = True) -> int:
        """vmmci_config_change: read the command and, with F_ACK, write it back."""
        command = self.read(DEVICE_CONFIG, 4)
        if ack and command != VMMCI_NONE:
            self.write(DEVICE_CONFIG, 4, command)
        return command

    def host_time(self) -> tuple[int, int]:
        """vmmci_tick: two 8-byte reads, each the high half first (virtio_pci_read_device_config_8)."""
        def read8(offset: int) -> int:
            high = self.read(DEVICE_CONFIG + offset + 4, 4)
            return (high << 32) | self.read(DEVICE_CONFIG + offset, 4)
        return read8(4), read8(12)


@pytest.fixture
def setup() -> tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list[tuple[str, int]]]:
    irq = RecordingIrq()
    pio = Bus("pio")
    scheduler = ManualScheduler()
    device = Vmmci(irq, clock=Clock(1_700_000_000.25), pio=pio, scheduler=scheduler, interrupt_line=9)
    events: list[tuple[str, int]] = []
    device.on_guest_ack = lambda command: events.append(("ack", command))
    device.on_timeout = lambda command: events.append(("timeout", command))
    return device, Guest(device, pio), irq, scheduler, events


def test_pci_identity_is_what_openbsd_matches() -> None:
    device = Vmmci(RecordingIrq())
    assert device.config_read(0x00, 2) == 0x0B5D  # PCI_VENDOR_OPENBSD
    assert device.config_read(0x02, 2) == 0x0777  # PCI_PRODUCT_OPENBSD_CONTROL
    assert device.config_read(0x08, 1) == 0  # revision 0: virtio 0.9
    assert device.config_read(0x09, 3) == 0x078000  # communications, other
    assert device.config_read(0x2C, 2) == 0x0B5D
    assert device.config_read(0x2E, 2) == 0xFFFF  # PCI_PRODUCT_VIRTIO_VMMCI: the virtio device type
    assert device.config_read(0x3D, 1) == 1  # INTA#
    assert device.config_read(BAR0, 4) & 1  # an I/O BAR
    assert not device.capabilities()  # no MSI-X: device configuration at 0x14
    device.config_write(BAR0, 4, 0xFFFF_FFFF)  # sizing
    assert device.config_read(BAR0, 4) == ((~(device.bar_size - 1)) & 0xFFFF_FFFC) | 1
    assert device.bar_size >= 0x14 + 20


def test_the_bar_moves_on_the_io_bus(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, _irq, _sched, _events = setup
    assert guest.read(HOST_FEATURES, 4) == 7
    device.config_write(COMMAND, 2, 0)  # I/O decoding off: the registers disappear
    assert guest.read(HOST_FEATURES, 4) == 0xFFFF_FFFF
    device.config_write(BAR0, 4, 0xD000)
    device.config_write(COMMAND, 2, COMMAND_IO)
    assert guest.pio.read(0xD000, 4) == 7 and device.port == 0xD000


def test_bus_placement_through_pci_config() -> None:
    pio = Bus("pio")
    bus = PciBus()
    device = Vmmci(RecordingIrq(), pio=pio)
    slot = bus.add(device)
    bus.assign_bars(0xE000_0000, 0xF000_0000, io_start=0xC000)
    bus.pio_write(0, 4, 0x8000_0000 | (slot << 11) | COMMAND)
    bus.pio_write(4, 2, COMMAND_IO)
    assert device.port is not None and pio.read(device.port + HOST_FEATURES, 4) == 7


def test_register_semantics(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, irq, _sched, _events = setup
    assert guest.read(HOST_FEATURES, 4) == VMMCI_F_TIMESYNC | VMMCI_F_ACK | VMMCI_F_SYNCRTC
    guest.write(HOST_FEATURES, 4, 0xFFFF)  # read-only
    assert guest.read(HOST_FEATURES, 4) == 7
    guest.write(GUEST_FEATURES, 4, 0xFFFF_FFFF)  # only offered bits stick
    assert guest.read(GUEST_FEATURES, 4) == 7
    for queue in (0, 1, 5):
        guest.write(QUEUE_SELECT, 2, queue)
        assert guest.read(QUEUE_SELECT, 2) == queue
        assert guest.read(QUEUE_SIZE, 2) == 0  # vmmci has no virtqueues
        guest.write(QUEUE_PFN, 4, 0x1234)
        assert guest.read(QUEUE_PFN, 4) == 0
    guest.write(QUEUE_NOTIFY, 2, 0)  # harmless
    guest.write(DEVICE_STATUS, 1, ACK | DRIVER)
    assert guest.read(DEVICE_STATUS, 1) == ACK | DRIVER
    device.interrupt_config()
    assert irq.level and guest.read(ISR_STATUS, 1) == 2
    assert not irq.level and guest.read(ISR_STATUS, 1) == 0
    guest.write(DEVICE_STATUS, 1, 0)  # reset
    assert guest.read(DEVICE_STATUS, 1) == 0 and guest.read(GUEST_FEATURES, 4) == 0
    assert guest.read(DEVICE_CONFIG + 20, 4) == 0xFFFF_FFFF  # past the device configuration


def test_no_driver_means_no_graceful_shutdown(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, irq, scheduler, events = setup
    assert device.request_shutdown() is False
    assert device.request_reboot() is False
    assert device.sync_rtc() is False
    assert True not in irq.history and scheduler.pending == 0 and device.command == VMMCI_NONE
    guest.write(DEVICE_STATUS, 1, ACK | DRIVER)  # a driver that never finished attaching
    assert device.request_shutdown() is False


def test_shutdown_with_acknowledgement(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, irq, scheduler, events = setup
    assert guest.attach() == 7
    assert device.request_shutdown() is True
    assert irq.level and device.timer_armed
    assert guest.interrupt() == 2  # configuration change
    assert not irq.level
    assert guest.config_change() == VMMCI_SHUTDOWN
    assert events == [("ack", VMMCI_SHUTDOWN)]
    assert device.request_shutdown() is True  # a second request changes nothing
    scheduler.advance(TIMEOUT_SHORT + 1)  # the acknowledgement stretched the timer
    assert ("timeout", VMMCI_SHUTDOWN) not in events
    scheduler.advance(TIMEOUT_LONG)
    assert events[-1] == ("timeout", VMMCI_SHUTDOWN)


def test_unacknowledged_reboot_times_out_short(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, irq, scheduler, events = setup
    guest.attach()
    assert device.request_reboot() is True
    assert guest.read(DEVICE_CONFIG, 4) == VMMCI_REBOOT
    scheduler.advance(TIMEOUT_SHORT - 0.5)
    assert events == []
    scheduler.advance(1)
    assert events == [("timeout", VMMCI_REBOOT)]


def test_guest_initiated_shutdown(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, _irq, scheduler, events = setup
    guest.attach()
    guest.write(DEVICE_CONFIG, 4, VMMCI_SHUTDOWN)  # vmmci_activate(DVACT_POWERDOWN)
    assert events == [("ack", VMMCI_SHUTDOWN)] and device.timer_armed
    scheduler.advance(TIMEOUT_SHORT)
    assert events[-1] == ("timeout", VMMCI_SHUTDOWN)


def test_a_driver_reset_keeps_the_command(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, _irq, scheduler, events = setup
    guest.attach()
    device.request_reboot()
    guest.config_change()
    guest.write(DEVICE_STATUS, 1, 0)  # the guest going down resets its devices
    assert device.command == VMMCI_REBOOT and device.timer_armed
    device.machine_reset()
    assert device.command == VMMCI_NONE and not device.timer_armed
    scheduler.advance(TIMEOUT_LONG * 2)
    assert ("timeout", VMMCI_REBOOT) not in events


def test_sync_rtc(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, irq, scheduler, events = setup
    guest.attach(wanted=VMMCI_F_TIMESYNC | VMMCI_F_ACK)
    assert device.sync_rtc() is False and True not in irq.history  # SYNCRTC was not negotiated
    guest.attach()
    assert device.sync_rtc() is True and irq.level
    guest.interrupt()
    assert guest.config_change() == VMMCI_SYNCRTC
    assert device.command == VMMCI_NONE and events == [("ack", VMMCI_SYNCRTC)]
    assert scheduler.pending == 0  # no timer for an RTC sync
    device.request_shutdown()
    assert device.sync_rtc() is False and device.command == VMMCI_SHUTDOWN  # never over a shutdown


def test_host_time_registers(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, _irq, _sched, _events = setup
    clock = device.clock
    assert isinstance(clock, Clock)
    guest.attach()
    assert guest.read(DEVICE_CONFIG + 4, 4) == 1_700_000_000  # this read samples the clock
    assert guest.read(DEVICE_CONFIG + 8, 4) == 0
    assert guest.read(DEVICE_CONFIG + 12, 4) == 250_000
    assert guest.read(DEVICE_CONFIG + 16, 4) == 0
    reads = clock.reads
    guest.read(DEVICE_CONFIG + 12, 4)
    guest.read(DEVICE_CONFIG + 16, 4)
    guest.read(DEVICE_CONFIG, 4)
    assert clock.reads == reads  # only the seconds registers sample
    clock.now = 2**32 + 7.5  # after 2106 the high half matters
    assert guest.read(DEVICE_CONFIG + 4, 4) == 7 and guest.read(DEVICE_CONFIG + 8, 4) == 1
    clock.now = 1_800_000_000.000001
    seconds, micros = guest.host_time()
    assert micros == 1
    assert seconds == 1_800_000_000  # the high half, read first, sampled afresh


def test_intx_disable_keeps_the_line_low(setup: tuple[Vmmci, Guest, RecordingIrq, ManualScheduler, list]) -> None:
    device, guest, irq, _sched, _events = setup
    guest.attach()
    device.config_write(COMMAND, 2, COMMAND_IO | COMMAND_INTX_DISABLE)
    device.request_shutdown()
    assert not irq.level and guest.interrupt() == 2


class EchoLegacy(LegacyVirtioPci):
    """A legacy device with one queue, to check the queue registers and the legacy ring layout."""

    host_features = 1 << 28

    def queue_notify(self, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            data = chain.read_all()
            written = 0
            for view in chain.writable:
                piece = data[written : written + len(view)]
                view[: len(piece)] = piece
                written += len(piece)
            queue.push(chain.head, written)
        self.interrupt_queue(queue)


def test_legacy_queue_layout_and_notify() -> None:
    memory = GuestMemory(2 * MiB)
    try:
        irq, pio = RecordingIrq(), Bus("pio")
        device = EchoLegacy(0x1AF4, 0x1000, 0xFF0000, 0x1AF4, 0x3F, irq, pio=pio, memory=memory, queue_sizes=(16,))
        guest = Guest(device, pio)
        guest.write(DEVICE_STATUS, 1, ACK | DRIVER)
        guest.write(QUEUE_SELECT, 2, 0)
        assert guest.read(QUEUE_SIZE, 2) == 16
        pfn = 0x10
        guest.write(QUEUE_PFN, 4, pfn)
        assert guest.read(QUEUE_PFN, 4) == pfn
        guest.write(DEVICE_STATUS, 1, ACK | DRIVER | DRIVER_OK)
        desc, avail, used = legacy_ring_addresses(pfn, 16)
        assert (desc, avail, used) == (0x10000, 0x10100, 0x11000)
        memory.write(0x20000, b"ping")
        memory.write(desc, struct.pack("<QIHH", 0x20000, 4, 1, 1) + struct.pack("<QIHH", 0x21000, 4, 2, 0))
        memory.write_u16(avail + 4, 0)
        memory.write_u16(avail + 2, 1)
        guest.write(QUEUE_NOTIFY, 2, 0)
        assert memory.read_u16(used + 2) == 1 and memory.read(0x21000, 4) == b"ping"
        assert irq.level and guest.read(ISR_STATUS, 1) == 1 and not irq.level
        guest.write(DEVICE_STATUS, 1, 0)
        assert guest.read(QUEUE_PFN, 4) == 0
    finally:
        memory.close()
