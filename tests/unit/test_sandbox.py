"""The VM process's system-call filter (vmd/sandbox.py), loaded for real in a forked child: what a running VM
needs still works, and what a compromised VM process would reach for fails with EPERM."""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable

import pytest

from vmd import sandbox

pytest.importorskip("seccomp", reason="libseccomp's Python binding (scripts/setup.sh installs it)")


def _in_confined_child(body: Callable[[], None]) -> None:
    """Run body in a child process under the filter; its assertion errors come back here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        message = b""
        try:
            sandbox.confine()
            body()
        except BaseException as error:  # noqa: BLE001 - everything must reach the parent
            message = f"{type(error).__name__}: {error}".encode()
        os.write(write_end, message or b"ok")
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    assert answer == "ok", answer


def _refused(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as error:
        return error.errno
    return 0


def test_what_a_running_vm_needs_still_works() -> None:
    def body() -> None:
        results: list[int] = []
        worker = threading.Thread(target=lambda: results.append(sum(range(10))))  # clone with CLONE_THREAD
        worker.start()
        worker.join()
        assert results == [45]
        signal.pthread_kill(threading.main_thread().ident or 0, 0)  # tgkill to its own thread group
        read_end, write_end = os.pipe()
        os.write(write_end, b"x")
        assert os.read(read_end, 1) == b"x"
        assert _refused(socket.socketpair) == errno.EPERM  # no new sockets, not even a pair
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        assert fields["Seccomp"].strip() == "2" and fields["NoNewPrivs"].strip() == "1", fields

    _in_confined_child(body)


def test_sockets_signals_to_others_fork_and_exec_are_refused() -> None:
    left, right = socket.socketpair()

    def body() -> None:
        assert right.send(b"still") == 5  # a socket it holds: allowed
        assert _refused(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)) == errno.EPERM
        assert _refused(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) == errno.EPERM
        assert _refused(lambda: os.kill(os.getppid(), 0)) == errno.EPERM  # another VM, vmd
        assert _refused(os.fork) == errno.EPERM
        assert _refused(lambda: os.execv("/bin/true", ["true"])) == errno.EPERM
        assert _refused(lambda: os.setuid(0)) == errno.EPERM
        assert _refused(lambda: resource.prlimit(os.getppid(), resource.RLIMIT_CPU)) == errno.EPERM
        assert _refused(lambda: open("/tmp/vmd-sandbox-write-test", "w")) == errno.EPERM
        assert _refused(lambda: open("/proc/self/status", "a")) == errno.EPERM
        with open("/proc/self/status") as status:  # reading still works
            assert "Seccomp" in status.read()

    _in_confined_child(body)
    assert left.recv(5) == b"still"
