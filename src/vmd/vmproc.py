"""The VM process: one per running VM, fork+exec'd by vmd as `vmd: vm/<name>`.

It receives, over a SOCK_SEQPACKET socketpair on the fd named in argv, one JSON message describing the VM
with the file descriptors it needs (SCM_RIGHTS): the console pty's master side, the kernel and the initrd, each
disk and its backing files, the CD-ROM image, the taps, and the GDB stub's listening socket (vm.conf `gdb`).
It builds the machine while still root (/dev/kvm, guest memory), then drops to the unprivileged user vmd
names, with no new privileges, and runs the guest. It holds nothing but what it was handed.

Messages to vmd: {"event": "running"}, then {"event": "exit", "kind", "status", "message"}; and for each
{"command": "stats"}, one {"event": "stats", "stats": Machine.stats()} (the counters of vmd's metrics).
Messages from vmd: {"command": "pause" | "unpause" | "shutdown" | "terminate" | "stats"}.
Exit status: 0 after a poweroff or a stop, EXIT_REBOOT after a guest reboot, 1 after a failure.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import pwd
import signal
import socket
import sys
import threading

from vmd.console import Console
from vmd.gdbstub import GdbServer
from vmd.machine import DiskSpec, Machine, MachineError, MachineSpec, NicSpec, Outcome
from vmd.sandbox import confine_or_warn
from vmd.vmchannel import EXIT_REBOOT, receive_message, send_message

PR_SET_NO_NEW_PRIVS = 38
PR_SET_NAME = 15

log = logging.getLogger("vmd.vm")


EMPTY_ROOT = "/var/lib/vmd/empty"  # an empty, root-owned directory the VM process is locked into


def _empty_root() -> str | None:
    try:
        os.makedirs(EMPTY_ROOT, mode=0o555, exist_ok=True)
        info = os.stat(EMPTY_ROOT)
    except OSError:
        return None
    if info.st_uid != 0 or info.st_mode & 0o022 or os.listdir(EMPTY_ROOT):
        log.warning("%s is not an empty root-owned directory: the VM process is not locked into it", EMPTY_ROOT)
        return None
    return EMPTY_ROOT


def _load_thread_exit_support() -> None:
    """glibc loads libgcc_s the first time a thread exits (for the unwinder pthread_exit runs). Inside the
    empty root it would not find it and abort the VM process ("libgcc_s.so.1 must be installed for
    pthread_exit to work"), turning every guest reboot or stop into a crash: load it while it can be found."""
    try:
        ctypes.CDLL("libgcc_s.so.1")
    except OSError:
        log.warning("libgcc_s.so.1 could not be loaded: threads may abort the VM process when they end")


def drop_privileges(user: str) -> None:
    """Become user, locked in an empty directory, with no supplementary groups and no way back (no_new_privs).

    After this the process can reach no file but the descriptors it was handed (vmd(8)'s VM processes chroot
    to /var/empty the same way). Everything it will import must be imported before."""
    entry = pwd.getpwnam(user)
    _load_thread_exit_support()
    root = _empty_root()
    if root is not None:
        os.chroot(root)
    os.setgroups([])
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.chdir("/")


def _set_thread_name(name: str) -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except OSError:
        pass


def _commands(sock: socket.socket, machine: Machine) -> None:
    """Serve vmd's requests until it goes away (then stop the VM: nobody owns it any more)."""
    while True:
        try:
            message, fds = receive_message(sock)
        except (OSError, ValueError):
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        if message is None:
            machine.stop("vmd went away")
            return
        command = message.get("command")
        if command == "pause":
            machine.pause()
        elif command == "unpause":
            machine.unpause()
        elif command == "shutdown":
            # Ask the guest through vmmci (OpenBSD) or the ACPI power button; a guest that listens to neither
            # (no driver, or still in the BIOS) cannot be asked, and vmd's VM process then exits at once.
            if not machine.request_shutdown():
                machine.stop("shutdown requested")
        elif command == "terminate":
            machine.stop("terminated")
        elif command == "stats":  # answered from this thread: the vCPUs and the devices do not wait for it
            try:
                stats = machine.stats()
            except Exception:  # the machine is being torn down: vmd goes without this VM's counters
                log.debug("stats failed", exc_info=True)
                stats = {}
            try:
                send_message(sock, {"event": "stats", "stats": stats})
            except OSError:
                return


def _diagnose_on_sigusr2(machine: Machine) -> None:
    """SIGUSR2: every thread's Python stack on stderr (vmd's log), written from the signal handler itself so
    that it works while a thread holds a lock or the GIL; then, from the main thread, the devices' interrupt
    state. What a guest that seems hung needs looking at."""
    def describe(signum: int, frame: object) -> None:
        for line in machine.describe():
            log.warning("%s", line)

    signal.signal(signal.SIGUSR2, describe)
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=True)


