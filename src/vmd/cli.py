"""The `vmd` command: `vmd run` runs one VM in the foreground; plain `vmd` is the daemon."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from vmd.console import MODES, Console, ConsoleError
from vmd.cpu import DEFAULT_TEMPLATE, TEMPLATES, CpuModelError, parse_cpu_model
from vmd.gdbstub import GdbServer, ListenAddress, ListenError, open_listener, parse_listen_address
from vmd.limits import (
    SIZE_MIN,
    VM_DEFAULT_MEMORY,
    VM_MAX_DISKS_PER_VM,
    VMM_MAX_VCPUS_PER_VM,
    VMM_MAX_VM_MEM_SIZE,
    check_vm_name,
)
from vmd.machine import DiskSpec, Machine, MachineError, MachineSpec, Outcome
from vmd.sizes import ScaledError, SizeTooLarge, SizeTooSmall, fmt_scaled, parse_size

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
RESTART_LIMIT = 3  # reboots in a row, each within RESTART_WINDOW seconds, before vmd gives up (as vmd.c)
RESTART_WINDOW = 6.0


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _run_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmd run", description="Run one VM in the foreground.")
    default_memory = fmt_scaled(VM_DEFAULT_MEMORY)
    parser.add_argument("-m", dest="memory", default=default_memory, metavar="size",
                        help=f"guest memory, e.g. 64M or 2G, as vmctl start -m reads it (default {default_memory})")
    parser.add_argument("-b", dest="kernel", metavar="path",
                        help="kernel (ELF, bzImage, multiboot, PVH, gzip'd) or BIOS image; default SeaBIOS")
    parser.add_argument("--initrd", metavar="path", help="initial ramdisk / boot module")
    parser.add_argument("--append", default="", metavar="cmdline", help="kernel command line")
    parser.add_argument("--cpu", default=DEFAULT_TEMPLATE, metavar="model",
                        help=f"CPU model: a template ({', '.join(TEMPLATES)}; default {DEFAULT_TEMPLATE}), then"
                             " +feature, -feature, vendor=STRING, mce-banks=N, comma-separated")
    parser.add_argument("-p", dest="vcpus", type=int, default=1, metavar="vcpus", help="number of vCPUs")
    parser.add_argument("--console", default="stdio", metavar="stdio|pty", help="where COM1 goes")
    parser.add_argument("--option-rom", action="append", default=[], metavar="path",
                        help="an option ROM for the BIOS (fw_cfg genroms/), like QEMU's -option-rom")
    parser.add_argument("-d", dest="disks", action="append", default=[], metavar="disk",
                        help="a disk image for virtio-blk (raw or qcow2; 'raw:' or 'qcow2:' prefix to force); "
                             f"repeat for more, at most {VM_MAX_DISKS_PER_VM}")
    parser.add_argument("--read-only", dest="read_only", action="append", default=[], metavar="disk",
                        help="a disk image attached read-only")
    parser.add_argument("-r", dest="cdrom", metavar="path", help="an ISO image on the virtio-scsi CD-ROM")
    parser.add_argument("-B", dest="boot_device", choices=("disk", "cdrom", "net"), help="boot device")
    parser.add_argument("--no-reboot", action="store_true", help="exit instead of restarting on a guest reboot")
    parser.add_argument("--gdb", metavar="[addr:]port|path",
                        help="listen for gdb (TCP, 127.0.0.1 unless addr is given, or a Unix socket path) and"
                             " hold the guest at its first instruction until the debugger continues")
    parser.add_argument("-v", dest="verbose", action="count", default=0, help="more logging")
    parser.add_argument("name", help="the VM's name")
    return parser


def check_name(name: str) -> str:
    """vmd's name rule (vmd.limits.check_vm_name), with its messages; the name itself is not echoed."""
    reason = check_vm_name(name)
    if reason is not None:
        raise UsageError(reason)
    return name


def _spec_from_args(args: argparse.Namespace) -> MachineSpec:
    name = check_name(args.name)
    try:  # the size rule of vmctl start -m and vm.conf (parse_size), with our messages
        memory, rounded = parse_size(args.memory)
    except ScaledError:
        raise UsageError(f"{args.memory}: invalid memory size") from None
    except SizeTooSmall:
        raise UsageError(f"{args.memory}: memory size too small (minimum {SIZE_MIN >> 20}M)") from None
    except SizeTooLarge:
        raise UsageError(f"{args.memory}: memory size too large (maximum {VMM_MAX_VM_MEM_SIZE >> 30}G)") from None
    if rounded:
        print(f"vmd: {args.memory}: memory size rounded to {fmt_scaled(memory)}", file=sys.stderr)
    try:
        parse_cpu_model(args.cpu)
    except CpuModelError as error:
        raise UsageError(str(error)) from None
    if not 1 <= args.vcpus <= VMM_MAX_VCPUS_PER_VM:
        raise UsageError(f"{args.vcpus}: invalid number of vCPUs (1 to {VMM_MAX_VCPUS_PER_VM})")
    if args.console not in MODES:
        raise UsageError(f"{args.console}: unknown console (choose stdio or pty)")
    disks = [_disk_argument(text, read_only=False) for text in args.disks]
    disks += [_disk_argument(text, read_only=True) for text in args.read_only]
    if len(disks) > VM_MAX_DISKS_PER_VM:
        raise UsageError(f"too many disks (at most {VM_MAX_DISKS_PER_VM})")
    cdrom = DiskSpec(os.path.abspath(args.cdrom), "raw", read_only=True) if args.cdrom else None
    for path in [p for p in (args.kernel, args.initrd, args.cdrom, *args.option_rom, *(d.path for d in disks)) if p]:
        if not os.path.exists(path):
            raise UsageError(f"{path}: No such file or directory")
    gdb = args.gdb is not None
    return MachineSpec(name=name, memory=memory, kernel=args.kernel, initrd=args.initrd, cmdline=args.append,
                       vcpus=args.vcpus, cpu=args.cpu, boot_device=args.boot_device,
                       option_roms=list(args.option_rom), disks=disks, cdrom=cdrom, debug=gdb, debug_hold=gdb)


