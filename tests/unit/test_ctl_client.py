"""vmctl against a fake vmd on a temporary Unix socket: the requests it sends, what it prints."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vmd.ctl.main as ctl_main
from vmd.ctl.main import main

Handler = Callable[[dict[str, Any]], "dict[str, Any] | bytes | None"]
G, M = 1024**3, 1024**2


class FakeVmd:
    """Answers each request line with handler(request): a dict is sent as JSON, bytes are sent as they
    are and the connection is closed, None closes the connection."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(5)
        self.sock.settimeout(0.05)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            while b"\n" not in buf:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            req = json.loads(line)
            self.requests.append(req)
            resp = self.handler(req)
            if resp is None:
                return
            if isinstance(resp, bytes):
                conn.sendall(resp)
                return
            conn.sendall(json.dumps(resp).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def vmd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Handler], FakeVmd]]:
    servers: list[FakeVmd] = []

    def start(handler: Handler) -> FakeVmd:
        path = str(tmp_path / f"vmd{len(servers)}.sock")
        server = FakeVmd(path, handler)
        servers.append(server)
        monkeypatch.setenv("VMD_SOCKET", path)
        return server

    yield start
    for s in servers:
        s.close()


def ok(**fields: Any) -> dict[str, Any]:
    return {"version": 1, "ok": True, **fields}


def fail(errno_name: str, error: str, **fields: Any) -> dict[str, Any]:
    return {"version": 1, "ok": False, "errno": errno_name, "error": error, **fields}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


VM1 = {"id": 1, "pid": 4242, "vcpus": 1, "maxmem": 512 * M, "curmem": 100 * M, "tty": "/dev/pts/7",
       "owner": "root", "state": "running", "name": "vm1"}
VM2 = {"id": 2, "pid": None, "vcpus": 2, "maxmem": int(4.5 * G), "curmem": None, "tty": None,
       "owner": "joe", "state": "stopped", "name": "vm2"}
HEADER = "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME\n"


# --- status ----------


