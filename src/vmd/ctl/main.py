"""vmctl(8): control vmd(8). `vmctl [-v] command [arg ...]`.

Commands, argument checks and messages follow OpenBSD's usr.sbin/vmctl (main.c 1.87, vmctl.c 1.94): command
names may be abbreviated to any unique prefix, errors are one line `vmctl: ...` on stderr, and the exit status
is 1 on failure. The requests go to vmd as JSON lines (docs/protocol.md) over /run/vmd.sock, or the socket
named by $VMD_SOCKET.

Differences from OpenBSD, all deliberate:
  * arguments are checked before connecting to vmd (vmctl connects first), so a bad command line gets its
    own message even when vmd is down;
  * `start` takes our extensions `-p vcpus`, `--cpu template`, `--initrd path`, `--append cmdline`, `--gdb`;
    `status`/`show` take `--json` (the daemon's list, as JSON);
  * `console` and `start -c` use a built-in terminal client (vmd.ctl.console) instead of exec'ing cu(1);
  * `status` prints Linux pty names as `pts/N` (see vmd.ctl.status).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmd.cpu import CpuModelError, parse_cpu_model
from vmd.ctl import create as create_mod
from vmd.ctl import status as status_mod
from vmd.ctl.client import UNEXPECTED, Client, CtlError, error_text
from vmd.ctl.console import ConsoleClient
from vmd.ctl.getopt import GetoptError, getopt
from vmd.ctl.strtonum import strtonum
from vmd.limits import (
    VM_MAX_DISKS_PER_VM,
    VM_MAX_NICS_PER_VM,
    VM_NAME_MAX,
    VMM_MAX_VCPUS_PER_VM,
    VMM_MAX_VM_MEM_SIZE,
    valid_vm_name,
)
from vmd.sizes import ScaledError, SizeTooLarge, SizeTooSmall, fmt_scaled, parse_size

PROGNAME = "vmctl"
UINT32_MAX = 2**32 - 1
INT_MAX = 2**31 - 1
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# vmd's own result codes (vmd.h) and what vmctl.c `vm_start_complete()` prints for them
VMD_VM_STOP_INVALID = 1004
START_CODES = {
    1001: "vmm bios firmware file not found.",
    1002: "could not open disk image(s)",
    1005: "could not find specified iso image",
    1006: "specified iso image is not a regular file",
    1007: "invalid template",
}
BOOT_DEVICES = ("disk", "cdrom", "net")


class Usage(Exception):
    """Print the usage of a command (or the general usage when command is None) and exit 1."""

    def __init__(self, command: Command | None = None) -> None:
        super().__init__(command.name if command else "")
        self.command = command


@dataclass
class Command:
    name: str
    usage: str
    func: Callable[[Context, Command, list[str]], int]


@dataclass
class Context:
    verbose: int = 1
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --- output helpers (err(3)/warnx(3) style) -----------------------------------------------------------


def warnx(msg: str) -> None:
    sys.stderr.write(f"{PROGNAME}: {msg}\n")
    sys.stderr.flush()


def errput(text: str) -> None:
    """Raw stderr text, as vmctl's fprintf(stderr, ...) (the stop/wait progress messages)."""
    sys.stderr.write(text)
    sys.stderr.flush()


def strerror(err: int) -> str:
    return os.strerror(err)


def fail_text(resp: dict[str, Any]) -> str:
    """`command failed` / `command failed: <error>` (vmmaction's IMSG_CTL_FAIL)."""
    text = error_text(resp)
    return f"command failed: {text}" if text else "command failed"


def _with_error(prefix: str, resp: dict[str, Any]) -> str:
    text = error_text(resp)
    return f"{prefix}: {text}" if text else prefix


# --- argument helpers (main.c) ----------------------------------------------------------------------------


def parse_vmid(word: str) -> int | str | None:
    """main.c `parse_vmid()`: a number 0..UINT32_MAX is an id, anything else a name (< 64 bytes)."""
    if word.startswith("-"):
        return None  # no warning: it was meant as an option
    value, err = strtonum(word, 0, UINT32_MAX)
    if err is None:
        return value
    if len(word.encode()) > VM_NAME_MAX:
        warnx("name too long")
        return None
    return word


