"""The CPU a guest sees: a CPU model (template, features, vendor, MCE banks), its CPUID table and its MCG_CAP.

A model is written as QEMU writes `-cpu`: a template, then comma-separated items (vmd.8, "CPU MODELS"):
`host,-x2apic,+tsc-deadline`, `baseline,vendor=AuthenticAMD`, `host,mce-banks=6`. One parser, parse_cpu_model(),
serves `vmd run --cpu`, `vmctl start --cpu` and vm.conf's `cpu`; its messages are one line, "cpu MODEL: what".

Templates (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, E.3):
- ``host``: everything the host's KVM supports (KVM_GET_SUPPORTED_CPUID), plus the hypervisor bit.
- ``baseline``: host minus what some KVM hosts cannot run or emulate: XSAVE and its state leaf, AVX, AVX2,
  AVX-512, AMX, FMA/FMA4/XOP, F16C, CMPXCHG16B, TSX, MPX, MONITOR/MWAIT and nested VMX/SVM. Guests fall back
  to FXSAVE and SSE, which every x86-64 KVM runs.

`-feat` clears a bit; `+feat` (or `feat`, `feat=on`) sets it only when the host's KVM can give it, else the VM
does not start (QEMU's `enforce`). `vendor=` puts a 12-character string in leaves 0 and 0x80000000.
`mce-banks=N` is the bank count in IA32_MCG_CAP (default 10, as QEMU; KVM's own default is 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmd.cpu_features import FEATURES, canonical_name

if TYPE_CHECKING:
    from vmd.kvm.structs import kvm_cpuid_entry2

TEMPLATES = ("host", "baseline")
DEFAULT_TEMPLATE = "baseline"
VENDOR_LENGTH = 12  # CPUID.0: EBX, EDX, ECX, four ASCII bytes each
DEFAULT_MCE_BANKS = 10  # QEMU's MCE_BANKS_DEF
MAX_MCE_BANKS = 0xFF  # IA32_MCG_CAP[7:0], Count (SDM vol. 3B, 16.3.1.1); the host's KVM may allow fewer
VENDOR_OPTION = "vendor"
MCE_BANKS_OPTION = "mce-banks"


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
XSAVE_BIT = 1 << 26  # leaf 1 ECX
HTT_BIT = 1 << 28  # leaf 1 EDX
MCE_BIT = 1 << 7  # leaf 1 EDX, machine-check exception
MCA_BIT = 1 << 14  # leaf 1 EDX, machine-check architecture
MCG_CTL_P = 1 << 8  # IA32_MCG_CAP: IA32_MCG_CTL is present
MCG_SER_P = 1 << 24  # IA32_MCG_CAP: software error recovery

# Features a guest may have on any host: KVM emulates them whatever KVM_GET_SUPPORTED_CPUID says (x2APIC, with
# the in-kernel irqchip every VM has), or they are only a CPUID bit (hypervisor). The machine adds tsc-deadline
# when the host's KVM has KVM_CAP_TSC_DEADLINE_TIMER, as QEMU does.
ALWAYS_AVAILABLE = frozenset({"x2apic", "hypervisor"})


class CpuModelError(ValueError):
    """A CPU model that cannot be parsed or given: str() is 'cpu MODEL: what is wrong'."""

    def __init__(self, text: str, reason: str) -> None:
        shown = text if text else '""'
        super().__init__(f"cpu {shown}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class CpuModel:
    text: str  # as the user wrote it, for messages
    template: str = DEFAULT_TEMPLATE
    enable: frozenset[str] = frozenset()  # canonical feature names (cpu_features.FEATURES)
    disable: frozenset[str] = frozenset()
    vendor: str | None = None
    mce_banks: int | None = None  # None: DEFAULT_MCE_BANKS


def parse_cpu_model(text: str) -> CpuModel:
    """`template[,item...]`; an item is +feat, -feat, feat, feat=on|off, vendor=STRING or mce-banks=N."""

    def fail(reason: str) -> CpuModelError:
        return CpuModelError(text, reason)

    template, *items = text.split(",")
    if template not in TEMPLATES:
        choose = f"(choose {' or '.join(TEMPLATES)})"
        raise fail(f"unknown CPU template {template} {choose}" if template else f"no CPU template {choose}")
    enable: set[str] = set()
    disable: set[str] = set()
    vendor: str | None = None
    banks: int | None = None
    for item in items:
        if not item:
            raise fail("empty item between commas")
        if item[0] in "+-":
            name, on = item[1:], item[0] == "+"
            if not name:
                raise fail(f"no feature name after {item}")
        elif "=" in item:
            key, value = item.split("=", 1)
            if key == VENDOR_OPTION:
                if vendor is not None:
                    raise fail("vendor given more than once")
                if len(value) != VENDOR_LENGTH or not all(" " <= c <= "~" for c in value):
                    raise fail(f"{item}: the vendor must be {VENDOR_LENGTH} ASCII characters")
                vendor = value
                continue
            if key == MCE_BANKS_OPTION:
                if banks is not None:
                    raise fail("mce-banks given more than once")
                if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_MCE_BANKS:
                    raise fail(f"{item}: the MCE bank count must be 1 to {MAX_MCE_BANKS}")
                banks = int(value)
                continue
            if canonical_name(key) is None:
                raise fail(f"unknown CPU option {key}")
            if value not in ("on", "off"):
                raise fail(f"{item}: a feature is on or off")
            name, on = key, value == "on"
        elif item in TEMPLATES:
            raise fail(f"{item}: the template comes first, and only once")
        else:
            name, on = item, True
        feature = canonical_name(name)
        if feature is None:
            raise fail(f"unknown CPU feature {name}")
        if feature in (disable if on else enable):
            raise fail(f"{name} both added and removed")
        (enable if on else disable).add(feature)
    return CpuModel(text, template, frozenset(enable), frozenset(disable), vendor, banks)


def _matches(entry: kvm_cpuid_entry2, leaf: int, subleaf: int | None) -> bool:
    return bool(entry.function == leaf and (subleaf is None or entry.index == subleaf))


def unavailable_features(model: CpuModel, supported: list[kvm_cpuid_entry2],
                         available: frozenset[str] = ALWAYS_AVAILABLE) -> list[str]:
    """The features the model adds that the host's KVM cannot give (not in supported, not in available)."""
    missing = []
    for name in sorted(model.enable):
        if name in available:
            continue
        where = FEATURES[name]
        if not any(_matches(e, where.leaf, where.subleaf) and getattr(e, where.register) & where.mask
                   for e in supported):
            missing.append(name)
    return missing


