"""The README's main job, `make demo` (scripts/demo.sh), on a host whose KVM runs Linux: vmd starts, boots
Debian's Linux from the guest kit and attaches the terminal to its shell."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import tempfile
import time

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.hwvirt


def test_make_demo_boots_linux_to_its_shell_on_the_console() -> None:
    directory = tempfile.mkdtemp(prefix="vmdhw-demo-", dir="/tmp")
    env = dict(os.environ, VMD_SOCKET=os.path.join(directory, "vmd.sock"))
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execve("/bin/sh", ["sh", "scripts/demo.sh"], env)
    seen = b""

    def until(pattern: bytes, timeout: float, poke: bytes = b"") -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while pattern not in seen:
            assert time.monotonic() < deadline, f"{pattern!r} not seen; the demo printed:\n{seen[-3000:]!r}"
            if poke:
                os.write(fd, poke)
            if select.select([fd], [], [], 3.0)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break

    try:
        until(b"vmd guest kit: ready", 500)
        until(b"vmd-kit# ", 60, poke=b"\r")
        os.write(fd, b"uname -sm\r")
        until(b"Linux x86_64", 60)
        os.write(fd, b"\r~.")
        until(b"[EOT]", 30)
        assert b"the small demo guest" not in seen
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
        subprocess.run([f"{ROOT}/.venv/bin/vmctl", "stop", "-f", "-w", "linux"], env=env, capture_output=True)
        daemons = subprocess.run(["pgrep", "-f", "vmd -f /run/vmd-demo.conf"], capture_output=True, text=True)
        for line in daemons.stdout.split():
            os.kill(int(line), signal.SIGTERM)
