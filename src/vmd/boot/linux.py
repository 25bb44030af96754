"""Linux bzImage kernels through the 32-bit and 64-bit boot protocols.

Reference: Documentation/arch/x86/boot.rst ("The Linux/x86 Boot Protocol") and
Documentation/arch/x86/zero-page.rst. Offsets below are into the boot sector / zero page.
"""

from __future__ import annotations

import struct

from vmd.boot.state import BootOptions, BootPlan, CpuState
from vmd.boot.x86 import (
    PAGE_SIZE,
    STACK_TOP,
    ZERO_PAGE,
    BadImage,
    align_down,
    check_destination,
    pack_e820,
    place_tables,
    write_cmdline,
    write_identity_page_tables,
    write_linux_gdt,
)
from vmd.memory import HIGH_MEMORY_START, GuestMemory

# Setup header fields (boot.rst, "The real-mode kernel header")
OFF_SETUP_SECTS = 0x1F1  # u8; 0 means 4
OFF_BOOT_FLAG = 0x1FE  # u16 0xAA55
OFF_JUMP = 0x200  # the header ends at 0x202 + the byte at 0x201
OFF_HEADER = 0x202  # "HdrS"
OFF_VERSION = 0x206  # u16 protocol version
OFF_TYPE_OF_LOADER = 0x210  # u8
OFF_LOADFLAGS = 0x211  # u8
OFF_CODE32_START = 0x214  # u32
OFF_RAMDISK_IMAGE = 0x218  # u32
OFF_RAMDISK_SIZE = 0x21C  # u32
OFF_HEAP_END_PTR = 0x224  # u16
OFF_CMD_LINE_PTR = 0x228  # u32 (2.02+)
OFF_INITRD_ADDR_MAX = 0x22C  # u32 (2.03+)
OFF_RELOCATABLE = 0x234  # u8 (2.05+)
OFF_XLOADFLAGS = 0x236  # u16 (2.12+)
OFF_CMDLINE_SIZE = 0x238  # u32 (2.06+)
OFF_PREF_ADDRESS = 0x258  # u64 (2.10+)
OFF_INIT_SIZE = 0x260  # u32 (2.10+)
# zero-page.rst
OFF_ACPI_RSDP_ADDR = 0x070  # u64 (2.14+)
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8  # u8
OFF_E820_TABLE = 0x2D0  # 128 entries of 20 bytes
E820_MAX_ZEROPAGE = 128

BOOT_FLAG = 0xAA55
HDRS = b"HdrS"
MIN_PROTOCOL = 0x0206
LOADED_HIGH = 1 << 0  # loadflags: protected-mode code at 0x100000 (bzImage)
CAN_USE_HEAP = 1 << 7
XLF_KERNEL_64 = 1 << 0  # xloadflags: 64-bit entry at load address + 0x200
LOADER_UNDEFINED = 0xFF  # type_of_loader for a boot loader without an assigned id
HEAP_END = 0xFE00  # heap_end_ptr: what boot.rst suggests (setup stack/heap end - 0x200)
KERNEL_LOAD_ADDRESS = HIGH_MEMORY_START  # protected-mode kernel at 1 MiB
DEFAULT_INITRD_ADDR_MAX = 0x37FF_FFFF  # boot.rst: before 2.03 the maximum was 0x37FFFFFF
ENTRY64_OFFSET = 0x200


def is_bzimage(data: bytes) -> bool:
    return (len(data) >= OFF_HEADER + 4 and data[OFF_HEADER : OFF_HEADER + 4] == HDRS
            and int.from_bytes(data[OFF_BOOT_FLAG : OFF_BOOT_FLAG + 2], "little") == BOOT_FLAG)


def _u8(data: bytes | bytearray, offset: int) -> int:
    return data[offset]


def _u16(data: bytes | bytearray, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes | bytearray, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def _u64(data: bytes | bytearray, offset: int) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])


