"""vmd.kvm.stats: KVM's binary statistics of a vCPU, read from a real /dev/kvm."""

from __future__ import annotations

import os

import pytest

from vmd.kvm.api import Kvm
from vmd.kvm.stats import KvmStatsError, VcpuStats


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is not available")
def test_a_new_vcpu_has_exit_counters_at_zero() -> None:
    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    try:
        try:
            stats = VcpuStats(vcpu.fd)
        except KvmStatsError:
            pytest.skip("this kernel has no KVM_GET_STATS_FD")
        exits = stats.exits()
        assert {"exits", "io_exits", "mmio_exits", "halt_exits"} <= set(exits)
        assert all(name == "exits" or name.endswith("_exits") for name in exits)
        assert exits["io_exits"] == 0
        stats.close()
        stats.close()  # twice is harmless
    finally:
        vcpu.close()
        vm.close()
        kvm.close()


def test_a_descriptor_that_is_no_vcpu_is_refused() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(KvmStatsError, match="^KVM_GET_STATS_FD: "):
            VcpuStats(r)
    finally:
        os.close(r)
        os.close(w)
