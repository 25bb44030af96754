"""Fixtures for tests that run real operating systems under vmd, driven the way a user drives vmd: a vm.conf,
a running vmd (in a network namespace of the test's own), vmctl, and the guest's console.

These tests need a hardware KVM: tests/hwvirt/plugin.py runs them in the test host where this machine's KVM
is not one.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "guest-kit"
SHARED_GUESTS = ROOT.parent / "shared" / "guests"


def kit_file(name: str) -> Path:
    path = KIT / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: scripts/setup.sh prepares the guest kit")
    return path


def kit_cmdline() -> str:
    """The kernel command line the guest kit recommends (guest-kit/cmdline), or the plain console one."""
    path = KIT / "cmdline"
    return path.read_text().strip() if path.exists() else "console=ttyS0"


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    name = f"vmdhw-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    made = ip("netns", "add", name)
    assert made.returncode == 0, made.stderr
    ip("-n", name, "link", "set", "lo", "up")
    yield name
    ip("netns", "del", name)


STALLED_WAIT = 30.0  # seconds an expect() waits on a console that printed nothing since one timed out
LIVE: list[Vmd] = []  # the daemons running now: a failing test's report carries the end of their logs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:  # type: ignore[attr-defined]
        for vmd in LIVE:
            report.sections.append((f"VMs of {vmd.log.parent}", vmd.diagnose()))  # type: ignore[attr-defined]
            report.sections.append((f"vmd log ({vmd.log})", vmd.log_tail(120)))  # type: ignore[attr-defined]
    return report


class Vmd:
    """A vmd daemon on a private socket (in a network namespace when given one), with vmctl at hand."""

    def __init__(self, config: str, netns: str | None = None) -> None:
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="vmdhw-", dir="/tmp"))
        self.socket = str(self.dir / "vmd.sock")
        self.config = self.dir / "vm.conf"
        self.config.write_text(config)
        self.log = self.dir / "vmd.log"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), VMD_SOCKET=self.socket)
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.process = subprocess.Popen([*prefix, sys.executable, "-m", "vmd.cli", "-d", "-v", "-f", str(self.config)],
                                        env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "vmd did not create its socket\n" + self.log.read_text()
            time.sleep(0.1)
        LIVE.append(self)

    def vmctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmd.ctl.main", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def must(self, *args: str, timeout: float = 180) -> str:
        done = self.vmctl(*args, timeout=timeout)
        assert done.returncode == 0, f"vmctl {' '.join(args)}: {done.stdout}{done.stderr}\n{self.log_tail()}"
        return done.stdout

    def status(self, timeout: float = 180) -> dict[str, dict[str, object]]:
        done = self.vmctl("status", "--json", timeout=timeout)
        return {str(row["name"]): row for row in json.loads(done.stdout)} if done.returncode == 0 else {}

    def wait_state(self, name: str, state: str | None, timeout: float = 120) -> dict[str, object]:
        """Until the VM is in state; None: until it is gone (a VM started ad hoc is forgotten once stopped)."""
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            rows = self.status()
            if state is None and name not in rows:
                return {}
            if name in rows and rows[name]["state"] == state:
                return rows[name]
            time.sleep(0.5)
        raise AssertionError(f"{name} never became {state}: {rows}\n{self.log_tail()}")

    def diagnose(self) -> str:
        """What a failed test's report says about each running VM: whether its vCPUs ran in the last 3 s
        (their CPU time and KVM's exit counts, from `vmctl status --json`), and its threads' stacks, which
        the VM process writes to the log on SIGUSR2."""
        def sample() -> dict[str, dict[str, object]]:
            try:
                return self.status(timeout=20)  # a hung vmd must not spend the run's budget here
            except (subprocess.TimeoutExpired, ValueError):
                return {}

        first = sample()
        time.sleep(3)
        second = sample()
        lines = []
        for name, row in second.items():
            stats, before = row.get("stats"), (first.get(name) or {}).get("stats")
            if not isinstance(stats, dict):
                lines.append(f"{name}: {row.get('state')}, no counters")
                continue
            exits = stats.get("kvm_exits", {})
            was = before.get("kvm_exits", {}) if isinstance(before, dict) else {}
            delta = {k: v - was.get(k, 0) for k, v in exits.items() if v != was.get(k, 0)}
            lines.append(f"{name}: {row.get('state')}, pid {row.get('pid')}, vCPU seconds {stats.get('vcpu_seconds')}"
                         f" (3 s before: {before.get('vcpu_seconds') if isinstance(before, dict) else None});"
                         f" KVM exits in those 3 s: {delta or 'none'}")
            pid = row.get("pid")
            if isinstance(pid, int):
                try:
                    os.kill(pid, signal.SIGUSR2)  # vmproc.py: its threads' stacks into the log
                except OSError:
                    pass
        time.sleep(1)
        return "\n".join(lines) or "no VM running"

    def console(self, name: str) -> Console:
        return Console(str(self.status()[name]["tty"]))

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as error:
            text = f"(unreadable: {error.strerror})"
        return "vmd log:\n" + "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        if self.process.poll() is None:
            self.vmctl("stop", "-a", "-f", "-w", timeout=60)
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Console:
    """A VM's console tty, read and written as a user at a terminal would, with a shell helper for the kit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        self.seen = b""  # everything read, for failure messages
        self.stalled = False  # an expect() timed out and nothing was printed since: later ones wait less
        self._pending = b""  # read but not yet consumed by expect()
        self._serial = 0

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, text: str) -> None:
        data = text.encode()
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                time.sleep(0.01)

    def _read(self, timeout: float) -> bool:
        if not select.select([self.fd], [], [], timeout)[0]:
            return False
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, OSError):
            return False
        self.seen += data
        self._pending += data
        if data:
            self.stalled = False
        return bool(data)

    def expect(self, pattern: str, timeout: float = 120) -> re.Match[bytes]:
        """Wait until pattern shows up in what the console printed since the last match; returns the match."""
        regex = re.compile(pattern.encode())
        started = time.monotonic()
        while True:
            match = regex.search(self._pending)
            if match:
                self._pending = self._pending[match.end():]
                return match
            # a console that went silent under an earlier timeout (and since) gets no long wait again
            waited = time.monotonic() - started
            left = (min(timeout, STALLED_WAIT) if self.stalled else timeout) - waited
            if left <= 0:
                was = " (it had printed nothing since an earlier wait timed out)" if self.stalled else ""
                self.stalled = True
                raise AssertionError(f"{pattern!r} did not appear on {self.path} in {waited:.0f} s{was}; the"
                                     f" console showed:\n{self.tail()}")
            self._read(min(left, 0.5))

    def drain(self, seconds: float) -> None:
        """Read whatever the console prints for that long."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(min(left, 0.5))

    def tail(self, size: int = 3000) -> str:
        return self.seen[-size:].decode(errors="replace")

    def sh(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run command in the guest's shell; returns (its exit status, its output)."""
        self._serial += 1
        tag = f"{self._serial}x{os.getpid() % 1000}"
        # The markers are split in what is typed, so the shell's echo of the line never matches them.
        self.send(f"echo '@@''B{tag}'; {command}; echo \"@@\"'E{tag}' $?\r")
        self.expect(rf"@@B{tag}\r?\n", timeout)
        match = self.expect(rf"(?s)(.*?)@@E{tag} (\d+)", timeout)
        output = match.group(1).decode(errors="replace").replace("\r\n", "\n")
        return int(match.group(2)), output

    def must(self, command: str, timeout: float = 120) -> str:
        status, output = self.sh(command, timeout)
        assert status == 0, f"guest: {command}: status {status}\n{output}"
        return output

    def answers(self, timeout: float = 30) -> bool:
        """Whether the kit's shell answers within timeout."""
        try:
            self.wait_shell(timeout)
        except AssertionError:
            return False
        return True

    def wait_shell(self, timeout: float = 300) -> None:
        """Until the kit's shell answers (it may have printed its prompt before we opened the console)."""
        deadline = time.monotonic() + timeout
        while True:
            self._serial += 1
            tag = f"{self._serial}r{os.getpid() % 1000}"
            self.send(f"\recho '@@''R{tag}'\r")
            try:
                self.expect(rf"@@R{tag}", min(20.0, max(1.0, deadline - time.monotonic())))
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
