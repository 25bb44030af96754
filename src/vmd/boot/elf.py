"""ELF kernels: parsing, and three ways to boot them.

* OpenBSD boot protocol (what vmd's loadfile_elf.c does): segments at p_paddr & 0x0FFFFFFF, random
  data in PT_OPENBSD_RANDOMIZE, the symbol tables copied after the kernel end, a boot arguments page
  and a boot stack page as /boot leaves them.
* PVH (Xen's direct boot ABI, xen/include/public/arch-x86/hvm/start_info.h): entry point from the
  XEN_ELFNOTE_PHYS32_ENTRY note, hvm_start_info in EBX, 32-bit protected mode with paging off.
* Multiboot 0.6.96: header in the first 8 KiB, the a.out kludge addresses or the ELF segments,
  multiboot information in EBX and 0x2BADB002 in EAX, 32-bit protected mode with paging off.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from vmd.boot.state import CR0_PG, CR4_PSE, BootOptions, BootPlan, CpuState, flat_segment
from vmd.boot.x86 import (
    BOOT_AREAS,
    BOOTARGS_PAGE,
    PAGE_SIZE,
    SEL_CODE32,
    STACK_PAGE,
    STACK_TOP,
    BadImage,
    BootInfoArea,
    Ranges,
    align_up,
    check_destination,
    encode_cmdline,
    place_boot_area,
    place_tables,
    write_cmdline,
    write_gdt,
    write_identity_page_tables,
    write_pse_page_directory,
)
from vmd.memory import HIGH_MEMORY_START, LOW_RAM_END, E820Entry, GuestMemory

# -- ELF (System V gABI, "ELF Header", "Program Header", "Sections") ----------------------------------

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC, ET_DYN = 2, 3
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
PT_OPENBSD_RANDOMIZE = 0x65A3DBE6
PF_X, PF_W, PF_R = 1, 2, 4
SHT_SYMTAB, SHT_STRTAB, SHT_NOTE = 2, 3, 7
SHF_ALLOC = 2

# e_type .. e_shstrndx after the 16-byte e_ident
EHDR32 = struct.Struct("<HHIIIIIHHHHHH")
EHDR64 = struct.Struct("<HHIQQQIHHHHHH")
PHDR32 = struct.Struct("<IIIIIIII")  # type, offset, vaddr, paddr, filesz, memsz, flags, align
PHDR64 = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
SHDR32 = struct.Struct("<IIIIIIIIII")  # name, type, flags, addr, offset, size, link, info, addralign, entsize
SHDR64 = struct.Struct("<IIQQQQIIQQ")
NOTE_HEADER = struct.Struct("<III")  # namesz, descsz, type


@dataclass
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass
class Section:
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass
class ElfImage:
    data: bytes
    elf_class: int  # ELFCLASS32 or ELFCLASS64
    machine: int
    entry: int
    phoff: int
    shoff: int
    shnum: int
    shstrndx: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def is64(self) -> bool:
        return self.elf_class == ELFCLASS64

    @property
    def header_size(self) -> int:
        return 64 if self.is64 else 52

    @property
    def word(self) -> int:
        return 8 if self.is64 else 4

    def sections(self) -> list[Section]:
        """The section headers, or [] when there are none or they do not fit in the file."""
        shdr = SHDR64 if self.is64 else SHDR32
        if self.shnum == 0 or self.shoff == 0 or self.shoff + self.shnum * shdr.size > len(self.data):
            return []
        return [Section(*shdr.unpack_from(self.data, self.shoff + i * shdr.size)) for i in range(self.shnum)]

    def notes(self) -> list[tuple[bytes, int, bytes]]:
        """(owner, type, desc) of every note in PT_NOTE segments, or in SHT_NOTE sections without them."""
        areas = [(s.offset, s.filesz, s.align) for s in self.segments if s.type == PT_NOTE]
        if not areas:
            areas = [(s.offset, s.size, s.addralign) for s in self.sections() if s.type == SHT_NOTE]
        found: list[tuple[bytes, int, bytes]] = []
        for offset, size, align in areas:
            if offset + size > len(self.data):
                continue
            step = 8 if align == 8 else 4
            position, end = offset, offset + size
            while position + NOTE_HEADER.size <= end:
                namesz, descsz, note_type = NOTE_HEADER.unpack_from(self.data, position)
                name_at = position + NOTE_HEADER.size
                desc_at = name_at + align_up(namesz, step)
                next_at = desc_at + align_up(descsz, step)
                if desc_at + descsz > end:
                    break
                found.append((self.data[name_at : name_at + namesz].rstrip(b"\0"), note_type,
                              self.data[desc_at : desc_at + descsz]))
                position = next_at
        return found


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes) -> ElfImage:
    """Parse and check an x86 ELF32 or ELF64 executable's headers; raise BadImage with the reason."""
    if len(data) < 16 or not is_elf(data):
        raise BadImage("not an ELF file")
    elf_class, encoding = data[4], data[5]
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        raise BadImage(f"unsupported ELF class {elf_class}")
    if encoding != ELFDATA2LSB:
        raise BadImage("not a little-endian ELF file")
    is64 = elf_class == ELFCLASS64
    ehdr = EHDR64 if is64 else EHDR32
    if len(data) < 16 + ehdr.size:
        raise BadImage(f"truncated ELF header ({len(data)} bytes)")
    (e_type, machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, _shentsize, shnum,
     shstrndx) = ehdr.unpack_from(data, 16)
    want_machine = EM_X86_64 if is64 else EM_386
    if machine != want_machine:
        raise BadImage(f"ELF{64 if is64 else 32} file for machine {machine}, not"
                       f" {'x86-64' if is64 else 'i386'}")
    if e_type not in (ET_EXEC, ET_DYN):
        raise BadImage(f"ELF file is not an executable (e_type {e_type})")
    phdr = PHDR64 if is64 else PHDR32
    if phnum == 0:
        raise BadImage("ELF file has no program headers")
    if phentsize != phdr.size:
        raise BadImage(f"bad ELF program header size {phentsize}")
    if phoff < 16 + ehdr.size:
        raise BadImage(f"bad ELF program header offset {phoff:#x}")
    if phoff + phnum * phdr.size > len(data):
        raise BadImage(f"ELF program headers at {phoff:#x} are past the end of the file")
    image = ElfImage(data, elf_class, machine, entry, phoff, shoff, shnum, shstrndx)
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phdr.size)
        if is64:
            p_type, p_flags, off, vaddr, paddr, filesz, memsz, align = fields
        else:
            p_type, off, vaddr, paddr, filesz, memsz, p_flags, align = fields
        segment = Segment(p_type, p_flags, off, vaddr, paddr, filesz, memsz, align)
        if p_type in (PT_LOAD, PT_OPENBSD_RANDOMIZE):
            if p_type == PT_LOAD and off + filesz > len(data):
                raise BadImage(f"ELF segment {i} (offset {off:#x}, {filesz:#x} bytes)"
                               " is past the end of the file")
            if p_type == PT_LOAD and memsz < filesz:
                raise BadImage(f"ELF segment {i} is smaller in memory than in the file")
        image.segments.append(segment)
    return image


