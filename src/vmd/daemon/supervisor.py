"""Starting VM processes (fork+exec) and hearing from them: their socket and their pidfd."""

from __future__ import annotations

import grp
import logging
import os
import pty
import signal
import socket
import subprocess
import sys
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vmd
from vmd.vmchannel import EXIT_REBOOT, receive_message, send_message

log = logging.getLogger("vmd.supervisor")

VM_USER = "_vmd"


@dataclass
class Terminal:
    """A VM's console pty, held by vmd for the VM's life (kept across guest reboots, as vmd keeps it)."""

    master: int
    slave: int
    path: str

    @classmethod
    def open(cls) -> Terminal:
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        return cls(master, slave, os.ttyname(slave))

    def give_to(self, uid: int, gid: int | None) -> None:
        """vm_opentty: owner uid; group gid mode 0660 when the owner has a group, else group tty 0620."""
        if gid is not None:
            os.chown(self.path, uid, gid)
            os.chmod(self.path, 0o660)
            return
        try:
            tty_gid = grp.getgrnam("tty").gr_gid
        except KeyError:
            os.chown(self.path, uid, 0)
            os.chmod(self.path, 0o600)
            return
        os.chown(self.path, uid, tty_gid)
        os.chmod(self.path, 0o620)

    def close(self) -> None:
        """vm_closetty: back to root before closing."""
        try:
            os.chown(self.path, 0, 0)
            os.chmod(self.path, 0o600)
        except OSError:
            pass
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class VmProcess:
    """A running VM process: its pid, pidfd and control socket."""

    pid: int
    pidfd: int
    sock: socket.socket
    popen: subprocess.Popen[bytes]
    outcome: dict[str, Any] = field(default_factory=dict)
    running: bool = False
    stats: dict[str, Any] | None = None  # its last "stats" report, checked (daemon/stats.py)
    stats_time: float = float("-inf")  # when it came (time.monotonic())
    stats_asked: float | None = None  # when the request now outstanding went out; None: none is
    invalid_messages: int = 0

    def send(self, command: str) -> None:
        try:
            send_message(self.sock, {"command": command})
        except OSError:
            pass

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def read_event(self) -> dict[str, Any] | None:
        """The next message; None when the VM process has gone, {} for one that is not valid (logged)."""
        try:
            message, fds = receive_message(self.sock)
        except ValueError as error:  # not JSON, too long or too deep: dropped, the channel goes on
            if not self.invalid_messages:  # logged once: a VM process cannot fill the log
                log.warning("vm process %d: invalid message: %s", self.pid, error)
            self.invalid_messages += 1
            return {}
        except BlockingIOError:
            raise
        except OSError:
            return None
        for fd in fds:
            os.close(fd)
        return message

    def reap(self) -> int:
        """Wait for the exited process; its exit status (negative: killed by that signal)."""
        code = self.popen.wait()
        os.close(self.pidfd)
        self.sock.close()
        return code

    def resident_guest_bytes(self) -> int | None:
        """CURMEM: guest memory resident in the VM process (its shared memfd pages)."""
        return self._status_bytes("RssShmem:")

    def rss_bytes(self) -> int | None:
        """The VM process's whole resident set: guest memory and vmd's own (the metrics' RSS)."""
        return self._status_bytes("VmRSS:")

    def _status_bytes(self, field_name: str) -> int | None:
        """A `kB` field of /proc/<pid>/status, in bytes."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(field_name):
                return int(line.split()[1]) * 1024
        return None


def _child_environment() -> dict[str, str]:
    """The VM process is exec'd with argv[0] 'vmd: vm/<name>', so hand it our import path explicitly."""
    paths = [str(Path(vmd.__file__).resolve().parent.parent)] + [p for p in sys.path if p]
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL", "TZ")}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def spawn(name: str, spec: dict[str, Any], terminal: Terminal, files: dict[str, int], user: str | None,
          verbose: int) -> VmProcess:
    """fork+exec the VM process and hand it the VM and its fds. files: name -> open fd (closed here)."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent_sock.set_inheritable(False)
    child_fd = child_sock.fileno()
    try:
        popen = subprocess.Popen(
            [f"vmd: vm/{name}", "-m", "vmd.vmproc", str(child_fd)],
            executable=sys.executable, pass_fds=[child_fd], env=_child_environment(),
            stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    finally:
        child_sock.close()
    fds = [terminal.master] + list(files.values())
    fd_names = {"console": 0}
    for index, key in enumerate(files, start=1):
        fd_names[key] = index
    try:
        send_message(parent_sock, {"spec": spec, "fds": fd_names, "user": user, "verbose": verbose}, fds)
    finally:
        for fd in files.values():
            os.close(fd)
    return VmProcess(popen.pid, os.pidfd_open(popen.pid), parent_sock, popen)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == EXIT_REBOOT:
        return "rebooted"
    return f"exit status {code}"
