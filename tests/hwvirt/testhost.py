"""The hardware-virtualization test host: a QEMU machine whose /dev/kvm is a real, hardware-style KVM.

This machine's /dev/kvm may be a software KVM that cannot run real operating systems. QEMU's TCG emulates
AMD SVM with nested paging (`-cpu max`), so Debian's own kernel booted in a TCG machine loads kvm_amd and
offers a real KVM to its guests. The test host shares this machine's root file system read-only over
virtio-9p, under a tmpfs overlay, so this tree, its venv, QEMU and every tool work unchanged inside it; it
runs commands there through a small agent on a virtio-serial port (tests/hwvirt/agent.py).

vmd itself never emulates a CPU: this is for tests and benchmarks only.

    python -m tests.hwvirt.testhost [-m MEM] [--smp N] -- COMMAND...    run one command in a fresh test host
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL_DIR = ROOT / "build" / "debian" / "amd64"
CACHE = ROOT / "build" / "testhost"
AGENT = Path(__file__).resolve().parent / "agent.py"
PORT_NAME = "vmd.agent"
# What the host's kernel loads, in this order after their dependencies (scripts/kmods.py resolves them).
MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay", "kvm_amd", "tun", "bridge", "veth",
           "vhost_net", "loop", "vrf", "af_packet")
BUSYBOX = "/bin/busybox"
DEFAULT_MEMORY = "10G"
BOOT_TIMEOUT = 180.0  # seconds to the agent's greeting; ~10 s on an idle 2-core machine
MAX_LINE = 16 << 20  # one agent message; output comes in chunks far below this
IDLE_TIMEOUT = 120.0  # seconds without a message (the agent beats every 20 s) before the host counts as hung


# What the test host's own kernel prints when one of its CPUs is stuck for good (emulated nested SVM has
# left a CPU inside a nested guest, taking no interrupts, while the other CPU kept the agent's heartbeat
# going). One RCU stall report can be a slow moment under load; a second one for the same grace period, a
# lockup or a hung task is not.
RCU_STALL = re.compile(r"rcu: INFO: rcu_\w+ detected stalls")
FATAL = re.compile(r"soft lockup|hard LOCKUP|blocked for more than \d+ seconds|Kernel panic|BUG: ")
STALLS_FATAL = 2


def kernel_trouble(console: str) -> str | None:
    """The line that says the test host's kernel is stuck, in what its console printed; None if none does."""
    stalls = 0
    for line in console.splitlines():
        if FATAL.search(line):
            return line.strip()
        if RCU_STALL.search(line):
            stalls += 1
            if stalls >= STALLS_FATAL:
                return line.strip()
    return None


class TestHostError(Exception):
    """The test host could not be built, booted, or reached."""


class TestHostDied(TestHostError):
    """QEMU exited, or the agent went away, while a command ran: the host failed, not the command."""


class TestHostHung(TestHostError):
    """The agent sent nothing, not even its heartbeat, for too long: the test host's kernel is stuck."""


def kvm_is_hardware() -> bool:
    """True when this machine's /dev/kvm is backed by VT-x or AMD-V (kvm_intel or kvm_amd loaded)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return any(os.path.isdir(f"/sys/module/{module}") for module in ("kvm_intel", "kvm_amd"))


def inside_test_host() -> bool:
    return os.environ.get("VMD_TESTHOST") == "1"


def _init_script() -> str:
    """The test host's /init: modules, the host's root over 9p under a tmpfs overlay, then the agent."""
    return """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read module; do insmod "/lib/modules/$module" || echo "testhost: insmod $module failed"; done \\
    < /lib/modules/order