def load_bzimage(data: bytes, mem: GuestMemory, options: BootOptions) -> BootPlan:
    """Load a bzImage at 1 MiB with its zero page, command line, initrd and e820 map."""
    if len(data) < 0x270:
        raise BadImage("truncated Linux kernel header")
    version = _u16(data, OFF_VERSION)
    if version < MIN_PROTOCOL:
        raise BadImage(f"Linux boot protocol {version >> 8}.{version & 0xFF:02d} is too old"
                       " (2.06 or later needed)")
    if not _u8(data, OFF_LOADFLAGS) & LOADED_HIGH:
        raise BadImage("zImage kernels (not loaded high) are not supported")
    setup_sects = _u8(data, OFF_SETUP_SECTS) or 4
    setup_size = (setup_sects + 1) * 512
    if setup_size >= len(data):
        raise BadImage("Linux kernel has no protected-mode code after its setup sectors")
    kernel = data[setup_size:]
    header_end = OFF_JUMP + 2 + _u8(data, OFF_JUMP + 1)
    header_end = min(header_end, setup_size, 0x290)  # 2.15 ends at 0x270; stay inside the boot sector copy

    xloadflags = _u16(data, OFF_XLOADFLAGS) if version >= 0x020C else 0
    long_mode = bool(xloadflags & XLF_KERNEL_64)
    initrd_addr_max = _u32(data, OFF_INITRD_ADDR_MAX) or DEFAULT_INITRD_ADDR_MAX
    cmdline_size = _u32(data, OFF_CMDLINE_SIZE)
    pref_address = _u64(data, OFF_PREF_ADDRESS) if version >= 0x020A else 0
    init_size = _u32(data, OFF_INIT_SIZE) if version >= 0x020A else 0

    # The kernel decompresses itself to max(load address, pref_address) and needs init_size from there.
    load = KERNEL_LOAD_ADDRESS
    check_destination(mem, load, len(kernel), "Linux kernel")
    needed_end = max(load + len(kernel), max(load, pref_address) + init_size)
    if needed_end > mem.low_ram_end:
        raise BadImage(f"Linux kernel needs memory up to {needed_end:#x}; the guest has RAM up to"
                       f" {mem.low_ram_end:#x} below 4 GiB")

    zero = bytearray(PAGE_SIZE)
    zero[OFF_SETUP_SECTS:header_end] = data[OFF_SETUP_SECTS:header_end]
    zero[OFF_TYPE_OF_LOADER] = LOADER_UNDEFINED
    zero[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", zero, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", zero, OFF_CODE32_START, load)
    acpi_at, mptable_at = place_tables([(load, needed_end)])
    struct.pack_into("<Q", zero, OFF_ACPI_RSDP_ADDR, acpi_at if options.acpi else 0)

    cmdline_at, _length = write_cmdline(mem, options.cmdline, limit=cmdline_size)
    struct.pack_into("<I", zero, OFF_CMD_LINE_PTR, cmdline_at)
    struct.pack_into("<I", zero, OFF_EXT_CMD_LINE_PTR, 0)

    initrd_at = initrd_size = 0
    if options.initrd:
        try:
            with open(options.initrd, "rb") as handle:
                initrd = handle.read()
        except OSError as error:
            raise BadImage(f"initrd {options.initrd}: {error.strerror or error}") from None
        initrd_size = len(initrd)
        top = min(initrd_addr_max + 1, mem.low_ram_end)
        initrd_at = align_down(top - initrd_size, PAGE_SIZE)
        if initrd_size == 0:
            initrd_at = 0
        elif initrd_at < needed_end:
            raise BadImage(f"initrd {options.initrd} ({initrd_size} bytes) does not fit between the kernel"
                           f" (up to {needed_end:#x}) and {top:#x}")
        else:
            mem.write(initrd_at, initrd)
    struct.pack_into("<II", zero, OFF_RAMDISK_IMAGE, initrd_at, initrd_size)
    struct.pack_into("<II", zero, OFF_EXT_RAMDISK_IMAGE, 0, 0)

    e820 = mem.e820()
    if len(e820) > E820_MAX_ZEROPAGE:
        raise BadImage("too many e820 entries for the zero page")
    zero[OFF_E820_ENTRIES] = len(e820)
    table = pack_e820(e820)
    zero[OFF_E820_TABLE : OFF_E820_TABLE + len(table)] = table

    mem.write(load, kernel)
    mem.write(ZERO_PAGE, bytes(zero))
    gdt_base, gdt_limit = write_linux_gdt(mem, long_mode)
    if long_mode:
        cr3 = write_identity_page_tables(mem, gib=4)
        entry = load + ENTRY64_OFFSET
        cpu = CpuState.long64(entry, gdt_base, gdt_limit, cr3, code_selector=0x10, data_selector=0x18)
    else:
        entry = load
        cpu = CpuState.flat32(entry, gdt_base, gdt_limit, code_selector=0x10, data_selector=0x18)
    cpu.gprs.update(rsi=ZERO_PAGE, rsp=STACK_TOP)
    mode = "64-bit" if long_mode else "32-bit"
    return BootPlan(kind="linux-bzimage", cpu=cpu, e820=e820, acpi_address=acpi_at, mptable_address=mptable_at,
                    description=f"Linux bzImage, boot protocol {version >> 8}.{version & 0xFF:02d},"
                                f" {mode} entry at {entry:#x}")
