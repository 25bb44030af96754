"""The board: the PC a guest sees around its vCPUs. Port and MMIO buses, interrupt lines, the platform
devices (COM1, RTC, i8042, the ACPI PM block, fw_cfg, debug exit), the PCI bus with the virtio devices and
vmmci, and the firmware tables that describe them (the MP table and ACPI for a direct boot, fw_cfg files for
SeaBIOS). Built once the guest's memory is loaded; the vCPUs are vmd.machine.vcpus'."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from vmd.acpi_layout import PM_BASE, PM_LENGTH, SCI_IRQ
from vmd.boot import acpi
from vmd.boot.state import BootPlan
from vmd.boot.x86 import write_mptable
from vmd.console import Console
from vmd.devices.acpi_pm import AcpiPm
from vmd.devices.base import Bus, ThreadScheduler
from vmd.devices.debug_exit import DebugExit
from vmd.devices.fw_cfg import (
    FW_CFG_MAX_CPUS,
    FW_CFG_NB_CPUS,
    FW_CFG_NOGRAPHIC,
    FW_CFG_RAM_SIZE,
    FwCfg,
    seabios_files,
)
from vmd.devices.i8042 import I8042
from vmd.devices.pci import COMMAND, COMMAND_MASTER, COMMAND_MEMORY, PciBus, PciHostBridge
from vmd.devices.rtc import Rtc
from vmd.devices.sink import PortSink
from vmd.devices.uart import Uart16550
from vmd.devices.virtio.blk import VirtioBlk
from vmd.devices.virtio.net import VirtioNet
from vmd.devices.virtio.pci import VirtioDevice, VirtioPciTransport
from vmd.devices.virtio.rng import VirtioRng
from vmd.devices.virtio.scsi import VirtioScsiCdrom
from vmd.devices.vmmci import VMMCI_REBOOT, Vmmci
from vmd.ether import parse_mac
from vmd.eventloop import EventLoop
from vmd.kvm.api import Vm
from vmd.machine.spec import MachineError, MachineSpec, NicSpec, Outcome
from vmd.memory import FOUR_GIB, PCI_MMIO_END, PCI_MMIO_START, GuestMemory
from vmd.platform import KvmIrqLine, MachinePlatform

log = logging.getLogger("vmd.machine")

COM1_PORT, COM1_IRQ = 0x3F8, 4
RTC_PORT, RTC_IRQ = 0x70, 8
DEBUG_EXIT_PORT = 0xF4
FW_CFG_PORT = 0x510
PCI_CONFIG_PORT = 0xCF8
PCI_INTX_IRQS = (10, 11, 5, 7)  # ISA IRQs free on our platform, for PCI INTA# of each slot in turn


class Board:
    """The devices of one VM, wired to its buses and interrupt lines. finish(outcome) is how a device ends
    the run (a reset, a power-off, the debug exit, a vmmci timeout)."""

    def __init__(self, spec: MachineSpec, vm: Vm, memory: GuestMemory, plan: BootPlan, console: Console,
                 finish: Callable[[Outcome], None], ioeventfd_any_length: bool) -> None:
        self.spec, self.memory, self.plan, self.console, self._finish = spec, memory, plan, console, finish
        self.virtio: list[VirtioPciTransport] = []
        self.blk_devices: list[VirtioBlk] = []  # for their counters (stats)
        self.net_devices: list[VirtioNet] = []
        self.scheduler: ThreadScheduler | None = ThreadScheduler(f"vm/{spec.name}-timers")
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.events: EventLoop | None = EventLoop(f"vm/{spec.name}-events")
        try:
            self._build(vm, ioeventfd_any_length)
        except BaseException:
            self.close()  # what was built so far: timers, the event loop, disks already open
            raise

    def _build(self, vm: Vm, ioeventfd_any_length: bool) -> None:
        spec, memory, plan, console, finish = self.spec, self.memory, self.plan, self.console, self._finish
        assert self.scheduler is not None and self.events is not None
        self.platform = MachinePlatform(vm, memory, self.pio, self.mmio, self.events, ioeventfd_any_length)
        self.uart = Uart16550(KvmIrqLine(vm, COM1_IRQ), console.write, self.scheduler)
        self.pio.add_pio(COM1_PORT, 8, self.uart)
        below = memory.low_ram_end
        above = memory.high_ram_end - FOUR_GIB if memory.high_ram_end else 0
        self.rtc = Rtc(KvmIrqLine(vm, RTC_IRQ), self.scheduler, below, above, spec.vcpus)
        self.pio.add_pio(RTC_PORT, 2, self.rtc)
        self.i8042 = I8042(on_reset=lambda: finish(Outcome("reboot", message="reset by the i8042")))
        self.pio.add(0x60, 1, self.i8042.data_read, self.i8042.data_write)
        self.pio.add(0x64, 1, self.i8042.status_read, self.i8042.command_write)
        self.pio.add_pio(DEBUG_EXIT_PORT, 1, DebugExit(on_exit=self._debug_exit))
        sink = PortSink()
        self.pio.add_pio(0x80, 1, sink)
        self.pio.add_pio(0xED, 1, sink)
        self.pci = PciBus(PciHostBridge(),
                          on_reset=lambda: finish(Outcome("reboot", message="reset through port 0xcf9")))
        self.pio.add_pio(PCI_CONFIG_PORT, 8, self.pci)
        pci_routes: list[tuple[int, int, int]] = []
        if spec.rng:
            self._add_virtio(VirtioRng(), pci_routes)
        self.disk_slots: list[int] = []
        for index, disk in enumerate(spec.disks):
            image = disk.open()
            self.blk_devices.append(VirtioBlk(image, serial=f"vd{index}"))
            self.disk_slots.append(self._add_virtio(self.blk_devices[-1], pci_routes))
        for nic in spec.nics:
            self.net_devices.append(self._virtio_net(nic))
            self._add_virtio(self.net_devices[-1], pci_routes)
        self.cdrom_slot: int | None = None
        if spec.cdrom is not None:
            self.cdrom_slot = self._add_virtio(VirtioScsiCdrom(spec.cdrom.open()), pci_routes)
        self.vmmci: Vmmci | None = None
        if spec.vmmci:
            irq = PCI_INTX_IRQS[len(self.virtio) % len(PCI_INTX_IRQS)]
            self.vmmci = Vmmci(self.platform.intx_line(irq), pio=self.pio, scheduler=self.scheduler,
                               interrupt_line=irq)
            self.vmmci.on_guest_ack = lambda command: log.debug("%s: vmmci: the guest acknowledged command %d",
                                                                spec.name, command)
            self.vmmci.on_timeout = self._vmmci_timeout
            pci_routes.append((self.pci.add(self.vmmci), 0, irq))
        if plan.needs_mptable:  # direct boot: BARs, the MP table and the ACPI tables are ours to set up
            self.pci.assign_bars(PCI_MMIO_START, PCI_MMIO_END)
            for transport in self.virtio:
                transport.config_write(COMMAND, 2, COMMAND_MEMORY | COMMAND_MASTER)
            write_mptable(memory, spec.vcpus, pci_routes=pci_routes, level_irqs=(SCI_IRQ,),
                          address=plan.mptable_address)
            acpi.write_tables(memory, spec.vcpus, pci_routes, address=plan.acpi_address)
        self._pci_routes = pci_routes
        self.acpi_pm = AcpiPm(KvmIrqLine(vm, SCI_IRQ),
                              on_poweroff=lambda: finish(Outcome("poweroff", message="ACPI poweroff")))
        self.pio.add_pio(PM_BASE, PM_LENGTH, self.acpi_pm)
        self.fw_cfg = FwCfg(memory)
        self._fill_fw_cfg()
        self.pio.add_pio(FW_CFG_PORT, 12, self.fw_cfg)
        console.attach(self.uart.feed, self.uart.input_room)

    def _virtio_net(self, nic: NicSpec) -> VirtioNet:
        from vmd.net.dhcp import DhcpResponder
        from vmd.net.tap import set_offload

        assert self.events is not None
        mac = parse_mac(nic.mac)
        responder = None
        if nic.dhcp is not None:
            d = nic.dhcp
            responder = DhcpResponder.for_vm(mac, bytes.fromhex(str(d["host_mac"]).replace(":", "")),
                                             str(d["guest_ip"]), str(d["host_ip"]), str(d["vm_name"]),
                                             d.get("boot_device")).handle

        def offloads(csum: bool, tso4: bool, tso6: bool, ufo: bool) -> None:
            set_offload(nic.fd, csum, tso4, tso6, ufo)

        return VirtioNet(nic.fd, mac, self.events, locked=nic.locked, responder=responder, offloads=offloads)

    def _add_virtio(self, device: VirtioDevice, pci_routes: list[tuple[int, int, int]]) -> int:
        """Plug a virtio device into the next PCI slot; its INTA# goes to one of the PCI IRQs."""
        irq = PCI_INTX_IRQS[len(self.virtio) % len(PCI_INTX_IRQS)]
        transport = VirtioPciTransport(device, self.platform, irq)
        slot = self.pci.add(transport)
        pci_routes.append((slot, 0, irq))
        self.virtio.append(transport)
        return slot

    def _fill_fw_cfg(self) -> None:
        """What SeaBIOS reads through fw_cfg (QEMU docs/specs/fw_cfg.rst; SeaBIOS src/fw/paravirt.c)."""
        self.fw_cfg.add_u64(FW_CFG_RAM_SIZE, self.memory.size)
        self.fw_cfg.add_u16(FW_CFG_NOGRAPHIC, 1)
        self.fw_cfg.add_u16(FW_CFG_NB_CPUS, self.spec.vcpus)
        self.fw_cfg.add_u16(FW_CFG_MAX_CPUS, self.spec.vcpus)
        for name, data in seabios_files(self.plan.e820).items():
            self.fw_cfg.add_file(name, data)
        if not self.plan.needs_mptable:  # BIOS boot: SeaBIOS installs the ACPI tables (boot/acpi.py)
            for name, data in acpi.fw_cfg_files(self.spec.vcpus, self._pci_routes).items():
                self.fw_cfg.add_file(name, data)
        for name, data in self.plan.fw_cfg_files.items():
            self.fw_cfg.add_file(name, data)
        if self.spec.boot_device == "disk" and self.disk_slots:  # SeaBIOS boot order, as vmd's fw_cfg.c
            self.fw_cfg.add_file("bootorder", f"/pci@i0cf8/*@{self.disk_slots[0]:x}\nHALT\0".encode())
        elif self.spec.boot_device == "cdrom" and self.cdrom_slot is not None:
            self.fw_cfg.add_file("bootorder", f"/pci@i0cf8/*@{self.cdrom_slot:x}/*@0/*@0,0\nHALT\0".encode())
        for key, data in self.plan.fw_cfg_items.items():
            self.fw_cfg.add_item(key, data)
        for path in self.spec.option_roms:
            try:
                with open(path, "rb") as rom:
                    data = rom.read()
            except OSError as error:
                raise MachineError(f"{path}: {error.strerror}") from None
            self.fw_cfg.add_file(f"genroms/{os.path.basename(path)}", data)

    # -- events from devices -------------------------------------------------------------------------
    def _debug_exit(self, status: int) -> None:
        self._finish(Outcome("poweroff", status=status, message=f"debug exit, status {status}"))

    def _vmmci_timeout(self, command: int) -> None:
        """The guest did not finish a vmmci shutdown or reboot in time (vmd: 3 s, or 120 s after its ack)."""
        if command == VMMCI_REBOOT:
            self._finish(Outcome("reboot", message="vmmci reboot"))
        else:
            self._finish(Outcome("poweroff", message="vmmci shutdown"))

    def request_shutdown(self) -> bool:
        """Ask the guest to power off: through vmmci when an OpenBSD guest drives it, else the ACPI power
        button. True if the guest listens (it will power off when it is done); False if it does not."""
        if self.vmmci is not None and self.vmmci.request_shutdown():
            return True
        return self.acpi_pm.press_power_button()

    def device_stats(self) -> dict[str, list[dict[str, int]]]:
        """Each disk's and NIC's counters, copied (read while the guest runs)."""
        return {"disks": [vars(device.stats).copy() for device in self.blk_devices],
                "nics": [vars(device.stats).copy() for device in self.net_devices]}

    def describe(self) -> list[str]:
        """The state a hung guest's diagnosis starts from: the console UART's interrupt and the timer thread."""
        lines = [self.uart.describe()]
        if self.scheduler is not None:
            lines.append(self.scheduler.describe())
        return lines

    def close(self) -> None:
        """Stop the timers and the event loop and release the devices (their disks and taps)."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        self.console.attach(None)
        for transport in self.virtio:
            transport.close()
        self.virtio = []
        if self.events is not None:
            self.events.stop()
            self.events = None
