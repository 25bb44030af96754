"""A raw disk image: the file (or block device) is the disk, byte for byte (vioraw.c)."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from vmd.disk.image import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_ZERO_RANGE,
    BufferCursor,
    check_range,
    fallocate,
    fill_zero,
    full_preadv,
    full_pwritev,
    punch_hole,
    tail_slices,
    total_length,
)

ZERO_CHUNK = 1 << 20


def create_raw(path: str, size: int) -> None:
    """virtio_raw_create(): O_CREAT|O_EXCL, mode 0600, ftruncate to size (sparse)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


class RawImage:
    """preadv/pwritev go straight from the fd into the caller's buffers; the kernel does all the work, so
    any number of threads may call at once without a lock."""

    def __init__(self, path: str, fd: int, writable: bool) -> None:
        """Takes ownership of fd (opened and locked by `vmd.disk.open_image`)."""
        self.path = path
        self.fd = fd
        self.read_only = not writable
        self.size = os.lseek(fd, 0, os.SEEK_END)  # works for block devices too
        self._closed = False

    # --- I/O -------------------------------------------------------------------------------------------

    def preadv(self, buffers: Sequence[memoryview], offset: int) -> int:
        length = total_length(buffers)
        check_range(self.size, offset, length)
        slices = BufferCursor(buffers).take(length)
        n = full_preadv(self.fd, list(slices), offset)
        if n < length:  # the file shrank under us: the rest reads as zeros
            fill_zero(tail_slices(slices, n))
        return length

    def pwritev(self, buffers: Sequence[memoryview], offset: int) -> int:
        self._check_writable()
        length = total_length(buffers)
        check_range(self.size, offset, length)
        return full_pwritev(self.fd, BufferCursor(buffers).take(length), offset)

    def pread(self, length: int, offset: int) -> bytes:
        buf = bytearray(length)
        self.preadv([memoryview(buf)], offset)
        return bytes(buf)

    def pwrite(self, data: bytes, offset: int) -> int:
        return self.pwritev([memoryview(data)], offset)

    def flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Give the range back to the filesystem; it reads as zeros afterwards (or is left alone where the
        filesystem cannot punch holes: discard is only a hint)."""
        self._check_writable()
        check_range(self.size, offset, length)
        if length:
            punch_hole(self.fd, offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check_writable()
        check_range(self.size, offset, length)
        if not length:
            return
        try:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
                raise
        if punch_hole(self.fd, offset, length):
            return
        zero = memoryview(bytes(min(length, ZERO_CHUNK)))
        done = 0
        while done < length:
            k = min(length - done, zero.nbytes)
            full_pwritev(self.fd, [zero[:k]], offset + done)
            done += k

    def next_data(self, offset: int) -> int:
        """The first offset >= offset that may hold data (SEEK_DATA); size when only a hole follows."""
        try:
            return min(os.lseek(self.fd, offset, os.SEEK_DATA), self.size)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return self.size
            return offset

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def _check_writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EBADF, f"{self.path}: disk image is read-only")

