"""`vmd run --gdb` on a hardware KVM: Debian's Linux kernel (the guest kit's bzImage) held at its 64-bit entry,
registers, single steps, breakpoints, ^C and detach; the test guest openbsd64 for what the software KVM of
the development machine cannot do (int3 as a real #BP exit, data watchpoints); and breakpoints set in the
running demo guest, next to QEMU's own gdbstub on the same KVM.

The emulated test host (tests/hwvirt/testhost.py: QEMU 7.2's TCG emulating AMD SVM) cannot stop a nested
guest at a breakpoint, whoever asks: its TCG checks an int3 against SVM's INTn intercept instead of the #BP
exception intercept that KVM_GUESTDBG_USE_SW_BP sets, so the int3 goes to the guest's own IDT (Linux at its
entry has none and triple-faults, which vmd reports as W00); and its VMRUN loads the VMCB's DR7 without
arming TCG's breakpoints and watchpoints (upstream QEMU fixed that in 2024, "target/i386: disable/enable
breakpoints on vmentry/vmexit"), so nothing of KVM_GUESTDBG_USE_HW_BP fires. Single steps (#DB intercepted
after a TF step) and ^C work there. Inside the test host, the tests that need a breakpoint first ask QEMU
-enable-kvm's gdbstub (QEMU_BREAKPOINTS) and skip, naming its outcome, where QEMU gets no stop either.

vmd loads a bzImage's protected-mode code at 1 MiB and enters it at +0x200 in 64-bit mode
(vmd.boot.linux: KERNEL_LOAD_ADDRESS, ENTRY64_OFFSET); the file holds that code after its real-mode setup
sectors ((setup_sects + 1) * 512 bytes, boot protocol: setup_sects 0 means 4).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmd.boot.linux import ENTRY64_OFFSET, KERNEL_LOAD_ADDRESS

from .conftest import ROOT, kit_cmdline, kit_file
from .testhost import inside_test_host

pytestmark = pytest.mark.hwvirt

PACKET = re.compile(rb"\$([^#$]*)#([0-9a-fA-F]{2})")
ENTRY = KERNEL_LOAD_ADDRESS + ENTRY64_OFFSET


class Rsp:
    """A small GDB remote protocol client (ack mode)."""

    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        self.buffer = b""

    def send(self, payload: bytes) -> None:
        self.sock.sendall(b"$%s#%02x" % (payload, sum(payload) & 0xFF))

    def reply(self) -> bytes:
        while True:
            match = PACKET.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                self.sock.sendall(b"+")
                return match.group(1)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; had {self.buffer!r}")
            self.buffer += data

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.reply()

    def stop(self) -> dict[str, str]:
        reply = self.reply()
        said = b""
        while reply.startswith(b"O"):  # the stub's messages, e.g. why the VM ended
            said += bytes.fromhex(reply[1:].decode())
            reply = self.reply()
        assert reply.startswith(b"T"), (reply, said.decode(errors="replace"))
        fields = dict(item.split(":", 1) for item in reply[3:].decode().split(";") if item)
        fields["signal"] = reply[1:3].decode()
        return fields

    def registers(self) -> bytes:
        data = bytes.fromhex(self.ask(b"g").decode())
        assert len(data) == 536, data  # gdb's amd64 'g' packet: core registers and SSE
        return data

    def rip(self) -> int:
        return int.from_bytes(self.registers()[128:136], "little")

    def memory(self, address: int, length: int) -> bytes:
        reply = self.ask(b"m%x,%x" % (address, length))
        assert not reply.startswith(b"E"), reply
        return bytes.fromhex(reply.decode())

    def step(self) -> int:
        self.send(b"vCont;s:1")
        assert self.stop()["signal"] == "05"
        return self.rip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class VmdRun:
    """`vmd run --gdb PORT ...`, its console on stdout."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.process = subprocess.Popen([sys.executable, "-m", "vmd.cli", "run", "--gdb", str(self.port), *args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env)
        self.output = b""

    def read_until(self, pattern: bytes, timeout: float) -> bool:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while pattern not in self.output and time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.5)[0]:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.output += chunk
        return pattern in self.output

    def close(self) -> tuple[int | None, str]:
        if self.process.poll() is None:
            self.process.kill()
        _out, err = self.process.communicate(timeout=60)
        return self.process.returncode, err.decode(errors="replace")


def linux_args() -> list[str]:
    return ["-m", "512M", "-b", str(kit_file("vmlinuz")), "--initrd", str(kit_file("initrd.img")), "--append",
            kit_cmdline(), "gdblinux"]