def vmid_arg(word: str) -> int | str:
    target = parse_vmid(word)
    if target is None:
        raise CtlError(f"invalid id: {word}")
    return target


def size_arg(word: str, kind: str) -> int:
    """main.c `parse_size()` with its messages: at least 1MB, memory at most 128G, rounded down to a MB."""
    try:
        size, rounded = parse_size(word, VMM_MAX_VM_MEM_SIZE if kind == "memory" else None)
    except ScaledError as e:
        raise CtlError(f"invalid {kind} size: {word}: {strerror(e.errno)}") from None
    except SizeTooSmall:
        raise CtlError(f"{kind} size must be at least 1MB") from None
    except SizeTooLarge as e:
        raise CtlError(f"memory size too large (limit is {fmt_scaled(e.limit)})") from None
    if rounded:
        try:
            warnx(f"{kind} size rounded to {fmt_scaled(size)}")
        except ScaledError:
            warnx(f"{kind} size rounded to {size}B")
    return size


def realpath_or(path: str, message: str) -> str:
    """realpath(3) that must succeed, else err(1, message): `<message>: <strerror>`."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError as e:
        raise CtlError(f"{message}: {strerror(e.errno or errno.ENOENT)}") from None


def _opts(cmd: Command, args: Sequence[str], optstring: str, longopts: dict[str, bool] | None = None
          ) -> tuple[list[tuple[str, str]], list[str]]:
    try:
        return getopt(args, optstring, longopts)
    except GetoptError as e:
        warnx(str(e))
        raise Usage(cmd) from None


# --- commands ----------------------------------------------------------------------------------------------


def ctl_console(ctx: Context, cmd: Command, args: list[str]) -> int:
    if len(args) != 1:
        raise Usage(cmd)
    target = vmid_arg(args[0])
    resp = ctx.client().request("status", target=_status_target(target))
    if not resp["ok"]:
        raise CtlError(fail_text(resp))
    vms = resp.get("vms")
    if not isinstance(vms, list):
        raise CtlError(UNEXPECTED)
    for rec in vms:
        if isinstance(rec, dict) and _console_match(rec, target) and isinstance(rec.get("tty"), str) \
                and rec["tty"]:
            ctx.close()
            run_console(rec["tty"])
            return 0
    raise CtlError("console not found")


def _console_match(rec: dict[str, Any], target: int | str) -> bool:
    """check_info_id() > 0: an explicit id or name (id 0 matches nothing here)."""
    if isinstance(target, int):
        return target != 0 and rec.get("id") == target
    return rec.get("name") == target


def run_console(tty_path: str) -> None:
    ConsoleClient(tty_path).run()


def ctl_create(ctx: Context, cmd: Command, args: list[str]) -> int:
    opts, rest = _opts(cmd, args, "b:i:s:")
    base: str | None = None
    source: str | None = None
    size = 0
    for opt, val in opts:
        if opt == "-b":
            base = val
        elif opt == "-i":
            source = val
        elif opt == "-s":
            size = size_arg(val, "disk")
    if len(rest) != 1:
        raise Usage(cmd)
    fmt, disk = create_mod.parse_disktype(rest[0])
    if source is not None:
        if base is not None:
            raise CtlError("conflicting -b and -i arguments")
        made = create_mod.convert(source, disk, fmt, size, warnx)
        warnx(f"{made} imagefile created")
        return 0
    if base is not None and fmt != create_mod.QCOW2:
        raise CtlError("base images require qcow2 disk format")
    if size == 0 and base is None:
        errput(f"could not create {disk}: missing size argument\n")
        raise Usage(cmd)
    try:
        create_mod.create_image(disk, fmt, size, base)
    except OSError as e:
        raise CtlError(f"create imagefile operation failed: {strerror(e.errno or errno.EIO)}") from None
    warnx(f"{fmt} imagefile created")
    return 0


def ctl_load(ctx: Context, cmd: Command, args: list[str]) -> int:
    if len(args) != 1:
        raise Usage(cmd)
    path = os.path.realpath(args[0])  # vmd wants absolute paths; it reports a missing file itself
    return _simple(ctx, "load", path=path)


def ctl_log(ctx: Context, cmd: Command, args: list[str]) -> int:
    if len(args) != 1:
        raise Usage(cmd)
    word = args[0].lower()
    if "brief".startswith(word):  # strncasecmp with the argument's length
        level = "brief"
    elif "verbose".startswith(word):
        level = "verbose"
    else:
        raise Usage(cmd)
    return _simple(ctx, "log", level=level)


def ctl_reload(ctx: Context, cmd: Command, args: list[str]) -> int:
    if args:
        raise Usage(cmd)
    return _simple(ctx, "reload")


def ctl_reset(ctx: Context, cmd: Command, args: list[str]) -> int:
    what = "all"
    if len(args) == 1:
        what = args[0].lower()
        if what not in ("all", "vms", "switches"):
            raise Usage(cmd)
    elif len(args) > 1:
        raise Usage(cmd)
    return _simple(ctx, "reset", what=what)


def _simple(ctx: Context, command: str, **fields: Any) -> int:
    resp = ctx.client().request(command, **fields)
    if not resp["ok"]:
        raise CtlError(fail_text(resp))
    return 0


def _status_target(target: int | str | None) -> int | str | None:
    return None if target == 0 else target


def ctl_status(ctx: Context, cmd: Command, args: list[str]) -> int:
    opts, rest = _opts(cmd, args, "r", {"json": False})
    running_only = any(o == "-r" for o, _ in opts)
    as_json = any(o == "--json" for o, _ in opts)
    target: int | str | None = None
    if len(rest) == 1:
        target = vmid_arg(rest[0])
    elif len(rest) > 1:
        raise Usage(cmd)
    # the whole list, as vmctl asks for it (get_info_vm): the exit status depends on every VM, not only on
    # the one named (vmctl.c print_vm_info)
    # --json: with each running VM's counters ("stats"), the ones the metrics endpoint shows
    resp = ctx.client().request("status", running_only=running_only, **({"stats": True} if as_json else {}))
    if not resp["ok"]:
        raise CtlError(fail_text(resp))
    vms = resp.get("vms")
    if not isinstance(vms, list):
        raise CtlError(UNEXPECTED)
    try:
        lines, found = status_mod.render(vms, _status_target(target), running_only)
    except status_mod.BadRecord:
        raise CtlError(UNEXPECTED) from None
    if as_json:
        shown = [rec for rec in vms if status_mod.matches(rec, _status_target(target))
                 and (status_mod.is_running(rec) or not running_only)]
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if found else EXIT_FAILURE


@dataclass
class StartArgs:
    kernel: str | None = None
    boot_device: str | None = None
    cdrom: str | None = None
    console: bool = False
    nets: list[str] = field(default_factory=list)  # "." for -L, else a switch name (main.c parse_network)
    memory: int = 0
    disks: list[dict[str, str | None]] = field(default_factory=list)
    nifs: int = -1
    instance: str | None = None
    vcpus: int | None = None
    cpu: str | None = None
    initrd: str | None = None
    append: str | None = None
    gdb: bool = False


def ctl_start(ctx: Context, cmd: Command, args: list[str]) -> int:
    opts, rest = _opts(cmd, args, "b:B:cd:i:Lm:n:p:r:t:", {"initrd": True, "append": True, "cpu": True,
                                                            "gdb": False})
    a = StartArgs()
    for opt, val in opts:
        if opt == "-b":
            if a.kernel is not None:
                raise CtlError("boot image specified multiple times")
            a.kernel = realpath_or(val, "invalid boot image path")
        elif opt == "-B":
            if a.boot_device is not None:
                raise CtlError("boot device specified multiple times")
            if val not in BOOT_DEVICES:
                raise CtlError(f"unknown boot device {val}")
            a.boot_device = val
        elif opt == "-r":
            if a.cdrom is not None:
                raise CtlError("iso image specified multiple times")
            a.cdrom = realpath_or(val, f"invalid iso image path: {val}")
        elif opt == "-c":
            a.console = True
        elif opt == "-L":
            a.nets.append(".")
        elif opt == "-m":
            if a.memory:
                raise CtlError("memory specified multiple times")
            a.memory = size_arg(val, "memory")
        elif opt == "-n":
            a.nets.append(val)
        elif opt == "-d":
            fmt, path = create_mod.detect_format(val)
            a.disks.append({"path": realpath_or(path, f"invalid disk path: {path}"), "format": fmt})
        elif opt == "-i":
            if a.nifs != -1:
                raise CtlError("interfaces specified multiple times")
            n, err = strtonum(val, 1, INT_MAX)
            if err is not None:
                warnx(f"count is {err}: {val}")
                raise CtlError(f"invalid interface count: {val}")
            a.nifs = n
        elif opt == "-t":
            if len(val.encode()) > VM_NAME_MAX:
                warnx("instance vm name too long")
                raise CtlError(f"invalid name: {val}")
            a.instance = val
        elif opt == "-p":  # our extension
            if a.vcpus is not None:
                raise CtlError("vcpus specified multiple times")
            n, err = strtonum(val, 1, VMM_MAX_VCPUS_PER_VM)
            if err is not None:
                warnx(f"count is {err}: {val}")
                raise CtlError(f"invalid vcpu count: {val}")
            a.vcpus = n
        elif opt == "--cpu":  # our extension: a CPU model, checked here before vmd is asked (vmd.cpu)
            if a.cpu is not None:
                raise CtlError("cpu model specified multiple times")
            try:
                parse_cpu_model(val)
            except CpuModelError as error:
                raise CtlError(str(error)) from None
            a.cpu = val
        elif opt == "--initrd":
            if a.initrd is not None:
                raise CtlError("initrd specified multiple times")
            a.initrd = realpath_or(val, f"invalid initrd path: {val}")
        elif opt == "--append":
            if a.append is not None:
                raise CtlError("kernel command line specified multiple times")
            a.append = val
        elif opt == "--gdb":
            a.gdb = True
    if len(rest) != 1:
        raise Usage(cmd)
    target = vmid_arg(rest[0])
    nnics = max(a.nifs, len(a.nets))  # -i fills up with NICs on no switch (ctl_start)
    _check_start(a, nnics, target)
    request: dict[str, Any] = {
        "target": target,
        "kernel": a.kernel,
        "initrd": a.initrd,
        "append": a.append,
        "memory": a.memory or None,
        "vcpus": a.vcpus,
        "cpu": a.cpu,
        "disks": a.disks or None,
        "cdrom": a.cdrom,
        "boot_device": a.boot_device,
        "nics": a.nifs if a.nifs != -1 else None,
        "switches": [n for n in a.nets if n != "."] or None,
        "local_nics": a.nets.count(".") or None,
        "networks": list(a.nets) or None,  # the same, in command-line order (docs/protocol.md)
        "instance_of": a.instance,
        "gdb": a.gdb or None,
    }
    resp = ctx.client().request("start", **request)
    if not resp["ok"]:
        code = resp.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and code in START_CODES:
            raise CtlError(START_CODES[code])
        raise CtlError(_with_error("start vm command failed", resp))
    vmid = resp.get("id")
    if not isinstance(vmid, int) or isinstance(vmid, bool):
        raise CtlError(UNEXPECTED)
    warnings = resp.get("warnings")
    if isinstance(warnings, list):
        for w in warnings:
            if isinstance(w, str):
                warnx(w)
    tty = resp.get("tty")
    if not a.console:
        warnx(f"started vm {vmid} successfully, tty {tty if isinstance(tty, str) and tty else '-'}")
    gdb = resp.get("gdb")
    if isinstance(gdb, str) and gdb:
        wait = " (the guest waits for the debugger)" if a.gdb else ""
        warnx(f"vm {vmid}: gdb stub on {gdb}: target remote {gdb}{wait}")
    if a.console:
        if not isinstance(tty, str) or not tty:
            raise CtlError("console not found")
        ctx.close()
        run_console(tty)
    return 0


def _check_start(a: StartArgs, nnics: int, target: int | str) -> None:
    """vmctl.c `vm_start()` checks, in its order."""
    creating = bool(
        a.memory or nnics or a.disks or a.kernel or a.cdrom or a.vcpus or a.cpu or a.initrd
        or a.append is not None
    )
    if a.instance is None and creating:
        if len(a.disks) > VM_MAX_DISKS_PER_VM:
            raise CtlError("too many disks")
        if a.kernel is None and not a.disks:
            warnx("starting without disks")
        if a.kernel is None and not a.disks and a.cdrom is None:
            raise CtlError("no kernel or disk/cdrom specified")
        if nnics > VM_MAX_NICS_PER_VM:
            raise CtlError("too many network interfaces")
        if a.kernel is None and nnics == 0:
            warnx("starting without network interfaces")
    # vmctl.c checks the characters only, so an empty name goes on to vmd (which refuses it)
    if isinstance(target, str) and target and not valid_vm_name(target):
        raise CtlError("invalid VM name")
    if a.kernel is not None:
        try:
            fd = os.open(a.kernel, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CtlError(f"cannot open kernel '{a.kernel}': {strerror(e.errno or errno.EIO)}") from None
        try:
            import stat

            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CtlError("kernel must be a regular file")
        finally:
            os.close(fd)


STOP_RESULTS = {
    "requested": "requested to shutdown vm {id}",
    "not running": "failed: " + os.strerror(errno.EINVAL),  # vmd.c answers EINVAL
    "not found": "vm not found",
    "already stopping": "failed: " + os.strerror(errno.EALREADY),
    "not permitted": "failed: " + os.strerror(errno.EPERM),
}


def stop_result_text(result: Any, vmid: Any, force: bool, wait: bool) -> tuple[str, bool]:
    """vmctl.c `terminate_vm_complete()` for one result: (text, success)."""
    if result == "terminated":
        if force and not wait:
            return f"forced to terminate vm {vmid}", True
        return f"terminated vm {vmid}", True
    if result == "requested":
        return f"requested to shutdown vm {vmid}", True
    if isinstance(result, str) and result in STOP_RESULTS:
        return STOP_RESULTS[result], False
    return UNEXPECTED, False


def stop_failure_text(resp: dict[str, Any]) -> str:
    """A failed stop/wait response, as terminate_vm_complete() words vmd's error codes."""
    if resp.get("code") == VMD_VM_STOP_INVALID:
        return "cannot stop vm that is not running"
    name = resp.get("errno")
    if name == "ENOENT":
        return "vm not found"
    if name == "EINTR":
        return "interrupted call"
    text = error_text(resp)
    return f"failed: {text}" if text else "failed"


