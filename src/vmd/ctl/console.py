"""`vmctl console`: a built-in terminal client for a VM's tty.

OpenBSD's vmctl execs `cu -r -l <tty> -s 115200` (main.c `ctl_openconsole`). We have no cu(1), so this module
does cu's job: it opens the tty, puts both it and the local terminal in raw mode, copies bytes both ways
with poll(2), and understands cu's escapes at the start of a line (after CR or LF typed locally, and at the
very start):

    ~.   disconnect (also ~^D)
    ~#   send a break (tcsendbreak(3) on the tty)
    ~~   send one ~
    ~?   list the escapes

Any other character after ~ is sent together with the ~. On disconnect it prints `[EOT]` as cu does. The
terminal settings are restored on every way out (escape, remote hang-up, errors, SIGTERM/SIGHUP).

When stdin is not a terminal there is no raw mode; input is copied as it comes, and at end of input the
client keeps copying the VM's output until the line has been quiet for `eof_linger` seconds, so that
`printf 'ls\\n' | vmctl console vm1` shows the answer.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import termios
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from vmd.ctl.client import CtlError

ESCAPE = ord("~")
EOT_MESSAGE = b"\n[EOT]\n"
HELP = b"\r\n~.  disconnect\r\n~#  send break\r\n~~  send ~\r\n~?  this help\r\n"
MAX_PENDING = 64 * 1024  # stop reading stdin while this much is waiting for the VM


@dataclass
class EscapeFilter:
    """cu's escape recognition, as a pure state machine over the bytes typed locally."""

    line_start: bool = True
    pending: bool = False  # a ~ at line start was seen; the next byte decides

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Return events in order: ("data", bytes), ("break", b""), ("help", b""), ("disconnect", b"")."""
        out: list[tuple[str, bytes]] = []
        buf = bytearray()

        def flush() -> None:
            if buf:
                out.append(("data", bytes(buf)))
                buf.clear()

        for b in data:
            if self.pending:
                self.pending = False
                if b in (ord("."), 0x04):
                    flush()
                    out.append(("disconnect", b""))
                    return out  # the rest is never sent
                if b == ord("#"):
                    flush()
                    out.append(("break", b""))
                elif b == ord("?"):
                    flush()
                    out.append(("help", b""))
                elif b == ESCAPE:
                    buf.append(ESCAPE)
                else:
                    buf += bytes((ESCAPE, b))
                self.line_start = b in (0x0D, 0x0A)
                continue
            if self.line_start and b == ESCAPE:
                self.pending = True
                continue
            buf.append(b)
            self.line_start = b in (0x0D, 0x0A)
        flush()
        return out


def open_console(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise CtlError(f"failed to open the console: {os.strerror(e.errno or errno.EIO)}") from None


class _Hangup(Exception):
    pass


@contextmanager
def _raw(fd: int, when: int = termios.TCSAFLUSH) -> Iterator[None]:
    """Raw mode on fd if it is a terminal, restored on the way out whatever happens."""
    saved = None
    if os.isatty(fd):
        try:
            saved = termios.tcgetattr(fd)
            tty.setraw(fd, when)
        except termios.error:
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            try:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            except termios.error:
                pass


@contextmanager
def _signals_restore() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception so the terminal gets restored (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Hangup()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        view = view[n:]


class ConsoleClient:
    """Connects stdin/stdout to a VM's tty until ~. or until the VM side goes away."""

    def __init__(self, tty_path: str, stdin_fd: int = 0, stdout_fd: int = 1, eof_linger: float = 1.0) -> None:
        self.tty_path = tty_path
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.eof_linger = eof_linger

    def run(self) -> None:
        fd = open_console(self.tty_path)
        try:
            # the VM's tty without flushing: what the guest wrote before we came is shown
            with _signals_restore(), _raw(self.stdin_fd), _raw(fd, termios.TCSANOW):
                try:
                    self._loop(fd)
                except _Hangup:
                    pass
        finally:
            os.close(fd)
        try:
            _write_all(self.stdout_fd, EOT_MESSAGE)
        except OSError:
            pass

    def _loop(self, fd: int) -> None:
        esc = EscapeFilter()
        to_vm = bytearray()
        stdin_open = True
        while True:
            poller = select.poll()
            poller.register(fd, select.POLLIN | (select.POLLOUT if to_vm else 0))
            if stdin_open and len(to_vm) < MAX_PENDING:
                poller.register(self.stdin_fd, select.POLLIN)
            timeout = None if stdin_open else int(self.eof_linger * 1000)
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                continue
            if not ready:
                return  # input ended and the VM has been quiet for eof_linger seconds
            for rfd, ev in ready:
                if rfd == fd:
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        if not self._from_vm(fd):
                            return
                    if ev & select.POLLOUT and to_vm:
                        try:
                            n = os.write(fd, to_vm)
                        except (BlockingIOError, InterruptedError):
                            n = 0
                        except OSError:
                            return
                        del to_vm[:n]
                elif rfd == self.stdin_fd:
                    try:
                        data = os.read(self.stdin_fd, 4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        if os.isatty(self.stdin_fd):
                            return
                        stdin_open = False
                        continue
                    for kind, payload in esc.feed(data):
                        if kind == "data":
                            to_vm += payload
                        elif kind == "break":
                            try:
                                termios.tcsendbreak(fd, 0)
                            except (termios.error, OSError):
                                pass
                        elif kind == "help":
                            _write_all(self.stdout_fd, HELP)
                        elif kind == "disconnect":
                            self._drain(fd, to_vm)
                            return

    def _from_vm(self, fd: int) -> bool:
        """Copy what the VM wrote; False when its side is gone."""
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # EIO: the pty master was closed
            return False
        if not data:
            return False
        _write_all(self.stdout_fd, data)
        return True

    @staticmethod
    def _drain(fd: int, to_vm: bytearray) -> None:
        """Send what was typed before ~. (best effort, never blocking long)."""
        while to_vm:
            try:
                n = os.write(fd, to_vm)
            except BlockingIOError:
                r = select.select([], [fd], [], 0.5)
                if not r[1]:
                    return
                continue
            except OSError:
                return
            del to_vm[:n]
