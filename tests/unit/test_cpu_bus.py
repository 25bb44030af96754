"""CPU templates and the address bus (no KVM needed)."""

import pytest

from vmd.cpu import CpuModelError, guest_cpuid, parse_cpu_model
from vmd.devices.base import Bus, BusError
from vmd.kvm.structs import kvm_cpuid_entry2


def _entry(function: int, index: int = 0, **registers: int) -> kvm_cpuid_entry2:
    entry = kvm_cpuid_entry2(function=function, index=index)
    for name, value in registers.items():
        setattr(entry, name, value)
    return entry


def _host() -> list[kvm_cpuid_entry2]:
    return [
        _entry(1, ebx=0x0001_0800, ecx=0xFFFF_FFFF & ~(1 << 31), edx=0x0789_FBFF),
        _entry(7, 0, ebx=0xFFFF_FFFF, ecx=0xFFFF_FFFF, edx=0xFFFF_FFFF),
        _entry(7, 1, eax=0xFFFF_FFFF),
        _entry(0xD, 0, eax=7, ebx=0x340, ecx=0x340),
        _entry(0x8000_0001, ecx=0xFFFF_FFFF),
    ]


def _find(entries: list[kvm_cpuid_entry2], function: int, index: int = 0) -> kvm_cpuid_entry2:
    return next(e for e in entries if e.function == function and e.index == index)


def test_baseline_hides_xsave_avx_and_cx16() -> None:
    entries = guest_cpuid(_host(), parse_cpu_model("baseline"), 0, 1)
    leaf1 = _find(entries, 1)
    for bit in (13, 26, 27, 28, 29, 12):  # CX16, XSAVE, OSXSAVE, AVX, F16C, FMA
        assert not leaf1.ecx & (1 << bit)
    assert leaf1.ecx & (1 << 31)  # hypervisor present
    assert leaf1.ecx & 1  # SSE3 stays
    leaf7 = _find(entries, 7)
    assert not leaf7.ebx & (1 << 5)  # AVX2
    assert not leaf7.ebx & (1 << 16)  # AVX512F
    assert leaf7.ebx & (1 << 3)  # BMI1 stays
    assert _find(entries, 0xD).eax == 0


def test_host_template_keeps_features_and_sets_apic_ids() -> None:
    entries = guest_cpuid(_host(), parse_cpu_model("host"), 3, 4)
    leaf1 = _find(entries, 1)
    assert leaf1.ecx & (1 << 26)
    assert leaf1.ebx >> 24 == 3
    assert (leaf1.ebx >> 16) & 0xFF == 4
    assert leaf1.edx & (1 << 28)


def test_unknown_template_is_refused() -> None:
    with pytest.raises(CpuModelError, match="^cpu fast: unknown CPU template fast"):
        parse_cpu_model("fast")


def test_bus_dispatches_by_range_and_unclaimed_reads_all_ones() -> None:
    bus = Bus("pio")
    seen: list[tuple[int, int, int]] = []
    bus.add(0x3F8, 8, lambda offset, size: 0x40 + offset,
            lambda offset, size, value: seen.append((offset, size, value)))
    assert bus.read(0x3FD, 1) == 0x45
    bus.write(0x3F8, 1, ord("A"))
    assert seen == [(0, 1, ord("A"))]
    assert bus.read(0x3F7, 1) == 0xFF
    assert bus.read(0x400, 2) == 0xFFFF
    bus.write(0x400, 1, 0)  # ignored


def test_bus_refuses_overlaps_and_counts_versions() -> None:
    bus = Bus("mmio")
    bus.add(0x1000, 0x100, lambda o, s: 0, lambda o, s, v: None)
    version = bus.version
    for start, length in ((0x10FF, 1), (0xF00, 0x101), (0x1080, 4)):
        with pytest.raises(BusError):
            bus.add(start, length, lambda o, s: 0, lambda o, s, v: None)
    bus.add(0x1100, 0x10, lambda o, s: 1, lambda o, s, v: None)
    assert bus.version == version + 1
    bus.remove(0x1100)
    assert bus.find(0x1100) is None