def ctl_stop(ctx: Context, cmd: Command, args: list[str]) -> int:
    opts, rest = _opts(cmd, args, "afw")
    flags = {o for o, _ in opts}
    force, wait, stop_all = "-f" in flags, "-w" in flags, "-a" in flags
    if stop_all:
        if rest:
            raise Usage(cmd)
        resp = ctx.client().request("stop", all=True, force=force, wait=wait)
        if not resp["ok"]:
            raise CtlError(fail_text(resp))
        results = resp.get("results")
        if not isinstance(results, list):
            raise CtlError(UNEXPECTED)
        for r in results:  # in status order, the newest VM first
            if not isinstance(r, dict):
                raise CtlError(UNEXPECTED)
            text, _ = stop_result_text(r.get("result"), r.get("id"), force, wait)
            errput(f"stopping vm {r.get('name')}: {text}\n")
        return 0  # vmctl.c terminate_all prints each VM's outcome and reports none: stop -a exits 0
    if len(rest) != 1:
        raise Usage(cmd)
    target = vmid_arg(rest[0])
    client = ctx.client()  # connect before printing, as vmctl does
    errput(f"stopping vm {target}: " if isinstance(target, str) else "stopping vm: ")
    resp = client.request("stop", target=target, force=force, wait=wait)
    if not resp["ok"]:
        errput(stop_failure_text(resp) + "\n")
        return EXIT_FAILURE
    results = resp.get("results")
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        errput(UNEXPECTED + "\n")
        return EXIT_FAILURE
    r = results[0]
    text, ok = stop_result_text(r.get("result"), r.get("id"), force, wait)
    errput(text + "\n")
    return 0 if ok else EXIT_FAILURE


