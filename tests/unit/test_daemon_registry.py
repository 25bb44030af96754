"""vmctl reset vms forgets the ids, but a VM still being killed keeps its own."""

from __future__ import annotations

from vmd.daemon.registry import Registry, VmDefinition


def test_ids_after_reset_do_not_collide_with_vms_still_present() -> None:
    registry = Registry()
    dying = registry.add(VmDefinition(name="old"), configured=False, uid=0)
    registry.reset_ids()  # reset vms: the VM is killed, but is still listed until its process is reaped
    new = registry.add(VmDefinition(name="new"), configured=False, uid=0)
    assert new.id != dying.id
    registry.remove(dying)
    assert registry.find("new") is new


def test_nics_from_vmctl_start_keep_their_command_line_order() -> None:
    from vmd.daemon.registry import VmDefinition

    ordered = VmDefinition(name="x", networks=["uplink", ".", "lan"], switches=["uplink", "lan"], local_nics=1,
                           nics=4).interface_specs()
    assert [(spec.local, spec.switch) for spec in ordered] == [(False, "uplink"), (True, None), (False, "lan"),
                                                               (False, None)]
    legacy = VmDefinition(name="y", switches=["uplink"], local_nics=1).interface_specs()
    assert [(spec.local, spec.switch) for spec in legacy] == [(True, None), (False, "uplink")]
