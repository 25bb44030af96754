"""The built-in console client over a pty pair: relaying, cu escapes, [EOT], terminal restore."""

from __future__ import annotations

import os
import select
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from vmd.ctl.client import CtlError
from vmd.ctl.console import ConsoleClient, EscapeFilter


def read_until(fd: int, needle: bytes, timeout: float = 5.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got {buf!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    assert needle in buf, buf
    return buf


def read_all(fd: int, timeout: float = 0.5) -> bytes:
    buf = b""
    while True:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return buf
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return buf
        if not chunk:
            return buf
        buf += chunk


@dataclass
class Session:
    master: int  # the VM's side of its tty
    slave: int
    stdin_w: int
    stdout_r: int
    thread: threading.Thread
    errors: list[BaseException]

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "console did not end"
        assert not self.errors, self.errors


@pytest.fixture
def session() -> Iterator[Session]:
    master, slave = os.openpty()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    errors: list[BaseException] = []
    client = ConsoleClient(os.ttyname(slave), stdin_fd=in_r, stdout_fd=out_w, eof_linger=0.3)

    def target() -> None:
        try:
            client.run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    s = Session(master, slave, in_w, out_r, thread, errors)
    yield s
    for fd in (in_r, out_w, out_r, slave):
        os.close(fd)
    for fd in (in_w, master):
        try:
            os.close(fd)
        except OSError:
            pass


def test_relay_and_disconnect(session: Session) -> None:
    os.write(session.stdin_w, b"hello\r")
    assert read_until(session.master, b"hello\r") == b"hello\r"
    os.write(session.master, b"guest says hi\r\n")
    read_until(session.stdout_r, b"guest says hi\r\n")
    os.write(session.stdin_w, b"~.ignored")
    session.join()
    assert read_all(session.stdout_r).endswith(b"[EOT]\n")
    assert read_all(session.master, 0.2) == b""  # nothing after ~. reached the VM


def test_escapes(session: Session) -> None:
    os.write(session.stdin_w, b"a~b\r~~x\n~#y~z\r~q\r")
    got = read_until(session.master, b"~q\r")
    assert got == b"a~b\r~x\ny~z\r~q\r"
    os.write(session.stdin_w, b"~.")
    session.join()


def test_escape_split_across_reads(session: Session) -> None:
    os.write(session.stdin_w, b"~")
    time.sleep(0.1)
    os.write(session.stdin_w, b"~done\r")
    assert read_until(session.master, b"done\r") == b"~done\r"
    os.write(session.stdin_w, b"~")
    time.sleep(0.1)
    os.write(session.stdin_w, b".")
    session.join()


def test_remote_hangup(session: Session) -> None:
    os.write(session.master, b"bye\r\n")
    read_until(session.stdout_r, b"bye")
    os.close(session.master)
    session.join()
    assert read_all(session.stdout_r).endswith(b"[EOT]\n")


def test_stdin_eof_lingers_for_output(session: Session) -> None:
    os.write(session.stdin_w, b"ls\r")
    os.close(session.stdin_w)
    read_until(session.master, b"ls\r")
    os.write(session.master, b"file1 file2\r\n")
    session.join()
    out = read_all(session.stdout_r)
    assert out == b"file1 file2\r\n\n[EOT]\n"


def test_terminals_raw_then_restored() -> None:
    vm_master, vm_slave = os.openpty()
    local_master, local_slave = os.openpty()  # stands for the user's terminal
    vm_before = termios.tcgetattr(vm_slave)
    local_before = termios.tcgetattr(local_slave)
    client = ConsoleClient(os.ttyname(vm_slave), stdin_fd=local_slave, stdout_fd=local_slave)
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while termios.tcgetattr(local_slave)[3] & termios.ICANON:
            assert time.monotonic() < deadline, "local terminal never went raw"
            time.sleep(0.01)
        while termios.tcgetattr(vm_slave)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "vm tty never went raw"
            time.sleep(0.01)
        os.write(local_master, b"x\r")  # typed by the user; in raw mode \r stays \r
        assert read_until(vm_master, b"x\r") == b"x\r"
        os.write(local_master, b"~.")
        thread.join(5)
        assert not thread.is_alive()
        assert termios.tcgetattr(local_slave) == local_before
        assert termios.tcgetattr(vm_slave) == vm_before
        assert b"[EOT]" in read_all(local_master)
    finally:
        for fd in (vm_master, vm_slave, local_master, local_slave):
            os.close(fd)


def test_open_failure() -> None:
    with pytest.raises(CtlError, match="^failed to open the console: No such file or directory$"):
        ConsoleClient("/nonexistent/tty").run()


def test_escape_filter() -> None:
    f = EscapeFilter()
    assert f.feed(b"~.") == [("disconnect", b"")]
    f = EscapeFilter()
    assert f.feed(b"ab~c\n~#d") == [("data", b"ab~c\n"), ("break", b""), ("data", b"d")]
    assert f.feed(b"\r~?") == [("data", b"\r"), ("help", b"")]
    assert f.feed(b"~\x04") == [("data", b"~\x04")]  # after ~? we are not at a line start
    f = EscapeFilter()
    assert f.feed(b"~") == [] and f.pending
    assert f.feed(b"\x04rest") == [("disconnect", b"")]
    f = EscapeFilter()
    assert f.feed(b"~~~.") == [("data", b"~~.")]  # ~~ is a literal ~, then mid-line "~."