def protected_mode_code(offset: int, length: int) -> bytes:
    data = kit_file("vmlinuz").read_bytes()
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512 + offset
    return data[start : start + length]


def test_linux_held_at_its_64_bit_entry_steps_and_interrupts() -> None:
    vm = VmdRun(*linux_args())
    try:
        gdb = Rsp(vm.port)
        gdb.ask(b"qSupported:swbreak+;hwbreak+")
        xml = gdb.ask(b"qXfer:features:read:target.xml:0,3fff")
        assert b"<architecture>i386:x86-64</architecture>" in xml
        assert gdb.ask(b"?") == b"T05thread:1;"
        assert gdb.rip() == ENTRY
        registers = gdb.registers()
        assert int.from_bytes(registers[4 * 8 : 5 * 8], "little") != 0  # rsi: the boot_params (zero page)
        assert gdb.memory(ENTRY, 16) == protected_mode_code(ENTRY64_OFFSET, 16)
        cr0 = int.from_bytes(bytes.fromhex(gdb.ask(b"p%x" % 59).decode()), "little")  # cr0: after fs/gs_base
        assert cr0 & 0x8000_0001 == 0x8000_0001  # paging and protected mode: vmd's 64-bit boot state
        rips = [ENTRY]
        for _ in range(3):
            rips.append(gdb.step())
        assert len(set(rips)) == 4 and all(KERNEL_LOAD_ADDRESS <= rip < KERNEL_LOAD_ADDRESS + (64 << 20)
                                           for rip in rips), [hex(r) for r in rips]
        gdb.send(b"c")
        time.sleep(3.0)
        gdb.sock.sendall(b"\x03")
        stop = gdb.stop()
        assert stop["signal"] == "02" and stop["thread"] == "1"
        rip = gdb.rip()
        assert gdb.memory(rip, 8)  # the code at rip, through the kernel's own page tables
        assert gdb.ask(b"D") == b"OK"
        gdb.sock.close()
        # detached: the kernel boots on (the kit's cmdline has `quiet`: its init's line, not "Linux version")
        assert vm.read_until(b"vmd guest kit: ready", 400), vm.output[-2000:]
    finally:
        code, err = vm.close()
        assert "Traceback" not in err, err


def test_linux_breakpoints_on_the_path_from_the_entry() -> None:
    """The first instructions of the 64-bit entry run the same way on every boot: learn three addresses on
    that path by stepping, then boot again and stop there with a software and a hardware breakpoint."""
    skip_where_qemu_cannot("software breakpoint", "hardware breakpoint")
    vm = VmdRun(*linux_args())
    try:
        gdb = Rsp(vm.port)
        path = [gdb.step() for _ in range(3)]
        gdb.send(b"k")
    finally:
        vm.close()
    vm = VmdRun(*linux_args())
    try:
        gdb = Rsp(vm.port)
        gdb.ask(b"qSupported:swbreak+;hwbreak+")
        assert gdb.rip() == ENTRY
        original = gdb.memory(path[1], 1)
        assert gdb.ask(b"Z0,%x,1" % path[1]) == b"OK"
        assert gdb.memory(path[1], 1) == original  # our int3 is not shown
        assert gdb.ask(b"Z1,%x,1" % path[2]) == b"OK"
        gdb.send(b"c")
        assert "swbreak" in gdb.stop()
        assert gdb.rip() == path[1]
        assert gdb.ask(b"z0,%x,1" % path[1]) == b"OK"
        gdb.send(b"c")
        assert "hwbreak" in gdb.stop()
        assert gdb.rip() == path[2]
        assert gdb.ask(b"z1,%x,1" % path[2]) == b"OK"
        assert gdb.ask(b"D") == b"OK"
        gdb.sock.close()
        assert vm.read_until(b"vmd guest kit: ready", 400), vm.output[-2000:]
    finally:
        code, err = vm.close()
        assert "Traceback" not in err, err


def _guest(name: str) -> Path:
    """A test guest of tests/guests, built if need be."""
    spec = importlib.util.spec_from_file_location("guest_build", ROOT / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build_all(str(ROOT / "tests" / "guests" / "out"), [name])[name])


def _openbsd64() -> Path:
    return _guest("openbsd64")


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


