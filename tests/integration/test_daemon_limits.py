"""Issue 9, the control plane: no local user can take vmd down or lock root out (a real vmd on a private
socket, real connections, vmd's limits from vmd.limits)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmd.limits import CONTROL_CLIENTS_PER_UID

from .test_daemon import STRANGER, Vmd, _config, users  # noqa: F401 - users is a fixture

RSS_BOUND = 24 << 20  # what vmd may grow by while a client floods it behind a pending request
ANSWER_TIME = 5.0  # root's `vmctl status`, vmctl's own start-up included
LOG_LINES = 5  # what a flood of connections may add to vmd's log


@pytest.fixture
def daemon(tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> Iterator[Vmd]:  # noqa: F811
    vmd = Vmd(tmp_path, _config(guests))
    vmd.start()
    yield vmd
    vmd.stop()


def _request(vmd: Vmd, request: dict[str, Any] | bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(vmd.socket)
        line = request if isinstance(request, bytes) else json.dumps({"version": 1, **request}).encode()
        sock.sendall(line + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return reply


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _log_lines(vmd: Vmd) -> int:
    return len(vmd.log.read_bytes().splitlines())


def _timed_status(vmd: Vmd) -> float:
    start = time.monotonic()
    result = vmd.vmctl("status", timeout=ANSWER_TIME * 3)
    elapsed = time.monotonic() - start
    assert result.returncode == 0 and "rootvm" in result.stdout, result
    return elapsed


# -- 1: bounded JSON ------------------------------------------------------------------------------------------

def test_a_deeply_nested_request_is_refused_and_vmd_goes_on(daemon: Vmd) -> None:
    for line in (b"[" * 1000, b'{"a":' * 5000, b"[" * 65536):
        reply = _request(daemon, line)
        assert reply["ok"] is False and reply["errno"] == "EINVAL", reply
        assert reply["error"] == "malformed request: nested too deeply"
    assert daemon.alive()
    assert daemon.vmctl("status").returncode == 0
    assert "Traceback" not in daemon.log.read_text()


# -- 2: the input of a client with a pending request ----------------------------------------------------------

def test_a_flood_behind_a_pending_wait_does_not_grow_vmd(daemon: Vmd) -> None:
    """300 MiB of short lines behind a pending `wait` took vmd from 22 MB to 637 MB. Now vmd stops reading
    from that client while its request is pending: 64 MiB offered, vmd's RSS stays within RSS_BOUND."""
    assert daemon.process is not None
    assert daemon.vmctl("start", "rootvm").returncode == 0
    daemon.wait_state("rootvm", "running")
    before = _rss(daemon.process.pid)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket)
        sock.sendall(json.dumps({"version": 1, "command": "wait", "target": "rootvm"}).encode() + b"\n")
        sock.setblocking(False)
        chunk, sent, deadline = b"1\n" * (1 << 19), 0, time.monotonic() + 10
        while sent < 64 << 20 and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.5)
        grown = _rss(daemon.process.pid) - before
        print(f"offered 64 MiB, vmd took {sent} bytes; RSS {before >> 20} MiB -> grew by {grown / (1 << 20):.1f} MiB")
        assert grown < RSS_BOUND, (sent, grown)
        assert daemon.alive()
        stop = daemon.vmctl("stop", "-f", "-w", "rootvm")
        assert stop.returncode == 0, stop
    daemon.wait_state("rootvm", "stopped")
    assert daemon.alive()


# -- 3: connections -------------------------------------------------------------------------------------------

HOLDER = """
import json, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    socks.append(s)
time.sleep(1.5)
held = refused = 0
for s in socks:
    s.setblocking(False)
    try:
        data = s.recv(4096)
    except BlockingIOError:
        held += 1
        continue
    except OSError:
        data = b""
    refused += 1
print(json.dumps({"connected": len(socks), "held": held, "refused": refused}), flush=True)
sys.stdin.read()
"""


def _hold_connections(vmd: Vmd, count: int) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """`count` idle connections from the user STRANGER, held until the process is ended."""
    import pwd

    user = pwd.getpwnam(STRANGER)
    holder = subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                               "--", sys.executable, "-c", HOLDER, vmd.socket, str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line, "the holder printed nothing"
    return holder, json.loads(line)


