"""`vmctl status`: the table of vmctl.c `print_vm_info()`.

Columns and printf widths are OpenBSD's (`%5s %5s %5s %7s %7s %7s %12s %8s %s`); MAXMEM and CURMEM go through
fmt_scaled(3); OWNER is cut at 15 characters (vmctl's `char user[16]`).

TTY: OpenBSD prints the text after the last `/` of the tty path (`ttyp8` for /dev/ttyp8). Linux ptys live in
/dev/pts/, where the basename alone (`3`) says little, so we print the path without its `/dev/` prefix
(`pts/3`); a path outside /dev/ falls back to OpenBSD's basename rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vmd.sizes import ScaledError, fmt_scaled

HEADER_FMT = "{:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>12} {:>8} {}"
OWNER_MAX = 15  # char user[16]


class BadRecord(ValueError):
    """A VM record from vmd that does not have the fields or types the protocol promises."""


def header() -> str:
    return HEADER_FMT.format("ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME")


def tty_column(path: str | None) -> str:
    if not path:
        return "-"
    if path.startswith("/dev/") and len(path) > len("/dev/"):
        return path[len("/dev/") :]
    base = path.rsplit("/", 1)[-1]
    return base or path  # vmctl prints the whole name when nothing follows the last '/'


def _int(rec: dict[str, Any], key: str, nullable: bool = False) -> int | None:
    v = rec.get(key)
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BadRecord(key)
    return v


def _str(rec: dict[str, Any], key: str, nullable: bool = False) -> str | None:
    v = rec.get(key)
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise BadRecord(key)
    return v


def _scaled(n: int) -> str:
    try:
        return fmt_scaled(n)
    except ScaledError:
        return "-"  # vmctl leaves the "-" it preset when fmt_scaled fails


def is_running(rec: dict[str, Any]) -> bool:
    """vmctl's `vir_creator_pid != 0 && vir_id != 0`."""
    return bool(rec.get("pid")) and bool(rec.get("id"))


def matches(rec: dict[str, Any], target: int | str | None) -> bool:
    """vmctl.c `check_info_id()`: no target matches all; an id matches the id, a name the name."""
    if target is None:
        return True
    if isinstance(target, int):
        return target != 0 and rec.get("id") == target
    return rec.get("name") == target


def render_row(rec: dict[str, Any]) -> str:
    if not isinstance(rec, dict):
        raise BadRecord("record")
    vmid = _int(rec, "id")
    pid = _int(rec, "pid", nullable=True)
    vcpus = _int(rec, "vcpus")
    maxmem = _int(rec, "maxmem")
    curmem = _int(rec, "curmem", nullable=True)
    tty = _str(rec, "tty", nullable=True)
    owner = (_str(rec, "owner") or "")[:OWNER_MAX]
    state = _str(rec, "state")
    name = _str(rec, "name")
    assert maxmem is not None
    if is_running(rec):
        return HEADER_FMT.format(
            vmid, pid, vcpus, _scaled(maxmem), "-" if curmem is None else _scaled(curmem),
            tty_column(tty), owner, state, name,
        )
    return HEADER_FMT.format(vmid, "-", vcpus, _scaled(maxmem), "-", "-", owner, state, name)


def render(
    vms: Iterable[dict[str, Any]], target: int | str | None = None, running_only: bool = False
) -> tuple[list[str], int]:
    """The lines to print (header first), and how many VMs passed the -r filter.

    The count is vmctl.c print_vm_info's `found_running`, which decides the exit status: it counts every VM
    -r lets through, whether or not it is the one asked for, so `vmctl status NAME` prints only the header
    and succeeds when NAME is unknown but other VMs exist, and fails only when the list is empty."""
    lines = [header()]
    found = 0
    for rec in vms:
        if not isinstance(rec, dict):
            raise BadRecord("record")
        if running_only and not is_running(rec):
            continue
        found += 1
        if not matches(rec, target):
            continue
        lines.append(render_row(rec))
    return lines, found
