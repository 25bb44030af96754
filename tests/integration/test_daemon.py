"""vmd as a real daemon, driven by vmctl as root and as real Unix users the tests create."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

OWNER, MEMBER, STRANGER = "vmdt-owner", "vmdt-member", "vmdt-stranger"
VM_GROUP, SOCKET_GROUP = "vmdt-vms", "vmdt-sock"


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, int]]:
    """Three real users: the owner of a VM, a member of its group, and a stranger; all may use the socket."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    for directory in [ROOT, *ROOT.parents]:  # the users run vmctl from this tree
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            pytest.skip(f"{directory} is not searchable by other users, who must run vmctl from this tree")
    created_groups, created_users = [], []
    for group in (VM_GROUP, SOCKET_GROUP):
        try:
            grp.getgrnam(group)
        except KeyError:
            _run("groupadd", group)
            created_groups.append(group)
    for user, groups in ((OWNER, SOCKET_GROUP), (MEMBER, f"{VM_GROUP},{SOCKET_GROUP}"), (STRANGER, SOCKET_GROUP)):
        try:
            pwd.getpwnam(user)
        except KeyError:
            _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", groups, user)
            created_users.append(user)
    yield {user: pwd.getpwnam(user).pw_uid for user in (OWNER, MEMBER, STRANGER)}
    for user in created_users:
        subprocess.run(["userdel", user], capture_output=True)
    for group in created_groups:
        subprocess.run(["groupdel", group], capture_output=True)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Vmd:
    """A vmd daemon on a private socket, with vmctl at hand."""

    def __init__(self, directory: Path, config: str) -> None:
        self.directory = directory
        # the socket lives where the test users can reach it (pytest's own temporary directories are 0700)
        self.socket_dir = tempfile.mkdtemp(prefix="vmdt-", dir="/tmp")
        os.chmod(self.socket_dir, 0o755)
        self.socket = os.path.join(self.socket_dir, "vmd.sock")
        self.config = directory / "vm.conf"
        self.config.write_text(config)
        self.log = directory / "vmd.log"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), VMD_SOCKET=self.socket)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, nofile: int | None = None) -> None:
        """nofile: vmd's RLIMIT_NOFILE, to run it out of descriptors."""
        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen([sys.executable, "-m", "vmd.cli", "-d", "-f", str(self.config), *extra],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env,
                                        preexec_fn=limit if nofile is not None else None)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vmd exited: {self.log.read_text()}")
            if os.path.exists(self.socket):
                return
            time.sleep(0.05)
        raise AssertionError("vmd did not create its socket")

    def vmctl(self, *args: str, user: str | None = None, input: str | None = None, timeout: float = 60) -> Result:
        command = [sys.executable, "-m", "vmd.ctl.main", *args]
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups",
                       "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, input=input, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    def status(self) -> dict[str, dict[str, object]]:
        result = self.vmctl("status", "--json")
        if result.returncode != 0:
            return {}
        return {row["name"]: row for row in json.loads(result.stdout)}

    def wait_state(self, name: str, state: str | None, timeout: float = 30) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            rows = self.status()
            row = rows.get(name)
            if (state is None and row is None) or (row is not None and row["state"] == state):
                return row or {}
            time.sleep(0.1)
        raise AssertionError(f"{name} never became {state}: {rows}\n{self.log.read_text()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def _config(guests: dict[str, Path], extra: str = "") -> str:
    demo = guests["demo"]
    return f"""
socket owner :{SOCKET_GROUP}
staggered start parallel 1 delay 1
vm "owned" {{
    disable
    memory 16M
    boot "{demo}"
    owner {OWNER}
}}
vm "grouped" {{
    disable
    memory 16M
    boot "{demo}"
    owner :{VM_GROUP}
}}
vm "rootvm" {{
    disable
    memory 16M
    boot "{demo}"
}}
vm "template" {{
    disable
    memory 16M
    boot "{demo}"
    owner {OWNER}
    allow instance {{ memory, owner {OWNER} }}
}}
{extra}
"""


@pytest.fixture
def vmd(tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> Iterator[Vmd]:
    daemon = Vmd(tmp_path, _config(guests))
    daemon.start()
    yield daemon
    daemon.stop()


def _read_console(path: str, until: bytes, send: bytes = b"\r", timeout: float = 20) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        seen = b""
        os.write(fd, send)
        deadline = time.monotonic() + timeout
        while until not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                seen += os.read(fd, 4096)
        return seen
    finally:
        os.close(fd)


def test_status_lists_configured_vms_with_openbsd_columns(vmd: Vmd) -> None:
    result = vmd.vmctl("status")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME"
    assert re.fullmatch(r"\s+\d+\s+-\s+1\s+16\.0M\s+-\s+-\s+vmdt-owner\s+stopped owned", lines[1]), lines[1]
    assert any(re.fullmatch(r".*\s+:vmdt-vms\s+stopped grouped", line) for line in lines), lines
    abbreviated = vmd.vmctl("stat")
    assert abbreviated.stdout == result.stdout


def test_root_starts_a_vm_and_reaches_its_console(vmd: Vmd) -> None:
    result = vmd.vmctl("start", "rootvm")
    assert result.returncode == 0, result
    match = re.search(r"started vm (\d+) successfully, tty (/dev/pts/\d+)", result.stderr + result.stdout)
    assert match, result
    row = vmd.wait_state("rootvm", "running")
    assert row["tty"] == match.group(2)
    assert b"vmd-demo# " in _read_console(match.group(2), b"vmd-demo# ")
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(row["pid"])], capture_output=True, text=True).stdout
    assert ps.startswith("vmd: vm/rootvm"), ps
    vm_user = subprocess.run(["ps", "-o", "user=", "-p", str(row["pid"])], capture_output=True, text=True).stdout
    try:
        pwd.getpwnam("_vmd")
        assert vm_user.strip() == "_vmd"
    except KeyError:
        pass
    stopped = vmd.vmctl("stop", "-w", "rootvm")
    assert stopped.returncode == 0, stopped
    assert f"terminated vm {match.group(1)}" in stopped.stderr + stopped.stdout
    assert vmd.wait_state("rootvm", "stopped")["pid"] is None