def test_int3_and_a_write_watchpoint_on_a_hardware_kvm() -> None:
    """A real #BP exit for the software breakpoint (the software KVM fails at an int3 instead), and a DR7 write
    watchpoint (it never raises data breakpoints): the return address `call setup64` pushes."""
    skip_where_qemu_cannot("write watchpoint", "software breakpoint")
    kernel = _openbsd64()
    syms = _symbols(kernel)
    vm = VmdRun("-m", "32M", "-b", str(kernel), "gdbobsd")
    try:
        gdb = Rsp(vm.port)
        gdb.ask(b"qSupported:swbreak+;hwbreak+")
        slot = syms["boot_stack_top"] - 8
        assert gdb.ask(b"Z2,%x,8" % slot) == b"OK"
        gdb.send(b"c")
        stop = gdb.stop()
        assert int(stop.get("watch", "0"), 16) == slot, stop
        assert gdb.ask(b"z2,%x,8" % slot) == b"OK"
        assert gdb.ask(b"Z0,%x,1" % syms["finish"]) == b"OK"
        gdb.send(b"c")
        assert "swbreak" in gdb.stop()
        assert gdb.rip() == syms["finish"]
        assert gdb.ask(b"D") == b"OK"
        gdb.sock.close()
        assert vm.process.wait(timeout=120) == 0
        assert vm.read_until(b"ALL OK", 10)
    finally:
        code, err = vm.close()
        assert "Traceback" not in err, err


# -- breakpoints set in a running guest, by vmd and by QEMU on the same KVM ------------------------------------
# The demo guest's shell (tests/guests/src/demo.c), stopped with ^C at its prompt, gets one breakpoint at a
# time and a line to run: `echo probeN` writes serial_rx_irqs at every keystroke (its UART interrupt) and
# calls strcmp when it runs the line. The guest's own #BP handler prints "FAIL exception: vector 3".
PROBES = (("hardware breakpoint", 1, "strcmp", 1), ("write watchpoint", 2, "serial_rx_irqs", 4),
          ("software breakpoint", 0, "strcmp", 1))  # an int3 that reaches the guest ends it: last
STOPPED = "stopped"
PROMPT = b"vmd-demo# "
QEMU = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-display", "none", "-no-reboot", "-nodefaults",
        "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01", "-m", "64"]


