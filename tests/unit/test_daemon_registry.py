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
