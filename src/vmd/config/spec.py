"""What vm.conf(5) describes, as plain data: VMs, switches and the global settings.

The parser (parser.py) fills these in; the daemon, the network layer and the machine builder read them.
Nothing here touches the system except `default_parallelism()` (the CPU count) and `auto_inet6_prefix()`.
"""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass, field

from vmd.limits import VM_DEFAULT_MEMORY

# The limits (disks, interfaces, vCPUs, memory, names) live in vmd.limits; see parser.py for where Linux differs
RDOMAIN_MAX = 255  # RT_TABLEID_MAX
DEFAULT_LOCAL_PREFIX = ipaddress.IPv4Network("100.64.0.0/10")  # vm.conf(5) "local prefix"
DEFAULT_STAGGER_DELAY = 30  # VMD_DEFAULT_STAGGERED_START_DELAY (vmd.h)
AGENTX_MASTER_PATH = "/var/agentx/master"
BOOT_DEVICES = ("cdrom", "disk", "net")  # vm.conf(5) "boot device"
DISK_FORMATS = ("raw", "qcow2")


def default_parallelism() -> int:
    """staggered start's default parallelism: the number of online CPUs (vmd.c, hw.ncpuonline)."""
    return os.cpu_count() or 1


def auto_inet6_prefix(rng: random.Random | None = None) -> ipaddress.IPv6Network:
    """A random unique-local /64 (fd00::/8 with bytes 1..7 random), as vmd makes once per start when
    `local inet6` has no prefix (config.c config_init_localprefix)."""
    rng = rng or random.SystemRandom()
    raw = bytes([0xFD]) + bytes(rng.randrange(256) for _ in range(7)) + bytes(8)
    return ipaddress.IPv6Network((int.from_bytes(raw, "big"), 64))


@dataclass
class OwnerSpec:
    """`owner user[:group]`, `owner :group`, `owner uid` (parse.y owner_id).

    uid None: no user given (OpenBSD stores 0, i.e. only root); gid None: no group given (OpenBSD's -1).
    user/group keep the names as written, for messages; a numeric owner has user None."""

    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    group: str | None = None

    def is_set(self) -> bool:
        return self.uid is not None or self.gid is not None


@dataclass
class AllowInstance:
    """`allow instance { ... }` (vm.conf(5) VM INSTANCES): what a non-root user may change in an instance.

    `vcpus` is our extension: it lets an instance change `vcpus` and `cpu`; OpenBSD has no flag for the
    vCPU count (VMOP_CREATE_CPU can never be granted there)."""

    boot: bool = False
    memory: bool = False
    interface: bool = False
    disk: bool = False
    cdrom: bool = False
    instance: bool = False
    vcpus: bool = False
    owner: OwnerSpec = field(default_factory=OwnerSpec)

    def any(self) -> bool:
        return (self.boot or self.memory or self.interface or self.disk or self.cdrom or self.instance
                or self.vcpus or self.owner.is_set())


@dataclass
class DiskSpec:
    """`disk path [format raw|qcow2]`; format is detected from the qcow2 magic when not given."""

    path: str
    format: str = "raw"


@dataclass
class InterfaceSpec:
    """`[local] interface [name] [options]` (vm.conf(5)).

    name: None or "tap" for the next free tap, otherwise the tap's name. lladdr: "xx:xx:xx:xx:xx:xx" in lower
    case, None for a random one. rdomain None: not set (the switch's applies)."""

    name: str | None = None
    switch: str | None = None
    group: str | None = None
    lladdr: str | None = None
    locked: bool = False
    rdomain: int | None = None
    up: bool = True
    local: bool = False

    def effective(self, switch: SwitchSpec | None) -> InterfaceSpec:
        """This interface with its switch's `locked lladdr` and `rdomain` applied: the interface's own rdomain
        wins (vm.conf(5)); the lock is inherited (vmd.c vm_register, VMIFF_OPTMASK)."""
        if switch is None:
            return InterfaceSpec(**vars(self))
        out = InterfaceSpec(**vars(self))
        out.locked = self.locked or switch.locked_lladdr
        if out.rdomain is None:
            out.rdomain = switch.rdomain
        return out


@dataclass
class SwitchSpec:
    """`switch name { ... }` (vm.conf(5) SWITCH CONFIGURATION). interface is the Linux bridge."""

    name: str
    interface: str | None = None
    group: str | None = None
    locked_lladdr: bool = False
    rdomain: int | None = None
    up: bool = True
    enabled: bool = True
    file: str = ""
    line: int = 0


