"""Create an empty qcow2 version 3 image, as vmctl create does (vioqcow2.c `virtio_qcow2_create`).

Layout (QEMU docs/interop/qcow2.txt; 64 KiB clusters like vmd):

    cluster 0           header (104 bytes, version 3), then the backing file name if any
    cluster 1..         the L1 table (all zero: nothing allocated), ceil(l1_size * 8 / 64K) clusters
    next cluster        the refcount table (one cluster); entry 0 points at the refcount block
    next cluster        the refcount block: 16-bit refcounts (refcount_order 4), 1 for every cluster above

Errors: OSError for the file (EEXIST: never overwrites), ValueError with vmctl's texts for the sizes
(`missing disk size`, `base image is not a qcow2 file`, `base size does not match requested size`,
`failure to read base image header`), OverflowError-as-ValueError when the metadata would need a second
refcount block (vmd returns ERANGE there).
"""

from __future__ import annotations

import errno
import os
import struct

MAGIC = b"QFI\xfb"
VERSION = 3
CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
REFCOUNT_ORDER = 4  # 16-bit refcounts, the only width vmd reads
HEADER_LENGTH = 104
L2_ENTRIES = CLUSTER_SIZE // 8  # one L2 table maps this many clusters
REFCOUNTS_PER_BLOCK = CLUSTER_SIZE * 8 // (1 << REFCOUNT_ORDER)

# qcow2.txt "Header": magic, version, backing_file_offset, backing_file_size, cluster_bits, size,
# crypt_method, l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots,
# snapshots_offset, incompatible/compatible/autoclear features, refcount_order, header_length
HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
assert HEADER.size == HEADER_LENGTH


def _div_up(n: int, d: int) -> int:
    return -(-n // d)


def read_qcow2_size(path: str) -> int:
    """The virtual size of the qcow2 image at path (the base of a new overlay)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_LENGTH)
    except OSError as e:
        raise ValueError("failure to read base image header") from e
    if len(head) < 32:
        raise ValueError("failure to read base image header")
    if head[:4] != MAGIC:
        raise ValueError("base image is not a qcow2 file")
    (size,) = struct.unpack_from(">Q", head, 24)
    return int(size)


def create_qcow2(path: str, size: int, base: str | None = None) -> None:
    """Create path (O_EXCL, mode 0600) as an empty qcow2 v3 image of `size` bytes over `base`."""
    if base is not None:
        base_size = read_qcow2_size(base)
        if size == 0:
            size = base_size
        elif size != base_size:
            raise ValueError("base size does not match requested size")
    if size <= 0:
        raise ValueError("missing disk size")
    backing = base.encode() if base is not None else b""
    if HEADER_LENGTH + len(backing) > CLUSTER_SIZE or len(backing) > 1023:
        raise ValueError("snapshot path too long")

    l1_size = _div_up(_div_up(size, CLUSTER_SIZE), L2_ENTRIES)
    l1_clusters = _div_up(l1_size * 8, CLUSTER_SIZE)
    l1_offset = CLUSTER_SIZE
    rct_offset = l1_offset + l1_clusters * CLUSTER_SIZE
    rcb_offset = rct_offset + CLUSTER_SIZE
    nclusters = 1 + l1_clusters + 2
    if nclusters > REFCOUNTS_PER_BLOCK:
        raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))

    header = HEADER.pack(
        MAGIC, VERSION,
        HEADER_LENGTH if backing else 0, len(backing),
        CLUSTER_BITS, size,
        0,  # no encryption
        l1_size, l1_offset,
        rct_offset, 1,
        0, 0,  # no snapshots
        0, 0, 0,  # no feature bits
        REFCOUNT_ORDER, HEADER_LENGTH,
    )
    refcount_table = struct.pack(">Q", rcb_offset)
    refcount_block = struct.pack(f">{nclusters}H", *([1] * nclusters))

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, header + backing, 0)
        os.pwrite(fd, refcount_table, rct_offset)
        os.pwrite(fd, refcount_block, rcb_offset)
        os.ftruncate(fd, nclusters * CLUSTER_SIZE)  # the L1 table is all zeros: nothing allocated
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
