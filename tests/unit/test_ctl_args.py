"""vmctl argument parsing, abbreviation, usage and every message that needs no daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmd.ctl.getopt import GetoptError, getopt
from vmd.ctl.main import COMMANDS, Usage, find_command, main, parse_vmid, usage_text
from vmd.ctl.strtonum import strtonum

NO_SOCKET = "/nonexistent/vmd.sock"


@pytest.fixture(autouse=True)
def _no_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMD_SOCKET", NO_SOCKET)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


GENERAL_USAGE = "usage:\tvmctl [-v] command [arg ...]\n"
CONNECT_FAIL = f"vmctl: connect: {NO_SOCKET}: No such file or directory\n"


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys) == (1, "", GENERAL_USAGE)
    assert run(capsys, "-v") == (1, "", GENERAL_USAGE)
    assert run(capsys, "-x") == (1, "", "vmctl: unknown option -- x\n" + GENERAL_USAGE)


@pytest.mark.parametrize("word", ["s", "st", "sta", "re", "lo", ""])
def test_ambiguous(capsys: pytest.CaptureFixture[str], word: str) -> None:
    assert run(capsys, word) == (1, "", f"ambiguous argument: {word}\n" + GENERAL_USAGE)


@pytest.mark.parametrize("word", ["xyz", "statusx", "send", "receive"])
def test_unknown(capsys: pytest.CaptureFixture[str], word: str) -> None:
    assert run(capsys, word) == (1, "", f"unknown argument: {word}\n" + GENERAL_USAGE)


@pytest.mark.parametrize(
    "word, name",
    [("c", None), ("con", "console"), ("cr", "create"), ("loa", "load"), ("log", "log"),
     ("p", "pause"), ("rel", "reload"), ("res", "reset"), ("sh", "show"), ("star", "start"),
     ("stat", "status"), ("sto", "stop"), ("u", "unpause"), ("w", "wait"), ("status", "status")],
)
def test_abbreviation(word: str, name: str | None) -> None:
    if name is None:
        with pytest.raises(Usage):
            find_command(word)
    else:
        assert find_command(word).name == name


def test_command_table_order() -> None:
    assert [c.name for c in COMMANDS] == [
        "console", "create", "load", "log", "pause", "reload", "reset", "show", "start", "status",
        "stop", "unpause", "wait",
    ]


@pytest.mark.parametrize(
    "argv, name",
    [
        (["console"], "console"), (["console", "a", "b"], "console"), (["load"], "load"),
        (["log"], "log"), (["log", "x"], "log"), (["log", "brief", "x"], "log"), (["pause"], "pause"),
        (["reload", "x"], "reload"), (["reset", "foo"], "reset"), (["reset", "all", "x"], "reset"),
        (["show", "a", "b"], "show"), (["start"], "start"), (["start", "a", "b"], "start"),
        (["status", "-x"], "status"), (["stop"], "stop"), (["stop", "-a", "x"], "stop"),
        (["stop", "a", "b"], "stop"), (["unpause"], "unpause"), (["wait"], "wait"),
        (["create"], "create"), (["create", "a", "b"], "create"), (["stop", "-q", "x"], "stop"),
    ],
)
def test_command_usage(capsys: pytest.CaptureFixture[str], argv: list[str], name: str) -> None:
    rc, out, err = run(capsys, *argv)
    assert rc == 1 and out == ""
    assert err.endswith(usage_text(find_command(name)))
    assert err.splitlines()[-1].startswith(f"usage:\tvmctl [-v] {name}") or "\t\t" in err


def test_usage_strings() -> None:
    assert usage_text(find_command("stop")) == "usage:\tvmctl [-v] stop [-fw] [id | -a]\n"
    assert usage_text(find_command("reload")) == "usage:\tvmctl [-v] reload \n"
    assert usage_text(find_command("create")) == (
        "usage:\tvmctl [-v] create [-b base | -i disk] [-s size] disk\n"
    )
    assert usage_text(find_command("start")).startswith(
        "usage:\tvmctl [-v] start [-cL] [-B device] [-b path] [-d disk] [-i count]\n\t\t[-m size]"
    )


def test_getopt_messages(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "start", "-m")
    assert rc == 1 and err.startswith("vmctl: option requires an argument -- m\nusage:\tvmctl [-v] start ")
    rc, _, err = run(capsys, "stat", "--jsonx")
    assert err.startswith("vmctl: unknown option -- jsonx\n")


def test_getopt() -> None:
    assert getopt(["-cm", "1G", "-d/x", "vm", "-c"], "cm:d:") == (
        [("-c", ""), ("-m", "1G"), ("-d", "/x")], ["vm", "-c"])
    assert getopt(["--", "-a"], "a") == ([], ["-a"])
    assert getopt(["--init=/k", "--app", "x y", "n"], "", {"initrd": True, "append": True}) == (
        [("--initrd", "/k"), ("--append", "x y")], ["n"])
    with pytest.raises(GetoptError, match="option doesn't take an argument -- json"):
        getopt(["--json=1"], "", {"json": False})
    with pytest.raises(GetoptError, match="ambiguous option -- a"):
        getopt(["--a"], "", {"ab": False, "ac": False})


@pytest.mark.parametrize(
    "argv, err",
    [
        (["status", "-x1"], "vmctl: unknown option -- x\nusage:\tvmctl [-v] status [-r] [--json] [id]\n"),
        (["status", "a" * 64], "vmctl: name too long\nvmctl: invalid id: " + "a" * 64 + "\n"),
        (["pause", "-1"], "vmctl: invalid id: -1\n"),
        (["wait", "a" * 70], "vmctl: name too long\nvmctl: invalid id: " + "a" * 70 + "\n"),
        (["start", "-m", "4.5G", "-m", "1G", "x"], "vmctl: memory specified multiple times\n"),
        (["start", "-m", "0.5M", "x"], "vmctl: memory size must be at least 1MB\n"),
        (["start", "-m", "4.5", "x"], "vmctl: memory size must be at least 1MB\n"),
        (["start", "-m", "129G", "x"], "vmctl: memory size too large (limit is 128G)\n"),
        (["start", "-m", "abc", "x"], "vmctl: invalid memory size: abc: Invalid argument\n"),
        (["start", "-m", "99999999999999999999999", "x"],
         "vmctl: invalid memory size: 99999999999999999999999: Numerical result out of range\n"),
        (["start", "-B", "floppy", "x"], "vmctl: unknown boot device floppy\n"),
        (["start", "-B", "disk", "-B", "net", "x"], "vmctl: boot device specified multiple times\n"),
        (["start", "-i", "0", "x"], "vmctl: count is too small: 0\nvmctl: invalid interface count: 0\n"),
        (["start", "-i", "z", "x"], "vmctl: count is invalid: z\nvmctl: invalid interface count: z\n"),
        (["start", "-i", "1", "-i", "2", "x"], "vmctl: interfaces specified multiple times\n"),
        (["start", "-p", "65", "x"], "vmctl: count is too large: 65\nvmctl: invalid vcpu count: 65\n"),
        (["start", "-d", "/nonexistent/d.img", "x"],
         "vmctl: invalid disk path: /nonexistent/d.img: No such file or directory\n"),
        (["start", "-d", "qcow2:/nonexistent/d", "x"],
         "vmctl: invalid disk path: /nonexistent/d: No such file or directory\n"),
        (["start", "-b", "/nonexistent/bsd", "x"],
         "vmctl: invalid boot image path: No such file or directory\n"),
        (["start", "-r", "/nonexistent/i.iso", "x"],
         "vmctl: invalid iso image path: /nonexistent/i.iso: No such file or directory\n"),
        (["start", "-b", "/", "x"], "vmctl: kernel must be a regular file\n"),
        (["start", "-t", "t" * 64, "x"],
         "vmctl: instance vm name too long\nvmctl: invalid name: " + "t" * 64 + "\n"),
        (["start", "-m", "1G", "x"],
         "vmctl: starting without disks\nvmctl: no kernel or disk/cdrom specified\n"),
        (["start", "-m", "1536K", "x"],
         "vmctl: memory size rounded to 1.0M\nvmctl: starting without disks\n"
         "vmctl: no kernel or disk/cdrom specified\n"),
    ],
)
def test_start_and_id_errors(capsys: pytest.CaptureFixture[str], argv: list[str], err: str) -> None:
    rc, out, got = run(capsys, *argv)
    assert (rc, out) == (1, "")
    assert got == err


def test_start_limits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"")
    d = ["-d", str(disk)]
    assert run(capsys, "start", *(d * 5), "x") == (1, "", "vmctl: too many disks\n")
    assert run(capsys, "start", *d, "-i", "5", "x") == (1, "", "vmctl: too many network interfaces\n")
    nets = ["-n", "a", "-n", "b", "-L", "-L", "-L"]
    assert run(capsys, "start", *d, *nets, "x") == (1, "", "vmctl: too many network interfaces\n")
    rc, _, err = run(capsys, "start", *d, "_x")
    assert err == "vmctl: starting without network interfaces\nvmctl: invalid VM name\n"
    rc, _, err = run(capsys, "start", *d, "-i", "1", "a/b")
    assert (rc, err) == (1, "vmctl: invalid VM name\n")
    # everything valid: only the daemon is missing
    rc, _, err = run(capsys, "start", *(d * 4), "-i", "4", "ok.vm-1_x")
    assert (rc, err) == (1, CONNECT_FAIL)
    # an instance (-t) skips vmctl's own checks
    rc, _, err = run(capsys, "start", "-t", "base", *(d * 5), "x")
    assert (rc, err) == (1, CONNECT_FAIL)


def test_unreadable_kernel(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    k = tmp_path / "bsd"
    k.write_bytes(b"x")
    k.chmod(0)
    rc, _, err = run(capsys, "start", "-b", str(k), "x")
    assert err == f"vmctl: cannot open kernel '{k}': Permission denied\n"


@pytest.mark.parametrize(
    "text, lo, hi, result",
    [
        ("5", 1, 10, (5, None)),
        (" +5", 1, 10, (5, None)),
        ("0", 1, 10, (0, "too small")),
        ("11", 1, 10, (0, "too large")),
        ("5x", 1, 10, (0, "invalid")),
        ("", 1, 10, (0, "invalid")),
        ("4294967296", 0, 2**32 - 1, (0, "too large")),
    ],
)
def test_strtonum(text: str, lo: int, hi: int, result: tuple[int, str | None]) -> None:
    assert strtonum(text, lo, hi) == result


def test_parse_vmid() -> None:
    assert parse_vmid("12") == 12
    assert parse_vmid("0") == 0
    assert parse_vmid("4294967295") == 4294967295
    assert parse_vmid("4294967296") == "4294967296"  # too large for an id: a name
    assert parse_vmid("vm1") == "vm1"
    assert parse_vmid("-a") is None


@pytest.mark.parametrize(
    "argv",
    [["status"], ["show", "-r"], ["console", "vm1"], ["stop", "-a"], ["pause", "1"], ["load", "x"],
     ["reload"], ["reset"], ["log", "v"], ["wait", "vm1"], ["unpause", "vm1"]],
)
def test_connect_failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, out, err = run(capsys, *argv)
    assert (rc, out) == (1, "")
    assert err == CONNECT_FAIL


def test_stop_connect_failure_before_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "stop", "vm1") == (1, "", CONNECT_FAIL)


def test_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmd.ctl.client import socket_path

    monkeypatch.delenv("VMD_SOCKET")
    assert socket_path() == "/run/vmd.sock"
