"""CPU templates: which CPUID features a guest sees (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, E.3).

- ``host``: everything the host's KVM supports (KVM_GET_SUPPORTED_CPUID), plus the hypervisor bit.
- ``baseline``: host minus what some KVM hosts cannot run or emulate: XSAVE and its state leaf, AVX, AVX2,
  AVX-512, AMX, FMA/FMA4/XOP, F16C, CMPXCHG16B, TSX, MPX, MONITOR/MWAIT and nested VMX/SVM. Guests fall back
  to FXSAVE and SSE, which every x86-64 KVM runs.
"""

from __future__ import annotations

from vmd.kvm.structs import kvm_cpuid_entry2

TEMPLATES = ("host", "baseline")
DEFAULT_TEMPLATE = "baseline"


def _bits(*positions: int) -> int:
    mask = 0
    for position in positions:
        mask |= 1 << position
    return mask


# (leaf, subleaf or None, register) -> bits to clear, for the baseline template.
_BASELINE_CLEAR: dict[tuple[int, int | None, str], int] = {
    # leaf 1 ECX: MONITOR 3, VMX 5, FMA 12, CX16 13, XSAVE 26, OSXSAVE 27, AVX 28, F16C 29
    (1, None, "ecx"): _bits(3, 5, 12, 13, 26, 27, 28, 29),
    # leaf 7.0 EBX: HLE 4, AVX2 5, RTM 11, MPX 14, AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31
    (7, 0, "ebx"): _bits(4, 5, 11, 14, 16, 17, 21, 26, 27, 28, 30, 31),
    # leaf 7.0 ECX: AVX512_VBMI 1, VBMI2 6, VAES 9, VPCLMULQDQ 10, VNNI 11, BITALG 12, VPOPCNTDQ 14
    (7, 0, "ecx"): _bits(1, 6, 9, 10, 11, 12, 14),
    # leaf 7.0 EDX: AVX512_4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX_BF16 22, AVX512_FP16 23, AMX_TILE 24, AMX_INT8 25
    (7, 0, "edx"): _bits(2, 3, 8, 22, 23, 24, 25),
    # leaf 7.1 EAX: AVX_VNNI 4, AVX512_BF16 5
    (7, 1, "eax"): _bits(4, 5),
    # leaf 0x80000001 ECX: SVM 2, XOP 11, FMA4 16
    (0x8000_0001, None, "ecx"): _bits(2, 11, 16),
}

HYPERVISOR_BIT = 1 << 31  # leaf 1 ECX
HTT_BIT = 1 << 28  # leaf 1 EDX


class CpuTemplateError(ValueError):
    pass


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise CpuTemplateError(f"unknown CPU template {name!r} (choose {' or '.join(TEMPLATES)})")
    return name


def guest_cpuid(supported: list[kvm_cpuid_entry2], template: str, vcpu_index: int,
                vcpu_count: int) -> list[kvm_cpuid_entry2]:
    """The CPUID table for one vCPU: the template applied, APIC ids and topology set."""
    check_template(template)
    result: list[kvm_cpuid_entry2] = []
    for original in supported:
        entry = kvm_cpuid_entry2.from_buffer_copy(original)
        leaf, subleaf = entry.function, entry.index
        if template == "baseline":
            if leaf == 0xD:  # XSAVE state enumeration: nothing to enumerate without XSAVE
                entry.eax = entry.ebx = entry.ecx = entry.edx = 0
            for (clear_leaf, clear_sub, register), mask in _BASELINE_CLEAR.items():
                if clear_leaf == leaf and (clear_sub is None or clear_sub == subleaf):
                    setattr(entry, register, getattr(entry, register) & ~mask)
        if leaf == 1:
            entry.ecx |= HYPERVISOR_BIT
            # EBX[31:24] initial APIC id, [23:16] logical processors per package
            entry.ebx = (entry.ebx & 0x0000_FFFF) | (vcpu_index << 24) | (min(vcpu_count, 255) << 16)
            if vcpu_count > 1:
                entry.edx |= HTT_BIT
        elif leaf in (0xB, 0x1F):
            entry.edx = vcpu_index  # x2APIC id
        result.append(entry)
    return result