def ctl_waitfor(ctx: Context, cmd: Command, args: list[str]) -> int:
    if len(args) != 1:
        raise Usage(cmd)
    target = vmid_arg(args[0])
    client = ctx.client()
    errput(f"waiting for vm {target}: " if isinstance(target, str) else "waiting for vm: ")
    resp = client.request("wait", target=target)
    if not resp["ok"]:
        errput(stop_failure_text(resp) + "\n")
        return EXIT_FAILURE
    vmid = resp.get("id", target)
    errput(f"terminated vm {vmid}\n")
    return 0


def _pause(ctx: Context, cmd: Command, args: list[str], command: str) -> int:
    if len(args) != 1:
        raise Usage(cmd)
    target = vmid_arg(args[0])
    client = ctx.client()
    resp = client.request(command, target=target)
    if not resp["ok"]:
        raise CtlError(_with_error(f"{command} vm command failed", resp))
    vmid = resp.get("id")
    if not isinstance(vmid, int) or isinstance(vmid, bool):
        vmid = target if isinstance(target, int) else _lookup_id(client, target)
    warnx(f"{command}d vm {vmid} successfully")
    return 0


def _lookup_id(client: Client, name: str | int) -> int | str:
    """The id of a VM named `name` (the pause/unpause responses carry none); the name if unknown."""
    try:
        resp = client.request("status", target=name)
    except CtlError:
        return name
    vms = resp.get("vms") if resp.get("ok") else None
    if isinstance(vms, list):
        for rec in vms:
            if isinstance(rec, dict) and rec.get("name") == name and isinstance(rec.get("id"), int):
                return int(rec["id"])
    return name


