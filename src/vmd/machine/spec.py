"""What a machine is built from (MachineSpec, its disks and interfaces) and how its run ended (Outcome)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from vmd.cpu import DEFAULT_TEMPLATE
from vmd.disk import DiskImage, open_image


class MachineError(Exception):
    """The VM could not be built or failed; str() is a user-facing message."""


@dataclass
class MachineSpec:
    name: str
    memory: int
    kernel: str | None = None  # None: the default BIOS (SeaBIOS)
    initrd: str | None = None
    cmdline: str = ""
    vcpus: int = 1
    cpu: str = DEFAULT_TEMPLATE  # a CPU model (vmd.cpu.parse_cpu_model)
    boot_device: str | None = None
    option_roms: list[str] = field(default_factory=list)
    rng: bool = True  # virtio-rng, which vmd gives every VM
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    cdrom: DiskSpec | None = None  # an ISO image on the virtio-scsi CD-ROM
    vmmci: bool = True  # OpenBSD's VMM control interface, which vmd gives every VM
    debug: bool = False  # a GDB stub may attach (Machine.debug); off, the vCPU loop is unchanged
    debug_hold: bool = False  # the vCPUs wait for the debugger before their first instruction (QEMU's -S)


@dataclass
class NicSpec:
    """A network interface: a tap (opened by vmd's parent) on virtio-net.

    dhcp: for a local interface, what the built-in DHCP responder hands out (vmd's dhcp.c): guest_ip,
    host_ip, host_mac, and vm_name/boot_device for the boot file and host name."""

    fd: int
    mac: str
    locked: bool = False
    dhcp: dict[str, str | None] | None = None


@dataclass
class DiskSpec:
    """A disk for virtio-blk. fds: files already opened for us (vmd's parent), by the path they stand for."""

    path: str
    format: str | None = None
    read_only: bool = False
    fds: dict[str, int] = field(default_factory=dict)

    def open(self) -> DiskImage:
        opener = None
        if self.fds:
            fds = dict(self.fds)

            def opener(path: str, writable: bool) -> int:
                if path not in fds:
                    raise OSError(errno.EACCES, f"{path} was not handed to the VM process")
                return fds.pop(path)

        return open_image(self.path, self.format, not self.read_only, opener=opener)


@dataclass
class Outcome:
    """How a VM run ended. kind: poweroff, reboot, error, stopped."""

    kind: str
    status: int = 0  # guest status: debug-exit value (v<<1)|1, 0 after a plain poweroff
    message: str = ""