def _loadable(image: ElfImage) -> list[Segment]:
    """PT_LOAD segments with some permission and some size (vmd skips those without R, W or X)."""
    return [s for s in image.segments
            if s.type == PT_LOAD and s.flags & (PF_R | PF_W | PF_X) and max(s.filesz, s.memsz) > 0]


def _load_segments(image: ElfImage, mem: GuestMemory, address_mask: int | None,
                   areas: tuple[tuple[int, int, str], ...] = BOOT_AREAS) -> Ranges:
    """Copy the PT_LOAD segments to their (masked) physical addresses and zero their BSS.

    Returns the [start, end) range of each segment, in program-header order."""
    segments = _loadable(image)
    if not segments:
        raise BadImage("ELF file has no loadable segments")
    placed: Ranges = []
    for segment in segments:
        address = segment.paddr & address_mask if address_mask is not None else segment.paddr
        size = max(segment.filesz, segment.memsz)
        check_destination(mem, address, size, "ELF segment", areas)
        placed.append((address, address + size))
    for segment, (address, _end) in zip(segments, placed, strict=True):
        mem.write(address, image.data[segment.offset : segment.offset + segment.filesz])
        if segment.memsz > segment.filesz:
            mem.write(address + segment.filesz, bytes(segment.memsz - segment.filesz))
    return placed