def ctl_pause(ctx: Context, cmd: Command, args: list[str]) -> int:
    return _pause(ctx, cmd, args, "pause")


def ctl_unpause(ctx: Context, cmd: Command, args: list[str]) -> int:
    return _pause(ctx, cmd, args, "unpause")


# main.c ctl_commands[], in its order (abbreviation resolves against this list)
COMMANDS: tuple[Command, ...] = (
    Command("console", "id", ctl_console),
    Command("create", "[-b base | -i disk] [-s size] disk", ctl_create),
    Command("load", "filename", ctl_load),
    Command("log", "[brief | verbose]", ctl_log),
    Command("pause", "id", ctl_pause),
    Command("reload", "", ctl_reload),
    Command("reset", "[all | switches | vms]", ctl_reset),
    Command("show", "[id]", ctl_status),
    Command(
        "start",
        "[-cL] [-B device] [-b path] [-d disk] [-i count]\n"
        "\t\t[-m size] [-n switch] [-r path] [-t name] [-p vcpus]\n"
        "\t\t[--cpu model] [--initrd path] [--append cmdline] [--gdb] id | name",
        ctl_start,
    ),
    Command("status", "[-r] [--json] [id]", ctl_status),
    Command("stop", "[-fw] [id | -a]", ctl_stop),
    Command("unpause", "id", ctl_unpause),
    Command("wait", "id", ctl_waitfor),
)