@dataclass
class VmSpec:
    """`vm name { ... }` or `vm parent instance name { ... }` (vm.conf(5) VM CONFIGURATION).

    None/empty means "not given": memory None is the 512M default, kernel None the default BIOS, vcpus None
    one vCPU, cpu None the machine's default CPU model. nic_count is `interfaces N`; the VM gets
    `max(nic_count, len(interfaces))` NICs (see nnics). For an instance declared in vm.conf, the parser
    stores the resolved VM (the parent's settings merged in by instance.make_instance)."""

    name: str
    instance_of: str | None = None
    enabled: bool = True
    memory: int | None = None
    kernel: str | None = None
    boot_device: str | None = None
    cdrom: str | None = None
    disks: list[DiskSpec] = field(default_factory=list)
    interfaces: list[InterfaceSpec] = field(default_factory=list)
    nic_count: int | None = None
    owner: OwnerSpec = field(default_factory=OwnerSpec)
    allow_instance: AllowInstance = field(default_factory=AllowInstance)
    sev: bool = False
    seves: bool = False
    # Our extensions (see parser.py)
    vcpus: int | None = None
    cpu: str | None = None
    initrd: str | None = None
    append: str | None = None
    gdb: str | None = None  # `gdb` ("listen") or `gdb wait` ("wait"): a GDB stub on a Unix socket
    # Where it was declared, for messages
    file: str = ""
    line: int = 0

    @property
    def nnics(self) -> int:
        """The number of NICs the VM gets: `interfaces N` is a minimum (parse.y, vmc_nnics = max(...))."""
        return max(self.nic_count or 0, len(self.interfaces))

    def all_interfaces(self) -> list[InterfaceSpec]:
        """The configured interfaces followed by plain default ones up to `interfaces N`."""
        return list(self.interfaces) + [InterfaceSpec() for _ in range(self.nnics - len(self.interfaces))]

    @property
    def memory_bytes(self) -> int:
        return self.memory if self.memory is not None else VM_DEFAULT_MEMORY


@dataclass
class AgentxSpec:
    """`agentx [context name] [path path]`: parsed and kept, but vmd on Linux has no AgentX subagent."""

    enabled: bool = False
    context: str | None = None
    path: str = AGENTX_MASTER_PATH


@dataclass
class MetricsSpec:
    """`metrics socket "path"` or `metrics listen address port N` (our extension, standing in for agentx): the
    Prometheus text endpoint vmd serves. Exactly one of socket and (address, port) is set."""

    socket: str | None = None
    address: str | None = None
    port: int | None = None

    def describe(self) -> str:
        """Where it listens, for messages: the socket's path, or address:port ([v6]:port)."""
        if self.socket is not None:
            return self.socket
        host = f"[{self.address}]" if self.address and ":" in self.address else str(self.address)
        return f"{host}:{self.port}"


@dataclass
class GlobalSpec:
    """The global settings of vm.conf(5).

    local_prefix6 None with local_inet6 True: make a random ULA prefix at start (auto_inet6_prefix()).
    socket_owner None: the daemon's default (root, group root on Linux where OpenBSD says root:wheel); a
    socket_owner without a group means group 0, as parse.y stores gid -1 as 0 there.
    staggered_start records whether the statement was given; parallel/delay hold the values in effect."""

    local_prefix: ipaddress.IPv4Network = DEFAULT_LOCAL_PREFIX
    local_inet6: bool = False
    local_prefix6: ipaddress.IPv6Network | None = None
    socket_owner: OwnerSpec | None = None
    staggered_start: bool = False
    parallel: int = field(default_factory=default_parallelism)
    delay: int = DEFAULT_STAGGER_DELAY
    agentx: AgentxSpec = field(default_factory=AgentxSpec)
    metrics: MetricsSpec | None = None  # None: no metrics endpoint (the default)


@dataclass
class Config:
    """A whole vm.conf: global settings, switches and VMs in file order, and the macros in effect."""

    globals: GlobalSpec = field(default_factory=GlobalSpec)
    switches: list[SwitchSpec] = field(default_factory=list)
    vms: list[VmSpec] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)

    def vm(self, name: str) -> VmSpec | None:
        for vm in self.vms:
            if vm.name == name:
                return vm
        return None

    def switch(self, name: str) -> SwitchSpec | None:
        """The first enabled switch of that name (vmd's switch_getbyname); None if there is none."""
        for sw in self.switches:
            if sw.name == name and sw.enabled:
                return sw
        return None


@dataclass
class ParseResult:
    """config is None when there were errors (any error fails the whole file, as vmd's parse_config)."""

    config: Config | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None
