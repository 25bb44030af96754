"""`vmctl create`: make a disk image, or convert one (main.c `ctl_create`, `ctl_convert`; vmctl.c
`create_imagefile`, `open_imagefile`).

The images themselves belong to the disk layer (`vmd.disk`: raw and qcow2 creation, O_EXCL with mode
0600 so an existing file is never overwritten; opening raw and qcow2 images with their backing chains).
This module adds vmctl's rules and messages, and the conversion loop: 64 KiB chunks, all-zero chunks
skipped so the output stays sparse (holes in the source, raw or qcow2, are skipped without reading them,
via the image's `next_data`). Conversion works raw <-> qcow2 in both directions.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from vmd import disk
from vmd.ctl.client import CtlError

RAW = "raw"
QCOW2 = "qcow2"
MB = 1024 * 1024
CHUNK = 64 * 1024  # ctl_convert's buffer size


def parse_disktype(spec: str) -> tuple[str, str]:
    """main.c `parse_disktype()`: (format, path) from a `raw:`/`qcow2:` prefix, the qcow2 magic, the
    `.raw`/`.qcow2` extension (case-insensitive), else raw."""
    for fmt in (RAW, QCOW2):
        if spec.startswith(fmt + ":"):
            return fmt, spec[len(fmt) + 1 :]
    if disk.file_format(spec) == QCOW2:
        return QCOW2, spec
    dot = spec.rfind(".")
    if dot >= 0 and dot + 1 < len(spec):
        ext = spec[dot + 1 :].lower()
        if ext in (RAW, QCOW2):
            return ext, spec
    return RAW, spec


def detect_format(spec: str) -> tuple[str | None, str]:
    """For `start -d`: the prefix, magic or extension format; None when only the raw fallback applies."""
    for fmt in (RAW, QCOW2):
        if spec.startswith(fmt + ":"):
            return fmt, spec[len(fmt) + 1 :]
    fmt, path = parse_disktype(spec)
    if fmt == QCOW2 or path.lower().endswith(".raw"):
        return fmt, path
    return None, path


# --- the disk layer ---------------------------------------------------------------------------------


def create_image(path: str, fmt: str, size: int, base: str | None = None) -> None:
    """create_imagefile(): raise OSError (errno) or CtlError (a message)."""
    try:
        disk.create_image(path, fmt, size, base)
    except disk.DiskError as e:  # vioqcow2.c's own messages
        raise CtlError(str(e)) from None


def open_image(path: str, fmt: str, writable: bool) -> disk.DiskImage:
    try:
        return disk.open_image(path, fmt, writable)
    except disk.DiskError as e:
        raise CtlError(str(e)) from None


# --- progress ------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    WIDTH = 40

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() and total > 0
        self.label = label
        self.total = total
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = min(1.0, done / self.total)
        fill = int(frac * self.WIDTH)
        bar = "=" * fill + (">" if fill < self.WIDTH else "") + " " * max(0, self.WIDTH - fill - 1)
        self.stream.write(f"\r{self.label} [{bar}] {int(frac * 100):3d}%")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.update(self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()


# --- conversion ------------------------------------------------------------------------------------------


def align_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def convert(
    src_spec: str, dst_path: str, dst_fmt: str, dst_size: int, warn: Callable[[str], None]
) -> str:
    """ctl_convert(): copy src into a new image dst. Returns the destination format name.

    dst_size 0 means the source's size; the destination is rounded up to a whole MB.
    Errors are CtlError with vmctl's messages.
    """
    src_fmt, src_path = parse_disktype(src_spec)
    try:
        src = open_image(src_path, src_fmt, writable=False)
    except (OSError, CtlError):
        raise CtlError("failed to open source image file") from None
    dst: disk.DiskImage | None = None
    try:
        requested = dst_size if dst_size else src.size
        if requested < src.size:
            raise CtlError("size cannot be smaller than input disk size")
        size = align_up(requested, MB)
        try:
            create_image(dst_path, dst_fmt, size)
        except (OSError, CtlError):
            raise CtlError("failed to create destination image file") from None
        try:
            dst = open_image(dst_path, dst_fmt, writable=True)
        except (OSError, CtlError):
            raise CtlError("failed to open destination image file") from None
        _copy(src, dst, size, Progress(os.path.basename(dst_path), size))
        if requested < size:
            warn(f"destination size rounded to {size // MB} megabytes")
    finally:
        src.close()
        if dst is not None:
            dst.close()
    return dst_fmt


def _copy(src: disk.DiskImage, dst: disk.DiskImage, size: int, progress: Progress) -> None:
    zero = bytes(CHUNK)
    off = 0
    end = min(size, src.size)  # past the source there are only zeros, which are never written
    while off < end:
        hole = (src.next_data(off) - off) // CHUNK * CHUNK  # whole chunks of hole are skipped unread
        if hole > 0:
            off += hole
            progress.update(off)
            continue
        length = min(CHUNK, src.size - off)
        try:
            buf = src.pread(length, off)
        except OSError:
            raise CtlError("failed to read from source") from None
        if len(buf) != length:
            raise CtlError("failed to read from source")
        if length < CHUNK:  # pad the last chunk with zeros, as vmctl does
            buf += bytes(CHUNK - length)
        if buf != zero:
            try:
                n = dst.pwrite(buf, off)
            except OSError:
                raise CtlError("failed to write to destination") from None
            if n is not None and n != len(buf):
                raise CtlError("failed to write to destination")
        off += CHUNK
        progress.update(off)
    progress.finish()