def test_status(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    server = vmd(lambda req: ok(vms=[VM1, VM2]))
    rc, out, err = run(capsys, "status")
    assert server.requests == [{"version": 1, "command": "status", "running_only": False}]
    assert (rc, err) == (0, "")
    assert out == (HEADER
                   + "    1  4242     1    512M    100M   pts/7         root  running vm1\n"
                   + "    2     -     2    4.5G       -       -          joe  stopped vm2\n")


def test_status_args_and_exit(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    server = vmd(lambda req: ok(vms=[]))
    assert run(capsys, "stat", "-r", "vm2") == (1, HEADER, "")
    assert run(capsys, "show", "7") == (1, HEADER, "")
    # vmctl asks for the whole list and picks the VM itself (vmctl.c get_info_vm, check_info_id)
    assert server.requests[0] == {"version": 1, "command": "status", "running_only": True}
    assert server.requests[1] == {"version": 1, "command": "status", "running_only": False}


def test_status_of_an_unknown_vm_succeeds_when_others_exist(vmd: Callable[[Handler], FakeVmd],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """vmctl.c 1.94 print_vm_info: the exit status counts every VM listed, not only the one asked for."""
    vmd(lambda req: ok(vms=[VM1, VM2]))
    assert run(capsys, "status", "nosuch") == (0, HEADER, "")
    assert run(capsys, "status", "9") == (0, HEADER, "")
    assert run(capsys, "status", "-r", "vm2") == (0, HEADER, "")  # vm1 runs
    rc, out, _ = run(capsys, "status", "--json", "nosuch")
    assert (rc, json.loads(out)) == (0, [])
    rc, out, _ = run(capsys, "status", "--json", "vm2")
    assert (rc, json.loads(out)) == (0, [VM2])
    vmd(lambda req: ok(vms=[VM2]))
    assert run(capsys, "status", "-r", "vm2") == (1, HEADER, "")  # nothing runs: nothing found


def test_status_json(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    stats = {"vcpu_seconds": [0.5], "kvm_exits_total": 3, "kvm_exits": {"io": 1}, "rss_bytes": 4096, "disks": [],
             "nics": []}
    server = vmd(lambda req: ok(vms=[dict(VM1, stats=stats)]))
    rc, out, err = run(capsys, "status", "--json")
    assert (rc, err) == (0, "")
    assert json.loads(out) == [dict(VM1, stats=stats)]  # the counters the metrics endpoint shows, as they came
    assert server.requests == [{"version": 1, "command": "status", "running_only": False, "stats": True}]
    # the table asks for no counters, and shows none
    assert run(capsys, "status")[1] == HEADER + "    1  4242     1    512M    100M   pts/7         root  running vm1\n"
    assert server.requests[1] == {"version": 1, "command": "status", "running_only": False}


def test_status_filters_client_side(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    vmd(lambda req: ok(vms=[VM1, VM2]))  # a daemon that ignores the filters
    rc, out, _ = run(capsys, "status", "-r")
    assert rc == 0 and out.count("\n") == 2 and "vm1" in out
    rc, out, _ = run(capsys, "status", "vm2")
    assert rc == 0 and out.count("\n") == 2 and "vm2" in out


@pytest.mark.parametrize(
    "response, message",
    [
        (b"garbage\n", "vmctl: unexpected response received from vmd\n"),
        (b"[1, 2]\n", "vmctl: unexpected response received from vmd\n"),
        (b'{"version": 1}\n', "vmctl: unexpected response received from vmd\n"),
        (b'{"version": 2, "ok": true}\n', "vmctl: unexpected response received from vmd\n"),
        (b'{"version": 1, "ok": true, "vms": 3}\n', "vmctl: unexpected response received from vmd\n"),
        (b'{"version": 1, "ok": true, "vms": [{"id": "x"}]}\n',
         "vmctl: unexpected response received from vmd\n"),
        (b"\xff\xfe\n", "vmctl: unexpected response received from vmd\n"),
        (b'{"version": 1, "ok": tr', "vmctl: pipe closed\n"),
        (None, "vmctl: pipe closed\n"),
    ],
)
def test_bad_server(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str],
                    response: bytes | None, message: str) -> None:
    vmd(lambda req: response)
    assert run(capsys, "status") == (1, "", message)


def test_status_refused(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    vmd(lambda req: fail("EINVAL", "unknown field frob"))
    assert run(capsys, "status") == (1, "", "vmctl: command failed: unknown field frob\n")
    vmd(lambda req: {"version": 1, "ok": False})
    assert run(capsys, "status") == (1, "", "vmctl: command failed\n")
    vmd(lambda req: {"version": 1, "ok": False, "errno": "EACCES"})
    assert run(capsys, "status") == (1, "", "vmctl: command failed: Permission denied\n")


# --- root-only commands --------------------------------------------------------------------------------


def test_load_reload_reset_log(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str],
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = vmd(lambda req: ok())
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "load", "vm.conf") == (0, "", "")
    assert run(capsys, "reload") == (0, "", "")
    assert run(capsys, "reset") == (0, "", "")
    assert run(capsys, "reset", "SWITCHES") == (0, "", "")
    assert run(capsys, "reset", "vms") == (0, "", "")
    assert run(capsys, "log", "verb") == (0, "", "")
    assert run(capsys, "log", "B") == (0, "", "")
    cmds = [{k: v for k, v in r.items() if k != "version"} for r in server.requests]
    assert cmds == [
        {"command": "load", "path": str(tmp_path.resolve() / "vm.conf")},
        {"command": "reload"},
        {"command": "reset", "what": "all"},
        {"command": "reset", "what": "switches"},
        {"command": "reset", "what": "vms"},
        {"command": "log", "level": "verbose"},
        {"command": "log", "level": "brief"},
    ]


@pytest.mark.parametrize("argv", [["load", "/etc/vm.conf"], ["reload"], ["reset", "all"], ["log", "brief"]])
def test_refused_root_commands(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str],
                               argv: list[str]) -> None:
    vmd(lambda req: fail("EPERM", "Operation not permitted"))
    assert run(capsys, *argv) == (1, "", "vmctl: command failed: Operation not permitted\n")


# --- start ----------


def test_start_request(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    server = vmd(lambda req: ok(id=3, name="vm3", tty="/dev/pts/4", pid=99, warnings=[]))
    monkeypatch.chdir(tmp_path)
    for f in ("bsd", "a.img", "b.qcow2", "c", "install.iso", "initrd"):
        (tmp_path / f).write_bytes(b"")
    (tmp_path / "d").write_bytes(b"QFI\xfb" + bytes(100))
    rc, out, err = run(
        capsys, "start", "-b", "bsd", "-d", "a.img", "-d", "b.qcow2", "-d", "raw:c", "-d", "d", "-r",
        "install.iso", "-B", "cdrom", "-m", "1G", "-n", "uplink", "-L", "-i", "3", "-p", "2", "--cpu",
        "host", "--initrd", "initrd", "--append", "console=ttyS0", "-L", "vm3",
    )
    assert (rc, out, err) == (0, "", "vmctl: started vm 3 successfully, tty /dev/pts/4\n")
    t = str(tmp_path.resolve())
    assert server.requests == [{
        "version": 1, "command": "start", "target": "vm3", "kernel": f"{t}/bsd", "initrd": f"{t}/initrd",
        "append": "console=ttyS0", "memory": G, "vcpus": 2, "cpu": "host",
        "disks": [{"path": f"{t}/a.img", "format": None}, {"path": f"{t}/b.qcow2", "format": "qcow2"},
                  {"path": f"{t}/c", "format": "raw"}, {"path": f"{t}/d", "format": "qcow2"}],
        "cdrom": f"{t}/install.iso", "boot_device": "cdrom", "nics": 3, "switches": ["uplink"],
        "local_nics": 2, "networks": ["uplink", ".", "."],
    }]


def test_start_minimal(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    server = vmd(lambda req: ok(id=1, name="vm1", tty="/dev/pts/0", pid=5,
                                warnings=["vm1: memory rounded", 7]))
    assert run(capsys, "start", "vm1") == (
        0, "", "vmctl: vm1: memory rounded\nvmctl: started vm 1 successfully, tty /dev/pts/0\n")
    assert server.requests == [{"version": 1, "command": "start", "target": "vm1"}]
    assert run(capsys, "start", "12")[0] == 0
    assert server.requests[1]["target"] == 12


@pytest.mark.parametrize(
    "code, message",
    [(1001, "vmm bios firmware file not found."), (1002, "could not open disk image(s)"),
     (1005, "could not find specified iso image"), (1006, "specified iso image is not a regular file"),
     (1007, "invalid template")],
)
def test_start_vmd_codes(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str], code: int,
                         message: str) -> None:
    vmd(lambda req: fail("ENOENT", "whatever vmd says", code=code))
    assert run(capsys, "start", "vm1") == (1, "", f"vmctl: {message}\n")


def test_start_failures(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    vmd(lambda req: fail("EPERM", "Operation not permitted"))
    assert run(capsys, "start", "vm1") == (1, "", "vmctl: start vm command failed: Operation not permitted\n")
    vmd(lambda req: fail("EALREADY", "Operation already in progress"))
    assert run(capsys, "start", "vm1") == (
        1, "", "vmctl: start vm command failed: Operation already in progress\n")
    vmd(lambda req: ok(tty="/dev/pts/1"))  # no id
    assert run(capsys, "start", "vm1") == (1, "", "vmctl: unexpected response received from vmd\n")


def test_start_console(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(ctl_main, "run_console", opened.append)
    vmd(lambda req: ok(id=3, name="vm3", tty="/dev/pts/4", pid=1, warnings=[]))
    assert run(capsys, "start", "-c", "vm3") == (0, "", "")
    assert opened == ["/dev/pts/4"]


# --- console ----------


def test_console_lookup(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(ctl_main, "run_console", opened.append)
    server = vmd(lambda req: ok(vms=[VM1, VM2]))
    assert run(capsys, "console", "vm1") == (0, "", "")
    assert run(capsys, "console", "1") == (0, "", "")
    assert opened == ["/dev/pts/7", "/dev/pts/7"]
    assert server.requests[0] == {"version": 1, "command": "status", "target": "vm1"}
    assert run(capsys, "console", "vm2") == (1, "", "vmctl: console not found\n")  # no tty
    assert run(capsys, "console", "vm9") == (1, "", "vmctl: console not found\n")
    assert run(capsys, "console", "0") == (1, "", "vmctl: console not found\n")


def test_console_open_failure(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    vmd(lambda req: ok(vms=[dict(VM1, tty="/nonexistent/pts/7")]))
    assert run(capsys, "console", "vm1") == (
        1, "", "vmctl: failed to open the console: No such file or directory\n")


# --- stop and wait ----------


def _stop_handler(result: str) -> Handler:
    return lambda req: ok(results=[{"id": 5, "name": "vm5", "result": result}])


@pytest.mark.parametrize(
    "argv, result, rc, err",
    [
        (["stop", "vm5"], "requested", 0, "stopping vm vm5: requested to shutdown vm 5\n"),
        (["stop", "-w", "vm5"], "terminated", 0, "stopping vm vm5: terminated vm 5\n"),
        (["stop", "-f", "vm5"], "terminated", 0, "stopping vm vm5: forced to terminate vm 5\n"),
        (["stop", "-fw", "vm5"], "terminated", 0, "stopping vm vm5: terminated vm 5\n"),
        (["stop", "5"], "requested", 0, "stopping vm: requested to shutdown vm 5\n"),
        # vmd.c 1.169 answers EINVAL for a VM that is not running
        (["stop", "vm5"], "not running", 1, "stopping vm vm5: failed: Invalid argument\n"),
        (["stop", "vm5"], "not found", 1, "stopping vm vm5: vm not found\n"),
        (["stop", "vm5"], "already stopping", 1, "stopping vm vm5: failed: Operation already in progress\n"),
        (["stop", "vm5"], "not permitted", 1, "stopping vm vm5: failed: Operation not permitted\n"),
        (["stop", "vm5"], "exploded", 1, "stopping vm vm5: unexpected response received from vmd\n"),
    ],
)
def test_stop(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str], argv: list[str],
              result: str, rc: int, err: str) -> None:
    server = vmd(_stop_handler(result))
    assert run(capsys, *argv) == (rc, "", err)
    req = server.requests[0]
    assert req["command"] == "stop"
    assert req["force"] == ("-f" in argv or "-fw" in argv) and req["wait"] == ("-w" in argv or "-fw" in argv)


def test_stop_refused(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    vmd(lambda req: fail("ENOENT", "No such file or directory"))
    assert run(capsys, "stop", "vm9") == (1, "", "stopping vm vm9: vm not found\n")
    vmd(lambda req: fail("EINVAL", "not running", code=1004))
    assert run(capsys, "stop", "vm9") == (1, "", "stopping vm vm9: cannot stop vm that is not running\n")
    vmd(lambda req: fail("EPERM", "Operation not permitted"))
    assert run(capsys, "stop", "vm9") == (1, "", "stopping vm vm9: failed: Operation not permitted\n")
    vmd(lambda req: ok(results=[]))
    assert run(capsys, "stop", "vm9") == (1, "", "stopping vm vm9: unexpected response received from vmd\n")
    vmd(lambda req: None)
    assert run(capsys, "stop", "vm9") == (1, "", "stopping vm vm9: vmctl: pipe closed\n")


def test_stop_all(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    server = vmd(lambda req: ok(results=[{"id": 1, "name": "a", "result": "requested"},
                                         {"id": 2, "name": "b", "result": "requested"}]))
    assert run(capsys, "stop", "-a") == (
        0, "", "stopping vm a: requested to shutdown vm 1\nstopping vm b: requested to shutdown vm 2\n")
    assert server.requests == [{"version": 1, "command": "stop", "all": True, "force": False, "wait": False}]
    vmd(lambda req: ok(results=[{"id": 1, "name": "a", "result": "terminated"},
                                {"id": 2, "name": "b", "result": "not permitted"}]))
    # vmctl.c 1.94 terminate_all reports each VM and ignores the outcome: stop -a exits 0
    assert run(capsys, "stop", "-aw") == (
        0, "", "stopping vm a: terminated vm 1\nstopping vm b: failed: Operation not permitted\n")
    vmd(lambda req: ok(results=[]))
    assert run(capsys, "stop", "-a") == (0, "", "")


def test_wait(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    server = vmd(lambda req: ok(id=4, name="vm4"))
    assert run(capsys, "wait", "vm4") == (0, "", "waiting for vm vm4: terminated vm 4\n")
    assert run(capsys, "wait", "4") == (0, "", "waiting for vm: terminated vm 4\n")
    assert server.requests[0] == {"version": 1, "command": "wait", "target": "vm4"}
    vmd(lambda req: fail("ENOENT", "No such file or directory"))
    assert run(capsys, "wait", "vm4") == (1, "", "waiting for vm vm4: vm not found\n")


# --- pause / unpause ----------


def test_pause_unpause(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    def handler(req: dict[str, Any]) -> dict[str, Any]:
        if req["command"] == "status":
            return ok(vms=[dict(VM1, id=6, name="vm6")])
        return ok()

    server = vmd(handler)
    assert run(capsys, "pause", "6") == (0, "", "vmctl: paused vm 6 successfully\n")
    assert run(capsys, "unpause", "vm6") == (0, "", "vmctl: unpaused vm 6 successfully\n")
    assert [r["command"] for r in server.requests] == ["pause", "unpause", "status"]
    assert server.requests[0] == {"version": 1, "command": "pause", "target": 6}
    vmd(lambda req: ok(id=8))
    assert run(capsys, "pause", "vm8") == (0, "", "vmctl: paused vm 8 successfully\n")


def test_pause_failures(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]) -> None:
    vmd(lambda req: fail("EPERM", "Operation not permitted"))
    assert run(capsys, "pause", "vm1") == (1, "", "vmctl: pause vm command failed: Operation not permitted\n")
    assert run(capsys, "unpause", "vm1") == (
        1, "", "vmctl: unpause vm command failed: Operation not permitted\n")


def test_no_traceback_on_server_crash(vmd: Callable[[Handler], FakeVmd], capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    for argv in (["status"], ["start", "vm1"], ["pause", "1"], ["load", "/x"], ["console", "1"]):
        vmd(lambda req: None)
        rc, out, err = run(capsys, *argv)
        assert (rc, out, err) == (1, "", "vmctl: pipe closed\n")
