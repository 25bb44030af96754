"""The GDB stub of a VM the daemon runs: vm.conf `gdb wait` and `vmctl start --gdb`, on the socket vmd gives the
VM's user, served by the VM process after it has dropped its privileges."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_daemon import OWNER, SOCKET_GROUP, STRANGER, Vmd, users  # noqa: F401 - users is a fixture
from .test_gdb import Rsp, elf_entry, symbols


@pytest.fixture
def vmd(tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> Iterator[Vmd]:  # noqa: F811
    kernel = guests["openbsd64"]
    daemon = Vmd(tmp_path, f"""
socket owner :{SOCKET_GROUP}
vm "dbg" {{
    disable
    memory 32M
    boot "{kernel}"
    owner {OWNER}
    gdb wait
}}
""")
    daemon.start()
    yield daemon
    daemon.stop()


def _wait_for(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _connect_as(user: str, path: str) -> str:
    """Try to connect to path as user; the exception's name, or 'connected'."""
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print('connected')\nexcept OSError as e: print(type(e).__name__)")
    entry = pwd.getpwnam(user)
    done = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={entry.pw_gid}", "--init-groups", "--",
                           sys.executable, "-c", code, path], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr


def test_gdb_wait_under_the_daemon(vmd: Vmd, guests: dict[str, Path], users: dict[str, int]) -> None:  # noqa: F811
    kernel = guests["openbsd64"]
    result = vmd.vmctl("start", "dbg", user=OWNER)
    assert result.returncode == 0, result
    path = os.path.join(vmd.socket_dir, "vmd", "dbg.gdb")
    assert f"gdb stub on {path}: target remote {path}" in result.stderr, result.stderr
    _wait_for(path)
    info = os.stat(path)
    assert info.st_uid == users[OWNER] and stat.S_IMODE(info.st_mode) == 0o600
    assert _connect_as(STRANGER, path) == "PermissionError"
    vmd.wait_state("dbg", "running")
    time.sleep(1.0)  # it waits for the debugger: nothing ran
    gdb = Rsp.unix(path)
    gdb.ask(b"qSupported:swbreak+;hwbreak+")
    assert gdb.ask(b"?") == b"T05thread:1;"
    assert gdb.pc64() == elf_entry(kernel)
    main = symbols(kernel)["obsd_main"]
    assert gdb.ask(b"Z1,%x,1" % main) == b"OK"
    gdb.send(b"c")
    assert "hwbreak" in gdb.stop_reply()
    assert gdb.pc64() == main
    assert gdb.ask(b"D") == b"OK"
    gdb.close()
    vmd.wait_state("dbg", "stopped", timeout=60)  # the guest ran to its end
    assert not os.path.exists(path)


def test_vmctl_start_gdb_for_an_ad_hoc_vm(vmd: Vmd, guests: dict[str, Path]) -> None:
    kernel = guests["openbsd64"]
    result = vmd.vmctl("start", "-m", "32M", "-b", str(kernel), "--gdb", "adhoc")
    assert result.returncode == 0, result
    path = os.path.join(vmd.socket_dir, "vmd", "adhoc.gdb")
    assert "(the guest waits for the debugger)" in result.stderr
    gdb = Rsp.unix(path)
    assert gdb.pc64() == elf_entry(kernel)
    gdb.send(b"k")
    vmd.wait_state("adhoc", None, timeout=60)  # killed by the debugger; an ad hoc VM is then forgotten
    assert not os.path.exists(path)
