"""The machine's side of the GDB stub (vmd.gdbstub.Target): stopping and resuming vCPUs, their registers,
guest-virtual memory, and breakpoints through KVM_SET_GUEST_DEBUG (api.rst 4.87).

All-stop: when one vCPU stops (a breakpoint, a finished single step, ^C), every vCPU is kicked out of
KVM_RUN and parks in its own thread until the debugger resumes it. Register and memory requests come from
the stub's thread only while every vCPU is parked.

Breakpoints:
  * software (Z0): an int3 written into guest memory (the original byte kept and restored on removal or
    detach), with KVM_GUESTDBG_USE_SW_BP so that KVM exits with KVM_EXIT_DEBUG (#BP) instead of delivering
    it. A guest's own int3 is handed back to it (KVM_GUESTDBG_INJECT_BP). A KVM whose instruction emulator
    cannot execute int3 fails with KVM_EXIT_INTERNAL_ERROR at the int3 instead (the software KVM of our
    test machine does): that failure, at an address where we planted one, is taken as the breakpoint.
  * hardware (Z1) and watchpoints (Z2 write, Z4 access): DR0-DR3 and DR7 in kvm_guest_debug's debugreg
    array (SDM vol. 3, 17.2), the same for every vCPU. x86 has no read-only watchpoint: Z3 is unsupported.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable

from vmd import guest_virt
from vmd.gdb_x86 import CpuState, Layout, RegisterError
from vmd.gdbstub import SIGINT, SIGTRAP, ExitEvent, StopEvent, TargetError, Unsupported
from vmd.kvm import structs as k
from vmd.kvm.api import KvmError, Vcpu
from vmd.memory import GuestMemory, GuestMemoryError

log = logging.getLogger("vmd.gdb")

SIGSEGV = 11
MAX_SW_BREAKPOINTS = 1024
HW_SLOTS = 4
INT3 = 0xCC
DR6_BS = 1 << 14  # single step (SDM vol. 3, 17.2.3)
DR7_FIXED = 0x0400  # bit 10 reads as 1
DR7_GE = 1 << 9
DR7_RW = {1: 0b00, 2: 0b01, 4: 0b11}  # Z type: execute, write, read/write
DR7_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}


class GuestDebug:
    """Debugging one machine. The machine calls must_park/park/handle_exit/fault from its vCPU threads and
    finished() when it ends; the stub calls the vmd.gdbstub.Target methods."""

    def __init__(self, vcpus: list[Vcpu], memory: GuestMemory, layout: Layout, supported: int,
                 kick: Callable[[], None], stop_machine: Callable[[str], None],
                 paused: Callable[[], bool], hold: bool = True, name: str = "vm") -> None:
        self.vcpus = vcpus
        self.memory = memory
        self.layout = layout
        self.supported = supported
        self.name = name
        self._kick = kick
        self._stop_machine = stop_machine
        self._paused = paused
        self._cond = threading.Condition()
        self._listener: Callable[[], None] | None = None
        self._events: list[StopEvent | ExitEvent] = []
        self._stopping = hold  # every vCPU must park
        self._reported = hold  # the stop is complete and was queued (at start: nobody has run yet)
        self._event = StopEvent(1, SIGTRAP)
        self._allowed = [not hold] * len(vcpus)  # may run when nothing asks for a stop
        self._parked: set[int] = set()
        self._finished = False
        self._closed = False  # the machine has closed its vCPUs: nothing may touch them
        self._connected = False
        self._stepping: set[int] = set()
        self._inject: dict[int, int] = {}  # vCPU index -> KVM_GUESTDBG_INJECT_* for its next run
        self._sw: dict[int, tuple[int, int]] = {}  # linear address -> (physical address, original byte)
        self._hw: list[tuple[int, int, int] | None] = [None] * HW_SLOTS  # (address, Z type, length)

    # -- from the vCPU threads ----------------------------------------------------------------------------------
    def must_park(self, index: int) -> bool:
        return self._stopping or not self._allowed[index]

    def park(self, vcpu: Vcpu) -> None:
        """Wait, out of KVM_RUN, until the debugger lets this vCPU run (or the machine ends)."""
        index = vcpu.index
        with self._cond:
            self._parked.add(index)
            self._complete()
            while (self._stopping or not self._allowed[index]) and not self._finished:
                self._cond.wait(0.5)
            self._parked.discard(index)
            inject = self._inject.pop(index, 0)
            if not self._finished and not self._paused():
                vcpu.set_immediate_exit(False)  # under the lock: a kick after this is not lost
        if inject:
            self._apply_quietly(vcpu, inject)

    def handle_exit(self, vcpu: Vcpu, reason: int) -> bool:
        """A vCPU exit that may be the debugger's: True when it was (the vCPU then parks or runs on)."""
        if reason == k.KVM_EXIT_DEBUG:
            exception, _pad, pc, dr6, _dr7 = k.RUN_DEBUG.unpack_from(vcpu.run, k.RUN_UNION_OFFSET)
            event, inject = self._classify(vcpu, exception, pc, dr6)
            if event is None:  # the guest's own #BP or #DB: give it back and run on
                self._apply_quietly(vcpu, inject)
            else:
                self._request_stop(event)
            return True
        if reason == k.KVM_EXIT_INTERNAL_ERROR and self._sw:
            try:
                linear = guest_virt.code_linear(vcpu.get_regs(), vcpu.get_sregs())
            except KvmError:
                return False
            with self._cond:
                ours = linear in self._sw
            if ours:  # a KVM that cannot emulate int3 (see the module's docstring)
                self._request_stop(StopEvent(vcpu.index + 1, SIGTRAP, "swbreak"))
                return True
        return False

    def fault(self, vcpu: Vcpu, message: str) -> bool:
        """A failing vCPU stops for a connected debugger (SIGSEGV) instead of ending the VM: True if it did."""
        with self._cond:
            connected = self._connected and not self._finished
        if not connected:
            return False
        log.warning("%s (stopped for the debugger)", message)
        self._request_stop(StopEvent(vcpu.index + 1, SIGSEGV))
        return True

    def finished(self, status: int, message: str) -> None:
        """The machine ended: release every parked vCPU and tell the stub."""
        with self._cond:
            if self._finished:
                return
            self._finished = True
            self._events.append(ExitEvent(status, message))
            self._cond.notify_all()
            self._notify()

    def _classify(self, vcpu: Vcpu, exception: int, pc: int, dr6: int) -> tuple[StopEvent | None, int]:
        thread = vcpu.index + 1
        with self._cond:
            if exception == k.BP_VECTOR:
                if pc in self._sw:
                    return StopEvent(thread, SIGTRAP, "swbreak"), 0
                return None, k.KVM_GUESTDBG_INJECT_BP
            for slot, entry in enumerate(self._hw):
                if entry is not None and dr6 & (1 << slot):
                    address, kind, _length = entry
                    if kind == 1:
                        return StopEvent(thread, SIGTRAP, "hwbreak"), 0
                    return StopEvent(thread, SIGTRAP, "watch" if kind == 2 else "awatch", address), 0
            if vcpu.index in self._stepping:
                return StopEvent(thread, SIGTRAP), 0
        return None, k.KVM_GUESTDBG_INJECT_DB

    def _request_stop(self, event: StopEvent) -> None:
        with self._cond:
            if self._finished:
                return
            if not self._stopping:
                self._stopping = True
                self._reported = False
                self._event = event
                self._kick()  # under the lock: see park()
            self._complete()

    def _complete(self) -> None:
        """Called with the lock held: queue the stop once every vCPU has parked."""
        if self._stopping and not self._reported and len(self._parked) == len(self.vcpus):
            self._reported = True
            self._events.append(self._event)
            self._notify()

    def _notify(self) -> None:
        if self._listener is not None:
            self._listener()

    # -- debug registers ------------------------------------------------------------------------------------------
    def _control(self, index: int) -> tuple[int, tuple[int, ...]]:
        control = 0
        debugregs = [0] * 8
        if self._sw:
            control |= k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_USE_SW_BP
        if any(self._hw):
            control |= k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_USE_HW_BP
            dr7 = DR7_FIXED | DR7_GE
            for slot, entry in enumerate(self._hw):
                if entry is not None:
                    address, kind, length = entry
                    debugregs[slot] = address
                    dr7 |= (2 << (2 * slot)) | (DR7_RW[kind] << (16 + 4 * slot)) | (DR7_LEN[length] << (18 + 4 * slot))
            debugregs[7] = dr7
        if index in self._stepping:
            control |= k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP
            control |= self.supported & k.KVM_GUESTDBG_BLOCKIRQ  # no interrupt handler inside a step
        return control, tuple(debugregs)

    def _apply(self, vcpu: Vcpu, inject: int = 0) -> None:
        control, debugregs = self._control(vcpu.index)
        if inject:
            control |= k.KVM_GUESTDBG_ENABLE | (inject & self.supported)
        try:
            vcpu.set_guest_debug(control, debugregs)
        except KvmError as error:
            log.warning("%s: vcpu%d: %s", self.name, vcpu.index, error)
            raise TargetError(errno.EIO, str(error)) from None

    def _apply_quietly(self, vcpu: Vcpu, inject: int) -> None:
        """From a vCPU thread: a refusal is logged, it must not end the vCPU."""
        with self._cond:
            if self._closed:
                return
            try:
                self._apply(vcpu, inject)
            except TargetError:
                pass

    def _apply_all(self) -> None:
        for vcpu in self.vcpus:
            self._apply(vcpu)

    # -- vmd.gdbstub.Target: state --------------------------------------------------------------------------------
    def set_listener(self, listener: Callable[[], None]) -> None:
        with self._cond:
            self._listener = listener

    def set_connected(self, connected: bool) -> None:
        with self._cond:
            self._connected = connected

    def poll_event(self) -> StopEvent | ExitEvent | None:
        with self._cond:
            return self._events.pop(0) if self._events else None

    def is_stopped(self) -> bool:
        with self._cond:
            return self._stopping and self._reported and not self._finished

    def stop_event(self) -> StopEvent:
        with self._cond:
            return self._event

    def threads(self) -> list[int]:
        return [vcpu.index + 1 for vcpu in self.vcpus]

    def thread_name(self, thread: int) -> str:
        return f"vcpu{thread - 1}"

    def features(self, annex: str) -> bytes | None:
        return self.layout.target_xml() if annex == "target.xml" else None

    def close(self) -> None:
        """The machine is about to close its vCPUs and memory: from now on every request fails."""
        with self._cond:
            self._closed = True
            self._finished = True
            self._cond.notify_all()

    def _vcpu(self, thread: int) -> Vcpu:
        """Called with the lock held, which keeps close() out while the vCPU is used."""
        if self._closed:
            raise TargetError(errno.ESRCH, "the VM has ended")
        if not 1 <= thread <= len(self.vcpus):
            raise TargetError(errno.ESRCH)
        return self.vcpus[thread - 1]

    # -- registers ----------------------------------------------------------------------------------------------
    def _state(self, vcpu: Vcpu) -> CpuState:
        try:
            return CpuState(vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu())
        except KvmError as error:
            raise TargetError(errno.EIO, str(error)) from None

    def _store(self, vcpu: Vcpu, state: CpuState) -> None:
        try:
            if "sregs" in state.dirty:
                vcpu.set_sregs(state.sregs)
            if "regs" in state.dirty:
                vcpu.set_regs(state.regs)
            if "fpu" in state.dirty:
                vcpu.set_fpu(state.fpu)
        except KvmError as error:
            raise TargetError(errno.EIO, str(error)) from None

    def read_registers(self, thread: int) -> bytes:
        with self._cond:
            return self.layout.encode_g(self._state(self._vcpu(thread)))

    def write_registers(self, thread: int, data: bytes) -> None:
        with self._cond:
            vcpu = self._vcpu(thread)
            state = self._state(vcpu)
            try:
                self.layout.decode_g(state, data)
            except RegisterError as error:
                raise TargetError(errno.EINVAL, str(error)) from None
            self._store(vcpu, state)

    def read_register(self, thread: int, number: int) -> bytes:
        if not 0 <= number < len(self.layout.registers):
            raise TargetError(errno.EINVAL)
        with self._cond:
            return self.layout.get(self._state(self._vcpu(thread)), number)

    def write_register(self, thread: int, number: int, data: bytes) -> None:
        if not 0 <= number < len(self.layout.registers):
            raise TargetError(errno.EINVAL)
        with self._cond:
            vcpu = self._vcpu(thread)
            state = self._state(vcpu)
            try:
                self.layout.set(state, number, data)
            except RegisterError as error:
                raise TargetError(errno.EINVAL, str(error)) from None
            self._store(vcpu, state)

    def set_pc(self, thread: int, address: int) -> None:
        size = self.layout.registers[self.layout.pc].size
        self.write_register(thread, self.layout.pc, (address & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # -- memory -------------------------------------------------------------------------------------------------
    def read_memory(self, thread: int, address: int, length: int) -> bytes:
        with self._cond:
            data, _stopped = guest_virt.read(self._vcpu(thread), self.memory, address, length)
            if length and not data:
                raise TargetError(errno.EFAULT)
            out = bytearray(data)
            for linear, (_physical, original) in self._sw.items():
                if address <= linear < address + len(out):
                    out[linear - address] = original  # the debugger sees the code, not our int3
            return bytes(out)

    def write_memory(self, thread: int, address: int, data: bytes) -> None:
        with self._cond:
            vcpu = self._vcpu(thread)
            out = bytearray(data)
            for linear, (physical, _original) in list(self._sw.items()):
                if address <= linear < address + len(out):
                    self._sw[linear] = (physical, out[linear - address])  # keep the breakpoint in place
                    out[linear - address] = INT3
            if guest_virt.write(vcpu, self.memory, address, bytes(out)) != len(out):
                raise TargetError(errno.EFAULT)

    # -- breakpoints ------------------------------------------------------------------------------------------
    def insert_breakpoint(self, kind: int, address: int, length: int) -> None:
        with self._cond:
            self._vcpu(1)  # fails once the machine has closed
            if kind == 0:
                self._insert_sw(address)
            elif kind in (1, 2, 4):
                self._insert_hw(kind, address, length)
            else:
                raise Unsupported()
            self._apply_all()

    def remove_breakpoint(self, kind: int, address: int, length: int) -> None:
        with self._cond:
            self._vcpu(1)
            if kind == 0:
                entry = self._sw.pop(address, None)
                if entry is not None:
                    self._restore(*entry)
            elif kind in (1, 2, 4):
                length = 1 if kind == 1 else length
                for slot, hw in enumerate(self._hw):
                    if hw == (address, kind, length):
                        self._hw[slot] = None
                        break
            else:
                raise Unsupported()
            self._apply_all()

    def _insert_sw(self, address: int) -> None:
        if not self.supported & k.KVM_GUESTDBG_USE_SW_BP:
            raise Unsupported()
        with self._cond:
            if address in self._sw:
                return
            if len(self._sw) >= MAX_SW_BREAKPOINTS:
                raise TargetError(errno.ENOSPC)
            physical = guest_virt.translate(self._vcpu(self._event.thread), address)
            if physical is None:
                raise TargetError(errno.EFAULT)
            try:
                original = self.memory.read_u8(physical)
                self.memory.write_u8(physical, INT3)
            except GuestMemoryError:
                raise TargetError(errno.EFAULT) from None
            self._sw[address] = (physical, original)

    def _restore(self, physical: int, original: int) -> None:
        try:
            if self.memory.read_u8(physical) == INT3:  # unless the guest has written over it since
                self.memory.write_u8(physical, original)
        except GuestMemoryError:
            pass

    def _insert_hw(self, kind: int, address: int, length: int) -> None:
        if not self.supported & k.KVM_GUESTDBG_USE_HW_BP:
            raise Unsupported()
        if kind == 1:
            length = 1  # an instruction breakpoint has DR7 LEN 00 whatever gdb's kind says
        elif length not in DR7_LEN or address % length:
            raise TargetError(errno.EINVAL, "x86 watches 1, 2, 4 or 8 aligned bytes")
        with self._cond:
            if (address, kind, length) in self._hw:
                return
            if None not in self._hw:
                raise TargetError(errno.ENOSPC)
            self._hw[self._hw.index(None)] = (address, kind, length)

    # -- running ------------------------------------------------------------------------------------------------
    def resume(self, actions: dict[int, str]) -> None:
        """actions: thread -> "c" or "s"; threads not named stay parked."""
        with self._cond:
            if self._finished or self._closed:
                return
            stepping = {thread - 1 for thread, action in actions.items() if action == "s"}
            changed = stepping ^ self._stepping
            self._stepping = stepping
            for vcpu in self.vcpus:
                if vcpu.index in changed:
                    self._apply(vcpu)
                self._allowed[vcpu.index] = (vcpu.index + 1) in actions
            self._stopping = False
            self._reported = False
            self._cond.notify_all()

    def interrupt(self) -> None:
        self._request_stop(StopEvent(self._event.thread, SIGINT))

    def detach(self) -> None:
        """Remove every breakpoint, stop single-stepping, and let every vCPU run."""
        with self._cond:
            if self._closed:
                return
            for physical, original in self._sw.values():
                self._restore(physical, original)
            self._sw.clear()
            self._hw = [None] * HW_SLOTS
            self._stepping = set()
            self._connected = False
            for vcpu in self.vcpus:
                try:
                    vcpu.set_guest_debug(0)
                except KvmError as error:
                    log.warning("%s: vcpu%d: %s", self.name, vcpu.index, error)
            self.resume({thread: "c" for thread in self.threads()})

    def kill(self) -> None:
        self._stop_machine("killed by the debugger")
