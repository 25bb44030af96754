"""The machine's side of the GDB stub (vmd.guest_debug.GuestDebug) with fake vCPUs: all-stop parking and
resuming from threads like the machine's, breakpoints in guest memory and debug registers, exits."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vmd.gdb_x86 import AMD64
from vmd.gdbstub import ExitEvent, StopEvent, TargetError, Unsupported
from vmd.guest_debug import GuestDebug
from vmd.kvm import structs as k
from vmd.memory import GuestMemory

ALL_FLAGS = 0x1F0003
MEMORY = 4 << 20


class FakeVcpu:
    """Paging: linear addresses below 1 MiB are unmapped, the rest maps 1:1 (past guest RAM: not RAM)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.run = bytearray(4096)
        self.regs, self.sregs, self.fpu = k.kvm_regs(), k.kvm_sregs(), k.kvm_fpu()
        self.sregs.efer, self.sregs.cs.l = 0x500, 1
        self.debug: list[tuple[int, tuple[int, ...]]] = []
        self.immediate_exit = False
        self.exits: list[int] = []  # exits the fake "KVM_RUN" returns, in order

    def get_regs(self) -> k.kvm_regs:
        return k.kvm_regs.from_buffer_copy(self.regs)

    def set_regs(self, regs: k.kvm_regs) -> None:
        self.regs = k.kvm_regs.from_buffer_copy(regs)

    def get_sregs(self) -> k.kvm_sregs:
        return k.kvm_sregs.from_buffer_copy(self.sregs)

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        self.sregs = k.kvm_sregs.from_buffer_copy(sregs)

    def get_fpu(self) -> k.kvm_fpu:
        return k.kvm_fpu.from_buffer_copy(self.fpu)

    def set_fpu(self, fpu: k.kvm_fpu) -> None:
        self.fpu = k.kvm_fpu.from_buffer_copy(fpu)

    def translate(self, linear: int) -> int | None:
        return linear if linear >= 1 << 20 else None

    def set_guest_debug(self, control: int, debugregs: tuple[int, ...] = ()) -> None:
        self.debug.append((control, tuple(debugregs)))

    def set_immediate_exit(self, value: bool) -> None:
        self.immediate_exit = value

    def debug_exit(self, exception: int, pc: int, dr6: int) -> None:
        k.RUN_DEBUG.pack_into(self.run, k.RUN_UNION_OFFSET, exception, 0, pc, dr6, 0x400)
        self.exits.append(k.KVM_EXIT_DEBUG)


class Rig:
    """GuestDebug over fake vCPUs, each in a thread that loops as Machine._vcpu_thread does."""

    def __init__(self, vcpus: int = 2, hold: bool = True, supported: int = ALL_FLAGS) -> None:
        self.memory = GuestMemory(MEMORY, "test-gdb")
        self.vcpus = [FakeVcpu(i) for i in range(vcpus)]
        self.kicks = 0
        self.stopped_machine: list[str] = []
        self.done = threading.Event()
        self.woken = threading.Event()
        self.debug = GuestDebug(self.vcpus, self.memory, AMD64, supported, kick=self._kick,  # type: ignore[arg-type]
                                stop_machine=self.stopped_machine.append, paused=lambda: False, hold=hold)
        self.debug.set_listener(self.woken.set)
        self.unhandled: list[int] = []
        self.threads = [threading.Thread(target=self._loop, args=(vcpu,), daemon=True) for vcpu in self.vcpus]
        for thread in self.threads:
            thread.start()

    def _kick(self) -> None:
        self.kicks += 1
        for vcpu in self.vcpus:
            vcpu.immediate_exit = True

    def _loop(self, vcpu: FakeVcpu) -> None:
        while not self.done.is_set():
            if self.debug.must_park(vcpu.index):
                self.debug.park(vcpu)
                continue
            if vcpu.immediate_exit:
                time.sleep(0.001)  # KVM_EXIT_INTR
                continue
            if not vcpu.exits:
                time.sleep(0.001)
                continue
            reason = vcpu.exits.pop(0)
            if not self.debug.handle_exit(vcpu, reason):  # type: ignore[arg-type]
                self.unhandled.append(reason)

    def wait_event(self, timeout: float = 5.0) -> StopEvent | ExitEvent:
        deadline = time.monotonic() + timeout
        while True:
            event = self.debug.poll_event()
            if event is not None:
                return event
            assert time.monotonic() < deadline, "no event"
            self.woken.wait(0.05)
            self.woken.clear()

    def close(self) -> None:
        self.debug.finished(0, "end")
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.debug.close()
        self.memory.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_held_at_start_then_resumed(rig: Rig) -> None:
    assert rig.debug.is_stopped() and rig.debug.stop_event() == StopEvent(1, 5)
    eventually(lambda: len(rig.debug._parked) == 2)
    assert rig.debug.poll_event() is None  # nothing to report: the debugger finds it stopped
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    assert not rig.debug.is_stopped()
    assert not rig.vcpus[0].immediate_exit