# -- OpenBSD boot protocol (vmd loadfile_elf.c; OpenBSD sys/arch/amd64/include/biosvar.h) -------------

OPENBSD_ADDRESS_MASK = 0x0FFF_FFFF  # loadfile.h LOADADDR with a zero offset, as vmd uses it
BOOTARG_MEMMAP = 0
BOOTARG_CONSDEV = 5
BOOTARG_BOOTMAC = 7  # biosvar.h: bios_bootmac_t, the MAC of the interface booted from
BOOTARG_END = 0xFFFF_FFFF
BOOTARG_APIVER = 0x0E  # BAPIV_VECTOR | BAPIV_ENV | BAPIV_BMEMMAP
BIOS_MAP_END = 0
BIOS_MEMMAP = struct.Struct("<QQI")  # bios_memmap_t: addr, size, type (packed, 20 bytes)
# bios_consdev_t (amd64 biosvar.h, packed): dev_t consdev, int conspeed, uint64 consaddr, int consfreq,
# uint32 flags, uint32 reg_width, uint32 reg_shift
BIOS_CONSDEV = struct.Struct("<iiQiIII")
COM0_DEV = (8 << 8) | 0  # makedev(8, 0): com0
COM0_SPEED = 115200
COM0_ADDRESS = 0x3F8
# MAKEBOOTDEV(type, adaptor, controller, unit, partition) | B_DEVMAGIC (sys/reboot.h)
B_DEVMAGIC = 0xA000_0000
BOOTDEV_SD0A = B_DEVMAGIC | 4  # type 4 = sd, everything else 0
# boot(8) flags a kernel command line may carry (sys/reboot.h)
# RB_ASKNAME, RB_SINGLE, RB_KDB, RB_CONFIG
OPENBSD_HOWTO = {"a": 0x0001, "s": 0x0002, "d": 0x0040, "c": 0x0400}
ELF_CTF_SECTION = b".SUNW_ctf"


def openbsd_howto(cmdline: str) -> int:
    """boot(8) flags such as "-s" or "-c -d" as the howto word; anything else is refused."""
    howto = 0
    for word in cmdline.split():
        if len(word) < 2 or word[0] != "-" or any(flag not in OPENBSD_HOWTO for flag in word[1:]):
            raise BadImage("OpenBSD kernels take only boot flags (-a -c -d -s) on the command line,"
                           f" not {word!r}")
        for flag in word[1:]:
            howto |= OPENBSD_HOWTO[flag]
    return howto


def openbsd_bootargs(e820: list[E820Entry], boot_mac: bytes | None = None) -> bytes:
    """The boot arguments: {type, size, next size, data} records, then BOOTARG_END (vmd push_bootargs).
    boot_mac adds BOOTARG_BOOTMAC (vmd does for `boot device net`), padded to whole words."""
    memmap = b"".join(BIOS_MEMMAP.pack(e.address, e.size, e.type) for e in e820)
    memmap += BIOS_MEMMAP.pack(0, 0, BIOS_MAP_END)
    records = b""
    consdev = BIOS_CONSDEV.pack(COM0_DEV, COM0_SPEED, COM0_ADDRESS, 0, 0, 0, 0)
    args = [(BOOTARG_MEMMAP, memmap), (BOOTARG_CONSDEV, consdev)]
    if boot_mac is not None:
        args.append((BOOTARG_BOOTMAC, bytes(boot_mac[:6]).ljust(8, b"\0")))
    for kind, payload in args:
        size = 12 + len(payload)
        records += struct.pack("<III", kind, size, size) + payload
    return records + struct.pack("<I", BOOTARG_END)


def openbsd_stack(bootargs_size: int, end: int, howto: int) -> bytes:
    """The boot stack page (vmd push_stack): the arguments /boot passes to the kernel's start.

    From the top down: bootargs address, bootargs size, biosbasemem 0, biosextmem 0, end, bootarg API
    version, bootdev, howto, and one more zero word that RSP points at (the return address slot)."""
    words = [0, howto, BOOTDEV_SD0A, BOOTARG_APIVER, end, 0, 0, bootargs_size, BOOTARGS_PAGE]
    top = struct.pack(f"<{len(words)}I", *words)
    return bytes(PAGE_SIZE - len(top)) + top