def test_the_owner_may_run_its_vm_and_the_tty_is_its_own(vmd: Vmd, users: dict[str, int]) -> None:
    started = vmd.vmctl("start", "owned", user=OWNER)
    assert started.returncode == 0, started
    row = vmd.wait_state("owned", "running")
    info = os.stat(str(row["tty"]))
    assert info.st_uid == users[OWNER]
    assert stat.S_IMODE(info.st_mode) == 0o620
    assert row["owner"] == OWNER
    for verb, state in (("pause", "paused"), ("unpause", "running")):
        done = vmd.vmctl(verb, "owned", user=OWNER)
        assert done.returncode == 0, done
        vmd.wait_state("owned", state)
    refused = vmd.vmctl("stop", "owned", user=STRANGER)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "stopping vm owned: failed: Operation not permitted", refused
    assert vmd.status()["owned"]["state"] == "running"
    assert vmd.vmctl("stop", "-w", "owned", user=OWNER).returncode == 0
    vmd.wait_state("owned", "stopped")
    if os.path.exists(str(row["tty"])):  # the pty is gone, or back with root
        assert os.stat(str(row["tty"])).st_uid in (0, os.getuid())


def test_a_group_member_may_run_a_group_owned_vm(vmd: Vmd) -> None:
    assert vmd.vmctl("start", "grouped", user=MEMBER).returncode == 0
    vmd.wait_state("grouped", "running")
    assert vmd.vmctl("pause", "grouped", user=STRANGER).returncode == 1
    assert vmd.vmctl("stop", "-w", "grouped", user=MEMBER).returncode == 0
    vmd.wait_state("grouped", "stopped")


