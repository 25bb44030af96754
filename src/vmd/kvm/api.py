"""Kvm, Vm and Vcpu: thin objects over the /dev/kvm file descriptors (Documentation/virt/kvm/api.rst)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from typing import Any

from vmd.kvm import structs as k

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int

KVM_DEVICE = "/dev/kvm"
KVM_API_VERSION = 12
TSS_ADDRESS = 0xFFFB_D000  # three pages below the BIOS area, as QEMU places it
IDENTITY_MAP_ADDRESS = 0xFFFB_C000


class KvmError(Exception):
    """A KVM operation failed; str() says which and why."""


def _fail(what: str, error: OSError | int) -> KvmError:
    code = error if isinstance(error, int) else (error.errno or 0)
    return KvmError(f"{what}: {os.strerror(code)}")


def ioctl_ulong(fd: int, request: int, argument: int, what: str) -> int:
    """ioctl with an unsigned long argument (fcntl.ioctl only takes a signed int)."""
    result = _libc.ioctl(fd, request, argument)
    if result < 0:
        raise _fail(what, ctypes.get_errno())
    return int(result)


def ioctl_buffer(fd: int, request: int, buffer: Any, what: str) -> int:
    """ioctl with a pointer to a ctypes structure, which the kernel may read and write."""
    try:
        return fcntl.ioctl(fd, request, buffer, True)
    except OSError as error:
        raise _fail(what, error) from None


class Kvm:
    """The /dev/kvm system handle."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise KvmError(f"{path}: {error.strerror}") from None
        version = fcntl.ioctl(self.fd, k.KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError(f"{path}: KVM API version {version}, expected {KVM_API_VERSION}")
        self.vcpu_mmap_size = fcntl.ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE, 0)

    def check_extension(self, capability: int) -> int:
        return fcntl.ioctl(self.fd, k.KVM_CHECK_EXTENSION, capability)

    def guest_debug_flags(self) -> int:
        """The KVM_GUESTDBG_* flags KVM_SET_GUEST_DEBUG accepts here (KVM_CAP_SET_GUEST_DEBUG2); 0 without it.
        A KVM that predates the capability but has KVM_CAP_SET_GUEST_DEBUG takes the original x86 set."""
        flags = self.check_extension(k.KVM_CAP_SET_GUEST_DEBUG2)
        if flags > 0:
            return flags
        if self.check_extension(k.KVM_CAP_SET_GUEST_DEBUG) > 0:
            return (k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP | k.KVM_GUESTDBG_USE_SW_BP
                    | k.KVM_GUESTDBG_USE_HW_BP)
        return 0

    @staticmethod
    def runs_legacy_paging() -> bool:
        """False on PVM (kvm_pvm), a KVM that runs guests without VT-x/AMD-V and supports paging only in
        long mode: it takes a 32-bit paging CPU state but the guest faults at its first instruction. No
        capability says so; the module does."""
        return not os.path.isdir("/sys/module/kvm_pvm")

    def require(self, capability: int, name: str) -> None:
        if self.check_extension(capability) <= 0:
            raise KvmError(f"{KVM_DEVICE}: the host's KVM lacks {name}")

    def supported_cpuid(self) -> list[k.kvm_cpuid_entry2]:
        count = 64
        while True:
            buffer = k.make_cpuid2(count)
            try:
                fcntl.ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, buffer, True)
            except OSError as error:
                if error.errno == errno.E2BIG and count < 4096:
                    count *= 2
                    continue
                raise _fail("KVM_GET_SUPPORTED_CPUID", error) from None
            entries = buffer.entries
            return [k.kvm_cpuid_entry2.from_buffer_copy(entries[i]) for i in range(buffer.nent)]

    def mce_cap_supported(self) -> int:
        """KVM_X86_GET_MCE_CAP_SUPPORTED: the IA32_MCG_CAP flags KVM_X86_SETUP_MCE accepts (no bank count:
        that is KVM_CAP_MCE's answer)."""
        value = ctypes.c_uint64()
        ioctl_buffer(self.fd, k.KVM_X86_GET_MCE_CAP_SUPPORTED, value, "KVM_X86_GET_MCE_CAP_SUPPORTED")
        return int(value.value)

    def create_vm(self) -> Vm:
        try:
            fd = fcntl.ioctl(self.fd, k.KVM_CREATE_VM, 0)
        except OSError as error:
            raise _fail("KVM_CREATE_VM", error) from None
        return Vm(self, fd)

    def close(self) -> None:
        os.close(self.fd)


