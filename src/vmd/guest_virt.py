"""Guest-virtual memory: linear addresses through a vCPU's page tables (KVM_TRANSLATE), page by page.

Used by the GDB stub (m/M/X packets, software breakpoints) and by the failure messages (the instruction
bytes at RIP). A linear address is what the guest's code sees after segmentation (SDM vol. 3, 3.1): in
64-bit mode the RIP itself, elsewhere CS.base + EIP, truncated to 32 bits.
"""

from __future__ import annotations

from typing import Protocol

from vmd.kvm import structs as k
from vmd.kvm.api import KvmError
from vmd.memory import GuestMemory, GuestMemoryError

PAGE_SIZE = 4096
CODE_BYTES = 16  # the longest x86 instruction is 15 bytes (SDM vol. 2, 2.3.11)
EFER_LMA = 1 << 10


class Translator(Protocol):
    def translate(self, linear: int) -> int | None: ...


def code_linear(regs: k.kvm_regs, sregs: k.kvm_sregs) -> int:
    """The linear address of the next instruction."""
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return int(regs.rip)
    return (int(sregs.cs.base) + (int(regs.rip) & 0xFFFF_FFFF)) & 0xFFFF_FFFF


def translate(vcpu: Translator, linear: int) -> int | None:
    """Guest-physical address of linear, or None when it is not mapped."""
    try:
        return vcpu.translate(linear)
    except KvmError:
        return None


def read(vcpu: Translator, memory: GuestMemory, linear: int, length: int) -> tuple[bytes, int | None]:
    """Up to length bytes from linear on. Returns the bytes read and, when it stopped short, the linear
    address where it stopped (not mapped, or mapped to something that is not guest RAM)."""
    out = bytearray()
    address = linear & 0xFFFF_FFFF_FFFF_FFFF
    while len(out) < length:
        chunk = min(length - len(out), PAGE_SIZE - (address % PAGE_SIZE))
        physical = translate(vcpu, address)
        if physical is None:
            return bytes(out), address
        try:
            out += memory.read(physical, chunk)
        except GuestMemoryError:
            return bytes(out), address
        address = (address + chunk) & 0xFFFF_FFFF_FFFF_FFFF
    return bytes(out), None


def write(vcpu: Translator, memory: GuestMemory, linear: int, data: bytes) -> int:
    """Write data at linear on, page by page; the number of bytes written (short: not mapped or not RAM)."""
    done = 0
    address = linear & 0xFFFF_FFFF_FFFF_FFFF
    while done < len(data):
        chunk = min(len(data) - done, PAGE_SIZE - (address % PAGE_SIZE))
        physical = translate(vcpu, address)
        if physical is None:
            return done
        try:
            memory.write(physical, data[done : done + chunk])
        except GuestMemoryError:
            return done
        done += chunk
        address = (address + chunk) & 0xFFFF_FFFF_FFFF_FFFF
    return done


def describe_code(vcpu: Translator, memory: GuestMemory | None, regs: k.kvm_regs, sregs: k.kvm_sregs) -> str:
    """One line for failure messages: the instruction bytes at RIP, or why there are none."""
    linear = code_linear(regs, sregs)
    if memory is None:
        return f"  code at {linear:#x}: guest memory is gone"
    data, stopped = read(vcpu, memory, linear, CODE_BYTES)
    text = " ".join(f"{byte:02x}" for byte in data)
    if stopped is None:
        return f"  code at {linear:#x}: {text}"
    physical = translate(vcpu, stopped)
    why = "unmapped" if physical is None else f"not guest RAM (physical {physical:#x})"
    if not data:
        return f"  code at {linear:#x}: {why}"
    return f"  code at {linear:#x}: {text} ({stopped:#x}: {why})"