def test_a_debug_exit_stops_every_vcpu(rig: Rig) -> None:
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    rig.debug.insert_breakpoint(1, 0x200000, 1)
    rig.vcpus[1].debug_exit(k.DB_VECTOR, 0x200000, 0xFFFF0FF1)
    assert rig.wait_event() == StopEvent(2, 5, "hwbreak")
    assert rig.debug._parked == {0, 1} and rig.debug.is_stopped()
    assert rig.kicks >= 1
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    rig.debug.interrupt()
    assert rig.wait_event() == StopEvent(2, 2)  # ^C: SIGINT, reported for the last thread that stopped


def test_step_one_vcpu_the_other_stays(rig: Rig) -> None:
    rig.debug.resume({2: "s"})
    eventually(lambda: rig.debug._parked == {0})
    control, _regs = rig.vcpus[1].debug[-1]
    assert control & k.KVM_GUESTDBG_SINGLESTEP and control & k.KVM_GUESTDBG_BLOCKIRQ
    rig.vcpus[1].debug_exit(k.DB_VECTOR, 0x100001, 0xFFFF4FF0)
    assert rig.wait_event() == StopEvent(2, 5)
    rig.debug.resume({1: "c", 2: "c"})  # stepping ends
    assert not rig.vcpus[1].debug[-1][0] & k.KVM_GUESTDBG_SINGLESTEP


def test_software_breakpoints_in_memory(rig: Rig) -> None:
    rig.memory.write(0x300000, b"\x55\x48\x89\xe5")
    rig.debug.insert_breakpoint(0, 0x300001, 1)
    assert rig.memory.read(0x300000, 4) == b"\x55\xcc\x89\xe5"
    assert rig.debug.read_memory(1, 0x300000, 4) == b"\x55\x48\x89\xe5"  # the debugger sees the code
    assert all(control & k.KVM_GUESTDBG_USE_SW_BP for control, _ in (v.debug[-1] for v in rig.vcpus))
    rig.debug.write_memory(1, 0x300000, b"\x90\x91\x92")  # over the breakpoint: it stays, with the new byte
    assert rig.memory.read(0x300000, 3) == b"\x90\xcc\x92"
    rig.debug.remove_breakpoint(0, 0x300001, 1)
    assert rig.memory.read(0x300000, 3) == b"\x90\x91\x92"
    assert not rig.vcpus[0].debug[-1][0]  # nothing left: debugging off
    with pytest.raises(TargetError) as error:
        rig.debug.insert_breakpoint(0, 0x1000, 1)  # not mapped
    assert error.value.code == errno.EFAULT


def test_breakpoint_hits_and_the_guests_own_int3(rig: Rig) -> None:
    rig.debug.insert_breakpoint(0, 0x300000, 1)
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    rig.vcpus[0].debug_exit(k.BP_VECTOR, 0x310000, 0)  # not ours: given back to the guest
    eventually(lambda: any(c & k.KVM_GUESTDBG_INJECT_BP for c, _ in rig.vcpus[0].debug))
    assert rig.debug.poll_event() is None
    rig.vcpus[0].debug_exit(k.BP_VECTOR, 0x300000, 0)
    assert rig.wait_event() == StopEvent(1, 5, "swbreak")


def test_internal_error_at_our_int3_is_the_breakpoint(rig: Rig) -> None:
    """The software KVM of our test machine cannot emulate int3: it fails at the int3 instead."""
    rig.debug.insert_breakpoint(0, 0x300000, 1)
    rig.vcpus[1].regs.rip = 0x300000
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    rig.vcpus[1].exits.append(k.KVM_EXIT_INTERNAL_ERROR)
    assert rig.wait_event() == StopEvent(2, 5, "swbreak")
    rig.vcpus[0].regs.rip = 0x300100  # elsewhere it is a failure for the machine
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    rig.vcpus[0].exits.append(k.KVM_EXIT_INTERNAL_ERROR)
    eventually(lambda: rig.unhandled == [k.KVM_EXIT_INTERNAL_ERROR])