mkdir -p /host /overlay /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro,cache=loose host /host || exec poweroff -f
mount -t tmpfs -o mode=0755 tmpfs /overlay
mkdir -p /overlay/upper /overlay/work
mount -t overlay -o lowerdir=/host,upperdir=/overlay/upper,workdir=/overlay/work overlay /newroot \\
    || exec poweroff -f
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
ip link set lo up
for arg in $(cat /proc/cmdline); do
    case "$arg" in vmd.python=*) python=${arg#vmd.python=} ;; vmd.agent=*) agent=${arg#vmd.agent=} ;; esac
done
echo "testhost: kvm $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null | sed 's/^/npt=/'), starting $agent"
VMD_TESTHOST=1 HOME=/root TERM=dumb chroot /newroot "$python" "$agent"
echo "testhost: the agent exited ($?)"
poweroff -f
"""


def _kernel_modules_dir() -> Path:
    versions = sorted((KERNEL_DIR / "lib" / "modules").glob("*"))
    if not (KERNEL_DIR / "vmlinuz").exists() or not versions:
        raise TestHostError(f"no Debian kernel in {KERNEL_DIR}: run scripts/setup.sh"
                            " (scripts/debian-kernel.sh amd64 build/debian/amd64)")
    return versions[-1]


def build_initramfs(target: Path = CACHE / "initrd.img") -> Path:
    """The test host's initramfs (busybox, the modules of MODULES, /init); rebuilt when its inputs change."""
    modules_dir = _kernel_modules_dir()
    stamp = json.dumps([str(modules_dir), MODULES, _init_script(), os.stat(BUSYBOX).st_mtime]).encode()
    stamp_file = target.with_suffix(".stamp")
    if target.exists() and stamp_file.exists() and stamp_file.read_bytes() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmd-testhost-") as work:
        root = Path(work)
        for directory in ("bin", "dev", "proc", "sys", "lib/modules"):
            (root / directory).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        for applet in ("sh", "mount", "mkdir", "insmod", "cat", "echo", "chroot", "poweroff", "ip", "sed"):
            (root / "bin" / applet).symlink_to("busybox")
        subprocess.run([sys.executable, str(ROOT / "scripts" / "kmods.py"), str(modules_dir),
                        str(root / "lib" / "modules"), *MODULES], check=True)
        (root / "init").write_text(_init_script())
        (root / "init").chmod(0o755)
        listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing,
                                 capture_output=True, check=True).stdout
        partial = target.with_suffix(".part")
        partial.write_bytes(subprocess.run(["gzip", "-1"], input=archive, capture_output=True,
                                           check=True).stdout)
        partial.replace(target)
    stamp_file.write_bytes(stamp)
    return target


@dataclass
class Result:
    status: int
    output: str


