"""The GDB stub under the daemon: vm.conf `gdb [wait]`, `vmctl start --gdb`, the socket vmd makes for the VM
process (owner, mode, where), and hostile input: bad names, a directory others can write, fields of the wrong
type."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmd.daemon.core as core
import vmd.daemon.vmstart as vmstart
from vmd.config import MappingResolver, parse_string
from vmd.daemon.conf import definition_from_spec
from vmd.daemon.control import RequestError
from vmd.daemon.core import Daemon
from vmd.daemon.gdbsock import GdbSocketError, open_gdb_socket, remove_gdb_socket, socket_path
from vmd.daemon.permissions import Owner, Peer
from vmd.daemon.supervisor import VmProcess

RESOLVER = MappingResolver(users={"joe": 1000, "root": 0}, groups={"staff": 20})


def parse(text: str) -> Any:
    return parse_string(text, check_paths=False, resolver=RESOLVER)


# -- vm.conf --------------------------------------------------------------------------------------------------


def test_gdb_statement() -> None:
    result = parse('vm "a" {\n boot "/bsd"\n gdb\n}\nvm "b" {\n boot "/bsd"\n gdb wait\n}\nvm "c" {\n boot "/bsd"\n}\n')
    assert result.errors == []
    assert [vm.gdb for vm in result.config.vms] == ["listen", "wait", None]
    assert definition_from_spec(result.config.vms[1]).gdb == "wait"


def test_gdb_statement_errors() -> None:
    result = parse('vm "a" {\n boot "/bsd"\n gdb\n gdb wait\n}\n')
    assert result.config is None and len(result.errors) == 1, result.errors
    assert result.errors[0].endswith(":4: gdb specified more than once"), result.errors
    for bad in ("gdb now", "gdb wait wait", "gdb 1234"):
        result = parse(f'vm "a" {{\n boot "/bsd"\n {bad}\n}}\n')
        assert result.config is None and any("syntax error" in e for e in result.errors), (bad, result.errors)


def test_gdb_is_not_a_reserved_word() -> None:
    result = parse('gdb = "/bsd"\nvm "a" {\n boot $gdb\n}\n')
    assert result.errors == [] and result.config.vms[0].kernel == "/bsd"


def test_an_instance_inherits_gdb() -> None:
    result = parse('vm "p" {\n boot "/bsd"\n gdb wait\n allow instance { boot }\n}\nvm "p" instance "i" {\n}\n')
    assert result.errors == []
    assert result.config.vm("i").gdb == "wait"


def test_documented() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert ".It Ic gdb Op Cm wait" in (docs / "vm.conf.5").read_text()
    assert ".It Fl \\-gdb" in (docs / "vmctl.8").read_text()
    assert ".Ss Debugging a guest" in (docs / "vmd.8").read_text()


# -- vmctl ----------------------------------------------------------------------------------------------------


def test_vmctl_start_gdb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vmd.ctl import main as ctl

    sent: list[dict[str, Any]] = []

    class FakeClient:
        def request(self, command: str, **fields: Any) -> dict[str, Any]:
            sent.append({"command": command, **fields})
            return {"ok": True, "id": 4, "tty": "/dev/pts/9", "gdb": "/run/vmd/web.gdb"}

    monkeypatch.setattr(ctl.Context, "client", lambda self: FakeClient())
    assert ctl.main(["start", "--gdb", "web"]) == 0
    assert sent[0]["gdb"] is True and sent[0]["target"] == "web"
    assert capsys.readouterr().err == (
        "vmctl: started vm 4 successfully, tty /dev/pts/9\n"
        "vmctl: vm 4: gdb stub on /run/vmd/web.gdb: target remote /run/vmd/web.gdb (the guest waits for the"
        " debugger)\n")
    assert ctl.main(["start", "web"]) == 0
    assert sent[1]["gdb"] is None  # not sent: the request carries only what was given
    assert "target remote" in capsys.readouterr().err  # a VM with `gdb` in vm.conf
    assert ctl.main(["start", "--gdb=x", "web"]) == 1
    assert "option doesn't take an argument -- gdb" in capsys.readouterr().err
    assert "[--gdb]" in ctl.usage_text(ctl.find_command("start"))


# -- the socket -----------------------------------------------------------------------------------------------


def test_socket_owner_mode_and_place(tmp_path: Path) -> None:
    directory = str(tmp_path / "vmd")
    fd, path = open_gdb_socket(directory, "web", 1234, None)
    try:
        assert path == os.path.join(directory, "web.gdb")
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid) == (1234, 0)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755
        assert os.listdir(directory) == ["web.gdb"]  # the staging directory is gone
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # it listens
    finally:
        os.close(fd)
    fd, path = open_gdb_socket(directory, "web", 1234, 20)  # a stale socket is replaced; a group gets 0660
    os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    remove_gdb_socket(path)
    assert not os.path.exists(path)
    remove_gdb_socket(path)  # gone already: nothing happens


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "-x", "x" * 64, "a b", "é"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(GdbSocketError):
        socket_path(str(tmp_path), name)
    with pytest.raises(GdbSocketError):
        open_gdb_socket(str(tmp_path), name, 0, None)


def test_hostile_directory_and_path(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(GdbSocketError, match="writable by nobody else"):
        open_gdb_socket(str(open_dir), "web", 0, None)
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(GdbSocketError, match="not a directory"):
        open_gdb_socket(str(plain), "web", 0, None)
    good = tmp_path / "good"
    good.mkdir(mode=0o755)
    (good / "web.gdb").write_text("not a socket")
    with pytest.raises(GdbSocketError, match="not a socket"):
        open_gdb_socket(str(good), "web", 0, None)
    with pytest.raises(GdbSocketError):
        open_gdb_socket(str(tmp_path / "missing" / "deeper"), "web", 0, None)


# -- the daemon -----------------------------------------------------------------------------------------------


class _Client:
    def __init__(self, uid: int = 0) -> None:
        self.peer = Peer(uid, uid, 0, frozenset({uid}))
        self.answers: list[Any] = []

    def respond(self, payload: dict[str, Any]) -> None:
        self.answers.append(payload)

    def fail(self, error: Any) -> None:
        self.answers.append(error)


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\0" * 512)
    spawned: list[tuple[dict[str, Any], dict[str, int]]] = []
    pairs: list[socket.socket] = []

    def spawn(name: str, spec: dict[str, Any], terminal: Any, files: dict[str, int], user: Any,
              verbose: int) -> VmProcess:
        kept = {key: os.dup(fd) for key, fd in files.items()}
        for fd in files.values():
            os.close(fd)
        spawned.append((spec, kept))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pairs.append(theirs)
        return VmProcess(os.getpid(), os.pidfd_open(os.getpid()), ours, None)  # type: ignore[arg-type]

    monkeypatch.setattr(vmstart, "spawn", spawn)
    configured = core.VmDefinition(name="conf", memory=16 << 20, kernel=str(kernel), gdb="listen",
                                   owner=Owner(1000, None), enabled=False)
    daemon = Daemon(str(tmp_path / "vmd.sock"), str(tmp_path / "vm.conf"), lambda path: ([configured], core.Settings()))
    daemon.kernel = str(kernel)  # type: ignore[attr-defined]
    daemon.spawned = spawned  # type: ignore[attr-defined]
    daemon.configure("vm.conf", replace=True)
    yield daemon
    for _spec, kept in spawned:
        for fd in kept.values():
            os.close(fd)
    for pair in pairs:
        pair.close()
    daemon.control.shutdown()


def _stopped(daemon: Daemon, entry: Any) -> None:
    """What vmd does when a VM process has exited (_vm_exit), without a process to reap."""
    for fd in (entry.process.sock, entry.process.pidfd):
        daemon.selector.unregister(fd)
    entry.process.sock.close()
    os.close(entry.process.pidfd)
    entry.process = None
    daemon._terminated(entry)


def test_vmctl_start_gdb_makes_the_socket_for_the_vm_process(daemon: Daemon, tmp_path: Path) -> None:
    client = _Client()
    daemon.handle_request(client, {"command": "start", "target": "adhoc", "kernel": daemon.kernel,  # type: ignore
                                   "memory": 16 << 20, "gdb": True})
    spec, files = daemon.spawned[-1]  # type: ignore[attr-defined]
    assert spec["debug"] is True and spec["debug_hold"] is True
    path = str(tmp_path / "vmd" / "adhoc.gdb")
    listener = socket.socket(fileno=os.dup(files["gdb"]))
    assert listener.getsockname() != "" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    listener.close()
    entry = daemon.registry.find("adhoc")
    assert entry is not None and entry.gdb_path == path
    _stopped(daemon, entry)
    assert not os.path.exists(path)


def test_a_configured_vm_with_gdb(daemon: Daemon, tmp_path: Path) -> None:
    daemon.handle_request(_Client(), {"command": "start", "target": "conf"})  # type: ignore[arg-type]
    spec, files = daemon.spawned[-1]  # type: ignore[attr-defined]
    assert spec["debug"] is True and spec["debug_hold"] is False  # `gdb`: listen, do not wait
    info = os.stat(tmp_path / "vmd" / "conf.gdb")
    assert info.st_uid == 1000 and stat.S_IMODE(info.st_mode) == 0o600  # the user it runs for
    entry = daemon.registry.find("conf")
    assert entry is not None
    _stopped(daemon, entry)
    daemon.handle_request(_Client(), {"command": "start", "target": "conf", "gdb": True})  # type: ignore
    assert daemon.spawned[-1][0]["debug_hold"] is True  # type: ignore[attr-defined]


def test_no_gdb_no_socket(daemon: Daemon, tmp_path: Path) -> None:
    daemon.handle_request(_Client(), {"command": "start", "target": "plain", "kernel": daemon.kernel,  # type: ignore
                                      "memory": 16 << 20})
    spec, files = daemon.spawned[-1]  # type: ignore[attr-defined]
    assert "debug" not in spec and "gdb" not in files
    assert not (tmp_path / "vmd").exists()


@pytest.mark.parametrize("value", ["yes", 1, 0, "", [], {}])
def test_gdb_field_of_the_wrong_type(daemon: Daemon, value: object) -> None:
    with pytest.raises(RequestError) as error:
        daemon.handle_request(_Client(), {"command": "start", "target": "bad", "kernel": daemon.kernel,  # type: ignore
                                          "memory": 16 << 20, "gdb": value})
    assert (error.value.errno_name, error.value.message) == ("EINVAL", "invalid field gdb")
    assert daemon.registry.find("bad") is None


def test_gdb_null_is_not_given(daemon: Daemon) -> None:
    daemon.handle_request(_Client(), {"command": "start", "target": "nul", "kernel": daemon.kernel,  # type: ignore
                                      "memory": 16 << 20, "gdb": None})
    assert "debug" not in daemon.spawned[-1][0]  # type: ignore[attr-defined]