def test_debug_registers(rig: Rig) -> None:
    rig.debug.insert_breakpoint(1, 0x400000, 1)
    rig.debug.insert_breakpoint(2, 0x500000, 4)
    rig.debug.insert_breakpoint(4, 0x600008, 8)
    control, regs = rig.vcpus[0].debug[-1]
    assert control == k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_USE_HW_BP
    assert regs[:3] == (0x400000, 0x500000, 0x600008)
    dr7 = regs[7]
    assert dr7 & 0x3F == 0b101010  # G0, G1, G2
    assert (dr7 >> 16) & 0xF == 0b0000  # DR0: execute, 1 byte
    assert (dr7 >> 20) & 0xF == 0b1101  # DR1: write, 4 bytes
    assert (dr7 >> 24) & 0xF == 0b1011  # DR2: read/write, 8 bytes
    rig.debug.insert_breakpoint(1, 0x700000, 1)
    with pytest.raises(TargetError) as error:
        rig.debug.insert_breakpoint(1, 0x800000, 1)
    assert error.value.code == errno.ENOSPC
    for bad in ((2, 0x500001, 4), (2, 0x500000, 3), (4, 0x500000, 16)):
        with pytest.raises(TargetError):
            rig.debug.insert_breakpoint(*bad)
    with pytest.raises(Unsupported):
        rig.debug.insert_breakpoint(3, 0x500000, 4)  # x86 has no read-only watchpoint
    rig.debug.remove_breakpoint(2, 0x500000, 4)
    assert rig.vcpus[0].debug[-1][1][1] == 0
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    rig.vcpus[0].debug_exit(k.DB_VECTOR, 0x123, 0xFFFF0FF4)  # DR2: the access watchpoint
    assert rig.wait_event() == StopEvent(1, 5, "awatch", 0x600008)


def test_detach_removes_everything_and_runs(rig: Rig) -> None:
    rig.memory.write(0x300000, b"\x12")
    rig.debug.insert_breakpoint(0, 0x300000, 1)
    rig.debug.insert_breakpoint(1, 0x400000, 1)
    rig.debug.set_connected(True)
    rig.debug.detach()
    assert rig.memory.read(0x300000, 1) == b"\x12"
    assert all(v.debug[-1] == (0, ()) for v in rig.vcpus)
    eventually(lambda: not rig.debug._parked)
    assert not rig.debug._connected


def test_registers_and_memory_through_the_target(rig: Rig) -> None:
    rig.vcpus[1].regs.rip = 0x1234
    data = rig.debug.read_registers(2)
    assert int.from_bytes(data[128:136], "little") == 0x1234
    rig.debug.set_pc(2, 0x5678)
    assert rig.vcpus[1].regs.rip == 0x5678
    rig.debug.write_register(1, 0, (7).to_bytes(8, "little"))
    assert rig.vcpus[0].regs.rax == 7
    with pytest.raises(TargetError):
        rig.debug.write_register(1, 0, b"\0")
    with pytest.raises(TargetError):
        rig.debug.read_register(1, 999)
    with pytest.raises(TargetError):
        rig.debug.read_registers(3)
    rig.memory.write(MEMORY - 2, b"\x01\x02")
    assert rig.debug.read_memory(1, MEMORY - 2, 16) == b"\x01\x02"  # short: the rest is not RAM
    with pytest.raises(TargetError):
        rig.debug.read_memory(1, 0x1000, 4)  # unmapped
    with pytest.raises(TargetError):
        rig.debug.write_memory(1, MEMORY - 1, b"\0\0")
    assert rig.debug.features("target.xml") == AMD64.target_xml()
    assert rig.debug.features("x") is None
    assert rig.debug.threads() == [1, 2] and rig.debug.thread_name(2) == "vcpu1"


def test_fault_stops_only_for_a_connected_debugger(rig: Rig) -> None:
    rig.debug.resume({1: "c", 2: "c"})
    eventually(lambda: not rig.debug._parked)
    assert not rig.debug.fault(rig.vcpus[0], "vm x: vcpu0: KVM internal error")  # type: ignore[arg-type]
    rig.debug.set_connected(True)
    assert rig.debug.fault(rig.vcpus[0], "vm x: vcpu0: KVM internal error")  # type: ignore[arg-type]
    assert rig.wait_event() == StopEvent(1, 11)


def test_the_end_releases_everyone(rig: Rig) -> None:
    eventually(lambda: len(rig.debug._parked) == 2)
    rig.debug.finished(3, "vm x: debug exit")
    assert rig.wait_event() == ExitEvent(3, "vm x: debug exit")
    eventually(lambda: not rig.debug._parked)
    rig.debug.close()
    with pytest.raises(TargetError):
        rig.debug.read_registers(1)
    with pytest.raises(TargetError):
        rig.debug.insert_breakpoint(1, 0x400000, 1)
    rig.debug.resume({1: "c"})  # no-ops once it is over
    rig.debug.detach()


def test_a_kvm_without_breakpoints() -> None:
    rig = Rig(supported=k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP)
    try:
        with pytest.raises(Unsupported):
            rig.debug.insert_breakpoint(0, 0x300000, 1)
        with pytest.raises(Unsupported):
            rig.debug.insert_breakpoint(1, 0x300000, 1)
        rig.debug.resume({1: "s"})
        assert not rig.vcpus[0].debug[-1][0] & k.KVM_GUESTDBG_BLOCKIRQ
    finally:
        rig.close()


def test_kill() -> None:
    rig = Rig(hold=False)
    try:
        assert not rig.debug.is_stopped()
        rig.debug.kill()
        assert rig.stopped_machine == ["killed by the debugger"]
    finally:
        rig.close()