class TestHost:
    """One booted test host. Use as a context manager; run() as many commands as needed."""

    def __init__(self, memory: str = DEFAULT_MEMORY, smp: int = 2, log: Path | None = None) -> None:
        self.memory, self.smp = memory, smp
        self._dir = Path(tempfile.mkdtemp(prefix="vmd-testhost-"))
        self.console_log = log or self._dir / "console.log"
        self._socket_path = self._dir / "agent.sock"
        self._qemu: subprocess.Popen[bytes] | None = None
        self._agent: socket.socket | None = None
        self._buffer = b""
        self.boot_seconds = 0.0
        self._trouble_checked = float("-inf")

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> TestHost:
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def qemu_command(self, initrd: Path) -> list[str]:
        python = os.path.realpath(ROOT / ".venv" / "bin" / "python")
        if not os.path.exists(python):
            python = sys.executable
        cmdline = (f"console=ttyS0 panic=-1 quiet loglevel=4 vmd.python={ROOT / '.venv' / 'bin' / 'python'}"
                   f" vmd.agent={AGENT}")
        return [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.smp), "-m", self.memory,
            "-kernel", str(KERNEL_DIR / "vmlinuz"), "-initrd", str(initrd), "-append", cmdline,
            "-serial", f"file:{self.console_log}", "-monitor", "none",
            "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={self._socket_path},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={PORT_NAME}",
        ]

    def boot(self) -> None:
        initrd = build_initramfs()
        started = time.monotonic()
        self._qemu = subprocess.Popen(self.qemu_command(initrd), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = started + BOOT_TIMEOUT
        while not self._socket_path.exists():
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                raise TestHostError(f"QEMU did not create {self._socket_path}")
            time.sleep(0.05)
        self._agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._agent.connect(str(self._socket_path))
        hello = self._receive(deadline, "while booting")
        if hello.get("hello") != "vmd-testhost-agent":
            raise TestHostError(f"unexpected greeting from the test host agent: {hello!r}")
        self.boot_seconds = time.monotonic() - started

    def close(self) -> None:
        if self._agent is not None:
            try:
                self._send({"op": "poweroff"})
            except OSError:
                pass
            self._agent.close()
            self._agent = None
        if self._qemu is not None:
            try:
                self._qemu.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._qemu.kill()
                self._qemu.wait()
            if self._qemu.stdout is not None:
                self._qemu.stdout.close()
            self._qemu = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def _kernel_trouble(self) -> str | None:
        """kernel_trouble() of the console since boot, read at most every few seconds."""
        now = time.monotonic()
        if now - self._trouble_checked < 5.0:
            return None
        self._trouble_checked = now
        try:
            return kernel_trouble(self.console_log.read_text(errors="replace"))
        except OSError:
            return None

    def _check_alive(self, when: str) -> None:
        if self._qemu is not None and self._qemu.poll() is not None:
            out = self._qemu.stdout.read().decode(errors="replace") if self._qemu.stdout else ""
            raise TestHostDied(f"the test host's QEMU exited with status {self._qemu.returncode} {when}"
                               f"\nQEMU said: {out.strip()[-2000:]}\nconsole:\n{self.console_tail()}")

    def _died(self, when: str) -> None:
        """The agent's channel closed: the test host is going down (a kernel panic reboots it, and QEMU runs
        with -no-reboot). Say what its console showed."""
        if self._qemu is not None:
            try:
                self._qemu.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        tail = self.console_tail(40)
        panic = next((line for line in tail.splitlines() if "Kernel panic" in line or "BUG:" in line), None)
        what = f"the test host's kernel failed ({panic.strip()})" if panic else "the test host agent closed its channel"
        raise TestHostDied(f"{what} {when}\nconsole:\n{tail}")

    # -- the agent protocol: JSON lines both ways --------------------------------------------------------
    def _send(self, message: dict[str, object]) -> None:
        assert self._agent is not None
        self._agent.sendall(json.dumps(message).encode() + b"\n")

    def _receive(self, deadline: float, when: str) -> dict[str, object]:
        assert self._agent is not None
        while b"\n" not in self._buffer:
            self._check_alive(when)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the test host did not answer in time {when}")
            ready, _, _ = select.select([self._agent], [], [], min(left, 1.0))
            if not ready:
                continue
            data = self._agent.recv(1 << 16)
            if not data:
                self._died(when)
            self._buffer += data
            if len(self._buffer) > MAX_LINE:
                raise TestHostError("the test host agent sent an overlong message")
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise TestHostError(f"bad message from the test host agent: {line[:200]!r}")
        return message

    def run(self, argv: Sequence[str], timeout: float = 600.0, cwd: str | Path = ROOT,
            env: dict[str, str] | None = None, on_output: Callable[[bytes], None] | None = None,
            on_report: Callable[[bytes], None] | None = None, idle_timeout: float = IDLE_TIMEOUT) -> Result:
        """Run argv in the test host; returns its status and its output (stdout and stderr together).

        on_output sees the output as it comes; on_report gets each line the command writes to the fd
        named by $VMD_HWVIRT_REPORT_FD (the inner pytest plugin's reports). Raises TimeoutError when the
        command outlives timeout, TestHostHung when the host goes silent for idle_timeout."""
        if self._agent is None:
            raise TestHostError("the test host is not running")
        self._send({"op": "run", "argv": list(argv), "cwd": str(cwd), "env": env or {}, "timeout": timeout})
        deadline = time.monotonic() + timeout + 30
        output = bytearray()
        when = f"running {' '.join(argv)[:200]}"
        while True:
            try:
                message = self._receive(min(deadline, time.monotonic() + idle_timeout), when)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the command ran past its {timeout:.0f} s in the test host") from None
                raise TestHostHung(f"the test host sent nothing for {idle_timeout:.0f} s {when}: its kernel is"
                                   f" stuck\nconsole:\n{self.console_tail(40)}") from None
            trouble = self._kernel_trouble()
            if trouble is not None:
                raise TestHostHung(f"the test host's kernel is stuck ({trouble}) {when}\nconsole:\n"
                                   f"{self.console_tail(40)}")
            if "out" in message:
                chunk = base64.b64decode(str(message["out"]))
                output += chunk
                if on_output is not None:
                    on_output(chunk)
            elif "report" in message:
                if on_report is not None:
                    on_report(base64.b64decode(str(message["report"])))
            elif "status" in message:
                status = message["status"]
                return Result(int(status) if isinstance(status, int) else 1, output.decode(errors="replace"))
            elif "error" in message:
                raise TestHostError(f"the test host agent: {message['error']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hwvirt.testhost",
                                     description="Run a command in a fresh hardware-virtualization test host.")
    parser.add_argument("-m", "--memory", default=DEFAULT_MEMORY)
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    try:
        with TestHost(args.memory, args.smp) as host:
            print(f"testhost: booted in {host.boot_seconds:.1f} s", file=sys.stderr)

            def show(chunk: bytes) -> None:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()

            result = host.run(args.command, timeout=args.timeout, on_output=show)
            return result.status
    except (TestHostError, TimeoutError) as error:
        print(f"testhost: {error}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main())
