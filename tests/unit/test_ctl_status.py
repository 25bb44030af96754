"""The `vmctl status` table (vmctl.c print_vm_info), exact strings."""

from __future__ import annotations

from typing import Any

import pytest

from vmd.ctl.status import BadRecord, header, render, render_row, tty_column

G, M = 1024**3, 1024**2

RUNNING: dict[str, Any] = {
    "id": 1, "pid": 12345, "vcpus": 1, "maxmem": 512 * M, "curmem": 137 * M + 300 * 1024,
    "tty": "/dev/pts/3", "owner": "root", "state": "running", "name": "vm1",
}
STOPPED: dict[str, Any] = {
    "id": 2, "pid": None, "vcpus": 1, "maxmem": G, "curmem": None, "tty": None,
    "owner": "joe:staff", "state": "stopped", "name": "vm2",
}


def test_header() -> None:
    assert header() == "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME"


def test_rows() -> None:
    assert render_row(RUNNING) == "    1 12345     1    512M    137M   pts/3         root  running vm1"
    assert render_row(STOPPED) == "    2     -     1    1.0G       -       -    joe:staff  stopped vm2"


def test_render_all_and_filters() -> None:
    lines, n = render([RUNNING, STOPPED])
    assert n == 2 and lines[0] == header() and len(lines) == 3
    lines, n = render([RUNNING, STOPPED], running_only=True)
    assert n == 1 and lines[1].endswith(" vm1")
    # the count is print_vm_info's found_running (vmctl.c 1.94): every VM -r lets through, matched or not
    lines, n = render([RUNNING, STOPPED], target="vm2")
    assert n == 2 and len(lines) == 2 and lines[1].endswith(" vm2")
    lines, n = render([RUNNING, STOPPED], target=1)
    assert n == 2 and len(lines) == 2 and lines[1].endswith(" vm1")
    assert render([RUNNING, STOPPED], target="nosuch") == ([header()], 2)
    assert render([RUNNING, STOPPED], target="vm2", running_only=True) == ([header()], 1)
    lines, n = render([STOPPED], running_only=True)
    assert (lines, n) == ([header()], 0)
    assert render([], target=None) == ([header()], 0)


def test_owner_cut_and_wide_values() -> None:
    rec = dict(RUNNING, owner="averylongusername:group", id=123456, pid=1234567, maxmem=int(4.5 * G),
               curmem=64 * 1024, state="paused", name="x")
    assert render_row(rec) == "123456 1234567     1    4.5G   64.0K   pts/3 averylonguserna   paused x"


def test_curmem_zero_and_missing_tty() -> None:
    rec = dict(RUNNING, curmem=0, tty=None)
    assert render_row(rec) == "    1 12345     1    512M      0B       -         root  running vm1"


@pytest.mark.parametrize(
    "path, col",
    [("/dev/pts/3", "pts/3"), ("/dev/ttyp8", "ttyp8"), ("/tmp/x/tty", "tty"), ("ttyS0", "ttyS0"),
     ("/dev/", "/dev/"), (None, "-"), ("", "-")],
)
def test_tty_column(path: str | None, col: str) -> None:
    assert tty_column(path) == col


@pytest.mark.parametrize(
    "bad",
    [dict(RUNNING, id="1"), dict(RUNNING, maxmem=None), dict(RUNNING, name=None), dict(RUNNING, vcpus=True),
     dict(RUNNING, pid="x"), {"id": 1}],
)
def test_bad_records(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRecord):
        render([bad])


def test_non_dict_record() -> None:
    with pytest.raises(BadRecord):
        render(["vm1"])  # type: ignore[list-item]