def guest_cpuid(supported: list[kvm_cpuid_entry2], model: CpuModel, vcpu_index: int, vcpu_count: int,
                available: frozenset[str] = ALWAYS_AVAILABLE) -> list[kvm_cpuid_entry2]:
    """The CPUID table for one vCPU: the template applied, APIC ids and topology set, then the model's features
    and vendor. Raises CpuModelError if the model adds a feature this KVM cannot give."""
    missing = unavailable_features(model, supported, available)
    if missing:
        raise CpuModelError(model.text, f"the host's KVM cannot give the guest {', '.join(missing)}")
    result: list[kvm_cpuid_entry2] = []
    for original in supported:
        entry = type(original).from_buffer_copy(original)
        leaf, subleaf = entry.function, entry.index
        if model.template == "baseline":
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
        for names, on in ((model.disable, False), (model.enable, True)):
            for name in names:
                where = FEATURES[name]
                if _matches(entry, where.leaf, where.subleaf):
                    value = getattr(entry, where.register)
                    setattr(entry, where.register, value | where.mask if on else value & ~where.mask)
        if model.vendor is not None and leaf in (0, 0x8000_0000):
            raw = model.vendor.encode("ascii")
            entry.ebx, entry.edx, entry.ecx = (int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8))
        result.append(entry)
    if not any(e.function == 1 and e.ecx & XSAVE_BIT for e in result):
        for entry in result:
            if entry.function == 0xD:  # XSAVE state enumeration: nothing to enumerate without XSAVE
                entry.eax = entry.ebx = entry.ecx = entry.edx = 0
    return result


def machine_check_capabilities(model: CpuModel, cpuid: list[kvm_cpuid_entry2], kvm_banks: int,
                               kvm_mcg_cap: int) -> int | None:
    """IA32_MCG_CAP for KVM_X86_SETUP_MCE, or None to leave machine checks alone, as QEMU's kvm_arch_init_vcpu:
    only when KVM has KVM_CAP_MCE (kvm_banks, the most banks it emulates) and the guest's CPUID has family 6 or
    later with MCE and MCA. The bank count, and MCG_CTL_P and MCG_SER_P where KVM_X86_GET_MCE_CAP_SUPPORTED
    (kvm_mcg_cap) has them."""
    if kvm_banks <= 0:
        if model.mce_banks is not None:
            raise CpuModelError(model.text, "the host's KVM has no machine-check emulation (KVM_CAP_MCE)")
        return None
    leaf1 = next((e for e in cpuid if e.function == 1), None)
    if leaf1 is None or leaf1.edx & (MCE_BIT | MCA_BIT) != MCE_BIT | MCA_BIT or (leaf1.eax >> 8) & 0xF < 6:
        return None
    banks = model.mce_banks if model.mce_banks is not None else min(DEFAULT_MCE_BANKS, kvm_banks)
    if banks > kvm_banks:
        raise CpuModelError(model.text, f"the host's KVM has at most {kvm_banks} MCE banks, not {banks}")
    return banks | (kvm_mcg_cap & (MCG_CTL_P | MCG_SER_P))
