"""The machine's side of devices.base.Platform: KVM interrupt routes, irqfds, ioeventfds, shared INTx lines."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vmd.devices.base import Bus, IrqLine
from vmd.eventloop import EventLoop
from vmd.kvm import structs as k
from vmd.kvm.api import KvmError, Vm
from vmd.memory import GuestMemory

log = logging.getLogger("vmd.platform")

FIRST_MSI_GSI = 24  # GSIs 0-23 are the I/O APIC's pins


def pc_irq_routing() -> list[k.kvm_irq_routing_entry]:
    """ISA IRQs 0-15 to the PIC pair; GSIs 0-23 to the I/O APIC, with IRQ 0 on pin 2 as on a PC
    (MP spec 1.4, 5.3: the timer is wired to I/O APIC input 2; the MP table says the same)."""
    entries = []
    for gsi in range(16):
        if gsi != 2:
            chip = k.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else k.KVM_IRQCHIP_PIC_SLAVE
            entries.append(_irqchip_route(gsi, chip, gsi % 8))
    for gsi in range(24):
        if gsi == 0:
            entries.append(_irqchip_route(0, k.KVM_IRQCHIP_IOAPIC, 2))
        elif gsi != 2:
            entries.append(_irqchip_route(gsi, k.KVM_IRQCHIP_IOAPIC, gsi))
    return entries


def start_pit(vm: Vm) -> None:
    """Set the in-kernel PIT's counter 0 counting down from 0xFFFF (mode 0, lo/hi access), as OpenBSD's vmd
    starts its i8253 and a PC BIOS leaves it running. KVM's PIT starts with no mode, its counters frozen;
    kernels that delay by reading counter 0 before they program it (OpenBSD/i386 does) would wait forever."""
    state = vm.get_pit2()
    counter = state.channels[0]
    counter.count, counter.mode, counter.bcd, counter.gate = 0xFFFF, 0, 0, 1
    counter.rw_mode = counter.read_state = counter.write_state = k.PIT_RW_LSB_MSB
    vm.set_pit2(state)


def _irqchip_route(gsi: int, chip: int, pin: int) -> k.kvm_irq_routing_entry:
    entry = k.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_IRQCHIP)
    entry.u.irqchip.irqchip = chip
    entry.u.irqchip.pin = pin
    return entry


def _msi_route(gsi: int, address: int, data: int) -> k.kvm_irq_routing_entry:
    entry = k.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_MSI)
    entry.u.msi.address_lo = address & 0xFFFF_FFFF
    entry.u.msi.address_hi = address >> 32
    entry.u.msi.data = data
    return entry


class KvmIrqLine:
    """An interrupt line of the in-kernel PIC and I/O APIC (KVM_IRQ_LINE on GSI n)."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        self._vm = vm
        self._gsi = gsi
        self._level = False

    def set_level(self, level: bool) -> None:
        if level != self._level:
            self._level = level
            self._vm.irq_line(self._gsi, 1 if level else 0)


class SharedIrqLine:
    """One wired-OR interrupt line (PCI INTx) several devices may assert (PCI 3.0, 2.2.6)."""

    def __init__(self, line: IrqLine) -> None:
        self._line = line
        self._asserted: set[int] = set()
        self._lock = threading.Lock()

    def source(self) -> IrqLine:
        token = object()

        outer = self

        class _Source:
            def set_level(self, level: bool) -> None:
                with outer._lock:
                    if level:
                        outer._asserted.add(id(token))
                    else:
                        outer._asserted.discard(id(token))
                    outer._line.set_level(bool(outer._asserted))

        return _Source()


class MsiRoute:
    """A GSI routed as an MSI message, with an irqfd: fire() is one eventfd write, from any thread."""

    def __init__(self, platform: MachinePlatform, gsi: int) -> None:
        self._platform = platform
        self.gsi = gsi
        self.eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.message: tuple[int, int] | None = None
        platform.vm.irqfd(self.eventfd, gsi)

    def program(self, address: int, data: int) -> None:
        if self.message != (address, data):
            self.message = (address, data)
            self._platform._update_routing()

    def fire(self) -> None:
        os.eventfd_write(self.eventfd, 1)

    def close(self) -> None:
        try:
            self._platform.vm.irqfd(self.eventfd, self.gsi, deassign=True)
        except KvmError:
            pass
        os.close(self.eventfd)
        self._platform._forget(self)


@dataclass
class Doorbell:
    eventfd: int
    address: int
    length: int
    pio: bool


class MachinePlatform:
    """What devices get from the machine (devices.base.Platform), built on KVM and the VM's event loop."""

    def __init__(self, vm: Vm, memory: GuestMemory, pio: Bus, mmio: Bus, events: EventLoop,
                 any_length_ioeventfd: bool) -> None:
        self.vm = vm
        self.memory = memory
        self.pio = pio
        self.mmio = mmio
        self.events = events
        self._any_length = any_length_ioeventfd
        self._lock = threading.Lock()
        self._routes: list[MsiRoute] = []
        self._next_gsi = FIRST_MSI_GSI
        self._intx: dict[int, SharedIrqLine] = {}
        vm.set_gsi_routing(pc_irq_routing())

    # -- interrupts -----------------------------------------------------------------------------------
    def msi_vector(self) -> MsiRoute:
        with self._lock:
            gsi = self._next_gsi
            self._next_gsi += 1
        route = MsiRoute(self, gsi)
        with self._lock:
            self._routes.append(route)
        return route

    def _update_routing(self) -> None:
        with self._lock:
            entries = pc_irq_routing() + [_msi_route(r.gsi, *r.message) for r in self._routes if r.message]
            self.vm.set_gsi_routing(entries)

    def _forget(self, route: MsiRoute) -> None:
        with self._lock:
            if route in self._routes:
                self._routes.remove(route)

    def intx_line(self, irq: int) -> IrqLine:
        with self._lock:
            shared = self._intx.get(irq)
            if shared is None:
                shared = self._intx[irq] = SharedIrqLine(KvmIrqLine(self.vm, irq))
        return shared.source()

    # -- doorbells (ioeventfds) ------------------------------------------------------------------------
    def add_doorbell(self, address: int, length: int, pio: bool, callback: Callable[[], None]) -> Doorbell:
        eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        bell = Doorbell(eventfd, address, 0 if self._any_length and not pio else length, pio)
        try:
            self.vm.ioeventfd(eventfd, address, bell.length, pio)
        except KvmError as error:
            log.warning("no ioeventfd at %#x (%s): kicks go through the vCPU thread", address, error)
            os.close(eventfd)
            return Doorbell(-1, address, length, pio)

        def ring() -> None:
            try:
                os.eventfd_read(eventfd)
            except BlockingIOError:
                return
            callback()

        self.events.add_reader(eventfd, ring)
        return bell

    def remove_doorbell(self, handle: object) -> None:
        assert isinstance(handle, Doorbell)
        if handle.eventfd < 0:
            return
        self.events.remove_reader(handle.eventfd)
        try:
            self.vm.ioeventfd(handle.eventfd, handle.address, handle.length, handle.pio, deassign=True)
        except KvmError:
            pass
        os.close(handle.eventfd)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.events.call_soon(callback)
