"""Starting a VM, as vmd's config.c config_setvm: the request checked against the limits, each file opened
with the right user's access (the user's for what they supplied, vmd's own for what root configured), the
disks with their backing chains, the taps, the terminal and the GDB socket, and the VM process spawned with
all of them. The control requests that lead here are vmd.daemon.core's."""

from __future__ import annotations

import errno
import logging
import os
import pwd
from collections.abc import Callable
from typing import Any

from vmd.daemon.control import RequestError
from vmd.daemon.gdbsock import GdbSocketError, open_gdb_socket, remove_gdb_socket
from vmd.daemon.permissions import AccessDenied, Peer, check_file_access, open_checked
from vmd.daemon.registry import VmDefinition, VmEntry
from vmd.daemon.settings import Settings
from vmd.daemon.supervisor import Terminal, VmProcess, spawn
from vmd.firmware import find_bios
from vmd.limits import (
    SIZE_MIN,
    VM_DEFAULT_MEMORY,
    VM_MAX_DISKS_PER_VM,
    VM_MAX_NICS_PER_VM,
    VMM_MAX_VCPUS_PER_VM,
    VMM_MAX_VM_MEM_SIZE,
)

log = logging.getLogger("vmd")

ROOT_PEER = Peer(0, 0, 0, frozenset({0}))  # opens a file as vmd itself: only "a regular file" is checked

# vmd's own result codes (vmd.h)
VMD_BIOS_MISSING = 1001
VMD_DISK_MISSING = 1002
VMD_VM_STOP_INVALID = 1004
VMD_CDROM_MISSING = 1005
VMD_CDROM_INVALID = 1006
VMD_PARENT_INVALID = 1007