class Demo:
    """A debuggable target (vmd run --gdb, or QEMU -gdb -S) running the demo guest, its console on pipes."""

    def __init__(self, target: str) -> None:
        self.port = free_port()
        self.kernel = _guest("demo")
        if target == "qemu":
            argv = [*QEMU, "-kernel", str(self.kernel), "-gdb", f"tcp:127.0.0.1:{self.port}", "-S"]
        else:
            argv = [sys.executable, "-m", "vmd.cli", "run", "--gdb", str(self.port), "-m", "64M", "-b",
                    str(self.kernel), "gdbdemo"]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        self.output = b""
        self.stop: dict[str, str] = {}

    def type(self, text: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def watch(self, gdb: Rsp, since: int, until: bytes | None, timeout: float) -> str:
        """What happens once the guest runs on: STOPPED (the stop's fields in self.stop), or what instead: the
        guest printed until (after output offset since), took an int3 itself, or the target ended."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            if PACKET.search(gdb.buffer):
                packet = gdb.reply()
                if packet.startswith(b"T"):
                    self.stop = dict(item.split(":", 1) for item in packet[3:].decode().split(";") if item)
                    self.stop["signal"] = packet[1:3].decode()
                    return STOPPED
                if not packet.startswith(b"O"):
                    return f"the target ended ({packet.decode()}) instead"
                continue
            seen = self.output[since:]
            if b"FAIL exception: vector 3" in seen:
                return "the int3 reached the guest's own #BP handler"
            if until is not None and until in seen:
                return "the guest ran on through it"
            if time.monotonic() > deadline:
                return f"neither a stop nor the guest's output in {timeout:.0f} s"
            for source in select.select([gdb.sock, self.process.stdout], [], [], 0.5)[0]:
                if source is gdb.sock:
                    data = gdb.sock.recv(65536)
                    if not data:
                        return "the target ended (connection closed) instead"
                    gdb.buffer += data
                else:
                    self.output += os.read(self.process.stdout.fileno(), 65536)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=60)


def breakpoints_in_the_running_demo(target: str, timeout: float = 90) -> dict[str, str]:
    """For each of PROBES, in one run of the demo guest: STOPPED where the target stopped as it should (the
    address, the kind), or what happened instead."""
    demo = Demo(target)
    syms = _symbols(demo.kernel)
    outcomes: dict[str, str] = {}
    try:
        gdb = Rsp(demo.port)
        reasons = b"swbreak+" in gdb.ask(b"qSupported:swbreak+;hwbreak+")  # QEMU's stub reports none
        amd64 = b"i386:x86-64" in gdb.ask(b"qXfer:features:read:target.xml:0,3fff")  # QEMU: always
        gdb.send(b"c")
        assert demo.watch(gdb, 0, PROMPT, 300) != STOPPED and PROMPT in demo.output, demo.output[-2000:]
        placed = b""
        for number, (what, kind, symbol, length) in enumerate(PROBES):
            gdb.sock.sendall(b"\x03")
            assert demo.watch(gdb, len(demo.output), None, 60) == STOPPED, demo.output[-2000:]
            if placed:
                assert gdb.ask(b"z" + placed) == b"OK"
            address = syms[symbol]
            placed = b"%d,%x,%d" % (kind, address, length)
            reply = gdb.ask(b"Z" + placed)
            if reply != b"OK":
                outcomes[what], placed = f"refused ({reply.decode()})", b""
                continue
            since, line = len(demo.output), b"\r\nprobe%d\r\n" % number  # echo's output, not the typed line
            gdb.send(b"c")
            demo.type(b"echo probe%d\r" % number)
            outcome = demo.watch(gdb, since, line, timeout)
            if outcome == STOPPED:
                pc = int.from_bytes(bytes.fromhex(gdb.ask(b"p%x" % (16 if amd64 else 8)).decode()), "little")
                if kind == 2:
                    right = int(demo.stop.get("watch", "0"), 16) == address
                else:
                    right = pc == address and (not reasons or ("hwbreak" if kind == 1 else "swbreak") in demo.stop)
                if not right or demo.stop["signal"] != "05":
                    outcome = f"a wrong stop ({demo.stop}, pc {pc:#x})"
                assert gdb.ask(b"z" + placed) == b"OK"
                placed = b""
                gdb.send(b"c")
                after = demo.watch(gdb, since, line, timeout)
                if outcome == STOPPED and after != "the guest ran on through it":
                    outcome = f"stopped, but then {after}"
            outcomes[what] = outcome
            if "ended" in outcome or "#BP handler" in outcome:
                break
        for what, *_rest in PROBES:
            outcomes.setdefault(what, "not tried: the guest had ended")
        return outcomes
    finally:
        demo.close()


@functools.cache
def qemu_breakpoints() -> dict[str, str]:
    """What QEMU -enable-kvm's own gdbstub gets on this KVM (breakpoints_in_the_running_demo)."""
    return breakpoints_in_the_running_demo("qemu")


# why the emulated test host cannot (the module's docstring)
CAUSES = {"software breakpoint": "its TCG checks a nested guest's int3 against SVM's INTn intercept, not the #BP "
                                 "exception intercept of KVM_GUESTDBG_USE_SW_BP",
          "hardware breakpoint": "its VMRUN loads the nested guest's DR7 without arming TCG's breakpoints",
          "write watchpoint": "its VMRUN loads the nested guest's DR7 without arming TCG's watchpoints"}


def skip_where_qemu_cannot(*kinds: str) -> None:
    """Inside the emulated test host only: skip unless QEMU's gdbstub stops at each of kinds there."""
    if not inside_test_host():
        return
    qemu = qemu_breakpoints()
    failing = [kind for kind in kinds if qemu[kind] != STOPPED]
    if failing:
        version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
        pytest.skip(f"the emulated test host ({' '.join(version.split()[:4])} TCG, nested AMD SVM) cannot stop a "
                    "nested guest there, and QEMU -enable-kvm's own gdbstub on the same KVM gets no stop either: "
                    + "; ".join(f"{kind}: {qemu[kind]} ({CAUSES[kind]})" for kind in failing))


def test_breakpoints_set_in_a_running_guest_stop_it_as_under_qemu() -> None:
    """^C at the demo guest's prompt, then a hardware breakpoint, a write watchpoint and a software breakpoint,
    one at a time, each with a line typed: every one stops the guest. In the emulated test host, where none can
    (see the module's docstring), vmd must fare exactly as QEMU's own gdbstub on the same KVM."""
    vmd = breakpoints_in_the_running_demo("vmd")
    if inside_test_host():
        assert vmd == qemu_breakpoints()
    else:
        assert vmd == {what: STOPPED for what, *_rest in PROBES}
