"""vmd's list of VMs: definitions from vm.conf or from vmctl start, and their running state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from vmd.daemon.permissions import Owner, Peer
from vmd.daemon.supervisor import Terminal, VmProcess

# The files of a VM that vmd opens as the requesting user could (VmDefinition.user_files): config.c 1.79
# config_setvm calls vm_checkaccess with a user check only for the kinds vm_instance marked in
# vmc_checkaccess, the ones an instance supplies; a VM's files from vm.conf are root's to name.
USER_FILES = frozenset({"kernel", "initrd", "cdrom", "disks"})

# vmctl status states (vmctl.c vm_state)
RUNNING, STOPPED, STOPPING = "running", "stopped", "stopping"
PAUSED, WAITING, STARTING = "paused", "waiting", "starting"


@dataclass
class VmDefinition:
    """What a VM is: from a vm block in vm.conf, or from the options of vmctl start."""

    name: str
    memory: int | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    vcpus: int = 1
    cpu: str | None = None
    boot_device: str | None = None
    cdrom: str | None = None
    disks: list[dict[str, Any]] = field(default_factory=list)
    nics: int = 0  # NICs in all (vmctl start -i, vm.conf interfaces): plain ones fill up to this count
    switches: list[str] = field(default_factory=list)
    local_nics: int = 0
    networks: list[str] = field(default_factory=list)  # vmctl start -L/-n in command-line order: "." is -L
    gdb: str | None = None  # vm.conf `gdb` ("listen") or `gdb wait` ("wait")
    owner: Owner = field(default_factory=Owner)
    enabled: bool = True
    config: Any = None  # the config.VmSpec it came from, for instances
    interfaces: list[Any] = field(default_factory=list)  # config.InterfaceSpec, in NIC order
    user_files: frozenset[str] = frozenset()  # of USER_FILES: opened only as the user could (vm_checkaccess)

    def interface_specs(self) -> list[Any]:
        """The VM's NICs: as configured, or from vmctl start: -L ones, then -n ones, then plain ones up to -i."""
        if self.interfaces:
            return list(self.interfaces)
        from vmd.config.spec import InterfaceSpec

        if self.networks:  # the order the user gave: a local interface's address depends on its index
            specs = [InterfaceSpec(local=True) if name == "." else InterfaceSpec(switch=name)
                     for name in self.networks]
        else:
            specs = [InterfaceSpec(local=True) for _ in range(self.local_nics)]
            specs += [InterfaceSpec(switch=name) for name in self.switches]
        specs += [InterfaceSpec() for _ in range(max(0, self.nics - len(specs)))]
        return specs


@dataclass
class VmEntry:
    id: int
    definition: VmDefinition
    configured: bool  # from vm.conf: stays listed when stopped
    state: str = STOPPED
    run_uid: int | None = None  # the uid the running VM belongs to (vm_uid)
    process: VmProcess | None = None
    terminal: Terminal | None = None
    kernel_override: str | None = None  # vmctl start -b on a configured VM: next boot only
    restarts: list[float] = field(default_factory=list)
    start_waiters: list[Any] = field(default_factory=list)  # clients waiting for the start result
    stop_waiters: list[Any] = field(default_factory=list)  # (client, payload maker) waiting for termination
    stop_timer: Any = None
    taps: list[Any] = field(default_factory=list)  # vmd.net.VmInterface, while the VM runs
    last_error: str = ""
    gdb_request: str | None = None  # vmctl start --gdb: "wait" for this run (guest reboots included)
    gdb_path: str | None = None  # the GDB stub's socket while the VM runs
    started: int = 0  # when its VM process was last spawned, as a sequence number (status order)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def running(self) -> bool:
        return self.process is not None

    def permitted(self, peer: Peer) -> bool:
        """vm_checkperm: a running VM belongs to the uid it runs for; a stopped one to its configured owner."""
        owner = self.definition.owner
        if self.running and self.run_uid is not None:
            owner = Owner(self.run_uid, owner.gid)
        return owner.admits(peer)

    def owner_text(self) -> str:
        owner = self.definition.owner
        if self.running and self.run_uid is not None:
            owner = Owner(self.run_uid, owner.gid)
        return owner.text()


class Registry:
    """VMs by id and name; ids are claimed per (name, uid) and reused, as vmd's vm_claimid does."""

    def __init__(self) -> None:
        self.entries: dict[int, VmEntry] = {}
        self._claims: dict[tuple[str, int], int] = {}
        self._next_id = 1
        self._starts = 0

    def claim_id(self, name: str, uid: int) -> int:
        key = (name, uid)
        if key not in self._claims:
            while self._next_id in self.entries:  # after reset, a VM being killed still holds its id
                self._next_id += 1
            self._claims[key] = self._next_id
            self._next_id += 1
        return self._claims[key]

    def add(self, definition: VmDefinition, configured: bool, uid: int) -> VmEntry:
        entry = VmEntry(self.claim_id(definition.name, uid), definition, configured)
        self.entries[entry.id] = entry
        return entry

    def remove(self, entry: VmEntry) -> None:
        self.entries.pop(entry.id, None)

    def find(self, target: object) -> VmEntry | None:
        """By id (a number, or digits) or by name."""
        if isinstance(target, bool):
            return None
        if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
            return self.entries.get(int(target))
        if isinstance(target, str):
            for entry in self.entries.values():
                if entry.name == target:
                    return entry
        return None

    def reset_ids(self) -> None:
        self._claims.clear()
        self._next_id = 1

    def mark_started(self, entry: VmEntry) -> None:
        """entry's VM process was just spawned (a first start, or a restart after a guest reboot)."""
        self._starts += 1
        entry.started = self._starts

    def ordered(self) -> list[VmEntry]:
        """Status order, as OpenBSD lists its VMs: the running ones newest first, then the others in the
        order vmd registered them.

        vmd's vmm process asks the kernel for its running VMs (VMM_IOC_INFO), and vmm(4) keeps them on a
        list it pushes each new VM onto (sys/dev/vmm/vmm.c vm_create: SLIST_INSERT_HEAD), so the VM started
        last comes first; vmd.c then appends the stopped ones by walking its own vmd_vms TAILQ, which
        vm_register fills at the tail (vmd.c 1.169 GET_INFO_VM_END_DATA). `vmctl stop -a` stops them in
        this order (vmctl.c terminate_all)."""
        entries = list(self.entries.values())  # insertion order: the order they were registered
        running = sorted((e for e in entries if e.running), key=lambda e: e.started, reverse=True)
        return running + [e for e in entries if not e.running]


def now() -> float:
    return time.monotonic()