class Vm:
    """One virtual machine: memory slots, the in-kernel irqchip and PIT, vCPUs, eventfds."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._next_slot = 0

    def set_tss_address(self, address: int = TSS_ADDRESS) -> None:
        ioctl_ulong(self.fd, k.KVM_SET_TSS_ADDR, address, "KVM_SET_TSS_ADDR")

    def set_identity_map_address(self, address: int = IDENTITY_MAP_ADDRESS) -> None:
        value = ctypes.c_uint64(address)
        ioctl_buffer(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, value, "KVM_SET_IDENTITY_MAP_ADDR")

    def add_memory(self, guest_address: int, size: int, host_address: int, read_only: bool = False) -> int:
        slot = self._next_slot
        region = k.kvm_userspace_memory_region(slot, k.KVM_MEM_READONLY if read_only else 0,
                                               guest_address, size, host_address)
        ioctl_buffer(self.fd, k.KVM_SET_USER_MEMORY_REGION, region,
                     f"KVM_SET_USER_MEMORY_REGION at {guest_address:#x}+{size:#x}")
        self._next_slot += 1
        return slot

    def create_irqchip(self) -> None:
        try:
            fcntl.ioctl(self.fd, k.KVM_CREATE_IRQCHIP, 0)
        except OSError as error:
            raise _fail("KVM_CREATE_IRQCHIP", error) from None

    def create_pit2(self) -> None:
        config = k.kvm_pit_config(flags=k.KVM_PIT_SPEAKER_DUMMY)
        ioctl_buffer(self.fd, k.KVM_CREATE_PIT2, config, "KVM_CREATE_PIT2")

    def get_pit2(self) -> k.kvm_pit_state2:
        state = k.kvm_pit_state2()
        ioctl_buffer(self.fd, k.KVM_GET_PIT2, state, "KVM_GET_PIT2")
        return state

    def set_pit2(self, state: k.kvm_pit_state2) -> None:
        """Load the in-kernel PIT's counters; KVM restarts each with its count and mode."""
        ioctl_buffer(self.fd, k.KVM_SET_PIT2, state, "KVM_SET_PIT2")

    def irq_line(self, irq: int, level: int) -> None:
        ioctl_buffer(self.fd, k.KVM_IRQ_LINE, k.kvm_irq_level(irq, level), "KVM_IRQ_LINE")

    def set_gsi_routing(self, entries: list[k.kvm_irq_routing_entry]) -> None:
        ioctl_buffer(self.fd, k.KVM_SET_GSI_ROUTING, k.make_irq_routing(entries), "KVM_SET_GSI_ROUTING")

    def irqfd(self, eventfd: int, gsi: int, resample_fd: int | None = None, deassign: bool = False) -> None:
        flags = (k.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        if resample_fd is not None:
            flags |= k.KVM_IRQFD_FLAG_RESAMPLE
        request = k.kvm_irqfd(fd=eventfd, gsi=gsi, flags=flags, resamplefd=resample_fd or 0)
        ioctl_buffer(self.fd, k.KVM_IRQFD, request, "KVM_IRQFD")

    def ioeventfd(self, eventfd: int, address: int, length: int, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        flags = (k.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (k.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= k.KVM_IOEVENTFD_FLAG_DATAMATCH
        request = k.kvm_ioeventfd(datamatch=datamatch or 0, addr=address, len=length, fd=eventfd, flags=flags)
        ioctl_buffer(self.fd, k.KVM_IOEVENTFD, request, "KVM_IOEVENTFD")

    def create_vcpu(self, index: int) -> Vcpu:
        try:
            fd = fcntl.ioctl(self.fd, k.KVM_CREATE_VCPU, index)
        except OSError as error:
            raise _fail(f"KVM_CREATE_VCPU {index}", error) from None
        return Vcpu(self, index, fd)

    def close(self) -> None:
        os.close(self.fd)


class Vcpu:
    """One virtual CPU and its shared kvm_run page."""

    def __init__(self, vm: Vm, index: int, fd: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = fd
        self.run = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    # -- registers -----------------------------------------------------------------------------------
    def get_regs(self) -> k.kvm_regs:
        regs = k.kvm_regs()
        ioctl_buffer(self.fd, k.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: k.kvm_regs) -> None:
        ioctl_buffer(self.fd, k.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> k.kvm_sregs:
        sregs = k.kvm_sregs()
        ioctl_buffer(self.fd, k.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        ioctl_buffer(self.fd, k.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> k.kvm_fpu:
        fpu = k.kvm_fpu()
        ioctl_buffer(self.fd, k.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: k.kvm_fpu) -> None:
        ioctl_buffer(self.fd, k.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def set_msrs(self, entries: list[tuple[int, int]]) -> None:
        msrs = k.make_msrs(entries)
        done = ioctl_buffer(self.fd, k.KVM_SET_MSRS, msrs, "KVM_SET_MSRS")
        if done != len(entries):
            index = entries[done][0]
            raise KvmError(f"KVM_SET_MSRS: the host's KVM refused MSR {index:#x}")

    def set_cpuid(self, entries: list[k.kvm_cpuid_entry2]) -> None:
        buffer = k.make_cpuid2(len(entries))
        for i, entry in enumerate(entries):
            buffer.entries[i] = entry
        ioctl_buffer(self.fd, k.KVM_SET_CPUID2, buffer, "KVM_SET_CPUID2")

    def setup_mce(self, mcg_cap: int) -> None:
        """KVM_X86_SETUP_MCE: the guest's IA32_MCG_CAP (bank count in bits 7:0), after KVM_SET_CPUID2."""
        ioctl_buffer(self.fd, k.KVM_X86_SETUP_MCE, ctypes.c_uint64(mcg_cap), "KVM_X86_SETUP_MCE")

    def get_lapic(self) -> k.kvm_lapic_state:
        state = k.kvm_lapic_state()
        ioctl_buffer(self.fd, k.KVM_GET_LAPIC, state, "KVM_GET_LAPIC")
        return state

    def set_lapic(self, state: k.kvm_lapic_state) -> None:
        ioctl_buffer(self.fd, k.KVM_SET_LAPIC, state, "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        state = k.kvm_mp_state()
        ioctl_buffer(self.fd, k.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return int(state.mp_state)

    # -- debugging -----------------------------------------------------------------------------------
    def set_guest_debug(self, control: int, debugregs: tuple[int, ...] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: control is KVM_GUESTDBG_* flags; debugregs DR0-DR3 and DR7 at [0..3] and [7]."""
        request = k.kvm_guest_debug(control=control)
        for index, value in enumerate(debugregs[:8]):
            request.debugreg[index] = value
        ioctl_buffer(self.fd, k.KVM_SET_GUEST_DEBUG, request, "KVM_SET_GUEST_DEBUG")

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: the guest-physical address of a linear address through the vCPU's page tables, or
        None when it is not mapped (or paging is off and the address is out of range)."""
        request = k.kvm_translation(linear_address=linear & 0xFFFF_FFFF_FFFF_FFFF)
        ioctl_buffer(self.fd, k.KVM_TRANSLATE, request, "KVM_TRANSLATE")
        return int(request.physical_address) if request.valid else None

    # -- running -------------------------------------------------------------------------------------
    def exit_reason(self) -> int:
        return int(k.RUN_EXIT_REASON.unpack_from(self.run, k.RUN_EXIT_REASON_OFFSET)[0])

    def set_immediate_exit(self, value: bool) -> None:
        self.run[k.RUN_IMMEDIATE_EXIT] = 1 if value else 0

    def close(self) -> None:
        self.run.close()
        os.close(self.fd)
