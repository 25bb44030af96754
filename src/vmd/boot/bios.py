"""Raw BIOS images (SeaBIOS): mapped to end at 4 GiB, their tail copied to end at 1 MiB.

vmd's loadfile_bios (x86_vm.c) copies the whole image below 4 GiB and its last min(384 KiB, size)
bytes below 1 MiB. We copy at most 128 KiB below 1 MiB, as QEMU's isa-bios alias does: SeaBIOS is
built for that (its 256 KiB image relocates itself from the high copy).
"""

from __future__ import annotations

from vmd.boot.state import BootError, BootOptions, BootPlan, CpuState
from vmd.boot.x86 import PAGE_SIZE, BadImage, align_up
from vmd.firmware import SEABIOS_PATHS, find_bios
from vmd.memory import HIGH_MEMORY_START, GuestMemory, KiB, MiB

BIOS_MIN_SIZE = 15  # vmd: "bios image too small"
BIOS_MAX_SIZE = 4 * MiB  # vmd: "bios image too large (> 4 MiB)"
LOW_COPY_MAX = 128 * KiB


def default_firmware() -> str:
    """The BIOS used when no kernel is given: Debian's SeaBIOS (package seabios)."""
    path = find_bios()
    if path is None:
        raise BootError(f"{SEABIOS_PATHS[0]}: BIOS firmware not found (install the seabios package,"
                        " or give a kernel with -b)")
    return path


def boot_order_files(options: BootOptions) -> dict[str, bytes]:
    """fw_cfg files that depend on the boot options (SeaBIOS "bootorder", docs/bootorder in QEMU).

    Hook: boot_device "disk"/"cdrom" needs the device paths of the machine's disk and CD-ROM
    controllers, which the machine knows and we do not; it adds "bootorder" itself for now.
    """
    return {}


# Opcodes a firmware puts at its reset vector, 16 bytes before its end (SDM vol. 3, 9.1.4): far, near
# and short JMP; NOPs may come first (OVMF's vector starts with two).
_JUMPS = (0xEA, 0xE9, 0xEB)
_NOP = 0x90


def has_reset_vector(data: bytes) -> bool:
    """Does the image start execution with a jump at the reset vector, as every PC firmware does?"""
    for byte in data[-16:]:
        if byte != _NOP:
            return byte in _JUMPS
    return False


def load_bios(data: bytes, mem: GuestMemory, options: BootOptions) -> BootPlan:
    """A raw BIOS image: BootPlan.firmware is the image padded at the front to whole pages, so the
    machine can map it to end exactly at 4 GiB; the last bytes are also copied to end at 1 MiB."""
    if len(data) < BIOS_MIN_SIZE:
        raise BadImage("bios image too small")
    if len(data) > BIOS_MAX_SIZE:
        raise BadImage("bios image too large (> 4 MiB)")
    if not has_reset_vector(data):
        raise BadImage("not an ELF kernel, bzImage or BIOS image (no jump at the reset vector)")
    low_copy = min(LOW_COPY_MAX, len(data))
    mem.write(HIGH_MEMORY_START - low_copy, data[-low_copy:])
    padded = bytes(align_up(len(data), PAGE_SIZE) - len(data)) + data
    return BootPlan(kind="bios", cpu=CpuState.reset_vector(), e820=mem.e820(), firmware=padded,
                    fw_cfg_files=boot_order_files(options), needs_mptable=False,
                    description=f"BIOS image, {len(data) // 1024} KiB")
