"""`vmctl create`: make a disk image, or convert one (main.c `ctl_create`, `ctl_convert`; vmctl.c
`create_imagefile`, `open_imagefile`; vioraw.c `virtio_raw_create`).

Raw images are handled here: a sparse file of the requested size, created O_EXCL with mode 0600 so an
existing file is never overwritten. Conversion copies in 64 KiB chunks and skips all-zero chunks so the
output stays sparse (holes in a raw source are skipped without reading them, via SEEK_DATA).

qcow2 belongs to the disk layer. This module plugs into `vmd.disk` when it provides
`create_image(path, fmt, size, base=None)` (creation) and `open_image(path, fmt, writable)` (conversion; an
object with `size`, `pread(length, offset) -> bytes`, `pwrite(data, offset)`, `close()`), and falls back to
`vmd.disk.qcow2_create.create_qcow2(path, size, base)` for creation. Without them, qcow2 gives
`qcow2 images are not supported yet`.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from vmd.ctl.client import CtlError

RAW = "raw"
QCOW2 = "qcow2"
QCOW2_MAGIC = b"QFI\xfb"  # VM_MAGIC_QCOW
MB = 1024 * 1024
CHUNK = 64 * 1024  # ctl_convert's buffer size
UNSUPPORTED_QCOW2 = "qcow2 images are not supported yet"


class Image(Protocol):
    size: int

    def pread(self, length: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> int | None: ...

    def close(self) -> None: ...


def parse_disktype(spec: str) -> tuple[str, str]:
    """main.c `parse_disktype()`: (format, path) from a `raw:`/`qcow2:` prefix, the qcow2 magic, the
    `.raw`/`.qcow2` extension (case-insensitive), else raw."""
    for fmt in (RAW, QCOW2):
        if spec.startswith(fmt + ":"):
            return fmt, spec[len(fmt) + 1 :]
    try:
        with open(spec, "rb") as f:
            if f.read(len(QCOW2_MAGIC)) == QCOW2_MAGIC:
                return QCOW2, spec
    except OSError:
        pass
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


# --- raw -------------------------------------------------------------------------------------------


def raw_create(path: str, size: int) -> None:
    """virtio_raw_create(): O_CREAT|O_EXCL, 0600, ftruncate to size (a sparse file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


class RawImage:
    """A raw image file as an Image."""

    def __init__(self, path: str, writable: bool) -> None:
        self.fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def next_data(self, offset: int) -> int:
        """The first offset >= offset that may hold data (SEEK_DATA); size when only a hole follows."""
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return self.size
            return offset  # no SEEK_DATA here: assume data

    def close(self) -> None:
        os.close(self.fd)


# --- the disk layer plug-in --------------------------------------------------------------------------


def _disk_attr(module: str, name: str) -> Callable[..., Any] | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    fn = getattr(mod, name, None)
    return fn if callable(fn) else None


def create_image(path: str, fmt: str, size: int, base: str | None = None) -> None:
    """create_imagefile(): raise OSError (errno) or CtlError (a message)."""
    if fmt == RAW:
        raw_create(path, size)
        return
    creator = _disk_attr("vmd.disk", "create_image")
    if creator is not None:
        _call_disk(creator, path, fmt, size, base)
        return
    creator = _disk_attr("vmd.disk.qcow2_create", "create_qcow2")
    if creator is not None:
        _call_disk(creator, path, size, base)
        return
    raise CtlError(UNSUPPORTED_QCOW2)


def _call_disk(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except OSError:
        raise
    except (ValueError, RuntimeError) as e:  # the disk layer's own messages (vioqcow2.c errx)
        raise CtlError(str(e)) from None


def open_image(path: str, fmt: str, writable: bool) -> Image:
    if fmt == RAW:
        return RawImage(path, writable)
    opener = _disk_attr("vmd.disk", "open_image")
    if opener is None:
        raise CtlError(UNSUPPORTED_QCOW2)
    img: Image = _call_disk(opener, path, fmt, writable)
    return img


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
    if QCOW2 in (src_fmt, dst_fmt) and _disk_attr("vmd.disk", "open_image") is None:
        raise CtlError(UNSUPPORTED_QCOW2)
    try:
        src = open_image(src_path, src_fmt, writable=False)
    except (OSError, CtlError):
        raise CtlError("failed to open source image file") from None
    dst: Image | None = None
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


def _copy(src: Image, dst: Image, size: int, progress: Progress) -> None:
    zero = bytes(CHUNK)
    next_data = getattr(src, "next_data", None)
    off = 0
    end = min(size, src.size)  # past the source there are only zeros, which are never written
    while off < end:
        if next_data is not None:
            hole = (next_data(off) - off) // CHUNK * CHUNK  # whole chunks of hole are skipped unread
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
