"""The counters of a running VM, as `vmctl status --json` (the "stats" of each row) and the metrics endpoint
(daemon/metrics.py) both show them: one snapshot, built here, read by both.

The VM process reports its counters in a "stats" message (vmproc.py, Machine.stats()); it runs as the
unprivileged user and holds a guest, so what it sends is checked here before anyone sees it: only known
keys, non-negative integers, no more vCPUs, disks and NICs than a VM may have.
"""

from __future__ import annotations

import re
from typing import Any

from vmd.limits import VM_MAX_DISKS_PER_VM, VM_MAX_NICS_PER_VM, VMM_MAX_VCPUS_PER_VM

DISK_COUNTERS = ("reads", "read_bytes", "writes", "write_bytes", "flushes", "errors")  # devices/virtio/blk.py
NIC_COUNTERS = ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped")  # virtio/net.py
MAX_EXIT_REASONS = 32  # KVM has about ten `*_exits` counters (kvm/stats.py)
_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")
_COUNTER_MAX = (1 << 64) - 1


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _COUNTER_MAX:
        raise ValueError("not a counter")
    return value


def _devices(raw: object, limit: int, names: tuple[str, ...]) -> list[dict[str, int]]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise ValueError("bad device list")
    out = []
    for device in raw:
        if not isinstance(device, dict):
            raise ValueError("bad device")
        out.append({name: _count(device.get(name, 0)) for name in names})
    return out


def clean_report(raw: object) -> dict[str, Any] | None:
    """A VM process's "stats" report, checked; None when it is not one."""
    if not isinstance(raw, dict):
        return None
    try:
        vcpu_ns = raw.get("vcpu_ns", [])
        if not isinstance(vcpu_ns, list) or len(vcpu_ns) > VMM_MAX_VCPUS_PER_VM:
            raise ValueError("bad vcpu list")
        exits = raw.get("kvm_exits", {})
        if not isinstance(exits, dict) or len(exits) > MAX_EXIT_REASONS:
            raise ValueError("bad exits")
        return {
            "vcpu_ns": [_count(ns) for ns in vcpu_ns],
            "kvm_exits_total": _count(raw.get("kvm_exits_total", 0)),
            "kvm_exits": {str(reason): _count(n) for reason, n in sorted(exits.items())
                          if isinstance(reason, str) and _REASON.fullmatch(reason)},
            "disks": _devices(raw.get("disks", []), VM_MAX_DISKS_PER_VM, DISK_COUNTERS),
            "nics": _devices(raw.get("nics", []), VM_MAX_NICS_PER_VM, NIC_COUNTERS),
        }
    except ValueError:
        return None


def vm_stats(report: dict[str, Any] | None, rss_bytes: int | None, disk_paths: list[str],
             interfaces: list[str]) -> dict[str, Any] | None:
    """The "stats" of a status row: a checked report with the VM process's RSS, each disk's path and each
    NIC's tap name beside its counters. None when there is no report (the VM is not running, or has not
    answered yet)."""
    if report is None:
        return None
    disks = [dict(counters, path=disk_paths[i] if i < len(disk_paths) else "")
             for i, counters in enumerate(report["disks"])]
    nics = [dict(counters, interface=interfaces[i] if i < len(interfaces) else "")
            for i, counters in enumerate(report["nics"])]
    return {
        "vcpu_seconds": [ns / 1e9 for ns in report["vcpu_ns"]],
        "kvm_exits_total": report["kvm_exits_total"],
        "kvm_exits": dict(report["kvm_exits"]),
        "rss_bytes": rss_bytes,
        "disks": disks,
        "nics": nics,
    }