@pytest.mark.parametrize("user", [STRANGER, MEMBER])
def test_others_may_not_start_vms_they_do_not_own(vmd: Vmd, user: str) -> None:
    result = vmd.vmctl("start", "owned", user=user)
    assert result.returncode == 1
    assert "Operation not permitted" in result.stderr, result
    assert vmd.status()["owned"]["state"] == "stopped"


def test_users_may_not_create_new_vms(vmd: Vmd, guests: dict[str, Path]) -> None:
    result = vmd.vmctl("start", "-m", "16M", "-b", str(guests["demo"]), "mine", user=OWNER)
    assert result.returncode == 1
    assert "Operation not permitted" in result.stderr, result
    assert "mine" not in vmd.status()


@pytest.mark.parametrize("args", [("load", "/etc/vm.conf"), ("reload",), ("reset",), ("log", "verbose")])
def test_root_only_commands_are_refused_to_users(vmd: Vmd, args: tuple[str, ...]) -> None:
    result = vmd.vmctl(*args, user=OWNER)
    assert result.returncode == 1
    assert result.stderr.strip() == "vmctl: command failed: Operation not permitted", result


def test_instances_follow_allow_instance(vmd: Vmd) -> None:
    made = vmd.vmctl("start", "-t", "template", "-m", "8M", "inst1", user=OWNER)
    assert made.returncode == 0, made
    row = vmd.wait_state("inst1", "running")
    assert row["maxmem"] == 8 << 20
    refused = vmd.vmctl("start", "-t", "template", "inst2", user=STRANGER)
    assert refused.returncode == 1 and "Operation not permitted" in refused.stderr, refused
    assert vmd.vmctl("stop", "-w", "inst1", user=OWNER).returncode == 0
    vmd.wait_state("inst1", None)  # an instance is not configured: it vanishes when stopped


def test_ad_hoc_vm_vanishes_when_stopped(vmd: Vmd, guests: dict[str, Path]) -> None:
    started = vmd.vmctl("start", "-m", "16M", "-b", str(guests["demo"]), "adhoc")
    assert started.returncode == 0, started
    vmd.wait_state("adhoc", "running")
    assert vmd.vmctl("stop", "-f", "adhoc").returncode == 0
    vmd.wait_state("adhoc", None)


def test_guest_reboot_restarts_the_vm_on_the_same_tty(vmd: Vmd) -> None:
    assert vmd.vmctl("start", "rootvm").returncode == 0
    row = vmd.wait_state("rootvm", "running")
    tty = str(row["tty"])
    seen = _read_console(tty, b"vmd demo guest", send=b"reboot\r")
    assert b"vmd demo guest" in seen, seen
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = vmd.status()["rootvm"]
        if now["pid"] not in (None, row["pid"]) and now["state"] == "running":
            break
        time.sleep(0.1)
    assert now["pid"] != row["pid"] and now["tty"] == tty, (row, now)
    vmd.vmctl("stop", "-f", "-w", "rootvm")


def test_a_killed_vm_process_is_reported_stopped_and_others_run_on(vmd: Vmd) -> None:
    assert vmd.vmctl("start", "rootvm").returncode == 0
    assert vmd.vmctl("start", "owned").returncode == 0
    victim = vmd.wait_state("rootvm", "running")
    vmd.wait_state("owned", "running")
    os.kill(int(str(victim["pid"])), signal.SIGKILL)
    vmd.wait_state("rootvm", "stopped")
    assert vmd.status()["owned"]["state"] == "running"
    assert vmd.alive()
    vmd.vmctl("stop", "-f", "-w", "owned")