def _copy_symbols(image: ElfImage, mem: GuestMemory, kernel_end: int) -> int:
    """Copy the ELF header, section headers and symbol/string/debug-line/CTF sections after the kernel
    as OpenBSD's loadfile does (vmd elf64_exec with LOAD_SYM|LOAD_HDR). Returns the new end.

    If they do not fit in RAM, nothing is copied and the kernel simply has no symbols for ddb."""
    word = image.word
    shdr = SHDR64 if image.is64 else SHDR32
    elf_at = align_up(kernel_end, word)
    position = elf_at + image.header_size
    sections = image.sections()
    copies: list[tuple[int, int, int]] = []  # (guest address, file offset, size)
    if sections:
        table_size = len(sections) * shdr.size
        position += align_up(table_size, word)
        names = b""
        if image.shstrndx < len(sections):
            names_section = sections[image.shstrndx]
            names = image.data[names_section.offset : names_section.offset + names_section.size]
        have_symbols = any(s.type == SHT_SYMTAB for s in sections)
        offset = align_up(image.header_size + table_size, word)
        for section in sections:
            name_end = names.find(b"\0", section.name) if section.name < len(names) else -1
            name = names[section.name : name_end] if name_end >= 0 else b""
            if section.type in (SHT_SYMTAB, SHT_STRTAB) or name in (b".debug_line", ELF_CTF_SECTION):
                if section.offset + section.size > len(image.data):
                    return align_up(kernel_end, word)
                if have_symbols:
                    copies.append((position, section.offset, section.size))
                position += align_up(section.size, word)
                section.offset = offset
                section.flags |= SHF_ALLOC
                offset += align_up(section.size, word)
    end = position
    if not mem.contains(elf_at, end - elf_at) or end > mem.low_ram_end:
        return align_up(kernel_end, word)
    header = bytearray(image.data[: image.header_size])
    if image.is64:
        struct.pack_into("<QQ", header, 0x20, 0, image.header_size)  # e_phoff, e_shoff
        struct.pack_into("<HH", header, 0x36, 0, 0)  # e_phentsize, e_phnum
    else:
        struct.pack_into("<II", header, 0x1C, 0, image.header_size)
        struct.pack_into("<HH", header, 0x2A, 0, 0)
    mem.write(elf_at, bytes(header))
    if sections:
        mem.write(elf_at + image.header_size,
                  b"".join(shdr.pack(s.name, s.type, s.flags, s.addr, s.offset, s.size, s.link, s.info,
                                     s.addralign, s.entsize) for s in sections))
    for address, file_offset, size in copies:
        mem.write(address, image.data[file_offset : file_offset + size])
    return end


def load_openbsd(image: ElfImage, mem: GuestMemory, options: BootOptions) -> BootPlan:
    """Boot an ELF kernel the way vmd boots OpenBSD (loadfile_elf)."""
    if options.initrd:
        raise BadImage("OpenBSD kernels take no initrd")
    howto = openbsd_howto(options.cmdline)
    placed = _load_segments(image, mem, OPENBSD_ADDRESS_MASK)
    kernel_end = max(end for _start, end in placed)
    for segment in image.segments:
        if segment.type == PT_OPENBSD_RANDOMIZE and segment.filesz:
            address = segment.paddr & OPENBSD_ADDRESS_MASK
            check_destination(mem, address, segment.filesz, "PT_OPENBSD_RANDOMIZE segment")
            mem.write(address, os.urandom(segment.filesz))
    end = _copy_symbols(image, mem, kernel_end)
    acpi_at, mptable_at = place_tables([*placed, (kernel_end, end)])
    e820 = mem.e820()
    bootargs = openbsd_bootargs(e820, options.boot_mac if options.boot_device == "net" else None)
    if len(bootargs) > PAGE_SIZE:
        raise BadImage("boot arguments do not fit in one page")
    mem.write(BOOTARGS_PAGE, bootargs + bytes(PAGE_SIZE - len(bootargs)))
    stack = openbsd_stack(len(bootargs), end, howto)
    mem.write(STACK_PAGE, stack)
    stack_pointer = STACK_TOP - 9 * 4  # vmd: STACK_PAGE + PAGE_SIZE - stacksize, stacksize 36
    gdt_base, gdt_limit = write_gdt(mem)
    entry = image.entry & OPENBSD_ADDRESS_MASK
    if image.is64:
        cr3 = write_identity_page_tables(mem, gib=1)  # as vmd push_pt_64: the kernel builds its own
        cpu = CpuState.long64(entry, gdt_base, gdt_limit, cr3)
        # vmd vcpu_init_flat64 enters with CS = 0x08, a 32-bit code segment (access rights 0xC09F):
        # long mode is active but the CPU runs in compatibility mode, because an OpenBSD/amd64
        # kernel's start (locore0.S) is 32-bit code written for /boot's hand-off.
        cpu.cs = flat_segment(SEL_CODE32, code=True)
        cpu.cs.type = 0xF  # access rights 0xC09F: execute/read, conforming, accessed
        kind = "openbsd-elf64"
    else:
        # vmd enters i386 kernels with paging on through 4 MiB pages over the first 4 GiB (push_pt_32,
        # vcpu_init_flat32). /boot enters them with paging off, which the kernel takes as well: that is the
        # fallback for a KVM that cannot start a vCPU in 32-bit paging mode.
        fallback = CpuState.flat32(entry, gdt_base, gdt_limit)
        fallback.gprs["rsp"] = stack_pointer
        cpu = CpuState.flat32(entry, gdt_base, gdt_limit)
        cpu.cr0 |= CR0_PG
        cpu.cr3 = write_pse_page_directory(mem)
        cpu.cr4 = CR4_PSE
        kind = "openbsd-elf32"
    cpu.gprs["rsp"] = stack_pointer
    return BootPlan(kind=kind, cpu=cpu, e820=e820, acpi_address=acpi_at, mptable_address=mptable_at,
                    cpu_fallback=None if image.is64 else fallback,
                    description=f"OpenBSD ELF{64 if image.is64 else 32} kernel, entry {entry:#x},"
                                f" end {end:#x}")


