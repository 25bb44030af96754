"""VM instances: a VM made from a configured (or running) parent (vm.conf(5) VM INSTANCES, vmd.c vm_instance).

An instance inherits its parent's settings except the exclusive ones (disks, an interface's lladdr and name).
What it may change is decided by the parent's `allow instance`; root may change anything. Some checks bind
root too: reusing a parent's disk, lladdr or tap name, an owner that is neither the requester nor the parent's
owner, and setting `allow instance` in the instance itself.

Where we differ from vmd.c 1.169 (each one where the code and vm.conf(5) disagree, we follow the man page):

* Interfaces: any interface given by the instance, or a different `interfaces` count, needs `allow instance
  interface`; vmd.c only checks the count. Interfaces the instance does not give are copied from the parent
  without their lladdr and tap name (the man page calls them exclusive); vmd.c copies the lladdr too.
* Boot image: `allow instance boot` is needed only when the instance sets its own kernel (or our initrd and
  append); vmd.c also asks for it when the parent has a kernel.
* Owner: "not given" (None) inherits the parent's user and group. vmd.c treats a group of -1 (the parser's
  default) as given, so an instance in vm.conf of a parent with a group fails with "group mismatch".
* Instance permissions of an instance: copied intact when the parent allows `instance`; vmd.c copies the
  group id into the user id there.
* Our extensions: `vcpus` and `cpu` need `allow instance vcpus`; `initrd` and `append` need `boot`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

from vmd.config.spec import AllowInstance, InterfaceSpec, OwnerSpec, VmSpec
from vmd.limits import check_vm_name


class InstanceError(Exception):
    """An instance was refused; str() is the message, e.g. 'vm "x" no permission to set memory'."""


def owner_permits(owner: OwnerSpec, uid: int, gids: Collection[int] = ()) -> bool:
    """vmd.c vm_checkperm() for a configured owner: root, the owner's uid, or a member of the owner's group.
    gids: the requester's primary and supplementary groups."""
    if uid == 0:
        return True
    if owner.uid is not None and owner.uid == uid:
        return True
    return owner.gid is not None and owner.gid in gids


def make_instance(parent: VmSpec, name: str, overrides: VmSpec | None = None, requester_uid: int = 0,
                  requester_gids: Collection[int] = ()) -> VmSpec:
    """The VM `name` made from `parent` with the settings the requester gave in `overrides` (a VmSpec whose
    None/empty fields mean "not given"). Raises InstanceError with vmd's wording on the first refusal.

    Checking read/write access to the instance's own disks, kernel and cdrom for the requester is the
    daemon's job, when it opens them (vmd.c vm_checkaccess)."""
    req = overrides if overrides is not None else VmSpec(name=name)
    prefix = f'vm "{name}"'
    root = requester_uid == 0
    allow = parent.allow_instance

    def refuse(reason: str) -> InstanceError:
        return InstanceError(f"{prefix} {reason}")

    def allowed(flag: bool) -> bool:
        return root or flag

    reason = check_vm_name(name)
    if reason is not None:
        raise InstanceError(reason)  # without the name, which may not be printable
    if not owner_permits(allow.owner, requester_uid, requester_gids):
        raise refuse("no permission to create vm instance")

    out = VmSpec(name=name, instance_of=parent.name, enabled=req.enabled, file=req.file, line=req.line)

    # cpus (vmd.c: "no permission to set cpus"); our vcpus/cpu extension
    for attr in ("vcpus", "cpu"):
        value = getattr(req, attr)
        if value is not None and value != getattr(parent, attr) and not allowed(allow.vcpus):
            raise refuse("no permission to set cpus")
        setattr(out, attr, value if value is not None else getattr(parent, attr))

    # memory
    if req.memory is not None and req.memory != parent.memory and not allowed(allow.memory):
        raise refuse("no permission to set memory")
    out.memory = req.memory if req.memory is not None else parent.memory

    # disks are never inherited, and never shared with the parent
    if req.disks:
        if not allowed(allow.disk):
            raise refuse("no permission to set disks")
        parent_disks = {d.path for d in parent.disks}
        for disk in req.disks:
            if disk.path in parent_disks:
                raise refuse(f"disk {disk.path} cannot be reused")
        out.disks = copy.deepcopy(req.disks)

    # interfaces
    count_changed = req.nic_count is not None and req.nic_count != parent.nnics
    if (req.interfaces or count_changed) and not allowed(allow.interface):
        raise refuse("no permission to set interfaces")
    parent_macs = {i.lladdr for i in parent.interfaces if i.lladdr}
    parent_names = {i.name for i in parent.interfaces if i.name and i.name != "tap"}
    for iface in req.interfaces:
        if iface.lladdr and iface.lladdr in parent_macs:
            raise refuse("lladdr cannot be reused")
        if iface.name and iface.name in parent_names:
            raise refuse(f"{iface.name} cannot be reused")
    interfaces = copy.deepcopy(req.interfaces)
    for inherited in parent.interfaces[len(interfaces):]:
        clone = InterfaceSpec(**vars(inherited))
        clone.name = None  # exclusive: the next free tap
        clone.lladdr = None  # exclusive: a random address
        interfaces.append(clone)
    out.interfaces = interfaces
    out.nic_count = req.nic_count if req.nic_count is not None else parent.nic_count

    # boot image (and our initrd/append, which belong to it)
    if req.kernel is not None or req.initrd is not None or req.append is not None:
        if not allowed(allow.boot):
            raise refuse("no permission to set boot image")
    out.kernel = req.kernel if req.kernel is not None else parent.kernel
    out.initrd = req.initrd if req.initrd is not None else parent.initrd
    out.append = req.append if req.append is not None else parent.append
    out.boot_device = req.boot_device if req.boot_device is not None else parent.boot_device
    out.gdb = req.gdb if req.gdb is not None else parent.gdb  # its socket belongs to the instance's owner

    # cdrom
    if req.cdrom is not None and not allowed(allow.cdrom):
        raise refuse("no permission to set cdrom")
    out.cdrom = req.cdrom if req.cdrom is not None else parent.cdrom

    # owner: inherit what is not given; a user must be the requester or the parent's owner
    owner = OwnerSpec(**vars(parent.owner))
    if req.owner.uid is not None:
        if req.owner.uid != requester_uid and req.owner.uid != parent.owner.uid:
            raise refuse("user mismatch")
        owner.uid, owner.user = req.owner.uid, req.owner.user
    if req.owner.gid is not None:
        if req.owner.gid != parent.owner.gid:
            raise refuse("group mismatch")
        owner.gid, owner.group = req.owner.gid, req.owner.group
    out.owner = owner

    # instance permissions: never set by the instance; inherited only if the parent allows instances of it
    if req.allow_instance.any():
        raise refuse("cannot change instance permissions")
    out.allow_instance = copy.deepcopy(allow) if allow.instance else AllowInstance()

    out.sev, out.seves = parent.sev, parent.seves
    return out
