"""ctypes mirrors of the linux/kvm.h structures vmd uses (Documentation/virt/kvm/api.rst, x86)."""

from __future__ import annotations

import ctypes
import struct

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s32 = ctypes.c_int32

# -- ioctl number encoding (asm-generic/ioctl.h) ---------------------------------------------------------
_IOC_WRITE = 1
_IOC_READ = 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# -- structures (api.rst section 4.x; layouts from include/uapi/linux/kvm.h and arch/x86) ------------------


class kvm_userspace_memory_region(ctypes.Structure):  # api.rst 4.35
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


KVM_MEM_READONLY = 1 << 1


class kvm_regs(ctypes.Structure):  # api.rst 4.11, x86
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
                ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
                ("unusable", u8), ("padding", u8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):  # api.rst 4.13
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
                ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64), ("efer", u64),
                ("apic_base", u64), ("interrupt_bitmap", u64 * 4)]


class kvm_fpu(ctypes.Structure):  # api.rst 4.22
    _fields_ = [("fpr", u8 * 128), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
                ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", u8 * 256),
                ("mxcsr", u32), ("pad2", u32)]


class kvm_cpuid_entry2(ctypes.Structure):  # api.rst 4.46
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


class kvm_cpuid2_header(ctypes.Structure):
    _fields_ = [("nent", u32), ("padding", u32)]


def make_cpuid2(count: int) -> ctypes.Structure:
    """A kvm_cpuid2 with room for count entries."""

    class kvm_cpuid2(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * count)]

    value = kvm_cpuid2()
    value.nent = count
    return value


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


def make_msrs(entries: list[tuple[int, int]]) -> ctypes.Structure:
    class kvm_msrs(ctypes.Structure):  # api.rst 4.18
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * len(entries))]

    value = kvm_msrs()
    value.nmsrs = len(entries)
    for i, (index, data) in enumerate(entries):
        value.entries[i].index = index
        value.entries[i].data = data
    return value


class kvm_irq_level(ctypes.Structure):  # api.rst 4.25
    _fields_ = [("irq", u32), ("level", u32)]


class kvm_pit_config(ctypes.Structure):  # api.rst 4.61
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


class kvm_pit_channel_state(ctypes.Structure):  # api.rst 4.75 KVM_GET_PIT2 (one i8254 counter)
    _fields_ = [("count", u32), ("latched_count", u16), ("count_latched", u8), ("status_latched", u8),
                ("status", u8), ("read_state", u8), ("write_state", u8), ("write_latch", u8), ("rw_mode", u8),
                ("mode", u8), ("bcd", u8), ("gate", u8), ("count_load_time", ctypes.c_int64)]


class kvm_pit_state2(ctypes.Structure):  # api.rst 4.75/4.76 KVM_GET_PIT2 / KVM_SET_PIT2
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


PIT_RW_LSB_MSB = 3  # i8254 access mode: least then most significant byte (RW_STATE_WORD0 in KVM's i8254.c)


