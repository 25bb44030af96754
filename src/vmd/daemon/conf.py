"""vm.conf for the daemon: parse it, and turn its vm blocks into the registry's VM definitions."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

from vmd.config.instance import InstanceError, make_instance
from vmd.config.parser import parse_config
from vmd.config.spec import DiskSpec, InterfaceSpec, OwnerSpec, VmSpec, auto_inet6_prefix
from vmd.daemon.permissions import Owner, Peer
from vmd.daemon.registry import VmDefinition
from vmd.daemon.settings import ConfigError, Settings


def parse_macros(values: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """`-D name=value` macros (parse.y cmdline_symset, which splits at the last `=`), and the values that
    are no definition at all."""
    macros: dict[str, str] = {}
    bad: list[str] = []
    for value in values:
        name, sep, text = value.rpartition("=")
        if not sep:
            bad.append(value)
            continue
        macros[name] = text
    return macros, bad


def _missing_is_fine(path: str, explicit: bool) -> bool:
    """vmd: a missing /etc/vm.conf is not an error; neither is a missing file named with -f or load (ENOENT)."""
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ENOENT
    return False


def check_config(path: str, macros: dict[str, str], explicit: bool) -> tuple[list[str], list[str]]:
    """vmd -n: every error, and the warnings."""
    if _missing_is_fine(path, explicit):
        return [], [f"vmd: failed to open {path}: No such file or directory"] if explicit else []
    result = parse_config(path, macros)
    return result.errors, result.warnings


def owner_from_spec(owner: OwnerSpec) -> Owner:
    return Owner(owner.uid, owner.gid)


def definition_from_spec(spec: VmSpec) -> VmDefinition:
    switches = [i.switch for i in spec.interfaces if i.switch and not i.local]
    local = sum(1 for i in spec.interfaces if i.local)
    return VmDefinition(
        name=spec.name,
        memory=spec.memory,
        kernel=spec.kernel,
        initrd=spec.initrd,
        append=spec.append or "",
        vcpus=spec.vcpus or 1,
        cpu=spec.cpu,
        boot_device=spec.boot_device,
        cdrom=spec.cdrom,
        disks=[{"path": d.path, "format": d.format} for d in spec.disks],
        nics=spec.nnics,
        switches=switches,
        local_nics=local,
        owner=owner_from_spec(spec.owner),
        enabled=spec.enabled,
        gdb=spec.gdb,
        config=spec,
        interfaces=spec.all_interfaces(),
    )


def load_definitions(path: str, macros: dict[str, str], explicit: bool) -> tuple[list[VmDefinition], Settings]:
    if _missing_is_fine(path, explicit):
        return [], Settings()
    result = parse_config(path, macros)
    if result.errors or result.config is None:
        raise ConfigError(result.errors or [f"{path}: invalid configuration"])
    config = result.config
    glob = config.globals
    prefix6 = (glob.local_prefix6 or auto_inet6_prefix()) if glob.local_inet6 else None
    settings = Settings(
        socket_group=(glob.socket_owner.gid or 0) if glob.socket_owner else 0,
        stagger_parallel=glob.parallel,
        stagger_delay=float(glob.delay),
        switches=list(config.switches),
        local_prefix=glob.local_prefix,
        local_prefix6=prefix6,
        metrics=glob.metrics,
    )
    return [definition_from_spec(vm) for vm in config.vms], settings


def instance_definition(parent: VmDefinition, name: str, overrides: dict[str, Any], peer: Peer) -> VmDefinition:
    """vmctl start -t parent name: the instance, if the parent's `allow instance` lets peer make it."""
    if parent.config is None:
        raise ValueError(f'vm "{parent.name}" cannot be used as a template')
    request = VmSpec(name=name)
    request.memory = overrides.get("memory")
    request.kernel = overrides.get("kernel")
    request.initrd = overrides.get("initrd")
    request.append = overrides.get("append")
    request.vcpus = overrides.get("vcpus")
    request.cpu = overrides.get("cpu")
    request.cdrom = overrides.get("cdrom")
    request.boot_device = overrides.get("boot_device")
    request.disks = [DiskSpec(d["path"], d.get("format") or "raw") for d in overrides.get("disks", [])]
    if overrides.get("networks"):  # -L and -n in the order the user gave them
        interfaces = [InterfaceSpec(local=True) if name == "." else InterfaceSpec(switch=name)
                      for name in overrides["networks"]]
    else:
        interfaces = [InterfaceSpec(switch=s) for s in overrides.get("switches", [])]
        interfaces += [InterfaceSpec(local=True) for _ in range(int(overrides.get("local_nics", 0)))]
    plain = int(overrides.get("nics", 0)) - len(interfaces)  # -i counts every NIC, as vmctl(8) says
    interfaces += [InterfaceSpec() for _ in range(max(0, plain))]
    request.interfaces = interfaces
    try:
        spec = make_instance(parent.config, name, request, peer.uid, peer.groups)
    except InstanceError as error:
        message = str(error)
        if "permission" in message or "mismatch" in message or "cannot change" in message:
            raise PermissionError(message) from None
        raise ValueError(message) from None
    definition = definition_from_spec(spec)
    if definition.owner.uid is None and definition.owner.gid is None:
        definition.owner = Owner(peer.uid, None)
    definition.user_files = instance_user_files(definition, overrides)
    return definition


def instance_user_files(definition: VmDefinition, overrides: dict[str, Any]) -> frozenset[str]:
    """What vmd opens as the requesting user could, for an instance: vm_instance (vmd.c 1.169) marks in
    vmc_checkaccess its disks (never inherited), its cdrom when the request gives one, and its boot image
    whether given or inherited; our initrd goes with the boot image."""
    kinds = {"disks"}
    if definition.kernel:
        kinds.add("kernel")
    if definition.initrd:
        kinds.add("initrd")
    if overrides.get("cdrom"):
        kinds.add("cdrom")
    return frozenset(kinds)