def _gdb_address(text: str | None) -> ListenAddress | None:
    if text is None:
        return None
    try:
        return parse_listen_address(text)
    except ListenError as error:
        raise UsageError(str(error)) from None


def _disk_argument(text: str, read_only: bool) -> DiskSpec:
    """`[raw:|qcow2:]path`, as vmctl start -d takes it."""
    fmt: str | None = None
    for prefix in ("raw:", "qcow2:"):
        if text.startswith(prefix):
            fmt, text = prefix[:-1], text[len(prefix):]
    if not text:
        raise UsageError("missing disk path")
    return DiskSpec(os.path.abspath(text), fmt, read_only)


def exit_status(outcome: Outcome) -> int:
    """`vmd run`'s exit status: 0 for a clean poweroff or debug-exit 0, (v<<1)|1 for debug-exit v, 1 on failure."""
    if outcome.kind == "poweroff":
        return 0 if outcome.status in (0, 1) else outcome.status
    if outcome.kind in ("reboot", "stopped"):
        return 0
    return EXIT_FAILURE


def run_foreground(spec: MachineSpec, console: Console, no_reboot: bool, gdb: GdbServer | None = None) -> int:
    """Run the VM until it ends, rebuilding it after a guest reboot. gdb: the stub, attached to each machine
    (a debugger sees a reboot as the end of its program, and the new machine waits for it again)."""
    import time

    machine_holder: list[Machine] = []

    asked: list[Machine] = []

    def on_signal(number: int, frame: object) -> None:
        # The first SIGTERM asks the guest to power off (the ACPI power button) when it listens; a second
        # one, SIGINT, or a guest that does not listen stops the VM at once.
        if number == signal.SIGTERM and machine_holder and machine_holder[0] not in asked:
            asked.append(machine_holder[0])
            if machine_holder[0].request_shutdown():
                logging.getLogger("vmd").info("%s: SIGTERM: asked the guest to power off", spec.name)
                return
        interrupted.append(number)
        if machine_holder:
            machine_holder[0].stop(f"stopped by {signal.Signals(number).name}")

    interrupted: list[int] = []  # signals that asked to stop; a handler never raises, so close() is never cut short
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    restarts: list[float] = []
    try:
        while True:
            if interrupted:
                return EXIT_INTERRUPTED
            machine = Machine(spec, console)
            machine_holder[:] = [machine]
            if interrupted:  # a signal came while the machine was being built
                machine.stop("interrupted")
            logging.getLogger("vmd").info("%s: started (%s boot, %s run loop)", spec.name, machine.plan.kind,
                                          machine.run_loop_name)
            if gdb is not None and machine.debug is not None:
                gdb.attach(machine.debug)
                gdb.start()
            try:
                outcome = machine.run()
            finally:
                machine_holder.clear()
                machine.close()
            if interrupted and outcome.kind == "stopped":
                return EXIT_INTERRUPTED
            if outcome.kind == "reboot" and not no_reboot:
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
                if len(restarts) > RESTART_LIMIT:
                    print(f"vmd: {spec.name}: rebooted {RESTART_LIMIT} times in a row within"
                          f" {RESTART_WINDOW:.0f}s, giving up", file=sys.stderr)
                    return EXIT_FAILURE
                logging.getLogger("vmd").info("%s: rebooting (%s)", spec.name, outcome.message)
                continue
            if outcome.kind == "error":
                print(f"vmd: {outcome.message}", file=sys.stderr)
            else:
                logging.getLogger("vmd").info("%s: %s", spec.name, outcome.message)
            return exit_status(outcome)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_main(argv: Sequence[str]) -> int:
    try:
        args = _run_parser().parse_args(list(argv))
        spec = _spec_from_args(args)
        gdb_address = _gdb_address(args.gdb)
    except UsageError as error:
        print(f"vmd: {error}", file=sys.stderr)
        return EXIT_FAILURE
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="vmd: %(message)s", stream=sys.stderr)
    try:
        console = Console(args.console)
    except (ConsoleError, OSError) as error:
        print(f"vmd: console: {error}", file=sys.stderr)
        return EXIT_FAILURE
    gdb: GdbServer | None = None
    try:
        if gdb_address is not None:  # before the guest runs: a debugger can be there for its first instruction
            gdb = GdbServer(open_listener(gdb_address), spec.name)
            where = f"target remote {gdb_address}"
            print(f"vmd: {spec.name}: gdb: waiting for a debugger on {gdb_address} ({where})", file=sys.stderr,
                  flush=True)
        if console.path:
            print(f"vmd: {spec.name}: console on {console.path}", file=sys.stderr, flush=True)
        return run_foreground(spec, console, args.no_reboot, gdb)
    except (MachineError, ListenError) as error:
        print(f"vmd: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if gdb is not None:
            gdb.close()
            if gdb_address is not None and gdb_address.path is not None:
                try:
                    os.unlink(gdb_address.path)
                except OSError:
                    pass
        console.close()


def vmd_main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "run":
        return run_main(arguments[1:])
    try:
        from vmd.daemon.main import daemon_main  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("vmd: the daemon is not available yet; use 'vmd run' to run a VM in the foreground",
              file=sys.stderr)
        return EXIT_FAILURE
    return int(daemon_main(arguments))


def main() -> None:
    sys.exit(vmd_main())


if __name__ == "__main__":
    main()
