"""`vmd run --gdb` on a hardware KVM: Debian's Linux kernel (the guest kit's bzImage) held at its 64-bit entry,
registers, single steps, breakpoints, ^C and detach; and the test guest openbsd64 for what the software KVM of
the development machine cannot do (int3 as a real #BP exit, data watchpoints).

vmd loads a bzImage's protected-mode code at 1 MiB and enters it at +0x200 in 64-bit mode
(vmd.boot.linux: KERNEL_LOAD_ADDRESS, ENTRY64_OFFSET); the file holds that code after its real-mode setup
sectors ((setup_sects + 1) * 512 bytes, boot protocol: setup_sects 0 means 4).
"""

from __future__ import annotations

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
        while reply.startswith(b"O"):
            reply = self.reply()
        assert reply.startswith(b"T"), reply
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
        assert vm.read_until(b"Linux version", 120), vm.output[-2000:]  # detached: the kernel boots on
    finally:
        code, err = vm.close()
        assert "Traceback" not in err, err


def test_linux_breakpoints_on_the_path_from_the_entry() -> None:
    """The first instructions of the 64-bit entry run the same way on every boot: learn three addresses on
    that path by stepping, then boot again and stop there with a software and a hardware breakpoint."""
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
        assert vm.read_until(b"Linux version", 120), vm.output[-2000:]
    finally:
        code, err = vm.close()
        assert "Traceback" not in err, err


def _openbsd64() -> Path:
    spec = importlib.util.spec_from_file_location("guest_build", ROOT / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build_all(str(ROOT / "tests" / "guests" / "out"), ["openbsd64"])["openbsd64"])


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


def test_int3_and_a_write_watchpoint_on_a_hardware_kvm() -> None:
    """A real #BP exit for the software breakpoint (the software KVM fails at an int3 instead), and a DR7 write
    watchpoint (it never raises data breakpoints): the return address `call setup64` pushes."""
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
