"""The vCPUs of one machine: created with the guest's CPUID, machine checks, MSRs and LAPIC lines, the boot
CPU put in the state the boot hands over, and each run on a thread of its own. Exits that are I/O never
leave the run loop (vmd.vcpu_loop); the rest end here: a power-off, a reset, a failure with the vCPU's
registers. pause() stops every vCPU at its next exit and unpause() lets them go on."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from vmd.boot.state import CR0_PG, EFER_LMA, BootPlan, CpuState, Segment
from vmd.cpu import ALWAYS_AVAILABLE, CpuModel, guest_cpuid, machine_check_capabilities
from vmd.devices.base import Bus
from vmd.guest_debug import GuestDebug
from vmd.guest_virt import describe_code
from vmd.kvm import structs as k
from vmd.kvm.api import Kvm, KvmError, Vcpu, Vm
from vmd.kvm.stats import KvmStatsError, VcpuStats
from vmd.machine.spec import MachineError, Outcome
from vmd.memory import LAPIC_ADDRESS, GuestMemory
from vmd.vcpu_loop import RunLoop

log = logging.getLogger("vmd.machine")

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


class Vcpus:
    """Every vCPU of a VM and the threads that run them. finish(outcome) ends the run; done is set once it
    has; debug, when set, is the GDB stub's hold on them."""

    def __init__(self, kvm: Kvm, vm: Vm, name: str, count: int, model: CpuModel, plan: BootPlan,
                 memory: GuestMemory, finish: Callable[[Outcome], None], done: threading.Event) -> None:
        self.name, self.memory, self._finish, self._done = name, memory, finish, done
        self.debug: GuestDebug | None = None
        self.paused = threading.Event()
        self._resume = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.vcpus: list[Vcpu] = []
        supported = kvm.supported_cpuid()
        available = ALWAYS_AVAILABLE
        if kvm.check_extension(k.KVM_CAP_TSC_DEADLINE_TIMER) > 0:  # with the in-kernel irqchip, as QEMU
            available |= {"tsc-deadline"}
        mce_banks = max(kvm.check_extension(k.KVM_CAP_MCE), 0)
        mcg_supported = kvm.mce_cap_supported() if mce_banks else 0
        for index in range(count):
            cpuid = guest_cpuid(supported, model, index, count, available)
            mcg_cap = machine_check_capabilities(model, cpuid, mce_banks, mcg_supported)
            vcpu = vm.create_vcpu(index)
            self.vcpus.append(vcpu)
            vcpu.set_cpuid(cpuid)
            if mcg_cap is not None:  # after KVM_SET_CPUID2, as QEMU's kvm_arch_init_vcpu
                vcpu.setup_mce(mcg_cap)
            vcpu.set_msrs([(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRINGS)])
            self._set_lapic_lines(vcpu)
        self._stats: list[VcpuStats] = []
        try:
            self._stats = [VcpuStats(vcpu.fd) for vcpu in self.vcpus]
        except KvmStatsError as error:  # a kernel before 5.14: the metrics go without KVM's exit counts
            log.info("%s: no KVM statistics: %s", name, error)
        cpu, fallback = plan.cpu, plan.cpu_fallback
        if fallback is not None and cpu.cr0 & CR0_PG and not cpu.efer & EFER_LMA and not kvm.runs_legacy_paging():
            cpu, fallback = fallback, None  # this KVM cannot enter a 32-bit paging mode
        self._set_boot_state(self.vcpus[0], cpu, plan.kind, fallback)

    # -- construction --------------------------------------------------------------------------------
    def _set_lapic_lines(self, vcpu: Vcpu) -> None:
        """LINT0 as ExtINT and LINT1 as NMI, as a PC BIOS leaves them (MP spec 1.4, 3.6.2.2 virtual wire)."""
        state = vcpu.get_lapic()
        raw = memoryview(state.regs).cast("B")
        for offset, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
            value = int.from_bytes(raw[offset : offset + 4], "little")
            value = (value & ~0x1_0700) | mode  # unmask, set delivery mode
            raw[offset : offset + 4] = value.to_bytes(4, "little")
        vcpu.set_lapic(state)

    def _set_boot_state(self, vcpu: Vcpu, cpu: CpuState, kind: str, fallback: CpuState | None = None) -> None:
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
                         self.name, cpu.cr0, fallback.cr0)
                self._set_boot_state(vcpu, fallback, kind)
                return
            raise MachineError(f"{self.name}: the host's KVM refused the boot CPU mode"
                               f" (cr0 {cpu.cr0:#x} became {check.cr0:#x}): this host cannot run"
                               f" a {kind} guest")
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

    # -- running -------------------------------------------------------------------------------------
    def start(self, run_loop: RunLoop, pio: Bus, mmio: Bus) -> None:
        """A thread per vCPU, each in the run loop until the run is done."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, lambda number, frame: None)
        for vcpu in self.vcpus:
            thread = threading.Thread(target=self._thread, args=(vcpu, run_loop, pio, mmio), name=f"vcpu{vcpu.index}",
                                      daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float = 2.0) -> None:
        self.kick_all()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def kick_all(self) -> None:
        """Out of KVM_RUN, every one: immediate_exit for a vCPU about to enter, SIGUSR1 for one inside."""
        for vcpu in self.vcpus:
            vcpu.set_immediate_exit(True)
        for thread in self._threads:
            if thread.ident is not None and thread.is_alive():
                try:
                    signal.pthread_kill(thread.ident, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    def pause(self) -> None:
        self.paused.set()
        self.kick_all()

    def unpause(self) -> None:
        with self._resume:
            self.paused.clear()
            for vcpu in self.vcpus:
                vcpu.set_immediate_exit(False)
            self._resume.notify_all()

    def _thread(self, vcpu: Vcpu, run_loop: RunLoop, pio: Bus, mmio: Bus) -> None:
        run, fd = vcpu.run, vcpu.fd
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
                    if self.paused.is_set() and not self._done.is_set():
                        with self._resume:
                            while self.paused.is_set() and not self._done.is_set():
                                self._resume.wait(0.5)
                        vcpu.set_immediate_exit(False)
                    continue
                if debug is not None and debug.handle_exit(vcpu, reason):
                    continue
                self._handle_exit(vcpu, reason)
        except Exception as error:  # a device bug must end the VM with a message, never hang it
            log.exception("vcpu%d failed", vcpu.index)
            self._finish(Outcome("error", message=f"vcpu{vcpu.index}: {type(error).__name__}: {error}"))

    def _handle_exit(self, vcpu: Vcpu, reason: int) -> None:
        run = vcpu.run
        if reason == k.KVM_EXIT_SHUTDOWN:
            registers = format_registers(vcpu, self.memory)
            if "rip=000000000000fff0" in registers and "cs=f000" in registers:
                # KVM on AMD re-initialises the vCPU on a SHUTDOWN intercept (svm.c shutdown_interception)
                registers += "\n  (these are the vCPU's reset values: KVM reset it before the exit, so where it" \
                             " faulted is lost)"
            log.warning("vm %s: vcpu%d: triple fault, the guest is reset\n%s", self.name, vcpu.index, registers)
            self._finish(Outcome("reboot", message="triple fault"))
        elif reason == k.KVM_EXIT_SYSTEM_EVENT:
            event = k.RUN_SYSTEM_EVENT.unpack_from(run, k.RUN_UNION_OFFSET)[0]
            if event == SYSTEM_EVENT_SHUTDOWN:
                self._finish(Outcome("poweroff", message="guest powered off"))
            elif event == SYSTEM_EVENT_RESET:
                self._finish(Outcome("reboot", message="guest reset"))
            else:
                self._fail(vcpu, f"system event {event}")
        elif reason == k.KVM_EXIT_HLT:
            self._finish(Outcome("poweroff", message="guest halted"))
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
        message = f"vm {self.name}: vcpu{vcpu.index}: {what}\n{format_registers(vcpu, self.memory)}"
        if self.debug is not None and self.debug.fault(vcpu, message):
            return  # a connected debugger gets to look at it (the vCPU parks; resuming runs it again)
        self._finish(Outcome("error", status=1, message=message))

    # -- statistics ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        """Each vCPU thread's CPU time and KVM's exit counts summed over the vCPUs (read while they run)."""
        vcpu_ns = []
        for thread in list(self._threads):
            ident = thread.ident
            try:
                vcpu_ns.append(time.clock_gettime_ns(time.pthread_getcpuclockid(ident)) if ident else 0)
            except (OSError, ProcessLookupError):  # the thread has ended (the VM is stopping)
                vcpu_ns.append(0)
        total, exits = 0, dict[str, int]()
        for counters in list(self._stats):
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
        return {"vcpu_ns": vcpu_ns, "kvm_exits_total": total, "kvm_exits": exits}

    def close(self) -> None:
        for counters in self._stats:
            counters.close()
        self._stats = []
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus = []
