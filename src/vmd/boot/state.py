"""The initial x86 CPU state a boot method hands to the machine, and what else the boot produced.

Kept free of KVM: the machine translates CpuState into kvm_regs/kvm_sregs.
Segment attributes follow the Intel SDM vol. 3, 3.4.5 (segment descriptors).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmd.memory import E820Entry

# CR0 (SDM vol. 3, 2.5)
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
# CR4
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
# EFER (SDM vol. 3, 2.2.1)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11


@dataclass
class Segment:
    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 3  # read/write data, accessed
    present: int = 1
    dpl: int = 0
    db: int = 0  # default operation size: 1 = 32-bit
    s: int = 1  # 1 = code/data, 0 = system
    l: int = 0  # noqa: E741 - the architectural name: 64-bit code segment
    g: int = 0  # granularity: limit in 4 KiB units


def real_mode_segment(selector: int, code: bool = False) -> Segment:
    return Segment(base=selector << 4, limit=0xFFFF, selector=selector, type=0xB if code else 3)


def flat_segment(selector: int, code: bool, long_mode: bool = False) -> Segment:
    """A flat 4 GiB segment; code segments are execute/read, data read/write."""
    return Segment(
        base=0,
        limit=0xFFFF_FFFF,
        selector=selector,
        type=0xB if code else 3,
        db=0 if long_mode and code else 1,
        l=1 if long_mode and code else 0,
        g=1,
    )


GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class CpuState:
    """Registers of the boot vCPU at entry. Unset GPRs are zero."""

    rip: int = 0xFFF0
    rflags: int = 0x2
    gprs: dict[str, int] = field(default_factory=dict)
    cs: Segment = field(default_factory=lambda: Segment(base=0xFFFF_0000, selector=0xF000, type=0xB))
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    gdt_base: int = 0
    gdt_limit: int = 0xFFFF
    idt_base: int = 0
    idt_limit: int = 0xFFFF
    cr0: int = CR0_ET | CR0_NW | CR0_CD  # 0x60000010, the reset value
    cr3: int = 0
    cr4: int = 0
    efer: int = 0

    @classmethod
    def reset_vector(cls) -> CpuState:
        """Real mode at F000:FFF0 with CS base 0xFFFF0000, as after RESET (SDM vol. 3, 9.1.4)."""
        return cls()

    @classmethod
    def real_mode(cls, cs: int, ip: int, ds: int, sp: int) -> CpuState:
        """Real mode at cs:ip with ds=es=fs=gs=ss=ds (the Linux 16-bit boot protocol entry)."""
        return cls(
            rip=ip,
            gprs={"rsp": sp},
            cs=real_mode_segment(cs, code=True),
            ds=real_mode_segment(ds), es=real_mode_segment(ds), fs=real_mode_segment(ds),
            gs=real_mode_segment(ds), ss=real_mode_segment(ds),
            cr0=CR0_ET,
        )

    @classmethod
    def flat32(cls, entry: int, gdt_base: int, gdt_limit: int, code_selector: int = 0x08,
               data_selector: int = 0x10) -> CpuState:
        """32-bit protected mode, flat segments, paging off."""
        data = flat_segment(data_selector, code=False)
        return cls(
            rip=entry,
            cs=flat_segment(code_selector, code=True),
            ds=data, es=data, fs=data, gs=data, ss=data,
            gdt_base=gdt_base, gdt_limit=gdt_limit,
            cr0=CR0_PE | CR0_ET,
        )

    @classmethod
    def long64(cls, entry: int, gdt_base: int, gdt_limit: int, cr3: int, code_selector: int = 0x18,
               data_selector: int = 0x10) -> CpuState:
        """64-bit long mode with paging on through the page tables at cr3."""
        data = flat_segment(data_selector, code=False)
        return cls(
            rip=entry,
            cs=flat_segment(code_selector, code=True, long_mode=True),
            ds=data, es=data, fs=data, gs=data, ss=data,
            gdt_base=gdt_base, gdt_limit=gdt_limit,
            cr0=CR0_PE | CR0_ET | CR0_PG,
            cr3=cr3,
            cr4=CR4_PAE | CR4_PSE,
            efer=EFER_LME | EFER_LMA,
        )


@dataclass
class BootOptions:
    """What the user asked for, beyond the kernel file itself."""

    cmdline: str = ""
    initrd: str | None = None
    vcpus: int = 1
    boot_device: str | None = None  # None, "disk", "cdrom", "net" (vmctl -B)
    acpi: bool = False  # the machine writes ACPI tables for a direct boot: loaders pass the RSDP on
    kernel_path: str = ""  # the kernel as the user named it (Multiboot's command line starts with it)
    boot_mac: bytes | None = None  # `boot device net`: the first NIC's MAC, for OpenBSD's BOOTARG_BOOTMAC


@dataclass
class BootPlan:
    """The outcome of loading a kernel or firmware into guest memory."""

    kind: str  # e.g. "openbsd-elf64", "openbsd-elf32", "pvh", "multiboot", "linux-bzimage", "bios"
    cpu: CpuState
    e820: list[E820Entry]
    cpu_fallback: CpuState | None = None  # another valid entry state, for a KVM that refuses cpu's mode
    firmware: bytes | None = None  # BIOS image: the machine maps it to end at 4 GiB
    fw_cfg_files: dict[str, bytes] = field(default_factory=dict)
    fw_cfg_items: dict[int, bytes] = field(default_factory=dict)
    needs_mptable: bool = True  # direct boot: the machine writes an MP table; SeaBIOS writes its own
    acpi_address: int = 0  # direct boot: where the machine writes the RSDP and ACPI tables (x86.place_tables)
    mptable_address: int = 0  # direct boot: where the machine writes the MP table
    description: str = ""


class BootError(Exception):
    """A kernel or firmware file that cannot be booted. str() is '<file>: <reason>'."""