def usage_text(command: Command | None) -> str:
    if command is None:
        return f"usage:\t{PROGNAME} [-v] command [arg ...]\n"
    return f"usage:\t{PROGNAME} [-v] {command.name} {command.usage}\n"


def find_command(word: str) -> Command:
    """main.c `parse()`: a unique prefix (strncmp over the argument's length) names a command."""
    found: Command | None = None
    for c in COMMANDS:
        if c.name.startswith(word):
            if found is not None:
                errput(f"ambiguous argument: {word}\n")
                raise Usage(None)
            found = c
    if found is None:
        errput(f"unknown argument: {word}\n")
        raise Usage(None)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    ctx = Context()
    try:
        try:
            opts, rest = getopt(args, "v")
        except GetoptError as e:
            warnx(str(e))
            raise Usage(None) from None
        if opts:
            ctx.verbose = 2
        if not rest:
            raise Usage(None)
        cmd = find_command(rest[0])
        rc = cmd.func(ctx, cmd, rest[1:])
        sys.stdout.flush()  # here, so that a closed pipe (vmctl status | head -1) is caught below
        return rc
    except Usage as u:
        errput(usage_text(u.command))
        return EXIT_FAILURE
    except CtlError as e:
        warnx(str(e))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        errput("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:  # nothing more can be written; keep the interpreter's final flush quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        return EXIT_FAILURE
    except Exception as e:  # no traceback unless -v (DESIGN.md 4)
        if ctx.verbose > 1:
            traceback.print_exc()
        warnx(str(e) or e.__class__.__name__)
        return EXIT_FAILURE
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