class VmLauncher:
    """Opens what a VM needs and spawns its process. settings() is vmd's current configuration."""

    def __init__(self, gdb_dir: str, vm_user: str | None, verbose: int, settings: Callable[[], Settings]) -> None:
        self.gdb_dir, self._vm_user, self.verbose, self.settings = gdb_dir, vm_user, verbose, settings
        self._net: Any = None  # vmd.net.NetworkManager, made when first needed (switches or taps)

    @property
    def has_network(self) -> bool:
        return self._net is not None

    def check_file(self, path: object, peer: Peer, write: bool = False, code: int | None = None) -> str:
        if not isinstance(path, str) or not path.startswith("/"):
            raise RequestError("EINVAL", f"{path!r}: not an absolute path")
        try:
            check_file_access(path, peer, write)
        except AccessDenied as error:
            raise RequestError("EACCES", str(error), code=code) from None
        return path

    def validate(self, definition: VmDefinition, peer: Peer) -> None:
        memory = definition.memory or VM_DEFAULT_MEMORY
        if not isinstance(memory, int) or not SIZE_MIN <= memory <= VMM_MAX_VM_MEM_SIZE:
            raise RequestError("EINVAL", "invalid memory size")
        if not isinstance(definition.vcpus, int) or not 1 <= definition.vcpus <= VMM_MAX_VCPUS_PER_VM:
            raise RequestError("EINVAL", "invalid number of CPUs")
        if len(definition.disks) > VM_MAX_DISKS_PER_VM:
            raise RequestError("EINVAL", "too many disks")
        if max(definition.nics, len(definition.switches) + definition.local_nics) > VM_MAX_NICS_PER_VM:
            raise RequestError("EINVAL", "too many network interfaces")
        if definition.kernel:
            self.check_file(definition.kernel, file_peer(definition, "kernel", peer))
        if definition.initrd:
            self.check_file(definition.initrd, file_peer(definition, "initrd", peer))

    def launch(self, entry: VmEntry, run_uid: int, peer: Peer) -> VmProcess:
        """Everything config_setvm opens, then the VM process; on failure nothing is left open."""
        definition = entry.definition
        self.validate(definition, peer)
        kernel = entry.kernel_override or definition.kernel
        kernel_peer = peer if entry.kernel_override else file_peer(definition, "kernel", peer)
        entry.kernel_override = None
        files: dict[str, int] = {}
        try:
            for key, path, who in (("kernel", kernel, kernel_peer),
                                   ("initrd", definition.initrd, file_peer(definition, "initrd", peer))):
                if path:
                    try:
                        files[key] = open_checked(path, who)
                    except AccessDenied as error:
                        raise RequestError("EACCES", str(error)) from None
                    except OSError as error:
                        raise RequestError.from_errno(error.errno or errno.EIO,
                                                      f"can't open {key} {path}: {error.strerror}") from None
            if not kernel:
                if find_bios() is None:
                    raise RequestError("ENOENT", "vmm bios firmware file not found.", code=VMD_BIOS_MISSING)
            disks = []
            for index, disk in enumerate(definition.disks):
                disks.append(self.open_disk(definition.name, index, disk, file_peer(definition, "disks", peer),
                                             files))
            cdrom = None
            if definition.cdrom:
                path = definition.cdrom
                try:
                    files["cdrom"] = open_checked(path, file_peer(definition, "cdrom", peer))
                except AccessDenied as error:
                    code = VMD_CDROM_INVALID if "regular" in str(error) else VMD_CDROM_MISSING
                    raise RequestError("ENOENT", str(error), code=code) from None
                except OSError as error:
                    raise RequestError("ENOENT", f"{path}: {error.strerror}", code=VMD_CDROM_MISSING) from None
                cdrom = {"path": path, "format": "raw", "read_only": True}
            nics = self.open_interfaces(entry, files)
            if entry.terminal is None:
                entry.terminal = Terminal.open()
            entry.terminal.give_to(run_uid, definition.owner.gid)
            spec = {
                "name": definition.name,
                "memory": definition.memory or VM_DEFAULT_MEMORY,
                "kernel": None,
                "initrd": None,
                "cmdline": definition.append or "",
                "vcpus": definition.vcpus,
                "boot_device": definition.boot_device,
                "disks": disks,
                "nics": nics,
                "cdrom": cdrom,
            }
            if definition.cpu:
                spec["cpu"] = definition.cpu
            gdb = entry.gdb_request or definition.gdb
            if gdb:  # a GDB stub, on a socket only the VM's user (and owner group) can reach
                try:
                    files["gdb"], entry.gdb_path = open_gdb_socket(self.gdb_dir, definition.name, run_uid,
                                                                   definition.owner.gid)
                except GdbSocketError as error:
                    raise RequestError("EIO", str(error)) from None
                spec["debug"], spec["debug_hold"] = True, gdb == "wait"
            process = spawn(definition.name, spec, entry.terminal, files, self.vm_user(), self.verbose)
            files = {}
        except BaseException:
            self.close_interfaces(entry)
            self.remove_gdb_socket(entry)
            raise
        finally:
            for fd in files.values():
                os.close(fd)
        return process

    def open_disk(self, name: str, index: int, disk: dict[str, Any], peer: Peer,
                   files: dict[str, int]) -> dict[str, Any]:
        """Open a disk and its backing chain for the VM process, as the requesting user could (vm_checkaccess);
        the fds go into files under 'disk<index>:<path>'. The flocks travel with them."""
        from vmd.disk import DiskError, open_image

        path, fmt = str(disk.get("path", "")), disk.get("format")
        read_only = bool(disk.get("read_only", False))
        opened: dict[str, int] = {}

        def opener(file: str, writable: bool) -> int:
            try:
                fd = open_checked(file, peer, write=writable)
            except AccessDenied as error:
                raise PermissionError(errno.EACCES, str(error)) from None
            opened[file] = os.dup(fd)
            return fd

        try:
            image = open_image(path, fmt, not read_only, opener=opener)
            image.close()
        except (DiskError, OSError) as error:
            for fd in opened.values():
                os.close(fd)
            log.warning('vm "%s" unable to access disk %s: %s', name, path, error)
            raise RequestError("EIO", f"could not open disk image(s): {error}", code=VMD_DISK_MISSING) from None
        for file, fd in opened.items():
            files[f"disk{index}:{file}"] = fd
        return {"path": path, "format": fmt, "read_only": read_only}

    def network(self) -> Any:
        if self._net is None:
            from vmd.net import NetworkManager

            self._net = NetworkManager()
        return self._net

    def open_interfaces(self, entry: VmEntry, files: dict[str, int]) -> list[dict[str, Any]]:
        """Open and configure the VM's taps (vm_priv_ifconfig) and describe them for the VM process."""
        specs = entry.definition.interface_specs()
        if not specs:
            return []
        from vmd.config.spec import DEFAULT_LOCAL_PREFIX
        from vmd.net import NetError

        try:
            taps = self.network().create_vm_interfaces(
                entry.id, entry.name, specs, self.settings().local_prefix or DEFAULT_LOCAL_PREFIX,
                self.settings().local_prefix6)
        except NetError as error:
            raise RequestError("EIO", str(error)) from None
        entry.taps = taps
        nics = []
        for index, tap in enumerate(taps):
            files[f"nic{index}"] = os.dup(tap.fd)
            dhcp = None
            if tap.local is not None:
                host, guest = tap.local
                dhcp = {"guest_ip": str(guest), "host_ip": str(host), "host_mac": tap.host_mac,
                        "vm_name": entry.name, "boot_device": entry.definition.boot_device}
            nics.append({"mac": tap.guest_mac, "locked": tap.locked, "dhcp": dhcp})
        return nics

    def remove_gdb_socket(self, entry: VmEntry) -> None:
        if entry.gdb_path is not None:
            remove_gdb_socket(entry.gdb_path)
            entry.gdb_path = None

    def close_interfaces(self, entry: VmEntry) -> None:
        if entry.taps:
            try:
                self.network().destroy_vm_interfaces(entry.taps)
            except Exception as error:
                log.warning("%s: removing interfaces: %s", entry.name, error)
            entry.taps = []

    def vm_user(self) -> str | None:
        if self._vm_user is None or os.getuid() != 0:
            return None
        try:
            pwd.getpwnam(self._vm_user)
        except KeyError:
            log.warning("unknown user %s: VM processes keep root's privileges", self._vm_user)
            return None
        return self._vm_user


def file_peer(definition: VmDefinition, kind: str, peer: Peer) -> Peer:
    """Whose access a VM's file of this kind is opened with (config.c 1.79 config_setvm): the user's for
    what the request supplied (an instance's disks, cdrom and boot image: vm_checkaccess with the user
    check), vmd's own for what root configured in vm.conf, so a VM's owner may start it even when only root
    can open its disk."""
    return peer if kind in definition.user_files else ROOT_PEER


def user_peer(uid: int) -> Peer:
    """The user a VM runs for, when no client asks (autostart, guest reboot): its own groups, not root's group."""
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        return Peer(uid, -1, 0, frozenset())
    return Peer.lookup(uid, gid, 0)
