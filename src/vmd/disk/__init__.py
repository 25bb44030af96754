"""Disk images: raw and qcow2, for virtio-blk and `vmctl create`. This layer knows files only.

    open_image(path, fmt=None, writable=True, *, opener=None, lock=True) -> DiskImage
    create_image(path, fmt, size, base=None) -> None
    convert_image(src, dst, ...)  lives in vmd.ctl.create (vmctl's chunked copy over these two)

The format comes from `fmt` ("raw"/"qcow2") or, when None, from the qcow2 magic "QFI\\xfb" (anything else
is raw, as vmd's parse_disk does). A qcow2 image's backing chain is opened read-only with it: names are
relative to the image's own directory (vioqcow2.c virtio_qcow2_get_base), formats come from the backing
format header extension or the magic, and a disk may span at most MAX_FILES_PER_DISK files, the top image
included (vmd's VM_MAX_BASE_PER_DISK). Writable opens take flock(LOCK_EX), read-only ones LOCK_SH, so two
VMs cannot both write one disk, nor write a base another VM reads.

`opener(path, writable) -> fd` replaces os.open: vmd's parent opens the files, the VM process opens the
chain again with an opener that returns the fds it was sent (the flocks travel with them).
"""

from __future__ import annotations

import os

from vmd.disk.image import DiskError, DiskImage, Opener, default_opener, lock_fd
from vmd.disk.qcow2 import Qcow2Image, create_qcow2
from vmd.disk.raw import RawImage, create_raw
from vmd.imageformat import FORMATS, QCOW2, RAW, detect_format, file_format

__all__ = [
    "MAX_FILES_PER_DISK",
    "DiskError",
    "DiskImage",
    "Opener",
    "Qcow2Image",
    "RawImage",
    "create_image",
    "detect_format",
    "file_format",
    "open_image",
]

MAX_FILES_PER_DISK = 4  # vmd.h VM_MAX_BASE_PER_DISK: the top image and up to three bases


def open_image(
    path: str,
    fmt: str | None = None,
    writable: bool = True,
    *,
    opener: Opener | None = None,
    lock: bool = True,
) -> DiskImage:
    """Open a disk image (and its backing chain). Raises DiskError (`<file>: <reason>`)."""
    return _open(path, fmt, writable, opener or default_opener, lock, [])


def _open(path: str, fmt: str | None, writable: bool, opener: Opener, lock: bool, chain: list[str]) -> DiskImage:
    if fmt is not None and fmt not in FORMATS:
        raise DiskError(f"{path}: unrecognized disk format {fmt}")
    real = os.path.realpath(path)
    if real in chain:
        raise DiskError(f"{path}: backing chain loops back to {path}")
    if len(chain) >= MAX_FILES_PER_DISK:
        raise DiskError(f"{chain[0]}: too many backing files (at most {MAX_FILES_PER_DISK} files per disk)")
    try:
        fd = opener(path, writable)
    except OSError as e:
        raise DiskError(f"{path}: {e.strerror}") from None
    try:
        if lock:
            lock_fd(fd, path, writable)
        if fmt is None:
            fmt = detect_format(fd)
        if fmt == RAW:
            return RawImage(path, fd, writable)

        def open_backing(bpath: str, bfmt: str | None) -> DiskImage:
            if bfmt is not None and bfmt not in FORMATS:
                raise DiskError(f"{path}: unsupported backing format {bfmt}")
            return _open(bpath, bfmt, False, opener, lock, chain + [real])

        return Qcow2Image(path, fd, writable, open_backing)
    except OSError as e:
        os.close(fd)
        raise DiskError(f"{path}: {e.strerror or e}") from None
    except BaseException:
        os.close(fd)
        raise


def create_image(path: str, fmt: str, size: int, base: str | None = None) -> None:
    """Create a new image, never overwriting (O_EXCL, mode 0600): raw is a sparse file of `size` bytes;
    qcow2 is version 3 with 64 KiB clusters, over `base` (a qcow2 image, stored by the name given; size 0
    takes the base's size). Raises OSError for the file, DiskError with vmctl's messages otherwise."""
    if fmt == RAW:
        if base is not None:
            raise DiskError("base images require qcow2 disk format")
        create_raw(path, size)
    elif fmt == QCOW2:
        create_qcow2(path, size, base)
    else:
        raise DiskError(f"unrecognized disk format {fmt}")