# -- PVH (xen/include/public/arch-x86/hvm/start_info.h; xen/include/public/elfnote.h) ---------------

XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336E_C578
HVM_START_INFO = struct.Struct("<IIIIQQQQII")  # magic, version, flags, nr_modules, modlist, cmdline,
#                                                rsdp, memmap_paddr, memmap_entries, reserved (56 bytes)
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr, size, cmdline_paddr, reserved
HVM_MEMMAP_ENTRY = struct.Struct("<QQII")  # addr, size, type, reserved


def pvh_entry(image: ElfImage) -> int | None:
    """The 32-bit physical entry point from a Xen XEN_ELFNOTE_PHYS32_ENTRY note, or None."""
    for owner, note_type, desc in image.notes():
        if owner == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
            if len(desc) < 4:
                raise BadImage("PVH entry note is too short")
            value = int.from_bytes(desc[:8], "little")  # Linux emits a .quad on x86-64, a .long on i386
            if value >> 32:
                raise BadImage(f"PVH entry point {value:#x} is above 4 GiB")
            return value
    return None


def _read_initrd(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise BadImage(f"initrd {path}: {error.strerror or error}") from None


def place_module(mem: GuestMemory, size: int, above: int, what: str) -> int:
    """A page-aligned address at or above `above` where size bytes fit in RAM below the PCI hole."""
    address = align_up(max(above, HIGH_MEMORY_START), PAGE_SIZE)
    if address + size > mem.low_ram_end:
        raise BadImage(f"{what} ({size} bytes) does not fit in guest memory above {address:#x}"
                       f" ({mem.size >> 20} MiB)")
    return address


def load_pvh(image: ElfImage, mem: GuestMemory, options: BootOptions, entry: int) -> BootPlan:
    """Boot a kernel through its PVH entry point (Xen's HVM direct boot ABI, docs/misc/pvh.pandoc)."""
    placed = _load_segments(image, mem, None)
    kernel_end = max(end for _start, end in placed)
    acpi_at, mptable_at = place_tables(placed)
    e820 = mem.e820()
    info = BootInfoArea(mem)
    cmdline_at, _length = write_cmdline(mem, options.cmdline)
    memmap = b"".join(HVM_MEMMAP_ENTRY.pack(e.address, e.size, e.type, 0) for e in e820)
    memmap_at = info.put(memmap)
    modlist_at, modules = 0, 0
    if options.initrd:
        data = _read_initrd(options.initrd)
        module_at = place_module(mem, len(data), kernel_end, f"initrd {options.initrd}")
        mem.write(module_at, data)
        modlist_at = info.put(HVM_MODLIST_ENTRY.pack(module_at, len(data), 0, 0))
        modules = 1
    start_info = HVM_START_INFO.pack(HVM_START_MAGIC, 1, 0, modules, modlist_at, cmdline_at,
                                     acpi_at if options.acpi else 0, memmap_at, len(e820), 0)
    start_info_at = info.put(start_info)
    gdt_base, gdt_limit = write_gdt(mem)
    cpu = CpuState.flat32(entry, gdt_base, gdt_limit)
    cpu.gprs.update(rbx=start_info_at, rsp=STACK_TOP)
    return BootPlan(kind="pvh", cpu=cpu, e820=e820, acpi_address=acpi_at, mptable_address=mptable_at,
                    description=f"PVH ELF{64 if image.is64 else 32} kernel, entry {entry:#x}")


# -- Multiboot 0.6.96 ------------------------------------------------------------------------------

MULTIBOOT_MAGIC = 0x1BAD_B002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BAD_B002
MULTIBOOT_SEARCH = 8192
MB_PAGE_ALIGN = 1 << 0  # 3.1.2: align modules on 4 KiB boundaries
MB_MEMORY_INFO = 1 << 1  # provide mem_* (and mmap)
MB_VIDEO_MODE = 1 << 2  # video mode table: we have no display, so none is provided
MB_AOUT_KLUDGE = 1 << 16  # header address fields are valid
MB_KNOWN_FLAGS = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE
# 3.3 boot information flags
MBI_MEMORY, MBI_BOOTDEV, MBI_CMDLINE, MBI_MODS, MBI_MMAP, MBI_LOADER_NAME = (
    1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 6, 1 << 9)
MB_INFO_SIZE = 116  # up to and including the framebuffer fields
MB_MODULE = struct.Struct("<IIII")  # mod_start, mod_end, string, reserved
MB_MMAP_ENTRY = struct.Struct("<IQQI")  # size (20, not counting itself), base_addr, length, type
MB_LOADER_NAME = b"vmd\0"


@dataclass
class MultibootHeader:
    offset: int  # in the file
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_multiboot_header(data: bytes) -> MultibootHeader | None:
    """The first valid multiboot header (3.1.1: 4-byte aligned, in the first 8192 bytes), or None."""
    limit = min(len(data), MULTIBOOT_SEARCH)
    magic = MULTIBOOT_MAGIC.to_bytes(4, "little")
    position = data.find(magic, 0, limit)
    while position >= 0:
        if position % 4 == 0 and position + 12 <= len(data):
            _magic, flags, checksum = struct.unpack_from("<III", data, position)
            if (MULTIBOOT_MAGIC + flags + checksum) & 0xFFFF_FFFF == 0:
                header = MultibootHeader(position, flags)
                if flags & MB_AOUT_KLUDGE:
                    if position + 32 > len(data):
                        raise BadImage("multiboot header is truncated")
                    (header.header_addr, header.load_addr, header.load_end_addr, header.bss_end_addr,
                     header.entry_addr) = struct.unpack_from("<5I", data, position + 12)
                return header
        position = data.find(magic, position + 1, limit)
    return None


def _load_aout_kludge(data: bytes, header: MultibootHeader, mem: GuestMemory) -> tuple[int, Ranges]:
    """Load by the header's address fields (3.1.3). Returns (entry, [start, end) of the loaded image)."""
    if header.load_addr > header.header_addr:
        raise BadImage("multiboot load_addr is above header_addr")
    file_start = header.offset - (header.header_addr - header.load_addr)
    if file_start < 0:
        raise BadImage("multiboot header_addr/load_addr point before the start of the file")
    if header.load_end_addr == 0:
        size = len(data) - file_start
    else:
        if header.load_end_addr < header.load_addr:
            raise BadImage("multiboot load_end_addr is below load_addr")
        size = header.load_end_addr - header.load_addr
        if file_start + size > len(data):
            raise BadImage("multiboot image is shorter than load_end_addr - load_addr")
    end = header.load_addr + size
    bss_end = header.bss_end_addr or end
    if bss_end < end:
        raise BadImage("multiboot bss_end_addr is below load_end_addr")
    check_destination(mem, header.load_addr, bss_end - header.load_addr, "multiboot image", areas=())
    mem.write(header.load_addr, data[file_start : file_start + size])
    if bss_end > end:
        mem.write(end, bytes(bss_end - end))
    return header.entry_addr, [(header.load_addr, bss_end)]


def load_multiboot(data: bytes, image: ElfImage | None, header: MultibootHeader, mem: GuestMemory,
                   options: BootOptions) -> BootPlan:
    """Boot a Multiboot 0.6.96 kernel: ELF segments, or the a.out kludge when flag 16 is set.

    The kernel may be linked anywhere in RAM, as GRUB and QEMU allow: vmd's own structures (boot
    information, GDT, stack, command line, ACPI and MP tables) go where it is not. The command line starts
    with the kernel's path, as GRUB and QEMU give it (kernels read it as argv[0])."""
    unknown = header.flags & 0xFFFF & ~MB_KNOWN_FLAGS
    if unknown:
        raise BadImage(f"multiboot header asks for unsupported features (flags {unknown:#x})")
    if header.flags & MB_AOUT_KLUDGE:
        entry, occupied = _load_aout_kludge(data, header, mem)
    elif image is not None:
        for segment in _loadable(image):
            if segment.paddr + max(segment.filesz, segment.memsz) > 1 << 32:
                raise BadImage(f"multiboot ELF segment at {segment.paddr:#x} is above 4 GiB")
        occupied = _load_segments(image, mem, None, areas=())
        entry = image.entry
    else:
        raise BadImage("multiboot header without load addresses (flag 16) in a file that is not ELF")
    if entry >> 32 or not mem.contains(entry, 1):
        raise BadImage(f"multiboot entry point {entry:#x} is outside guest memory")
    end = max(end for _start, end in occupied)
    module = b""
    module_at = 0
    if options.initrd:
        module = _read_initrd(options.initrd)
        module_at = place_module(mem, len(module), end, f"initrd {options.initrd}")
        mem.write(module_at, module)
        occupied = [*occupied, (module_at, module_at + len(module))]
    cmdline = encode_cmdline(" ".join(word for word in (options.kernel_path, options.cmdline) if word))
    area = place_boot_area(mem, occupied, len(cmdline))
    acpi_at, mptable_at = place_tables(occupied)

    e820 = mem.e820()
    info = BootInfoArea(mem, area.info_start, area.info_end)
    info_at = info.put(bytes(MB_INFO_SIZE))
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME
    mem.write(area.cmdline, cmdline + b"\0")
    cmdline_at = area.cmdline
    mmap = b"".join(MB_MMAP_ENTRY.pack(MB_MMAP_ENTRY.size - 4, e.address, e.size, e.type) for e in e820)
    mmap_at = info.put(mmap)
    loader_name_at = info.put(MB_LOADER_NAME)
    mods_count = mods_at = 0
    if options.initrd:
        name = options.initrd.encode("utf-8", "surrogateescape") + b"\0"
        try:
            string_at = info.put(name, 1)
        except BadImage:
            raise BadImage(f"initrd path too long ({len(name) - 1} bytes)") from None
        mods_at = info.put(MB_MODULE.pack(module_at, module_at + len(module), string_at, 0), 16)
        mods_count = 1
        flags |= MBI_MODS
    mem_lower = LOW_RAM_END // 1024
    mem_upper = (mem.low_ram_end - HIGH_MEMORY_START) // 1024 if mem.low_ram_end > HIGH_MEMORY_START else 0
    mem.write(info_at, struct.pack("<7I", flags, mem_lower, mem_upper, 0, cmdline_at, mods_count, mods_at))
    mem.write(info_at + 44, struct.pack("<II", len(mmap), mmap_at))
    mem.write(info_at + 64, struct.pack("<I", loader_name_at))
    gdt_base, gdt_limit = write_gdt(mem, area.gdt)
    cpu = CpuState.flat32(entry, gdt_base, gdt_limit)
    cpu.gprs.update(rax=MULTIBOOT_BOOTLOADER_MAGIC, rbx=info_at, rsp=area.stack_top)
    how = "a.out kludge" if header.flags & MB_AOUT_KLUDGE else "ELF"
    return BootPlan(kind="multiboot", cpu=cpu, e820=e820, acpi_address=acpi_at, mptable_address=mptable_at,
                    description=f"multiboot kernel ({how}), entry {entry:#x}")

