"""VM instances: what vm.conf(5)'s `allow instance` lets a user change (instance.make_instance)."""

from __future__ import annotations

import pytest

from vmd.config import InstanceError, check_vm_name, make_instance
from vmd.config.spec import AllowInstance, DiskSpec, InterfaceSpec, OwnerSpec, VmSpec

JOE, BOB, STAFF = 1000, 1001, 20


def parent(**allow: bool) -> VmSpec:
    return VmSpec(
        name="tmpl", memory=1 << 30, kernel="/bsd", cdrom="/cd.iso", vcpus=2, cpu="baseline",
        disks=[DiskSpec("/p.img")],
        interfaces=[InterfaceSpec(name="tap5", switch="up", lladdr="fe:00:00:00:00:01", group="g",
                                  rdomain=1)],
        nic_count=2, owner=OwnerSpec(uid=JOE, gid=STAFF, user="joe", group="staff"),
        allow_instance=AllowInstance(owner=OwnerSpec(uid=JOE), **allow),
    )


def test_inherits_everything_but_exclusive_options() -> None:
    vm = make_instance(parent(), "inst", requester_uid=JOE)
    assert vm.name == "inst" and vm.instance_of == "tmpl"
    assert (vm.memory, vm.kernel, vm.cdrom, vm.vcpus, vm.cpu) == (1 << 30, "/bsd", "/cd.iso", 2, "baseline")
    assert vm.disks == []
    (iface,) = vm.interfaces
    assert iface.switch == "up" and iface.group == "g" and iface.rdomain == 1
    assert iface.name is None and iface.lladdr is None
    assert vm.nnics == 2
    assert vm.owner == OwnerSpec(uid=JOE, gid=STAFF, user="joe", group="staff")
    assert vm.allow_instance == AllowInstance()


@pytest.mark.parametrize("override, flag, message", [
    ({"memory": 2 << 30}, "memory", "no permission to set memory"),
    ({"vcpus": 4}, "vcpus", "no permission to set cpus"),
    ({"cpu": "host"}, "vcpus", "no permission to set cpus"),
    ({"disks": [DiskSpec("/i.img")]}, "disk", "no permission to set disks"),
    ({"interfaces": [InterfaceSpec(switch="x")]}, "interface", "no permission to set interfaces"),
    ({"nic_count": 3}, "interface", "no permission to set interfaces"),
    ({"kernel": "/other"}, "boot", "no permission to set boot image"),
    ({"initrd": "/initrd"}, "boot", "no permission to set boot image"),
    ({"append": "quiet"}, "boot", "no permission to set boot image"),
    ({"cdrom": "/other.iso"}, "cdrom", "no permission to set cdrom"),
])
def test_each_option_needs_its_flag(override: dict[str, object], flag: str, message: str) -> None:
    req = VmSpec(name="inst", **override)  # type: ignore[arg-type]
    with pytest.raises(InstanceError) as exc:
        make_instance(parent(), "inst", req, requester_uid=JOE)
    assert str(exc.value) == f'vm "inst" {message}'
    vm = make_instance(parent(**{flag: True}), "inst", req, requester_uid=JOE)
    key, value = next(iter(override.items()))
    assert getattr(vm, key) == value if key != "interfaces" else vm.interfaces[0].switch == "x"
    # root may do it anyway
    make_instance(parent(), "inst", req, requester_uid=0)


def test_same_values_need_no_permission() -> None:
    req = VmSpec(name="inst", memory=1 << 30, vcpus=2, nic_count=2)
    make_instance(parent(), "inst", req, requester_uid=JOE)


def test_who_may_create() -> None:
    with pytest.raises(InstanceError, match='vm "inst" no permission to create vm instance'):
        make_instance(parent(), "inst", requester_uid=BOB)
    p = parent()
    p.allow_instance.owner = OwnerSpec(gid=STAFF)
    make_instance(p, "inst", requester_uid=BOB, requester_gids=[STAFF])
    with pytest.raises(InstanceError):
        make_instance(p, "inst", requester_uid=BOB, requester_gids=[99])
    p.allow_instance.owner = OwnerSpec()
    with pytest.raises(InstanceError):  # nobody but root by default
        make_instance(p, "inst", requester_uid=JOE)
    make_instance(p, "inst", requester_uid=0)


def test_rules_that_bind_root_too() -> None:
    p = parent(disk=True, interface=True)
    cases = [
        (VmSpec(name="i", disks=[DiskSpec("/p.img")]), "disk /p.img cannot be reused"),
        (VmSpec(name="i", interfaces=[InterfaceSpec(lladdr="fe:00:00:00:00:01")]), "lladdr cannot be reused"),
        (VmSpec(name="i", interfaces=[InterfaceSpec(name="tap5")]), "tap5 cannot be reused"),
        (VmSpec(name="i", owner=OwnerSpec(uid=BOB)), "user mismatch"),
        (VmSpec(name="i", owner=OwnerSpec(gid=99)), "group mismatch"),
        (VmSpec(name="i", allow_instance=AllowInstance(memory=True)), "cannot change instance permissions"),
    ]
    for req, message in cases:
        for uid in (0, JOE):
            with pytest.raises(InstanceError) as exc:
                make_instance(p, "i", req, requester_uid=uid)
            assert str(exc.value) == f'vm "i" {message}'


def test_owner_may_be_requester() -> None:
    p = parent()
    p.allow_instance.owner = OwnerSpec(gid=STAFF)
    vm = make_instance(p, "i", VmSpec(name="i", owner=OwnerSpec(uid=BOB)), requester_uid=BOB,
                       requester_gids=[STAFF])
    assert vm.owner.uid == BOB and vm.owner.gid == STAFF


def test_instance_permissions_inherited_only_with_instance_flag() -> None:
    assert make_instance(parent(memory=True), "i", requester_uid=0).allow_instance == AllowInstance()
    p = parent(memory=True, instance=True)
    assert make_instance(p, "i", requester_uid=0).allow_instance == p.allow_instance


def test_interfaces_given_replace_the_first_ones() -> None:
    p = parent(interface=True)
    p.interfaces.append(InterfaceSpec(switch="second"))
    vm = make_instance(p, "i", VmSpec(name="i", interfaces=[InterfaceSpec(switch="mine")]), requester_uid=JOE)
    assert [i.switch for i in vm.interfaces] == ["mine", "second"]


def test_names() -> None:
    assert check_vm_name("ok.name-1_x") is None
    assert check_vm_name("_x") == "invalid VM name"
    assert check_vm_name("") == "invalid VM name"
    assert check_vm_name("x" * 64) == "vm name too long"
    with pytest.raises(InstanceError, match="invalid VM name"):
        make_instance(parent(), "bad name", requester_uid=0)
