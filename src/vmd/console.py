"""The VM's console: the host end of COM1, either this process's stdio or a pseudo-terminal.

vmd gives each VM a pty and prints its path; `vmd run --console stdio` uses the terminal it runs in.
"""

from __future__ import annotations

import errno
import os
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

MODES = ("stdio", "pty")
READ_SIZE = 4096  # console input read at a time
FLOW_POLL = 0.02  # seconds between looks at a full UART backlog


class ConsoleError(Exception):
    pass


class Console:
    """Guest output goes to write(); host input is passed to the function given to attach()."""

    def __init__(self, mode: str = "stdio", master_fd: int | None = None) -> None:
        """mode stdio or pty; or master_fd: the master side of a pty someone else opened (vmd's VM processes)."""
        if master_fd is not None:
            mode = "pty"
        elif mode not in MODES:
            raise ConsoleError(f"unknown console {mode!r} (choose stdio or pty)")
        self.mode = mode
        self.path: str | None = None
        self._feed: Callable[[bytes], None] | None = None
        self._room: Callable[[], int] | None = None
        self._saved_termios: list[Any] | None = None
        self._lock = threading.Lock()
        self._closed = False
        if master_fd is not None:
            self.master, self._slave = master_fd, -1
            os.set_blocking(self.master, False)
            self.input_fd, self.output_fd = self.master, self.master
        elif mode == "pty":
            self.master, self._slave = os.openpty()
            self.path = os.ttyname(self._slave)
            tty.setraw(self._slave)
            os.set_blocking(self.master, False)
            self.input_fd, self.output_fd = self.master, self.master
        else:
            self._slave = -1
            self.master = -1
            self.input_fd, self.output_fd = 0, 1
            if os.isatty(0):
                self._saved_termios = termios.tcgetattr(0)
                attributes = termios.tcgetattr(0)
                # raw input, but keep ISIG so ^C still stops the foreground VM
                attributes[0] &= ~(termios.ICRNL | termios.IXON | termios.INLCR | termios.IGNCR)
                attributes[3] &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)
                attributes[6][termios.VMIN] = 1
                attributes[6][termios.VTIME] = 0
                termios.tcsetattr(0, termios.TCSANOW, attributes)
        self._reader = threading.Thread(target=self._read_loop, name="console-input", daemon=True)
        self._reader.start()

    def attach(self, feed: Callable[[bytes], None] | None, room: Callable[[], int] | None = None) -> None:
        """Send typed bytes to feed (the UART's receive side) from now on. room() says how many more it
        takes: while it is 0, input stays in the pty (whose writer then blocks), never in our memory."""
        with self._lock:
            self._feed, self._room = feed, room

    def write(self, data: bytes) -> None:
        """Guest output. A pty nobody reads drops what does not fit, as a real line with no listener would."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.output_fd, view)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in (errno.EIO, errno.EPIPE):
                    return
                raise
            view = view[written:]

    def _read_loop(self) -> None:
        import select

        while not self._closed:
            with self._lock:
                room_of = self._room
            room = room_of() if room_of is not None else READ_SIZE
            if room <= 0:
                time.sleep(FLOW_POLL)  # the guest is not reading: leave the input where it is
                continue
            try:
                if self.mode == "pty":
                    select.select([self.input_fd], [], [], 0.5)
                data = os.read(self.input_fd, min(READ_SIZE, room))
            except BlockingIOError:
                continue
            except OSError as error:
                if error.errno == errno.EIO and self.mode == "pty":
                    time.sleep(0.2)  # nobody holds the tty open right now
                    continue
                return
            if not data:
                if self.mode == "stdio":
                    return  # end of input: the guest simply gets no more
                continue
            with self._lock:
                feed = self._feed
            if feed is not None:
                feed(data)

    def close(self) -> None:
        self._closed = True
        if self._saved_termios is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self._saved_termios)
            self._saved_termios = None
        if self.mode == "pty":
            for fd in (self.master, self._slave):
                if fd < 0:
                    continue
                try:
                    os.close(fd)
                except OSError:
                    pass
