"""CPUID feature flags by name: where each one lives (leaf, subleaf, register, bit).

Names are QEMU's (its x86 feature words), so a `-cpu` line written for QEMU reads the same here; `_` and `-`
are the same character in a name, as in QEMU, and a few old spellings are aliases. Bit positions are the
Intel SDM's (vol. 2A, CPUID, "Feature Information" and "Structured Extended Feature Flags") and the AMD APM's
(vol. 3, appendix E.3, "Extended Processor Info and Feature Bits"). Reserved and OS-controlled bits (OSXSAVE,
OSPKE) have no name: the guest cannot ask for them, KVM sets them from CR4.
"""

from __future__ import annotations

from typing import NamedTuple


class FeatureBit(NamedTuple):
    leaf: int
    subleaf: int | None  # None: a leaf without subleaves (ECX is not an input)
    register: str  # "eax", "ebx", "ecx" or "edx"
    bit: int

    @property
    def mask(self) -> int:
        return 1 << self.bit


# CPUID.01H:EDX, "Feature Information" (SDM vol. 2A, table 3-11)
_LEAF1_EDX = {
    0: "fpu", 1: "vme", 2: "de", 3: "pse", 4: "tsc", 5: "msr", 6: "pae", 7: "mce", 8: "cx8", 9: "apic",
    11: "sep", 12: "mtrr", 13: "pge", 14: "mca", 15: "cmov", 16: "pat", 17: "pse36", 18: "pn", 19: "clflush",
    21: "ds", 22: "acpi", 23: "mmx", 24: "fxsr", 25: "sse", 26: "sse2", 27: "ss", 28: "ht", 29: "tm", 30: "ia64",
    31: "pbe",
}
# CPUID.01H:ECX, "Feature Information" (SDM vol. 2A, table 3-10); bit 27 OSXSAVE is the OS's
_LEAF1_ECX = {
    0: "pni", 1: "pclmulqdq", 2: "dtes64", 3: "monitor", 4: "ds-cpl", 5: "vmx", 6: "smx", 7: "est", 8: "tm2",
    9: "ssse3", 10: "cid", 12: "fma", 13: "cx16", 14: "xtpr", 15: "pdcm", 17: "pcid", 18: "dca", 19: "sse4.1",
    20: "sse4.2", 21: "x2apic", 22: "movbe", 23: "popcnt", 24: "tsc-deadline", 25: "aes", 26: "xsave", 28: "avx",
    29: "f16c", 30: "rdrand", 31: "hypervisor",
}
# CPUID.(EAX=07H,ECX=0):EBX, "Structured Extended Feature Flags" (SDM vol. 2A, table 3-8)
_LEAF7_EBX = {
    0: "fsgsbase", 1: "tsc-adjust", 2: "sgx", 3: "bmi1", 4: "hle", 5: "avx2", 6: "fdp-excptn-only", 7: "smep",
    8: "bmi2", 9: "erms", 10: "invpcid", 11: "rtm", 13: "zero-fcs-fds", 14: "mpx", 16: "avx512f", 17: "avx512dq",
    18: "rdseed", 19: "adx", 20: "smap", 21: "avx512ifma", 22: "pcommit", 23: "clflushopt", 24: "clwb",
    25: "intel-pt", 26: "avx512pf", 27: "avx512er", 28: "avx512cd", 29: "sha-ni", 30: "avx512bw", 31: "avx512vl",
}
# CPUID.(EAX=07H,ECX=0):ECX (same table); bit 4 OSPKE is the OS's
_LEAF7_ECX = {
    1: "avx512vbmi", 2: "umip", 3: "pku", 5: "waitpkg", 6: "avx512vbmi2", 7: "cet-ss", 8: "gfni", 9: "vaes",
    10: "vpclmulqdq", 11: "avx512vnni", 12: "avx512bitalg", 14: "avx512-vpopcntdq", 16: "la57", 22: "rdpid",
    24: "bus-lock-detect", 25: "cldemote", 27: "movdiri", 28: "movdir64b", 30: "sgxlc", 31: "pks",
}
# CPUID.(EAX=07H,ECX=0):EDX (same table)
_LEAF7_EDX = {
    2: "avx512-4vnniw", 3: "avx512-4fmaps", 4: "fsrm", 8: "avx512-vp2intersect", 10: "md-clear", 14: "serialize",
    16: "tsx-ldtrk", 19: "arch-lbr", 20: "cet-ibt", 22: "amx-bf16", 23: "avx512-fp16", 24: "amx-tile",
    25: "amx-int8", 26: "spec-ctrl", 27: "stibp", 28: "flush-l1d", 29: "arch-capabilities", 30: "core-capability",
    31: "ssbd",
}
# CPUID.(EAX=07H,ECX=1):EAX (same table)
_LEAF7_1_EAX = {4: "avx-vnni", 5: "avx512-bf16"}
# CPUID.80000001H:ECX (APM vol. 3, E.4.2; SDM vol. 2A, table 3-8 for the Intel subset)
_EXT1_ECX = {
    0: "lahf-lm", 1: "cmp-legacy", 2: "svm", 3: "extapic", 4: "cr8legacy", 5: "abm", 6: "sse4a", 7: "misalignsse",
    8: "3dnowprefetch", 9: "osvw", 10: "ibs", 11: "xop", 12: "skinit", 13: "wdt", 15: "lwp", 16: "fma4", 17: "tce",
    19: "nodeid-msr", 21: "tbm", 22: "topoext", 23: "perfctr-core", 24: "perfctr-nb",
}
# CPUID.80000001H:EDX (same); the bits that repeat leaf 1's EDX on AMD are named there only, as in QEMU
_EXT1_EDX = {
    11: "syscall", 20: "nx", 22: "mmxext", 25: "fxsr-opt", 26: "pdpe1gb", 27: "rdtscp", 29: "lm", 30: "3dnowext",
    31: "3dnow",
}

_WORDS: tuple[tuple[int, int | None, str, dict[int, str]], ...] = (
    (0x1, None, "edx", _LEAF1_EDX),
    (0x1, None, "ecx", _LEAF1_ECX),
    (0x7, 0, "ebx", _LEAF7_EBX),
    (0x7, 0, "ecx", _LEAF7_ECX),
    (0x7, 0, "edx", _LEAF7_EDX),
    (0x7, 1, "eax", _LEAF7_1_EAX),
    (0x8000_0001, None, "ecx", _EXT1_ECX),
    (0x8000_0001, None, "edx", _EXT1_EDX),
)

FEATURES: dict[str, FeatureBit] = {
    name: FeatureBit(leaf, subleaf, register, bit)
    for leaf, subleaf, register, names in _WORDS for bit, name in names.items()
}

# Other spellings QEMU takes (after `_` became `-`)
ALIASES: dict[str, str] = {
    "sse3": "pni",
    "pclmuldq": "pclmulqdq",
    "sse4-1": "sse4.1",
    "sse4-2": "sse4.2",
    "xd": "nx",
    "ffxsr": "fxsr-opt",
    "i64": "lm",
}


def canonical_name(name: str) -> str | None:
    """The table's name for a feature as a user spelled it (sse4_1, sse4-1 and sse4.1 are one), or None."""
    name = name.replace("_", "-")
    name = ALIASES.get(name, name)
    return name if name in FEATURES else None
