"""A virtual machine: KVM, guest memory and the boot (here), the board with its devices
(vmd.machine.board), and the vCPUs on their threads (vmd.machine.vcpus). What it is built from and how a
run ends are vmd.machine.spec's."""

from __future__ import annotations

import logging
import threading
from typing import Any

from vmd.boot import load_kernel
from vmd.boot.bios import default_firmware
from vmd.boot.state import BootError, BootOptions, BootPlan
from vmd.console import Console
from vmd.cpu import CpuModelError, parse_cpu_model
from vmd.disk import DiskError
from vmd.ether import parse_mac
from vmd.gdb_x86 import image_bits, layout_for
from vmd.guest_debug import GuestDebug
from vmd.kvm import structs as k
from vmd.kvm.api import Kvm, KvmError
from vmd.limits import VMM_MAX_VCPUS_PER_VM
from vmd.machine.board import Board
from vmd.machine.spec import DiskSpec, MachineError, MachineSpec, NicSpec, Outcome
from vmd.machine.vcpus import Vcpus, format_registers
from vmd.memory import FOUR_GIB, GuestMemory, GuestMemoryError
from vmd.platform import start_pit
from vmd.vcpu_loop import RunLoop, best_run_loop

__all__ = ["DiskSpec", "Machine", "MachineError", "MachineSpec", "NicSpec", "Outcome", "format_registers"]

log = logging.getLogger("vmd.machine")


class Machine:
    """Builds the VM in __init__, runs it with run(), and releases everything with close()."""

    def __init__(self, spec: MachineSpec, console: Console, kvm: Kvm | None = None,
                 run_loop: RunLoop | None = None) -> None:
        self.spec = spec
        self.console = console
        self._outcome: Outcome | None = None
        self._done = threading.Event()
        self.run_loop_name, self._run_loop = ("custom", run_loop) if run_loop else best_run_loop()
        try:
            self.cpu_model = parse_cpu_model(spec.cpu)
        except CpuModelError as error:
            raise MachineError(f"{spec.name}: {error}") from None
        if not 1 <= spec.vcpus <= VMM_MAX_VCPUS_PER_VM:
            raise MachineError(f"{spec.name}: {spec.vcpus} vCPUs: must be 1 to {VMM_MAX_VCPUS_PER_VM}")
        self.memory: GuestMemory | None = None
        self.board: Board | None = None
        self.vcpus: Vcpus | None = None
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
            # The firmware is ROM, as QEMU's pc.bios: with KVM_MEM_READONLY a guest write there exits as MMIO,
            # which no device claims, so it is dropped; devices may not DMA into it either (memory.view).
            read_only = self.kvm.check_extension(k.KVM_CAP_READONLY_MEM) > 0
            if not read_only:
                log.info("%s: this KVM has no read-only memory: the firmware's image is writable", spec.name)
            rom = self.memory.add_region(FOUR_GIB - len(self.plan.firmware), self.plan.firmware,
                                         read_only=read_only, name="vmd-bios")
            self.vm.add_memory(rom.guest_address, rom.size, self.memory.host_address(rom), read_only=read_only)

        self.board = Board(spec, self.vm, self.memory, self.plan, self.console, self.finish,
                           self.kvm.check_extension(k.KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0)
        self.vcpus = Vcpus(self.kvm, self.vm, spec.name, spec.vcpus, self.cpu_model, self.plan, self.memory,
                           self.finish, self._done)
        if spec.debug:
            self._enable_debugging()

    def _enable_debugging(self) -> None:
        """The machine's side of the GDB stub; vmd.gdbstub.GdbServer attaches to self.debug."""
        assert self.memory is not None and self.vcpus is not None
        supported = self.kvm.guest_debug_flags()
        if not supported & k.KVM_GUESTDBG_ENABLE:
            raise MachineError(f"{self.spec.name}: the host's KVM cannot debug guests (no KVM_SET_GUEST_DEBUG)")
        cpu = self.plan.cpu
        layout = layout_for(cpu.cr0, cpu.efer, image_bits(self.spec.kernel))
        vcpus = self.vcpus
        self.debug = GuestDebug(vcpus.vcpus, self.memory, layout, supported, kick=vcpus.kick_all,
                                stop_machine=self.stop, paused=vcpus.paused.is_set, hold=self.spec.debug_hold,
                                name=self.spec.name)
        vcpus.debug = self.debug

    # -- the run ---------------------------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> None:
        """End the run with outcome (the first one wins) and stop every vCPU."""
        if self._outcome is None:
            self._outcome = outcome
            if self.debug is not None:
                status = outcome.status >> 1 if outcome.kind == "poweroff" and outcome.status > 1 else 0
                first = (outcome.message.splitlines() or [outcome.kind])[0]
                self.debug.finished(status, f"vm {self.spec.name}: {first}")
        self._done.set()
        if self.vcpus is not None:
            self.vcpus.kick_all()

    def run(self) -> Outcome:
        """Run until the guest powers off, reboots or fails, or stop() is called."""
        assert self.board is not None and self.vcpus is not None
        self.vcpus.start(self._run_loop, self.board.pio, self.board.mmio)
        while not self._done.wait(0.5):
            pass
        self.vcpus.join(timeout=2.0)
        assert self._outcome is not None
        return self._outcome

    def request_shutdown(self) -> bool:
        """Ask the guest to power off: through vmmci when an OpenBSD guest drives it, else the ACPI power
        button. True if the guest listens (it will power off when it is done); False if it does not, and the
        caller should stop the VM some other way."""
        return self.board is not None and self.board.request_shutdown()

    def stop(self, message: str = "stopped") -> None:
        self.finish(Outcome("stopped", message=message))

    def pause(self) -> None:
        if self.vcpus is not None:
            self.vcpus.pause()

    def unpause(self) -> None:
        if self.vcpus is not None:
            self.vcpus.unpause()

    def describe(self) -> list[str]:
        """Lines on the machine's state for a hung guest's diagnosis: paused or not, and the board's devices."""
        lines = [f"paused={int(self.vcpus.paused.is_set()) if self.vcpus else '-'} done={int(self._done.is_set())}"]
        if self.board is not None:
            lines += self.board.describe()
        return lines

    # -- statistics ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The counters vmd's metrics and `vmctl status --json` show (the "stats" message, vmproc.py): each
        vCPU thread's CPU time, KVM's exit counts summed over the vCPUs, and each disk's and NIC's counters.
        Called from the VM process's control thread while the guest runs: it only reads."""
        vcpus, board = self.vcpus, self.board
        found: dict[str, Any] = {"vcpu_ns": [], "kvm_exits_total": 0, "kvm_exits": {}, "disks": [], "nics": []}
        if vcpus is not None:
            found.update(vcpus.stats())
        if board is not None:
            found.update(board.device_stats())
        return found

    # -- teardown ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.debug is not None:
            self.debug.close()
        if self.board is not None:
            self.board.close()
            self.board = None
        if self.vcpus is not None:
            self.vcpus.close()
            self.vcpus = None
        if getattr(self, "vm", None) is not None:
            self.vm.close()
            self.vm = None  # type: ignore[assignment]
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self._own_kvm and getattr(self, "kvm", None) is not None:
            self.kvm.close()
            self.kvm = None  # type: ignore[assignment]
