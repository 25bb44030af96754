"""A running virtual machine: KVM, guest memory, the platform devices, the boot, and the vCPU threads."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vmd.acpi_layout import PM_BASE, PM_LENGTH, SCI_IRQ
from vmd.boot import acpi, load_kernel
from vmd.boot.bios import default_firmware
from vmd.boot.state import CR0_PG, EFER_LMA, BootError, BootOptions, BootPlan, CpuState, Segment
from vmd.boot.x86 import write_mptable
from vmd.console import Console
from vmd.cpu import (
    ALWAYS_AVAILABLE,
    DEFAULT_TEMPLATE,
    CpuModelError,
    guest_cpuid,
    machine_check_capabilities,
    parse_cpu_model,
)
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
from vmd.disk import DiskError, DiskImage, open_image
from vmd.ether import parse_mac
from vmd.eventloop import EventLoop
from vmd.gdb_x86 import image_bits, layout_for
from vmd.guest_debug import GuestDebug
from vmd.guest_virt import describe_code
from vmd.kvm import structs as k
from vmd.kvm.api import Kvm, KvmError, Vcpu
from vmd.kvm.stats import KvmStatsError, VcpuStats
from vmd.limits import VMM_MAX_VCPUS_PER_VM
from vmd.memory import FOUR_GIB, LAPIC_ADDRESS, PCI_MMIO_END, PCI_MMIO_START, GuestMemory, GuestMemoryError
from vmd.platform import KvmIrqLine, MachinePlatform, start_pit
from vmd.vcpu_loop import RunLoop, best_run_loop

log = logging.getLogger("vmd.machine")

COM1_PORT, COM1_IRQ = 0x3F8, 4
RTC_PORT, RTC_IRQ = 0x70, 8
DEBUG_EXIT_PORT = 0xF4
FW_CFG_PORT = 0x510
PCI_CONFIG_PORT = 0xCF8
PCI_INTX_IRQS = (10, 11, 5, 7)  # ISA IRQs free on our platform, for PCI INTA# of each slot in turn

# MSRs set at boot (SDM vol. 4)
MSR_IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRINGS = 1 << 0
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8

# Local APIC register offsets (SDM vol. 3, 11.4.1)
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_MODE_EXTINT = 0x7 << 8
APIC_MODE_NMI = 0x4 << 8

# kvm_run system event types (api.rst, KVM_EXIT_SYSTEM_EVENT)
SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2


class MachineError(Exception):
    """The VM could not be built or failed; str() is a user-facing message."""


@dataclass
class MachineSpec:
    name: str
    memory: int
    kernel: str | None = None  # None: the default BIOS (SeaBIOS)
    initrd: str | None = None
    cmdline: str = ""
    vcpus: int = 1
    cpu: str = DEFAULT_TEMPLATE  # a CPU model (vmd.cpu.parse_cpu_model)
    boot_device: str | None = None
    option_roms: list[str] = field(default_factory=list)
    rng: bool = True  # virtio-rng, which vmd gives every VM
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    cdrom: DiskSpec | None = None  # an ISO image on the virtio-scsi CD-ROM
    vmmci: bool = True  # OpenBSD's VMM control interface, which vmd gives every VM
    debug: bool = False  # a GDB stub may attach (Machine.debug); off, the vCPU loop is unchanged
    debug_hold: bool = False  # the vCPUs wait for the debugger before their first instruction (QEMU's -S)


@dataclass
class NicSpec:
    """A network interface: a tap (opened by vmd's parent) on virtio-net.

    dhcp: for a local interface, what the built-in DHCP responder hands out (vmd's dhcp.c): guest_ip,
    host_ip, host_mac, and vm_name/boot_device for the boot file and host name."""

    fd: int
    mac: str
    locked: bool = False
    dhcp: dict[str, str | None] | None = None


@dataclass
class DiskSpec:
    """A disk for virtio-blk. fds: files already opened for us (vmd's parent), by the path they stand for."""

    path: str
    format: str | None = None
    read_only: bool = False
    fds: dict[str, int] = field(default_factory=dict)

    def open(self) -> DiskImage:
        opener = None
        if self.fds:
            fds = dict(self.fds)

            def opener(path: str, writable: bool) -> int:
                if path not in fds:
                    raise OSError(errno.EACCES, f"{path} was not handed to the VM process")
                return fds.pop(path)

        return open_image(self.path, self.format, not self.read_only, opener=opener)


@dataclass
class Outcome:
    """How a VM run ended. kind: poweroff, reboot, error, stopped."""

    kind: str
    status: int = 0  # guest status: debug-exit value (v<<1)|1, 0 after a plain poweroff
    message: str = ""


def _segment(target: k.kvm_segment, source: Segment) -> None:
    target.base = source.base
    target.limit = source.limit
    target.selector = source.selector
    target.type = source.type
    target.present = source.present
    target.dpl = source.dpl
    target.db = source.db
    target.s = source.s
    target.l = source.l
    target.g = source.g


def format_registers(vcpu: Vcpu, memory: GuestMemory | None = None) -> str:
    """The vCPU's registers and the instruction bytes at RIP, for error messages."""
    try:
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    except KvmError as error:
        return f"(registers unavailable: {error})"
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
    lines = []
    for i in range(0, len(names), 4):
        lines.append("  " + " ".join(f"{n:>3}={getattr(regs, n):016x}" for n in names[i : i + 4]))
    lines.append(f"  rip={regs.rip:016x} rflags={regs.rflags:08x} cs={sregs.cs.selector:04x}"
                 f" (base {sregs.cs.base:x} l={sregs.cs.l} db={sregs.cs.db}) ss={sregs.ss.selector:04x}")
    lines.append(f"  cr0={sregs.cr0:08x} cr2={sregs.cr2:x} cr3={sregs.cr3:x} cr4={sregs.cr4:x}"
                 f" efer={sregs.efer:x} gdt={sregs.gdt.base:x}/{sregs.gdt.limit:x}"
                 f" idt={sregs.idt.base:x}/{sregs.idt.limit:x}")
    lines.append(describe_code(vcpu, memory, regs, sregs))
    return "\n".join(lines)


class Machine:
    """Builds the VM in __init__, runs it with run(), and releases everything with close()."""

    def __init__(self, spec: MachineSpec, console: Console, kvm: Kvm | None = None,
                 run_loop: RunLoop | None = None) -> None:
        self.spec = spec
        self.console = console
        self._outcome: Outcome | None = None
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._paused = threading.Event()
        self._resume = threading.Condition()
        self.run_loop_name, self._run_loop = ("custom", run_loop) if run_loop else best_run_loop()
        try:
            self.cpu_model = parse_cpu_model(spec.cpu)
        except CpuModelError as error:
            raise MachineError(f"{spec.name}: {error}") from None
        if not 1 <= spec.vcpus <= VMM_MAX_VCPUS_PER_VM:
            raise MachineError(f"{spec.name}: {spec.vcpus} vCPUs: must be 1 to {VMM_MAX_VCPUS_PER_VM}")
        self.memory: GuestMemory | None = None
        self.scheduler: ThreadScheduler | None = None
        self.debug: GuestDebug | None = None
        self._own_kvm = kvm is None
        try:
            self.kvm = kvm or Kvm()
            self._build()
        except (KvmError, GuestMemoryError, BootError, DiskError, OSError) as error:
            self.close()
            raise MachineError(str(error)) from None
        except CpuModelError as error:
            self.close()
            raise MachineError(f"{spec.name}: {error}") from None
        except BaseException:
            self.close()
            raise

    # -- construction --------------------------------------------------------------------------------
    def _build(self) -> None:
        spec = self.spec
        for capability, name in ((k.KVM_CAP_IRQCHIP, "an in-kernel irqchip"), (k.KVM_CAP_PIT2, "an in-kernel PIT"),
                                 (k.KVM_CAP_IMMEDIATE_EXIT, "immediate_exit")):
            self.kvm.require(capability, name)
        self.vm = self.kvm.create_vm()
        self.vm.set_identity_map_address()
        self.vm.set_tss_address()
        self.vm.create_irqchip()
        self.vm.create_pit2()
        start_pit(self.vm)
        self.memory = GuestMemory(spec.memory, f"vm/{spec.name}")
        for region in self.memory.ram_regions():
            self.vm.add_memory(region.guest_address, region.size, self.memory.host_address(region))

        kernel = spec.kernel or default_firmware()
        self.plan: BootPlan = load_kernel(kernel, self.memory, BootOptions(
            cmdline=spec.cmdline, initrd=spec.initrd, vcpus=spec.vcpus, boot_device=spec.boot_device,
            boot_mac=parse_mac(spec.nics[0].mac) if spec.nics else None,
            acpi=True))
        if self.plan.firmware is not None:
            rom = self.memory.add_region(FOUR_GIB - len(self.plan.firmware), self.plan.firmware, name="vmd-bios")
            self.vm.add_memory(rom.guest_address, rom.size, self.memory.host_address(rom))

        self.scheduler = ThreadScheduler(f"vm/{spec.name}-timers")
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.events = EventLoop(f"vm/{spec.name}-events")
        self.platform = MachinePlatform(self.vm, self.memory, self.pio, self.mmio, self.events,
                                        self.kvm.check_extension(k.KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0)
        self.uart = Uart16550(KvmIrqLine(self.vm, COM1_IRQ), self.console.write, self.scheduler)
        self.pio.add_pio(COM1_PORT, 8, self.uart)
        below = self.memory.low_ram_end
        above = self.memory.high_ram_end - FOUR_GIB if self.memory.high_ram_end else 0
        self.rtc = Rtc(KvmIrqLine(self.vm, RTC_IRQ), self.scheduler, below, above, spec.vcpus)
        self.pio.add_pio(RTC_PORT, 2, self.rtc)
        self.i8042 = I8042(on_reset=lambda: self.finish(Outcome("reboot", message="reset by the i8042")))
        self.pio.add(0x60, 1, self.i8042.data_read, self.i8042.data_write)
        self.pio.add(0x64, 1, self.i8042.status_read, self.i8042.command_write)
        self.pio.add_pio(DEBUG_EXIT_PORT, 1, DebugExit(on_exit=self._debug_exit))
        sink = PortSink()
        self.pio.add_pio(0x80, 1, sink)
        self.pio.add_pio(0xED, 1, sink)
        self.pci = PciBus(PciHostBridge(),
                          on_reset=lambda: self.finish(Outcome("reboot", message="reset through port 0xcf9")))
        self.pio.add_pio(PCI_CONFIG_PORT, 8, self.pci)
        self.virtio: list[VirtioPciTransport] = []
        pci_routes: list[tuple[int, int, int]] = []
        if spec.rng:
            self._add_virtio(VirtioRng(), pci_routes)
        self.disk_slots: list[int] = []
        self.blk_devices: list[VirtioBlk] = []
        for index, disk in enumerate(spec.disks):
            image = disk.open()
            self.blk_devices.append(VirtioBlk(image, serial=f"vd{index}"))
            self.disk_slots.append(self._add_virtio(self.blk_devices[-1], pci_routes))
        self.net_devices: list[VirtioNet] = []
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
            self.vmmci.on_guest_ack = self._vmmci_ack
            self.vmmci.on_timeout = self._vmmci_timeout
            pci_routes.append((self.pci.add(self.vmmci), 0, irq))
        if self.plan.needs_mptable:  # direct boot: BARs, the MP table and the ACPI tables are ours to set up
            self.pci.assign_bars(PCI_MMIO_START, PCI_MMIO_END)
            for transport in self.virtio:
                transport.config_write(COMMAND, 2, COMMAND_MEMORY | COMMAND_MASTER)
            write_mptable(self.memory, spec.vcpus, pci_routes=pci_routes, level_irqs=(SCI_IRQ,),
                          address=self.plan.mptable_address)
            acpi.write_tables(self.memory, spec.vcpus, pci_routes, address=self.plan.acpi_address)
        self._pci_routes = pci_routes
        self.acpi_pm = AcpiPm(KvmIrqLine(self.vm, SCI_IRQ),
                              on_poweroff=lambda: self.finish(Outcome("poweroff", message="ACPI poweroff")))
        self.pio.add_pio(PM_BASE, PM_LENGTH, self.acpi_pm)
        self.fw_cfg = FwCfg(self.memory)
        self._fill_fw_cfg()
        self.pio.add_pio(FW_CFG_PORT, 12, self.fw_cfg)
        self.console.attach(self.uart.feed)

        supported = self.kvm.supported_cpuid()
        available = ALWAYS_AVAILABLE
        if self.kvm.check_extension(k.KVM_CAP_TSC_DEADLINE_TIMER) > 0:  # with the in-kernel irqchip, as QEMU
            available |= {"tsc-deadline"}
        mce_banks = max(self.kvm.check_extension(k.KVM_CAP_MCE), 0)
        mcg_supported = self.kvm.mce_cap_supported() if mce_banks else 0
        self.vcpus = []
        for index in range(spec.vcpus):
            cpuid = guest_cpuid(supported, self.cpu_model, index, spec.vcpus, available)
            mcg_cap = machine_check_capabilities(self.cpu_model, cpuid, mce_banks, mcg_supported)
            vcpu = self.vm.create_vcpu(index)
            self.vcpus.append(vcpu)
            vcpu.set_cpuid(cpuid)
            if mcg_cap is not None:  # after KVM_SET_CPUID2, as QEMU's kvm_arch_init_vcpu
                vcpu.setup_mce(mcg_cap)
            vcpu.set_msrs([(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRINGS)])
            self._set_lapic_lines(vcpu)
        self._vcpu_stats: list[VcpuStats] = []
        try:
            self._vcpu_stats = [VcpuStats(vcpu.fd) for vcpu in self.vcpus]
        except KvmStatsError as error:  # a kernel before 5.14: the metrics go without KVM's exit counts
            log.info("%s: no KVM statistics: %s", spec.name, error)
        cpu, fallback = self.plan.cpu, self.plan.cpu_fallback
        if fallback is not None and cpu.cr0 & CR0_PG and not cpu.efer & EFER_LMA and not self.kvm.runs_legacy_paging():
            cpu, fallback = fallback, None  # this KVM cannot enter a 32-bit paging mode
        self._set_boot_state(self.vcpus[0], cpu, fallback)
        if spec.debug:
            self._enable_debugging()

    def _enable_debugging(self) -> None:
        """The machine's side of the GDB stub; vmd.gdbstub.GdbServer attaches to self.debug."""
        assert self.memory is not None
        supported = self.kvm.guest_debug_flags()
        if not supported & k.KVM_GUESTDBG_ENABLE:
            raise MachineError(f"{self.spec.name}: the host's KVM cannot debug guests (no KVM_SET_GUEST_DEBUG)")
        cpu = self.plan.cpu
        layout = layout_for(cpu.cr0, cpu.efer, image_bits(self.spec.kernel))
        self.debug = GuestDebug(self.vcpus, self.memory, layout, supported, kick=self._kick_all,
                                stop_machine=self.stop, paused=self._paused.is_set, hold=self.spec.debug_hold,
                                name=self.spec.name)

    def _virtio_net(self, nic: NicSpec) -> VirtioNet:
        from vmd.net.dhcp import DhcpResponder
        from vmd.net.tap import set_offload

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
        assert self.memory is not None
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

    def _set_lapic_lines(self, vcpu: Vcpu) -> None:
        """LINT0 as ExtINT and LINT1 as NMI, as a PC BIOS leaves them (MP spec 1.4, 3.6.2.2 virtual wire)."""
        state = vcpu.get_lapic()
        raw = memoryview(state.regs).cast("B")
        for offset, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
            value = int.from_bytes(raw[offset : offset + 4], "little")
            value = (value & ~0x1_0700) | mode  # unmask, set delivery mode
            raw[offset : offset + 4] = value.to_bytes(4, "little")
        vcpu.set_lapic(state)

    def _set_boot_state(self, vcpu: Vcpu, cpu: CpuState, fallback: CpuState | None = None) -> None:
        sregs = vcpu.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            _segment(getattr(sregs, name), getattr(cpu, name))
        sregs.gdt.base, sregs.gdt.limit = cpu.gdt_base, cpu.gdt_limit
        sregs.idt.base, sregs.idt.limit = cpu.idt_base, cpu.idt_limit
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer
        sregs.apic_base = LAPIC_ADDRESS | APIC_BASE_ENABLE | APIC_BASE_BSP
        vcpu.set_sregs(sregs)
        check = vcpu.get_sregs()
        if (check.cr0 ^ cpu.cr0) & (1 << 31 | 1):
            if fallback is not None:  # e.g. a software KVM without 32-bit paging: the boot's other hand-off
                log.info("%s: the host's KVM refused cr0 %#x; entering as the boot loader also may (cr0 %#x)",
                         self.spec.name, cpu.cr0, fallback.cr0)
                self._set_boot_state(vcpu, fallback)
                return
            raise MachineError(f"{self.spec.name}: the host's KVM refused the boot CPU mode"
                               f" (cr0 {cpu.cr0:#x} became {check.cr0:#x}): this host cannot run"
                               f" a {self.plan.kind} guest")
        regs = k.kvm_regs()
        for name, value in cpu.gprs.items():
            setattr(regs, name, value)
        regs.rip = cpu.rip
        regs.rflags = cpu.rflags
        vcpu.set_regs(regs)
        fpu = k.kvm_fpu()
        fpu.fcw = 0x37F  # FNINIT state (SDM vol. 1, 8.1.5)
        fpu.mxcsr = 0x1F80
        vcpu.set_fpu(fpu)

    # -- events from devices -------------------------------------------------------------------------
    def _debug_exit(self, status: int) -> None:
        self.finish(Outcome("poweroff", status=status, message=f"debug exit, status {status}"))

    def finish(self, outcome: Outcome) -> None:
        """End the run with outcome (the first one wins) and stop every vCPU."""
        if self._outcome is None:
            self._outcome = outcome
            if self.debug is not None:
                status = outcome.status >> 1 if outcome.kind == "poweroff" and outcome.status > 1 else 0
                first = (outcome.message.splitlines() or [outcome.kind])[0]
                self.debug.finished(status, f"vm {self.spec.name}: {first}")
        self._done.set()
        self._kick_all()

    def _kick_all(self) -> None:
        for vcpu in getattr(self, "vcpus", []):
            vcpu.set_immediate_exit(True)
        for thread in self._threads:
            if thread.ident is not None and thread.is_alive():
                try:
                    signal.pthread_kill(thread.ident, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    # -- running -------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Run until the guest powers off, reboots or fails, or stop() is called."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, lambda number, frame: None)
        for vcpu in self.vcpus:
            thread = threading.Thread(target=self._vcpu_thread, args=(vcpu,), name=f"vcpu{vcpu.index}", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()
        while not self._done.wait(0.5):
            pass
        self._kick_all()
        for thread in self._threads:
            thread.join(timeout=2.0)
        assert self._outcome is not None
        return self._outcome

    def request_shutdown(self) -> bool:
        """Ask the guest to power off: through vmmci when an OpenBSD guest drives it, else the ACPI power
        button. True if the guest listens (it will power off when it is done); False if it does not, and the
        caller should stop the VM some other way."""
        vmmci = getattr(self, "vmmci", None)
        if vmmci is not None and vmmci.request_shutdown():
            return True
        pm = getattr(self, "acpi_pm", None)
        return pm is not None and pm.press_power_button()

    def _vmmci_ack(self, command: int) -> None:
        log.debug("%s: vmmci: the guest acknowledged command %d", self.spec.name, command)

    def _vmmci_timeout(self, command: int) -> None:
        """The guest did not finish a vmmci shutdown or reboot in time (vmd: 3 s, or 120 s after its ack)."""
        if command == VMMCI_REBOOT:
            self.finish(Outcome("reboot", message="vmmci reboot"))
        else:
            self.finish(Outcome("poweroff", message="vmmci shutdown"))

    def stop(self, message: str = "stopped") -> None:
        self.finish(Outcome("stopped", message=message))

    def pause(self) -> None:
        self._paused.set()
        self._kick_all()

    def unpause(self) -> None:
        with self._resume:
            self._paused.clear()
            for vcpu in self.vcpus:
                vcpu.set_immediate_exit(False)
            self._resume.notify_all()

    def _vcpu_thread(self, vcpu: Vcpu) -> None:
        run_loop, pio, mmio, run, fd = self._run_loop, self.pio, self.mmio, vcpu.run, vcpu.fd
        debug, index = self.debug, vcpu.index
        try:
            while not self._done.is_set():
                # I/O exits never come back here (the run loop serves them): with no debugger this costs
                # one test per other exit
                if debug is not None and debug.must_park(index):
                    debug.park(vcpu)
                    continue
                reason = run_loop(fd, run, pio, mmio)
                if reason == k.KVM_EXIT_INTR:
                    if self._paused.is_set() and not self._done.is_set():
                        with self._resume:
                            while self._paused.is_set() and not self._done.is_set():
                                self._resume.wait(0.5)
                        vcpu.set_immediate_exit(False)
                    continue
                if debug is not None and debug.handle_exit(vcpu, reason):
                    continue
                self._handle_exit(vcpu, reason)
        except Exception as error:  # a device bug must end the VM with a message, never hang it
            log.exception("vcpu%d failed", vcpu.index)
            self.finish(Outcome("error", message=f"vcpu{vcpu.index}: {type(error).__name__}: {error}"))

    def _handle_exit(self, vcpu: Vcpu, reason: int) -> None:
        run = vcpu.run
        if reason == k.KVM_EXIT_SHUTDOWN:
            registers = format_registers(vcpu, self.memory)
            if "rip=000000000000fff0" in registers and "cs=f000" in registers:
                # KVM on AMD re-initialises the vCPU on a SHUTDOWN intercept (svm.c shutdown_interception)
                registers += "\n  (these are the vCPU's reset values: KVM reset it before the exit, so where it" \
                             " faulted is lost)"
            log.warning("vm %s: vcpu%d: triple fault, the guest is reset\n%s", self.spec.name, vcpu.index, registers)
            self.finish(Outcome("reboot", message="triple fault"))
        elif reason == k.KVM_EXIT_SYSTEM_EVENT:
            event = k.RUN_SYSTEM_EVENT.unpack_from(run, k.RUN_UNION_OFFSET)[0]
            if event == SYSTEM_EVENT_SHUTDOWN:
                self.finish(Outcome("poweroff", message="guest powered off"))
            elif event == SYSTEM_EVENT_RESET:
                self.finish(Outcome("reboot", message="guest reset"))
            else:
                self._fail(vcpu, f"system event {event}")
        elif reason == k.KVM_EXIT_HLT:
            self.finish(Outcome("poweroff", message="guest halted"))
        elif reason == k.KVM_EXIT_INTERNAL_ERROR:
            suberror, ndata = k.RUN_INTERNAL.unpack_from(run, k.RUN_UNION_OFFSET)
            what = {1: "emulation failure", 2: "simultaneous exception", 3: "delivery event failure"}.get(
                suberror, f"suberror {suberror}")
            self._fail(vcpu, f"KVM internal error ({what})")
        elif reason == k.KVM_EXIT_FAIL_ENTRY:
            code, cpu = k.RUN_FAIL_ENTRY.unpack_from(run, k.RUN_UNION_OFFSET)
            self._fail(vcpu, f"KVM entry failure (hardware reason {code:#x})")
        elif reason == k.KVM_EXIT_MMIO:
            self._fail(vcpu, "bad MMIO access")
        else:
            self._fail(vcpu, f"unexpected exit {k.EXIT_NAMES.get(reason, reason)}")

    def _fail(self, vcpu: Vcpu, what: str) -> None:
        message = f"vm {self.spec.name}: vcpu{vcpu.index}: {what}\n{format_registers(vcpu, self.memory)}"
        if self.debug is not None and self.debug.fault(vcpu, message):
            return  # a connected debugger gets to look at it (the vCPU parks; resuming runs it again)
        self.finish(Outcome("error", status=1, message=message))

    # -- statistics ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The counters vmd's metrics and `vmctl status --json` show (the "stats" message, vmproc.py): each
        vCPU thread's CPU time, KVM's exit counts summed over the vCPUs, and each disk's and NIC's counters.
        Called from the VM process's control thread while the guest runs: it only reads."""
        vcpu_ns = []
        for thread in list(self._threads):
            ident = thread.ident
            try:
                vcpu_ns.append(time.clock_gettime_ns(time.pthread_getcpuclockid(ident)) if ident else 0)
            except (OSError, ProcessLookupError):  # the thread has ended (the VM is stopping)
                vcpu_ns.append(0)
        total, exits = 0, dict[str, int]()
        for counters in list(self._vcpu_stats):
            try:
                values = counters.exits()
            except OSError:  # closed under us: the VM is stopping
                continue
            for name, value in values.items():
                if name == "exits":
                    total += value
                else:
                    reason = name.removesuffix("_exits")
                    exits[reason] = exits.get(reason, 0) + value
        return {
            "vcpu_ns": vcpu_ns,
            "kvm_exits_total": total,
            "kvm_exits": exits,
            "disks": [vars(device.stats).copy() for device in self.blk_devices],
            "nics": [vars(device.stats).copy() for device in self.net_devices],
        }

    # -- teardown ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.debug is not None:
            self.debug.close()
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        self.console.attach(None)
        for transport in getattr(self, "virtio", []):
            transport.close()
        self.virtio = []
        if getattr(self, "events", None) is not None:
            self.events.stop()
            self.events = None  # type: ignore[assignment]
        for counters in getattr(self, "_vcpu_stats", []):
            counters.close()
        self._vcpu_stats = []
        for vcpu in getattr(self, "vcpus", []):
            vcpu.close()
        self.vcpus = []
        if getattr(self, "vm", None) is not None:
            self.vm.close()
            self.vm = None  # type: ignore[assignment]
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self._own_kvm and getattr(self, "kvm", None) is not None:
            self.kvm.close()
            self.kvm = None  # type: ignore[assignment]