def _end(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(timeout=10)


def test_one_user_s_connections_are_capped_and_root_is_answered(daemon: Vmd) -> None:
    assert daemon.process is not None
    lines = _log_lines(daemon)
    holder, counts = _hold_connections(daemon, 100)
    try:
        print(f"100 connections from {STRANGER}: {counts}")
        assert counts["held"] == CONTROL_CLIENTS_PER_UID and counts["refused"] == 100 - CONTROL_CLIENTS_PER_UID
        elapsed = _timed_status(daemon)
        print(f"root's vmctl status answered in {elapsed:.2f} s; log grew by {_log_lines(daemon) - lines} lines")
        assert elapsed < ANSWER_TIME
        assert _log_lines(daemon) - lines <= LOG_LINES, daemon.log.read_text()[-2000:]
        # a refused vmctl says why
        refused = daemon.vmctl("status", user=STRANGER)
        assert refused.returncode == 1 and "too many connections" in refused.stderr, refused
    finally:
        _end(holder)
    assert daemon.vmctl("status", user=STRANGER).returncode == 0


def test_out_of_descriptors_vmd_does_not_spin_and_root_is_answered(tmp_path: Path, guests: dict[str, Path],
                                                                   users: dict[str, int]) -> None:  # noqa: F811
    """At vmd's descriptor limit, accept failed with EMFILE, the listener stayed readable, and vmd spun
    logging `accept: Too many open files` (745 MB of log in 20 min) while root's vmctl status timed out."""
    vmd = Vmd(tmp_path, _config(guests))
    vmd.start(nofile=32)
    try:
        assert vmd.process is not None
        lines = _log_lines(vmd)
        holder, counts = _hold_connections(vmd, 100)  # fewer than CONTROL_CLIENTS_PER_UID fit in 32 fds
        try:
            print(f"100 connections from {STRANGER}, vmd at 32 fds: {counts}")
            assert 0 < counts["held"] < CONTROL_CLIENTS_PER_UID and counts["connected"] == 100
            cpu = _cpu_seconds(vmd.process.pid)
            time.sleep(2)
            spent = _cpu_seconds(vmd.process.pid) - cpu
            elapsed = _timed_status(vmd)
            grown = _log_lines(vmd) - lines
            print(f"vmd used {spent:.2f} s of CPU in 2 s; root's vmctl status answered in {elapsed:.2f} s;"
                  f" log grew by {grown} lines")
            assert spent < 0.5
            assert elapsed < ANSWER_TIME
            assert grown <= LOG_LINES, vmd.log.read_text()[-2000:]
        finally:
            _end(holder)
        time.sleep(0.5)
        assert vmd.vmctl("status", user=STRANGER).returncode == 0
        assert vmd.alive()
    finally:
        vmd.stop()


# -- 5: VM names ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, reason", [
    ("evil\nvmd: forged line", "invalid VM name"),
    ("nul\0name", "invalid VM name"),
    ("x" * 300, "vm name too long"),
    ("x" * 64, "vm name too long"),
    ("-dash", "invalid VM name"),
], ids=["newline", "nul", "300", "64", "dash"])
def test_root_s_start_request_follows_the_name_rule(daemon: Vmd, guests: dict[str, Path], name: str,
                                                    reason: str) -> None:
    reply = _request(daemon, {"command": "start", "target": name, "kernel": str(guests["demo"]),
                              "memory": 16 << 20})
    assert reply == {"version": 1, "ok": False, "errno": "EINVAL", "error": reason}
    status = daemon.vmctl("status")
    assert status.returncode == 0 and len(status.stdout.splitlines()) == 5, status  # the header and 4 VMs
    log = daemon.log.read_text()
    assert "forged" not in log and "Traceback" not in log and f"vmd: {reason}" in log
    good = _request(daemon, {"command": "start", "target": "x" * 63, "kernel": str(guests["demo"]),
                             "memory": 16 << 20})
    assert good["ok"] is True, good
    assert daemon.vmctl("stop", "-f", "-w", "x" * 63).returncode == 0


def test_vmd_run_refuses_a_bad_name_in_one_line(vmd_run: Any) -> None:
    for name, reason in (("a\nb", "invalid VM name"), ("y" * 300, "vm name too long")):
        result = vmd_run(name)
        assert result.returncode != 0
        assert result.stderr.splitlines() == [f"vmd: {reason}"], result.stderr
