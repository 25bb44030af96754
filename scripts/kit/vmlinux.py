"""Decompress a Linux bzImage to the ELF vmlinux inside it, and check that vmlinux has a PVH entry point.

The x86 boot protocol (Documentation/arch/x86/boot.rst), version 2.08 and later, gives the compressed kernel's
place in the bzImage: payload_offset (0x248) and payload_length (0x24c), counted from the start of the protected-
mode code, which follows the (setup_sects + 1) sectors of real-mode setup (setup_sects at 0x1f1). Debian builds
its kernels with CONFIG_KERNEL_XZ; gzip payloads are accepted too.

Usage: vmlinux.py BZIMAGE OUTPUT
The output is written only when it is an ELF64 x86-64 executable with a XEN_ELFNOTE_PHYS32_ENTRY (18) note in
the "Xen" namespace: the 32-bit entry point a PVH loader jumps to.
"""

from __future__ import annotations

import lzma
import struct
import sys
import zlib
from pathlib import Path

XEN_ELFNOTE_PHYS32_ENTRY = 18


class KitError(Exception):
    pass


def payload(image: bytes) -> bytes:
    """The compressed kernel of a bzImage, as its setup header locates it."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise KitError("not a Linux bzImage (no HdrS setup header)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        raise KitError(f"boot protocol {version >> 8}.{version & 0xff:02d} has no payload fields (2.08+ needed)")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        raise KitError(f"payload at {start:#x}+{length:#x} lies outside the {len(image)}-byte file")
    return image[start:start + length]


def decompress(data: bytes) -> bytes:
    if data.startswith(b"\xfd7zXZ\x00"):
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        return decompressor.decompress(data)  # the kernel's size trailer stays in unused_data
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(data)  # gzip, trailer-tolerant
    raise KitError(f"payload compressed with an unsupported method (magic {data[:6].hex()})")


def notes(elf: bytes) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in the PT_NOTE segments of an ELF64 little-endian file."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    found = []
    for index in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf,
                                                                                phoff + index * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        position, end = p_offset, p_offset + p_filesz
        while position + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, position)
            name_at = position + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            found.append((elf[name_at:name_at + namesz].rstrip(b"\0"), kind, elf[desc_at:desc_at + descsz]))
            position = desc_at + (descsz + 3) // 4 * 4
    return found


def pvh_entry(elf: bytes) -> int:
    """The PVH entry point of a vmlinux; KitError when it is not an x86-64 ELF64 executable with one."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise KitError("the payload is not a little-endian ELF64 file")
    if struct.unpack_from("<HH", elf, 0x10) != (2, 62):  # ET_EXEC, EM_X86_64
        raise KitError("the payload is not an x86-64 executable")
    for name, kind, desc in notes(elf):
        if name == b"Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) in (4, 8):
            return int.from_bytes(desc[:4], "little")
    raise KitError("vmlinux has no Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY): a kernel without CONFIG_PVH")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: vmlinux.py BZIMAGE OUTPUT", file=sys.stderr)
        return 2
    source, output = Path(argv[0]), Path(argv[1])
    try:
        elf = decompress(payload(source.read_bytes()))
        entry = pvh_entry(elf)
    except (KitError, OSError, lzma.LZMAError, zlib.error) as error:
        print(f"vmlinux.py: {source}: {error}", file=sys.stderr)
        return 1
    partial = output.with_name(output.name + ".part")
    partial.write_bytes(elf)
    partial.replace(output)
    print(f"vmlinux.py: {output}: ELF64 vmlinux, PVH entry {entry:#x}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