def vm_process(control_fd: int) -> int:
    sock = socket.socket(fileno=control_fd)
    message, fds = receive_message(sock)
    if message is None:
        return 1
    spec_fields = message["spec"]
    assert isinstance(spec_fields, dict)
    verbose = int(message.get("verbose", 0))  # type: ignore[call-overload]
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format=f"vm/{spec_fields['name']}: %(message)s", stream=sys.stderr)
    fd_map = {name: fds[index] for name, index in dict(message.get("fds", {})).items()}  # type: ignore[call-overload]
    for key in ("kernel", "initrd"):
        if key in fd_map:
            spec_fields[key] = f"/proc/self/fd/{fd_map[key]}"
    disks = [DiskSpec(**disk) for disk in spec_fields.pop("disks", [])]
    for key, fd in fd_map.items():
        if key.startswith("disk"):
            index, _, path = key[4:].partition(":")
            disks[int(index)].fds[path] = fd
    nics = [NicSpec(fd=fd_map[f"nic{i}"], **nic) for i, nic in enumerate(spec_fields.pop("nics", []))]
    cdrom_fields = spec_fields.pop("cdrom", None)
    cdrom = None
    if cdrom_fields:
        cdrom = DiskSpec(**cdrom_fields)
        cdrom.fds[cdrom.path] = fd_map["cdrom"]
    spec = MachineSpec(**spec_fields, disks=disks, nics=nics, cdrom=cdrom)
    console = Console(master_fd=fd_map["console"])
    _set_thread_name(f"vm/{spec.name}")
    try:
        machine = Machine(spec, console)
    except MachineError as error:
        send_message(sock, {"event": "exit", "kind": "error", "status": 1, "message": str(error)})
        return 1
    for key in ("kernel", "initrd"):
        if key in fd_map:
            os.close(fd_map[key])
    _diagnose_on_sigusr2(machine)
    user = str(message.get("user") or "")
    if user and os.getuid() == 0:
        try:
            drop_privileges(user)
        except (KeyError, OSError) as error:
            send_message(sock, {"event": "exit", "kind": "error", "status": 1,
                                "message": f"cannot drop privileges to {user}: {error}"})
            return 1
    gdb = None
    if "gdb" in fd_map and machine.debug is not None:  # served from here on, after the privilege drop
        gdb = GdbServer(socket.socket(fileno=fd_map["gdb"]), spec.name)
        gdb.attach(machine.debug)
        gdb.start()
    confine_or_warn(spec.name)  # from here on only the system calls a running VM needs (sandbox.py)
    send_message(sock, {"event": "running", "pid": os.getpid(), "run_loop": machine.run_loop_name,
                        "boot": machine.plan.kind})
    threading.Thread(target=_commands, args=(sock, machine), name="vmd-control", daemon=True).start()
    outcome: Outcome = machine.run()
    if gdb is not None:
        gdb.close()
    machine.close()
    try:
        send_message(sock, {"event": "exit", "kind": outcome.kind, "status": outcome.status,
                            "message": outcome.message})
    except OSError:
        pass
    if outcome.kind == "reboot":
        return EXIT_REBOOT
    return 1 if outcome.kind == "error" else 0


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("vmd: the VM process is started by vmd, not by hand", file=sys.stderr)
        sys.exit(1)
    sys.exit(vm_process(int(sys.argv[1])))


if __name__ == "__main__":
    main()