class kvm_ioeventfd(ctypes.Structure):  # api.rst 4.59
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32),
                ("pad", u8 * 36)]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_irqfd(ctypes.Structure):  # api.rst 4.75
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class kvm_irq_routing_irqchip(ctypes.Structure):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(ctypes.Structure):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class kvm_irq_routing_union(ctypes.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


class kvm_irq_routing_entry(ctypes.Structure):  # api.rst 4.52
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", kvm_irq_routing_union)]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


def make_irq_routing(entries: list[kvm_irq_routing_entry]) -> ctypes.Structure:
    class kvm_irq_routing(ctypes.Structure):
        _fields_ = [("nr", u32), ("flags", u32), ("entries", kvm_irq_routing_entry * len(entries))]

    value = kvm_irq_routing()
    value.nr = len(entries)
    for i, entry in enumerate(entries):
        value.entries[i] = entry
    return value


class kvm_lapic_state(ctypes.Structure):  # api.rst 4.57
    _fields_ = [("regs", u8 * 1024)]


class kvm_mp_state(ctypes.Structure):
    _fields_ = [("mp_state", u32)]


class kvm_guest_debug(ctypes.Structure):  # api.rst 4.87, with x86's kvm_guest_debug_arch (DR0-DR7)
    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


KVM_GUESTDBG_ENABLE = 0x0000_0001
KVM_GUESTDBG_SINGLESTEP = 0x0000_0002
KVM_GUESTDBG_USE_SW_BP = 0x0001_0000  # x86: intercept #BP (int3) and exit with KVM_EXIT_DEBUG
KVM_GUESTDBG_USE_HW_BP = 0x0002_0000  # x86: debugreg[0..3] and [7] are the debugger's DR0-DR3 and DR7
KVM_GUESTDBG_INJECT_DB = 0x0004_0000
KVM_GUESTDBG_INJECT_BP = 0x0008_0000
KVM_GUESTDBG_BLOCKIRQ = 0x0010_0000  # no interrupt is injected while single-stepping


class kvm_translation(ctypes.Structure):  # api.rst 4.15
    _fields_ = [("linear_address", u64), ("physical_address", u64), ("valid", u8), ("writeable", u8),
                ("usermode", u8), ("pad", u8 * 5)]


# -- ioctl numbers -------------------------------------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, ctypes.sizeof(kvm_cpuid2_header))
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, ctypes.sizeof(kvm_irq_level))
KVM_SET_GSI_ROUTING = _iow(0x6A, 8)
KVM_IRQFD = _iow(0x76, ctypes.sizeof(kvm_irqfd))
KVM_CREATE_PIT2 = _iow(0x77, ctypes.sizeof(kvm_pit_config))
KVM_IOEVENTFD = _iow(0x79, ctypes.sizeof(kvm_ioeventfd))
KVM_GET_PIT2 = _ior(0x9F, ctypes.sizeof(kvm_pit_state2))
KVM_SET_PIT2 = _iow(0xA0, ctypes.sizeof(kvm_pit_state2))
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, ctypes.sizeof(kvm_regs))
KVM_SET_REGS = _iow(0x82, ctypes.sizeof(kvm_regs))
KVM_GET_SREGS = _ior(0x83, ctypes.sizeof(kvm_sregs))
KVM_SET_SREGS = _iow(0x84, ctypes.sizeof(kvm_sregs))
KVM_TRANSLATE = _iowr(0x85, ctypes.sizeof(kvm_translation))
KVM_SET_MSRS = _iow(0x89, 8)
KVM_GET_FPU = _ior(0x8C, ctypes.sizeof(kvm_fpu))
KVM_SET_FPU = _iow(0x8D, ctypes.sizeof(kvm_fpu))
KVM_GET_LAPIC = _ior(0x8E, ctypes.sizeof(kvm_lapic_state))
KVM_SET_LAPIC = _iow(0x8F, ctypes.sizeof(kvm_lapic_state))
KVM_SET_CPUID2 = _iow(0x90, ctypes.sizeof(kvm_cpuid2_header))
KVM_GET_MP_STATE = _ior(0x98, ctypes.sizeof(kvm_mp_state))
KVM_SET_MP_STATE = _iow(0x99, ctypes.sizeof(kvm_mp_state))
KVM_SET_GUEST_DEBUG = _iow(0x9B, ctypes.sizeof(kvm_guest_debug))
KVM_X86_SETUP_MCE = _iow(0x9C, 8)  # vCPU fd, __u64 mcg_cap
KVM_X86_GET_MCE_CAP_SUPPORTED = _ior(0x9D, 8)  # /dev/kvm fd, __u64

# -- capabilities (KVM_CHECK_EXTENSION) ---------------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_MCE = 31  # returns the most MCE banks KVM emulates (KVM_MAX_MCE_BANKS)
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_READONLY_MEM = 81  # KVM_MEM_READONLY slots: guest writes exit as KVM_EXIT_MMIO
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SET_GUEST_DEBUG2 = 195  # returns the KVM_GUESTDBG_* flags this KVM supports

# -- kvm_run (api.rst 5. "The kvm_run structure") ----------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

EXIT_NAMES = {value: name for name, value in globals().items() if name.startswith("KVM_EXIT_")}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# Offsets inside the shared kvm_run page.
RUN_IMMEDIATE_EXIT = 1  # __u8 immediate_exit
RUN_EXIT_REASON = struct.Struct("<I")  # at 8
RUN_EXIT_REASON_OFFSET = 8
RUN_UNION_OFFSET = 32
RUN_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
RUN_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
RUN_INTERNAL = struct.Struct("<II")  # suberror, ndata (then u64 data[16])
RUN_FAIL_ENTRY = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
RUN_SYSTEM_EVENT = struct.Struct("<I")  # type
RUN_DEBUG = struct.Struct("<IIQQQ")  # x86 kvm_debug_exit_arch: exception, pad, pc, dr6, dr7

# x86 exception vectors in kvm_debug_exit_arch.exception (SDM vol. 3, 6.3.1)
DB_VECTOR = 1
BP_VECTOR = 3

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