def test_wait_returns_when_the_vm_stops(vmd: Vmd) -> None:
    assert vmd.vmctl("start", "rootvm").returncode == 0
    vmd.wait_state("rootvm", "running")
    waiter = subprocess.Popen([sys.executable, "-m", "vmd.ctl.main", "wait", "rootvm"], env=vmd.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None
    vmd.vmctl("stop", "-f", "rootvm")
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0
    assert "terminated vm" in out + err


def test_stop_all(vmd: Vmd) -> None:
    for name in ("rootvm", "owned"):
        assert vmd.vmctl("start", name).returncode == 0
        vmd.wait_state(name, "running")
    assert vmd.vmctl("stop", "-a", "-w").returncode == 0
    assert {row["state"] for row in vmd.status().values()} == {"stopped"}


def test_reload_load_and_reset(vmd: Vmd, guests: dict[str, Path], tmp_path: Path) -> None:
    vmd.config.write_text(_config(guests, f'vm "added" {{\n disable\n memory 16M\n boot "{guests["demo"]}"\n}}\n'))
    assert vmd.vmctl("reload").returncode == 0
    assert vmd.status()["added"]["state"] == "stopped"
    extra = tmp_path / "extra.conf"
    extra.write_text(f'vm "loaded" {{\n disable\n memory 16M\n boot "{guests["demo"]}"\n}}\n')
    assert vmd.vmctl("load", str(extra)).returncode == 0
    assert "loaded" in vmd.status()
    assert vmd.vmctl("start", "rootvm").returncode == 0
    vmd.wait_state("rootvm", "running")
    assert vmd.vmctl("reset", "vms").returncode == 0
    deadline = time.monotonic() + 20
    while vmd.status() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vmd.status() == {}
    assert vmd.vmctl("log", "verbose").returncode == 0


def test_reload_with_a_broken_config_keeps_the_state(vmd: Vmd) -> None:
    before = vmd.status()
    vmd.config.write_text('vm "broken" {\n memory lots\n}\n')
    result = vmd.vmctl("reload")
    assert result.returncode == 1
    assert vmd.status().keys() == before.keys()
    assert vmd.alive()


def test_sighup_reloads(vmd: Vmd, guests: dict[str, Path]) -> None:
    vmd.config.write_text(_config(guests, f'vm "hup" {{\n disable\n memory 16M\n boot "{guests["demo"]}"\n}}\n'))
    assert vmd.process is not None
    vmd.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "hup" not in vmd.status() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "hup" in vmd.status()


def test_enabled_vms_start_in_staggered_batches(tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> None:
    demo = guests["demo"]
    daemon = Vmd(tmp_path, f"""staggered start parallel 1 delay 2
vm "first" {{\n memory 16M\n boot "{demo}"\n}}
vm "second" {{\n memory 16M\n boot "{demo}"\n}}
""")
    daemon.start()
    try:
        daemon.wait_state("first", "running", timeout=10)
        assert daemon.status()["second"]["state"] == "waiting"
        daemon.wait_state("second", "running", timeout=10)
    finally:
        assert daemon.stop() == 0
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                .splitlines() if line.startswith("vmd: vm/first")]


def test_a_second_vmd_on_the_same_socket_refuses(vmd: Vmd) -> None:
    second = subprocess.run([sys.executable, "-m", "vmd.cli", "-d", "-f", str(vmd.config)], env=vmd.env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert vmd.alive()


def test_garbage_and_disconnects_leave_vmd_running(vmd: Vmd) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(vmd.socket)
        sock.sendall(b"this is not json\n")
        reply = json.loads(sock.makefile().readline())
        assert reply["ok"] is False and reply["errno"] == "EINVAL"
        sock.sendall(b'{"version": 1, "command": "frobnicate"}\n')
        reply = json.loads(sock.makefile().readline())
        assert reply["ok"] is False and "frobnicate" in reply["error"]
        sock.sendall(b'{"version": 1, "command": "start", "target": ["x"]}\n')
        reply = json.loads(sock.makefile().readline())
        assert reply["ok"] is False
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(vmd.socket)
        sock.sendall(b'{"version": 1, "command": "sta')  # and hang up mid-request
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(vmd.socket)
        sock.sendall(b"x" * 200_000)
    assert vmd.alive()
    assert "owned" in vmd.status()


def test_two_hundred_concurrent_clients(vmd: Vmd) -> None:
    answers: list[bool] = []
    lock = threading.Lock()

    def client() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(vmd.socket)
            sock.sendall(b'{"version": 1, "command": "status"}\n')
            reply = json.loads(sock.makefile().readline())
            with lock:
                answers.append(bool(reply["ok"]) and any(vm["name"] == "owned" for vm in reply["vms"]))

    threads = [threading.Thread(target=client) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert answers.count(True) == 200
    assert vmd.alive()


def test_bad_input_to_vmctl_start(vmd: Vmd, guests: dict[str, Path]) -> None:
    cases: list[tuple[tuple[str, ...], str]] = [
        (("start", "-m", "lots", "x"), "invalid memory size"),
        (("start", "bad name"), "invalid VM name"),
        (("start", "-d", "/nonexistent/disk.img", "-b", str(guests["demo"]), "x"), "disk"),
        (("frobnicate",), "unknown argument"),
    ]
    for args, message in cases:
        result = vmd.vmctl(*args)
        assert result.returncode == 1, (args, result)
        assert message in result.stderr, (args, result)
        assert "Traceback" not in result.stderr
    assert vmd.alive()


def test_vmd_n_reports_every_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text('vm "a" {\n memory lots\n}\nvm "b" {\n memory 1M\n memory 2M\n boot "/nonexistent"\n}\n')
    result = subprocess.run([sys.executable, "-m", "vmd.cli", "-n", "-f", str(config)], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"vmd: {config}:")]
    assert len(errors) >= 3, result.stderr
    assert f"vmd: {config}:2:" in result.stderr and f"vmd: {config}:6:" in result.stderr
    assert "configuration OK" not in result.stderr + result.stdout


def test_vmd_n_accepts_a_good_config(tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> None:
    config = tmp_path / "good.conf"
    config.write_text(_config(guests).replace(f"socket owner :{SOCKET_GROUP}\n", ""))
    result = subprocess.run([sys.executable, "-m", "vmd.cli", "-n", "-f", str(config)], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "configuration OK\n")  # vmd.c prints it on stderr


def _vmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmd.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=60)


USAGE = "usage: vmd [-dnv] [-D macro=value] [-f file]"


@pytest.mark.parametrize("args, message", [
    (["-x"], "vmd: unknown option -- x"),
    (["-h"], "vmd: unknown option -- h"),
    (["-n", "-f"], "vmd: option requires an argument -- f"),
    (["-n", "extra"], None),
])
def test_a_bad_vmd_command_line_is_getopts_message_and_the_usage(args: list[str], message: str | None) -> None:
    """vmd.c main(): getopt(3) reports the option, then usage() prints the usage line and exits 1."""
    result = _vmd(*args)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [line for line in (message, USAGE) if line], result


def test_vmd_n_with_a_macro_that_is_no_definition_logs_it_and_carries_on(tmp_path: Path) -> None:
    """vmd.c: a -D that cmdline_symset cannot split is logged and skipped; parse_config warns about an unused
    macro without a location."""
    config = tmp_path / "vm.conf"
    config.write_text('mem = "64M"\nswitch "s" {\n interface br0\n}\n')
    result = _vmd("-n", "-D", "foo", "-D", "size=1G", "-f", str(config))
    assert result.returncode == 0, result
    assert result.stderr.splitlines() == ["vmd: could not parse macro definition foo",
                                          "warning: macro 'size' not used",  # -D's come first in the list
                                          "warning: macro 'mem' not used",
                                          "configuration OK"], result


def test_sigterm_stops_every_vm_and_exits(tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> None:
    daemon = Vmd(tmp_path, _config(guests))
    daemon.start()
    daemon.vmctl("start", "rootvm")
    pid = int(str(daemon.wait_state("rootvm", "running")["pid"]))
    assert daemon.stop() == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the VM process outlived vmd")
    assert not os.path.exists(daemon.socket)




def test_vmctl_console_talks_to_the_guest(vmd: Vmd) -> None:
    assert vmd.vmctl("start", "rootvm").returncode == 0
    vmd.wait_state("rootvm", "running")
    # stdin is not a terminal here: vmctl console sends it, then shows the output until the line is quiet
    result = vmd.vmctl("console", "rootvm", input="\recho through vmctl console\r", timeout=60)
    assert result.returncode == 0, result
    assert "through vmctl console" in result.stdout
    assert "vmd-demo# " in result.stdout
    missing = vmd.vmctl("console", "nosuchvm")
    assert missing.returncode == 1 and missing.stderr.strip() == "vmctl: console not found"
    vmd.vmctl("stop", "-f", "-w", "rootvm")


# -- OpenBSD's own outcomes, to the letter (vmd.c 1.169, vmctl.c 1.94, config.c 1.79) ----------------------------

def test_starting_a_running_vm_is_already_in_progress(vmd: Vmd) -> None:
    """vmd.c vm_register answers EALREADY; vmctl.c vm_start_complete prints it as `start vm command failed`."""
    assert vmd.vmctl("start", "rootvm").returncode == 0
    vmd.wait_state("rootvm", "running")
    again = vmd.vmctl("start", "rootvm")
    assert (again.returncode, again.stderr.strip()) == (
        1, "vmctl: start vm command failed: Operation already in progress"), again
    vmd.vmctl("stop", "-f", "-w", "rootvm")


@pytest.mark.parametrize("target", ["nosuch", "99"])
def test_starting_an_unknown_vm_without_options_has_no_disk(vmd: Vmd, target: str) -> None:
    """vm_register: `invalid configuration, no devices`, answered VMD_DISK_MISSING, for a name as for an id."""
    result = vmd.vmctl("start", target)
    assert (result.returncode, result.stderr.strip()) == (1, "vmctl: could not open disk image(s)"), result
    assert "nosuch" not in vmd.status()


def test_an_instance_of_an_unknown_vm_is_an_invalid_template(vmd: Vmd) -> None:
    """vmd.c vm_instance: VMD_PARENT_INVALID, which vmctl prints as `invalid template`."""
    result = vmd.vmctl("start", "-t", "nosuch", "x")
    assert (result.returncode, result.stderr.strip()) == (1, "vmctl: invalid template"), result
    assert "x" not in vmd.status()


def test_stop_and_wait_on_a_stopped_vm_are_invalid_arguments(vmd: Vmd) -> None:
    """TERMINATE_VM_REQUEST and WAIT_VM_REQUEST answer EINVAL for a VM that is not running (vmd.c)."""
    stopped = vmd.vmctl("stop", "rootvm")
    assert (stopped.returncode, stopped.stderr.strip()) == (1, "stopping vm rootvm: failed: Invalid argument")
    waited = vmd.vmctl("wait", "rootvm")
    assert waited.returncode == 1, waited
    assert waited.stderr.strip().endswith("failed: Invalid argument"), waited


def test_pausing_a_paused_vm_and_unpausing_a_running_one_succeed(vmd: Vmd) -> None:
    """vm.c pause_vm/unpause_vm return early when there is nothing to do, and the answer is a success."""
    started = vmd.vmctl("start", "rootvm")
    vm_id = re.search(r"started vm (\d+)", started.stderr).group(1)  # type: ignore[union-attr]
    vmd.wait_state("rootvm", "running")
    unpaused = vmd.vmctl("unpause", "rootvm")
    assert (unpaused.returncode, unpaused.stderr.strip()) == (0, f"vmctl: unpaused vm {vm_id} successfully")
    for _ in range(2):
        paused = vmd.vmctl("pause", "rootvm")
        assert (paused.returncode, paused.stderr.strip()) == (0, f"vmctl: paused vm {vm_id} successfully")
        assert vmd.status()["rootvm"]["state"] == "paused"
    assert vmd.vmctl("unpause", "rootvm").returncode == 0
    assert vmd.status()["rootvm"]["state"] == "running"
    vmd.vmctl("stop", "-f", "-w", "rootvm")


def test_status_of_an_unknown_name_prints_the_header_and_succeeds(vmd: Vmd) -> None:
    """vmctl.c print_vm_info: the exit status counts every VM listed, not only the one asked for."""
    result = vmd.vmctl("status", "nosuch")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME"]


def test_running_vms_are_listed_and_stopped_newest_first(vmd: Vmd) -> None:
    """vmm(4) pushes each new VM on the head of its list (SLIST_INSERT_HEAD), vmd appends the stopped ones in
    the order it registered them, and vmctl.c terminate_all stops in that order and always exits 0."""
    for name in ("rootvm", "owned"):
        assert vmd.vmctl("start", name).returncode == 0
        vmd.wait_state(name, "running")
    names = [line.split()[-1] for line in vmd.vmctl("status").stdout.splitlines()[1:]]
    assert names[:2] == ["owned", "rootvm"], names
    assert names[2:] == ["grouped", "template"], names
    stopped = vmd.vmctl("stop", "-a", "-f", user=OWNER)  # the owner may stop one of the two
    assert stopped.returncode == 0, stopped
    owned_id = vmd.status()["owned"]["id"]
    assert stopped.stderr.splitlines() == [f"stopping vm owned: requested to shutdown vm {owned_id}",
                                           "stopping vm rootvm: failed: Operation not permitted"], stopped
    assert vmd.vmctl("stop", "-a", "-f", "-w").returncode == 0
    assert {row["state"] for row in vmd.status().values()} == {"stopped"}


def test_a_stranger_starting_a_running_vm_learns_only_that_it_is_not_permitted(vmd: Vmd) -> None:
    """vmd.c vm_register checks the user's permission before the VM's state."""
    assert vmd.vmctl("start", "owned", user=OWNER).returncode == 0
    vmd.wait_state("owned", "running")
    refused = vmd.vmctl("start", "owned", user=STRANGER)
    assert (refused.returncode, refused.stderr.strip()) == (
        1, "vmctl: start vm command failed: Operation not permitted"), refused
    vmd.vmctl("stop", "-f", "-w", "owned")


def test_the_owner_starts_a_configured_vm_whose_files_only_root_can_read(
        tmp_path: Path, guests: dict[str, Path], users: dict[str, int]) -> None:
    """config.c config_setvm checks the user's access only for what an instance supplies; what root named in
    vm.conf is opened as vmd. A file the user names is still opened as the user."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    kernel, disk = private / "demo.elf", private / "disk.img"
    shutil.copy(guests["demo"], kernel)
    disk.write_bytes(bytes(1 << 20))
    for path in (kernel, disk):
        os.chmod(path, 0o600)
    daemon = Vmd(tmp_path, _config(guests, f"""
vm "private" {{
    disable
    memory 16M
    boot "{kernel}"
    disk "{disk}"
    owner {OWNER}
}}
"""))
    daemon.start()
    try:
        started = daemon.vmctl("start", "private", user=OWNER)
        assert started.returncode == 0, started
        daemon.wait_state("private", "running")
        assert daemon.vmctl("stop", "-f", "-w", "private", user=OWNER).returncode == 0
        daemon.wait_state("private", "stopped")
        theirs = daemon.vmctl("start", "-b", str(kernel), "private", user=OWNER)
        assert theirs.returncode == 1, theirs
        assert "Permission denied" in theirs.stderr, theirs
        assert daemon.status()["private"]["state"] == "stopped"
    finally:
        daemon.stop()
