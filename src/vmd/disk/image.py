"""The interface every disk image offers to virtio-blk and to `vmctl create`, and helpers shared by the
formats.

Offsets and lengths are bytes of the virtual disk. `preadv`/`pwritev` take a list of writable/readable
memoryviews (guest memory, normally) and fill or consume them in order, without copying through Python
objects where the format allows it. An I/O that reaches past `size` raises ValueError (the device model
checks bounds first); host I/O errors raise OSError; format-level problems raise DiskError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

# An opener maps (path, writable) to an open fd. vmd's parent (root) opens disk files and passes the fds to
# the VM process; that process reopens the chain with an opener that hands back the received fds.
Opener = Callable[[str, bool], int]


class DiskError(Exception):
    """A one-line, user-facing message: `<file>: <reason>` (or a vmctl message for creation)."""


class DiskImage(Protocol):
    path: str
    size: int
    read_only: bool

    def preadv(self, buffers: Sequence[memoryview], offset: int) -> int: ...

    def pwritev(self, buffers: Sequence[memoryview], offset: int) -> int: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def pread(self, length: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> int: ...

    def next_data(self, offset: int) -> int: ...

    def close(self) -> None: ...


def default_opener(path: str, writable: bool) -> int:
    return os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)


def lock_fd(fd: int, path: str, writable: bool) -> None:
    """flock: exclusive for a writable open, shared for a read-only one (vmd opens disks with O_EXLOCK).

    The lock belongs to the open file description, so an fd passed to another process keeps it and a
    second flock there on the same description succeeds."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if writable else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DiskError(f"{path}: disk image is in use by another VM") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise DiskError(f"{path}: cannot lock: {e.strerror}") from None


def total_length(buffers: Sequence[memoryview]) -> int:
    return sum(b.nbytes for b in buffers)


def check_range(size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"I/O at {offset}+{length} is outside the disk ({size} bytes)")


def as_bytes_view(b: memoryview) -> memoryview:
    return b if b.format == "B" and b.ndim == 1 else b.cast("B")


class BufferCursor:
    """Walks a list of buffers as one byte stream: `take(n)` returns the next n bytes as a list of slices."""

    def __init__(self, buffers: Sequence[memoryview]) -> None:
        self._bufs = [as_bytes_view(b) for b in buffers]
        self._i = 0
        self._off = 0

    def take(self, n: int) -> list[memoryview]:
        out: list[memoryview] = []
        while n > 0:
            if self._i >= len(self._bufs):
                raise ValueError("buffer list is shorter than the I/O")
            b = self._bufs[self._i]
            avail = b.nbytes - self._off
            if avail <= 0:
                self._i += 1
                self._off = 0
                continue
            k = min(avail, n)
            out.append(b[self._off : self._off + k])
            self._off += k
            n -= k
        return out


def fill_zero(slices: Sequence[memoryview]) -> None:
    for s in slices:
        if s.nbytes:
            ctypes.memset((ctypes.c_char * s.nbytes).from_buffer(s), 0, s.nbytes)


def full_preadv(fd: int, slices: list[memoryview], offset: int) -> int:
    """os.preadv until every slice is full or EOF; returns the byte count read (short only at EOF)."""
    done = 0
    want = total_length(slices)
    while slices:
        n = os.preadv(fd, slices, offset + done)
        if n == 0:
            break
        done += n
        slices = _advance(slices, n)
    return done if done <= want else want


def full_pwritev(fd: int, slices: list[memoryview], offset: int) -> int:
    done = 0
    while slices:
        n = os.pwritev(fd, slices, offset + done)
        if n == 0:
            raise OSError(errno.EIO, "short write")
        done += n
        slices = _advance(slices, n)
    return done


def tail_slices(slices: Sequence[memoryview], skip: int) -> list[memoryview]:
    """The part of slices after the first `skip` bytes."""
    out: list[memoryview] = []
    for s in slices:
        if skip >= s.nbytes:
            skip -= s.nbytes
            continue
        out.append(s[skip:])
        skip = 0
    return out


def _advance(slices: list[memoryview], n: int) -> list[memoryview]:
    i = 0
    while i < len(slices) and n >= slices[i].nbytes:
        n -= slices[i].nbytes
        i += 1
    rest = slices[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest


# --- fallocate(2) through libc: FALLOC_FL_* from linux/falloc.h ----------------------------------------

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


@functools.cache
def _libc_fallocate() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = lib.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]  # off_t is 64-bit on x86_64
    fn.restype = ctypes.c_int
    return fn


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError (EOPNOTSUPP where the filesystem cannot do it)."""
    if _libc_fallocate()(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range (reads as zeros afterwards); False when the filesystem cannot."""
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        return True
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
            return False
        raise
