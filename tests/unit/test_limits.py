"""vmd.limits: the VM name rule (vmd.c vm_register) and the limits' single home."""

from __future__ import annotations

import pytest

from vmd.limits import valid_vm_name


@pytest.mark.parametrize("name", ["vm1", "1vm", "a.b-c_d", "A", "x" * 200])
def test_valid_vm_names(name: str) -> None:
    assert valid_vm_name(name)  # the length is the callers' check (VM_NAME_MAX), with their own messages


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", "a\n", "a\0"])
def test_invalid_vm_names(name: str) -> None:
    assert not valid_vm_name(name)
