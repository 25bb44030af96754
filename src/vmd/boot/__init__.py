"""Loading a kernel or firmware image into guest memory: load_kernel() picks the boot method.

Detection order: gzip is undone first (like vmd's gzdopen). An ELF file with a Xen PVH entry note
boots through PVH; an ELF file with a multiboot header through multiboot; any other x86 ELF file
through the OpenBSD boot protocol (vmd's loadfile_elf). A non-ELF file is a Linux bzImage when it
has the boot sector signature and "HdrS", a multiboot kernel when it has a multiboot header with
load addresses, and otherwise a raw BIOS image (vmd's loadfile_bios) unless it was compressed.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from dataclasses import replace

from vmd.boot.bios import BIOS_MAX_SIZE, load_bios
from vmd.boot.elf import (
    find_multiboot_header,
    is_elf,
    load_multiboot,
    load_openbsd,
    load_pvh,
    parse_elf,
    pvh_entry,
)
from vmd.boot.linux import is_bzimage, load_bzimage
from vmd.boot.state import BootError, BootOptions, BootPlan
from vmd.boot.x86 import BadImage
from vmd.memory import GuestMemory, GuestMemoryError

__all__ = ["BootError", "BootOptions", "BootPlan", "load_kernel", "read_image"]

GZIP_MAGIC = b"\x1f\x8b"
MAX_IMAGE = 1 << 32  # no kernel we can load is larger than what fits below 4 GiB

# Last-resort conversion of parser slips on hostile input into BootError; tests set it to () to see them.
SAFETY_NET: tuple[type[Exception], ...] = (
    struct.error, ValueError, IndexError, OverflowError, GuestMemoryError)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress every gzip member of data, refusing output larger than limit."""
    out = io.BytesIO()
    rest = data
    while rest:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = decompressor.decompress(rest, limit + 1 - out.tell())
        out.write(chunk)
        if out.tell() > limit:
            raise BadImage(f"decompressed image is larger than guest memory ({limit >> 20} MiB)")
        if not decompressor.eof:
            if decompressor.unconsumed_tail:
                raise BadImage(f"decompressed image is larger than guest memory ({limit >> 20} MiB)")
            raise BadImage("truncated gzip data")
        rest = decompressor.unused_data
        if rest and rest[:2] != GZIP_MAGIC:
            break  # trailing garbage after the last member, as gzip(1) tolerates zero padding
    return out.getvalue()


READ_CHUNK = 1 << 20


def _read_at_most(handle: io.BufferedReader, size: int) -> bytes:
    """Up to size bytes of handle, read in chunks (a pipe or device has no size to go by)."""
    chunks: list[bytes] = []
    total = 0
    while total < size:
        chunk = handle.read(min(READ_CHUNK, size - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_image(path: str, limit: int) -> tuple[bytes, bool]:
    """The file's contents, gunzipped if it is gzip data; returns (data, was_compressed)."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise BadImage("is a directory")
            # Nothing larger than guest memory can be loaded (a BIOS image may be up to 4 MiB + 1 to be
            # refused with vmd's own message); do not read a disk image given by mistake into memory.
            cap = min(MAX_IMAGE, max(limit, BIOS_MAX_SIZE + 1))
            if stat.S_ISREG(info.st_mode) and info.st_size > cap:
                raise BadImage(f"file too large ({info.st_size >> 20} MiB) for {limit >> 20} MiB"
                               " of guest memory")
            # Read what is there, never a buffer sized by the cap (guest memory): a 5 GiB guest must not
            # need 4 GiB of host memory to read a 100 KiB kernel.
            data = _read_at_most(handle, cap + 1)
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except OSError as error:
        raise BadImage(error.strerror or str(error)) from None
    if not data:
        raise BadImage("empty file")
    if len(data) > cap:
        raise BadImage(f"file too large for {limit >> 20} MiB of guest memory")
    if data[:2] == GZIP_MAGIC:
        try:
            return _gunzip(data, limit), True
        except zlib.error as error:
            raise BadImage(f"corrupt gzip data ({error})") from None
    return data, False


def _load(data: bytes, compressed: bool, mem: GuestMemory, options: BootOptions) -> BootPlan:
    if not data:
        raise BadImage("empty after decompression")
    if is_elf(data):
        image = parse_elf(data)
        entry = pvh_entry(image)
        if entry is not None:
            return load_pvh(image, mem, options, entry)
        header = find_multiboot_header(data)
        if header is not None:
            return load_multiboot(data, image, header, mem, options)
        return load_openbsd(image, mem, options)
    if is_bzimage(data):
        return load_bzimage(data, mem, options)
    header = find_multiboot_header(data)
    if header is not None:
        return load_multiboot(data, None, header, mem, options)
    if compressed:
        raise BadImage("not a kernel or firmware image (compressed, but neither ELF nor bzImage)")
    if options.initrd:
        raise BadImage("not a kernel (an initrd was given, but this looks like a BIOS image)")
    return load_bios(data, mem, options)


def load_kernel(path: str, mem: GuestMemory, options: BootOptions) -> BootPlan:
    """Load the kernel or firmware at path into mem; raise BootError('<path>: <reason>') on bad input."""
    try:
        data, compressed = read_image(path, mem.size)
        plan = _load(data, compressed, mem, options if options.kernel_path else replace(options, kernel_path=path))
    except BadImage as error:
        raise BootError(f"{path}: {error}") from None
    except SAFETY_NET as error:
        raise BootError(f"{path}: malformed image ({error})") from None
    return plan
