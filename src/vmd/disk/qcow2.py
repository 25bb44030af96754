"""qcow2 versions 2 and 3: read, write, backing chains, creation (QEMU docs/interop/qcow2.txt; OpenBSD
vioqcow2.c for vmd's behaviour and messages).

What is supported
  * versions 2 and 3, cluster sizes 512 B .. 2 MiB, refcount widths 1..64 bits (refcount_order 0..6);
  * backing files (raw or qcow2; `vmd.disk.open_image` resolves and opens the chain);
  * zero clusters (the v3 "all zeros" flag; read as zeros, written by discard/write_zeroes on v3),
    compressed clusters (deflate: read; a write reallocates the cluster), copy-on-write from the backing
    chain, L2 tables, refcount blocks and refcount-table growth allocated at the end of the file;
  * the dirty bit (incompatible bit 0) while a v3 image is open for writing.
What is refused (DiskError, one line naming the file)
  * other versions, unknown incompatible features, external data files, extended L2 entries,
    compression types other than deflate, encryption;
  * writing to an image with internal snapshots or marked corrupt (reading them is fine).

Metadata and durability. Data goes to the file at once. Metadata changes (L2 entries, L1 entries,
refcounts) are kept in memory and written by `flush()` in an order that never lets a crash point at
unwritten data: (a) refcount blocks and the refcount table, then fdatasync (this also makes every data
cluster written so far durable); (b) L2 tables, fdatasync; (c) L1 entries and the header, fdatasync;
(d) refcount decrements of clusters no longer referenced (losing them only leaks space). A v3 image keeps
the dirty bit set until a clean close, so QEMU repairs refcounts after a crash. A v2 image has no dirty bit,
so every metadata change is flushed at once. Clusters are only ever allocated past the end of the file and
never reused while open, so a reader holding a stale mapping never sees another cluster's data, and data
I/O on allocated clusters runs without the lock.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmd.disk.image import (
    BufferCursor,
    DiskError,
    DiskImage,
    check_range,
    fill_zero,
    full_preadv,
    full_pwritev,
    punch_hole,
    tail_slices,
    total_length,
)
from vmd.limits import VM_MAGIC_QCOW

# qcow2.txt "Header": bytes 0..71 (versions 2 and 3): magic, version, backing_file_offset,
# backing_file_size, cluster_bits, size, crypt_method, l1_size, l1_table_offset, refcount_table_offset,
# refcount_table_clusters, nb_snapshots, snapshots_offset
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
# bytes 72..103 (version 3): incompatible_features, compatible_features, autoclear_features,
# refcount_order, header_length; byte 104 (if header_length > 104): compression_type
HEADER_V3 = struct.Struct(">QQQII")
assert HEADER_V2.size == 72 and HEADER_V3.size == 32
V3_HEADER_LENGTH = 104
OFF_INCOMPATIBLE = 72
OFF_AUTOCLEAR = 88
OFF_REFCOUNT_TABLE = 48  # refcount_table_offset (u64) then refcount_table_clusters (u32)

# qcow2.txt "Header", incompatible_features
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT
COMPRESSION_DEFLATE = 0

# qcow2.txt "Header extensions"
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_DATA_FILE = 0x44415441
EXT_HEADER = struct.Struct(">II")

# qcow2.txt "Cluster mapping": L1 and L2 entries
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55: host offset of an L2 table / a standard cluster
OFLAG_COPIED = 1 << 63  # refcount is exactly one: may be written in place
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0  # v3 "all zeros" (standard clusters only)
# qcow2.txt "Host cluster management": refcount table entries, bits 9-63
REFT_OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_NAME = 1023
MAX_L1_BYTES = 32 << 20  # QEMU's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20  # QEMU's QCOW_MAX_REFTABLE_SIZE
MAX_CACHED_L2 = 512  # clean L2 tables kept in memory
DIRTY_LIMIT = 256  # v3: write metadata back once this many tables/blocks are dirty

# kinds of guest cluster
UNALLOCATED, DATA, ZERO, COMPRESSED = range(4)


def _div_up(n: int, d: int) -> int:
    return -(-n // d)


@dataclass
class Header:
    """The fields of qcow2.txt "Header" that matter here."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = COMPRESSION_DEFLATE
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)


def parse_header(path: str, head: bytes) -> Header:
    """Parse and validate the header and its extensions (`head`: the start of the file, at least one
    cluster or the whole file). Raises DiskError with vmd's words where it has some."""

    def fail(reason: str) -> DiskError:
        return DiskError(f"{path}: {reason}")

    if len(head) < HEADER_V2.size or head[:4] != VM_MAGIC_QCOW:
        raise fail("not a qcow2 image")
    f = HEADER_V2.unpack_from(head)
    h = Header(*f[1:])
    if h.version not in (2, 3):
        raise fail(f"unknown qcow2 version {h.version}")
    if h.version == 3:
        if len(head) < HEADER_V2.size + HEADER_V3.size:
            raise fail("truncated qcow2 header")
        h.incompatible, h.compatible, h.autoclear, h.refcount_order, h.header_length = HEADER_V3.unpack_from(head, 72)
        if h.header_length < V3_HEADER_LENGTH or h.header_length % 8 or h.header_length > len(head):
            raise fail(f"bad qcow2 header length {h.header_length}")
        if h.header_length > V3_HEADER_LENGTH:
            h.compression_type = head[104]
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise fail(f"unsupported cluster size 2^{h.cluster_bits}")
    cs = 1 << h.cluster_bits
    _parse_extensions(path, head, h, cs)
    # incompatible features: name the ones we know, then the rest in vmd's words
    if h.incompatible & INCOMPAT_DATA_FILE:
        raise fail("external data files are not supported")
    if h.incompatible & INCOMPAT_EXTL2:
        raise fail("extended L2 entries (subclusters) are not supported")
    if h.incompatible & INCOMPAT_COMPRESSION and h.compression_type != COMPRESSION_DEFLATE:
        name = {1: "zstd"}.get(h.compression_type, str(h.compression_type))
        raise fail(f"compression type {name} is not supported")
    unknown = h.incompatible & ~(INCOMPAT_KNOWN | INCOMPAT_COMPRESSION)
    if unknown:
        names = [h.feature_names[(0, b)] for b in range(64) if unknown >> b & 1 and (0, b) in h.feature_names]
        raise fail(f"unsupported features {unknown:x}" + (f" ({', '.join(names)})" if names else ""))
    if h.crypt_method != 0:
        raise fail("encrypted images are not supported")
    if h.refcount_order > 6:
        raise fail("unsupported refcount size")
    # sanity of the tables (qcow2.txt: offsets are cluster aligned)
    if h.l1_table_offset % cs or h.refcount_table_offset % cs or h.refcount_table_offset == 0:
        raise fail("corrupt image: misaligned metadata tables")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise fail("corrupt image: L1 table too large")
    l2_bits = h.cluster_bits - 3
    if h.size > 0 and h.l1_size < _div_up(_div_up(h.size, cs), 1 << l2_bits):
        raise fail("corrupt image: L1 table too small for the disk size")
    if h.refcount_table_clusters * cs > MAX_REFTABLE_BYTES or h.refcount_table_clusters == 0:
        raise fail("corrupt image: bad refcount table size")
    if h.backing_file_offset:
        if h.backing_file_size > MAX_BACKING_NAME:
            raise fail("snapshot path too long")
        if h.backing_file_offset + h.backing_file_size > len(head):
            raise fail("could not read snapshot base name")
    return h


def _parse_extensions(path: str, head: bytes, h: Header, cs: int) -> None:
    """qcow2.txt "Header extensions": they follow the header, up to the backing file name or the end of
    the first cluster."""
    off = h.header_length if h.version == 3 else HEADER_V2.size
    end = min(len(head), cs)
    if h.backing_file_offset and h.backing_file_offset < end:
        end = h.backing_file_offset
    while off + EXT_HEADER.size <= end:
        kind, length = EXT_HEADER.unpack_from(head, off)
        off += EXT_HEADER.size
        if kind == EXT_END:
            return
        if off + length > end:
            raise DiskError(f"{path}: corrupt image: bad header extension {kind:#x}")
        data = head[off : off + length]
        if kind == EXT_BACKING_FORMAT:
            h.backing_format = data.decode("ascii", "replace")
        elif kind == EXT_FEATURE_TABLE:
            for i in range(0, length - 47, 48):  # type u8, bit u8, name char[46]
                ftype, bit = data[i], data[i + 1]
                h.feature_names[(ftype, bit)] = data[i + 2 : i + 48].rstrip(b"\0").decode("ascii", "replace")
        off += (length + 7) & ~7


def read_qcow2_size(path: str) -> int:
    """The virtual size of the qcow2 image at path (the base of a new overlay); vmctl's messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(V3_HEADER_LENGTH)
    except OSError:
        raise DiskError("failure to read base image header") from None
    if len(head) < 32:
        raise DiskError("failure to read base image header")
    if head[:4] != VM_MAGIC_QCOW:
        raise DiskError("base image is not a qcow2 file")
    return int(struct.unpack_from(">Q", head, 24)[0])


# --- refcount blocks (qcow2.txt "Host cluster management": refcount_bits = 1 << refcount_order) ---------


def _get_refcount(block: bytearray, index: int, order: int) -> int:
    if order >= 3:
        width = 1 << (order - 3)
        return int.from_bytes(block[index * width : (index + 1) * width], "big")
    bits = 1 << order
    per = 8 // bits
    return (block[index // per] >> ((index % per) * bits)) & ((1 << bits) - 1)


def _set_refcount(block: bytearray, index: int, order: int, value: int) -> None:
    if order >= 3:
        width = 1 << (order - 3)
        block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
        return
    bits = 1 << order
    per = 8 // bits
    shift = (index % per) * bits
    mask = ((1 << bits) - 1) << shift
    block[index // per] = (block[index // per] & ~mask) | (value << shift)


class Qcow2Image:
    """A qcow2 image over an open fd (see the module docstring). `open_backing(path, fmt)` opens a backing
    file read-only; `vmd.disk.open_image` supplies it and checks the chain's length."""

    def __init__(
        self,
        path: str,
        fd: int,
        writable: bool,
        open_backing: Callable[[str, str | None], DiskImage] | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        self.read_only = not writable
        self._lock = threading.RLock()
        self._closed = False
        self.backing: DiskImage | None = None
        file_size = os.fstat(fd).st_size
        head = os.pread(fd, 1 << MAX_CLUSTER_BITS, 0)
        h = self.header = parse_header(path, head)
        self.version = h.version
        self.size = h.size
        self.cluster_bits = h.cluster_bits
        self.cluster_size = cs = 1 << h.cluster_bits
        self.l2_bits = h.cluster_bits - 3
        self.refcount_order = h.refcount_order
        self.rb_entries = cs * 8 >> h.refcount_order  # refcounts per refcount block
        self.nclusters = _div_up(h.size, cs)
        self.compressed_bits = 62 - (h.cluster_bits - 8)  # qcow2.txt "Compressed Clusters Descriptor"
        if writable:
            if h.incompatible & INCOMPAT_CORRUPT:
                raise DiskError(f"{path}: image is marked corrupt; repair it with qemu-img check -r all")
            if h.nb_snapshots:
                raise DiskError(f"{path}: internal snapshots are not supported for writing")
        self.backing_name: str | None = None
        if h.backing_file_offset:
            raw_name = head[h.backing_file_offset : h.backing_file_offset + h.backing_file_size]
            self.backing_name = raw_name.decode("utf-8", "surrogateescape")
        # qcow2.txt "Cluster mapping": the L1 table
        l1_raw = _pread_full(fd, h.l1_size * 8, h.l1_table_offset)
        self._l1 = array("Q", l1_raw)
        self._l1.byteswap()
        # qcow2.txt "Host cluster management": the refcount table
        rt_raw = _pread_full(fd, h.refcount_table_clusters * cs, h.refcount_table_offset)
        self._reftable = array("Q", rt_raw)
        self._reftable.byteswap()
        self._rt_offset = h.refcount_table_offset
        self._rt_clusters = h.refcount_table_clusters
        # caches and dirty state (all under self._lock)
        self._l2_cache: OrderedDict[int, array[int]] = OrderedDict()
        self._rb_cache: dict[int, bytearray] = {}
        self._dirty_l2: set[int] = set()
        self._dirty_l1: set[int] = set()
        self._dirty_rb: set[int] = set()
        self._dirty_rt: set[int] = set()
        self._rt_moved = False
        self._pending_frees: list[tuple[int, int]] = []  # (first cluster index, count) to decrement
        self._zbuf_cache: OrderedDict[int, bytes] = OrderedDict()  # decompressed clusters by L2 entry
        self._end = _div_up(file_size, cs) * cs  # the next cluster to allocate
        self._was_dirty = bool(h.incompatible & INCOMPAT_DIRTY)
        if self.backing_name is not None and open_backing is not None:
            self.backing = open_backing(self._resolve_backing(), h.backing_format)
        elif self.backing_name is not None:
            raise DiskError(f"{path}: backing file {self.backing_name} cannot be opened here")
        try:
            if writable:
                self._end = max(self._end, self._last_refcounted() + cs)
                self._mark_open_for_writing()
        except BaseException:
            if self.backing is not None:
                self.backing.close()
            raise

    # --- opening ---------------------------------------------------------------------------------------

    def _resolve_backing(self) -> str:
        """vioqcow2.c virtio_qcow2_get_base: a relative name is relative to the image's own directory."""
        assert self.backing_name is not None
        name = self.backing_name
        if not os.path.isabs(name):
            name = os.path.join(os.path.dirname(os.path.abspath(self.path)), name)
        if not os.path.exists(name):
            raise DiskError(f"{self.path}: missing base image {self.backing_name}")
        return os.path.realpath(name)

    def _last_refcounted(self) -> int:
        """The offset of the last cluster with a non-zero refcount (-cluster_size if none)."""
        cs = self.cluster_size
        for ti in range(len(self._reftable) - 1, -1, -1):
            boff = self._reftable[ti] & REFT_OFFSET_MASK
            if not boff:
                continue
            block = self._refblock(boff)
            stripped = bytes(block).rstrip(b"\0")
            if not stripped:
                continue
            bits = 1 << self.refcount_order
            last = (len(stripped) * 8 - 1) // bits
            while last > 0 and not _get_refcount(block, last, self.refcount_order):
                last -= 1
            return (ti * self.rb_entries + last) * cs
        return -cs

    def _mark_open_for_writing(self) -> None:
        """v3: set the dirty bit (qcow2.txt incompatible bit 0) and clear autoclear bits we do not keep
        (bitmaps) before the first write."""
        h = self.header
        if h.version < 3:
            return
        h.incompatible |= INCOMPAT_DIRTY
        h.autoclear = 0
        os.pwrite(self.fd, struct.pack(">QQQ", h.incompatible, h.compatible, h.autoclear), OFF_INCOMPATIBLE)
        os.fdatasync(self.fd)

    # --- metadata access (caller holds the lock) -------------------------------------------------------

    def _l2_table(self, offset: int) -> array[int]:
        t = self._l2_cache.get(offset)
        if t is not None:
            self._l2_cache.move_to_end(offset)
            return t
        if offset % self.cluster_size:
            raise OSError(errno.EIO, f"{self.path}: corrupt image: misaligned L2 table at {offset:#x}")
        t = array("Q", _pread_full(self.fd, self.cluster_size, offset))
        t.byteswap()
        self._l2_cache[offset] = t
        if len(self._l2_cache) > MAX_CACHED_L2:
            for old in list(self._l2_cache):
                if len(self._l2_cache) <= MAX_CACHED_L2:
                    break
                if old != offset and old not in self._dirty_l2:
                    del self._l2_cache[old]
        return t

    def _entry(self, vc: int) -> int:
        """The L2 entry of guest cluster vc (0 when its L2 table is not allocated)."""
        l1i = vc >> self.l2_bits
        l2off = self._l1[l1i] & OFFSET_MASK
        if not l2off:
            return 0
        return self._l2_table(l2off)[vc & ((1 << self.l2_bits) - 1)]

    def _kind(self, e: int) -> int:
        if e & OFLAG_COMPRESSED:
            return COMPRESSED
        if e & OFLAG_ZERO:
            return ZERO
        if e & OFFSET_MASK:
            return DATA
        return UNALLOCATED

    def _set_entry(self, vc: int, e: int) -> None:
        l1i = vc >> self.l2_bits
        l1e = self._l1[l1i]
        l2off = l1e & OFFSET_MASK
        if not l2off:
            l2off = self._alloc(1)
            self._l2_cache[l2off] = array("Q", bytes(self.cluster_size))
            self._l1[l1i] = l2off | OFLAG_COPIED
            self._dirty_l1.add(l1i)
        elif not l1e & OFLAG_COPIED:  # a shared L2 table: only with snapshots, which are refused
            raise OSError(errno.EIO, f"{self.path}: corrupt image: shared L2 table")
        self._l2_table(l2off)[vc & ((1 << self.l2_bits) - 1)] = e
        self._dirty_l2.add(l2off)

    def _refblock(self, offset: int) -> bytearray:
        b = self._rb_cache.get(offset)
        if b is None:
            if offset % self.cluster_size:
                raise OSError(errno.EIO, f"{self.path}: corrupt image: misaligned refcount block")
            b = self._rb_cache[offset] = bytearray(_pread_full(self.fd, self.cluster_size, offset))
        return b

    def _change_refcount(self, ci: int, delta: int) -> int:
        """Add delta to the refcount of host cluster ci, creating refcount blocks (and growing the refcount
        table) as needed. Returns the new refcount."""
        ti, bi = divmod(ci, self.rb_entries)
        if ti >= len(self._reftable):
            self._grow_reftable(ti)
        boff = self._reftable[ti] & REFT_OFFSET_MASK
        if not boff:
            # a new refcount block, placed at the end of the file and counted like any cluster
            boff = self._end
            self._end += self.cluster_size
            self._rb_cache[boff] = bytearray(self.cluster_size)
            self._reftable[ti] = boff
            self._dirty_rt.add(ti)
            self._dirty_rb.add(boff)
            self._change_refcount(boff >> self.cluster_bits, 1)
        block = self._refblock(boff)
        value = _get_refcount(block, bi, self.refcount_order) + delta
        if value < 0 or value >= 1 << (1 << self.refcount_order):
            raise OSError(errno.EIO, f"{self.path}: refcount of cluster {ci} out of range")
        _set_refcount(block, bi, self.refcount_order, value)
        self._dirty_rb.add(boff)
        return value

    def _grow_reftable(self, needed_index: int) -> None:
        """Move the refcount table to a larger place at the end of the file (qcow2.txt: it must be
        contiguous). The old clusters are freed once the header points at the new table."""
        cs = self.cluster_size
        entries = max(needed_index + 1, 2 * len(self._reftable))
        while True:
            clusters = _div_up(entries * 8, cs)
            # the new table and the refcount blocks for it must themselves be covered
            last = (self._end >> self.cluster_bits) + clusters + _div_up(clusters, self.rb_entries) + 2
            if last // self.rb_entries < entries:
                break
            entries = last // self.rb_entries + 1
        if clusters * cs > MAX_REFTABLE_BYTES:
            raise OSError(errno.EFBIG, f"{self.path}: refcount table would be too large")
        new_off = self._end
        self._end += clusters * cs
        old_off, old_clusters = self._rt_offset, self._rt_clusters
        self._reftable.extend([0] * (clusters * cs // 8 - len(self._reftable)))
        self._rt_offset, self._rt_clusters = new_off, clusters
        self._rt_moved = True
        for i in range(clusters):
            self._change_refcount((new_off >> self.cluster_bits) + i, 1)
        self._pending_frees.append((old_off >> self.cluster_bits, old_clusters))

    def _alloc(self, n: int) -> int:
        """n contiguous new clusters at the end of the file, each with refcount 1."""
        off = self._end
        self._end += n * self.cluster_size
        for i in range(n):
            self._change_refcount((off >> self.cluster_bits) + i, 1)
        return off

    def _free_entry(self, e: int) -> None:
        """Drop the reference an L2 entry held (after the L2 change is durable, in flush step d)."""
        kind = self._kind(e)
        if kind == COMPRESSED:
            coff, csize = self._compressed_extent(e)
            start = coff & ~511
            first = start >> self.cluster_bits
            last = (start + _div_up(csize + (coff & 511), 512) * 512 - 1) >> self.cluster_bits
            self._pending_frees.append((first, last - first + 1))
        elif e & OFFSET_MASK:
            self._pending_frees.append(((e & OFFSET_MASK) >> self.cluster_bits, 1))

    def _compressed_extent(self, e: int) -> tuple[int, int]:
        """qcow2.txt "Compressed Clusters Descriptor": (host offset, byte length) of the deflate data."""
        x = self.compressed_bits
        coff = e & ((1 << x) - 1)
        nsectors = ((e >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return coff, nsectors * 512 - (coff & 511)

    def _read_compressed(self, e: int) -> bytes:
        key = e & ~OFLAG_COPIED
        with self._lock:
            hit = self._zbuf_cache.get(key)
        if hit is not None:
            return hit
        coff, csize = self._compressed_extent(e)
        raw = os.pread(self.fd, csize, coff)
        try:
            out = zlib.decompressobj(-12).decompress(raw, self.cluster_size)
        except zlib.error as err:
            raise OSError(errno.EIO, f"{self.path}: corrupt compressed cluster: {err}") from None
        if len(out) < self.cluster_size:
            raise OSError(errno.EIO, f"{self.path}: corrupt compressed cluster at {coff:#x}")
        with self._lock:
            self._zbuf_cache[key] = out
            while len(self._zbuf_cache) > 16:
                self._zbuf_cache.popitem(last=False)
        return out

    # --- reads -----------------------------------------------------------------------------------------

    def preadv(self, buffers: Sequence[memoryview], offset: int) -> int:
        length = total_length(buffers)
        check_range(self.size, offset, length)
        cursor = BufferCursor(buffers)
        for kind, where, voff, n in self._plan(offset, length):
            self._read_segment(kind, where, voff, cursor.take(n))
        return length

    def _plan(self, offset: int, length: int) -> list[list[int]]:
        """[kind, host offset or L2 entry, guest offset, length] runs; contiguous runs merged."""
        cs, cb = self.cluster_size, self.cluster_bits
        segs: list[list[int]] = []
        with self._lock:
            while length > 0:
                vc, within = offset >> cb, offset & (cs - 1)
                n = min(cs - within, length)
                e = self._entry(vc)
                kind = self._kind(e)
                where = (e & OFFSET_MASK) + within if kind == DATA else e
                last = segs[-1] if segs else None
                if last is not None and last[0] == kind and kind != COMPRESSED and (
                    kind != DATA or last[1] + last[3] == where
                ):
                    last[3] += n
                else:
                    segs.append([kind, where, offset, n])
                offset += n
                length -= n
        return segs

    def _read_segment(self, kind: int, where: int, voff: int, slices: list[memoryview]) -> None:
        n = total_length(slices)
        if kind == DATA:
            got = full_preadv(self.fd, list(slices), where)
            if got < n:  # past the end of the file (cannot happen in a sane image): zeros
                fill_zero(tail_slices(slices, got))
        elif kind == COMPRESSED:
            data = memoryview(self._read_compressed(where))
            pos = voff & (self.cluster_size - 1)
            for s in slices:
                s[:] = data[pos : pos + s.nbytes]
                pos += s.nbytes
        elif kind == UNALLOCATED and self.backing is not None:
            self._read_backing(voff, slices)
        else:
            fill_zero(slices)

    def _read_backing(self, voff: int, slices: list[memoryview]) -> None:
        """Reads fall through to the backing file; past its end they are zeros."""
        assert self.backing is not None
        n = total_length(slices)
        inside = max(0, min(n, self.backing.size - voff))
        if inside:
            self.backing.preadv(BufferCursor(slices).take(inside), voff)
        if inside < n:
            fill_zero(tail_slices(slices, inside))

    def _cluster_content(self, vc: int, e: int) -> bytearray:
        """What guest cluster vc reads as now (for copy-on-write)."""
        cs = self.cluster_size
        buf = bytearray(cs)
        kind = self._kind(e)
        voff = vc << self.cluster_bits
        n = min(cs, self.size - voff)
        if kind == DATA:
            buf[:] = _pread_full(self.fd, cs, e & OFFSET_MASK)
        elif kind == COMPRESSED:
            buf[:] = self._read_compressed(e)
        elif kind == UNALLOCATED and self.backing is not None:
            self._read_backing(voff, [memoryview(buf)[:n]])
        return buf

    # --- writes ----------------------------------------------------------------------------------------

    def pwritev(self, buffers: Sequence[memoryview], offset: int) -> int:
        self._check_writable()
        length = total_length(buffers)
        check_range(self.size, offset, length)
        cs, cb = self.cluster_size, self.cluster_bits
        cursor = BufferCursor(buffers)
        fast: list[tuple[int, list[memoryview]]] = []  # (host offset, slices): allocated, refcount 1
        slow: list[tuple[int, int, list[memoryview]]] = []  # (guest cluster, offset in it, slices)
        with self._lock:
            off, left = offset, length
            while left > 0:
                vc, within = off >> cb, off & (cs - 1)
                n = min(cs - within, left)
                e = self._entry(vc)
                sl = cursor.take(n)
                if self._kind(e) == DATA and e & OFLAG_COPIED:
                    host = (e & OFFSET_MASK) + within
                    if fast and fast[-1][0] + total_length(fast[-1][1]) == host:
                        fast[-1][1].extend(sl)
                    else:
                        fast.append((host, sl))
                else:
                    slow.append((vc, within, sl))
                off += n
                left -= n
        for host, sl in fast:  # data I/O on allocated clusters: no lock
            full_pwritev(self.fd, sl, host)
        if slow:
            with self._lock:
                for vc, within, sl in slow:
                    self._write_new_cluster(vc, within, sl)
                self._after_metadata_change()
        return length

    def _write_new_cluster(self, vc: int, within: int, slices: list[memoryview]) -> None:
        """Copy-on-write: give guest cluster vc a cluster of its own holding its current content with the
        slices written over it (caller holds the lock)."""
        cs = self.cluster_size
        e = self._entry(vc)  # again: another thread may have allocated it meanwhile
        kind = self._kind(e)
        if kind == DATA and e & OFLAG_COPIED:
            full_pwritev(self.fd, slices, (e & OFFSET_MASK) + within)
            return
        n = total_length(slices)
        whole = within == 0 and (n == cs or (vc << self.cluster_bits) + n == self.size)
        # a preallocated zero cluster (zero flag with an offset, refcount 1) is reused in place
        reuse = kind == ZERO and e & OFFSET_MASK and e & OFLAG_COPIED
        host = (e & OFFSET_MASK) if reuse else self._alloc(1)
        if whole:
            full_pwritev(self.fd, slices, host)
            if n < cs:  # the last, partial cluster of the disk: keep the file cluster-sized
                full_pwritev(self.fd, [memoryview(bytes(cs - n))], host + n)
        else:
            buf = bytearray(cs) if kind == ZERO else self._cluster_content(vc, e)
            pos = within
            for s in slices:
                buf[pos : pos + s.nbytes] = s
                pos += s.nbytes
            full_pwritev(self.fd, [memoryview(buf)], host)
        self._set_entry(vc, host | OFLAG_COPIED)
        if not reuse:
            self._free_entry(e)

    def pread(self, length: int, offset: int) -> bytes:
        buf = bytearray(length)
        self.preadv([memoryview(buf)], offset)
        return bytes(buf)

    def pwrite(self, data: bytes, offset: int) -> int:
        return self.pwritev([memoryview(data)], offset)

    # --- discard and write zeroes ------------------------------------------------------------------------

    def discard(self, offset: int, length: int) -> None:
        """Deallocate the whole clusters in the range (partial clusters are left alone: discard is a hint).
        Afterwards they read as zeros (v3 zero flag, or unallocated without a backing file); a v2 image
        with a backing file cannot say "zeros", so discard does nothing there."""
        self._check_writable()
        check_range(self.size, offset, length)
        first, last = self._whole_clusters(offset, length)
        if first >= last:
            return
        with self._lock:
            for vc in range(first, last):
                self._zero_cluster(vc, must_zero=False)
            self._after_metadata_change()

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check_writable()
        check_range(self.size, offset, length)
        first, last = self._whole_clusters(offset, length)
        if first >= last:
            self._write_zero_bytes(offset, length)
            return
        head = (first << self.cluster_bits) - offset
        tail_start = min(last << self.cluster_bits, self.size)
        if head:
            self._write_zero_bytes(offset, head)
        if offset + length > tail_start:
            self._write_zero_bytes(tail_start, offset + length - tail_start)
        with self._lock:
            for vc in range(first, last):
                self._zero_cluster(vc, must_zero=True)
            self._after_metadata_change()

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        if length:
            self.pwritev([memoryview(bytes(length))], offset)

    def _whole_clusters(self, offset: int, length: int) -> tuple[int, int]:
        cs = self.cluster_size
        first = _div_up(offset, cs)
        end = offset + length
        last = self.nclusters if end == self.size else end // cs
        return first, last

    def _zero_cluster(self, vc: int, must_zero: bool) -> None:
        e = self._entry(vc)
        kind = self._kind(e)
        has_backing = self.backing is not None
        if self.version >= 3:
            if kind == ZERO and not e & OFFSET_MASK:
                return
            if kind == UNALLOCATED and not has_backing:
                return
            new = OFLAG_ZERO
        elif not has_backing:
            if kind == UNALLOCATED:
                return
            new = 0
        else:  # v2 over a backing file: only real zeros can hide the backing data
            if must_zero:
                self._write_new_cluster(vc, 0, [memoryview(bytes(min(self.cluster_size,
                                                                      self.size - (vc << self.cluster_bits))))])
            return
        self._set_entry(vc, new)
        self._free_entry(e)

    # --- flush and close --------------------------------------------------------------------------------

    def _after_metadata_change(self) -> None:
        if self.version < 3 or len(self._dirty_l2) + len(self._dirty_rb) > DIRTY_LIMIT:
            self._flush_metadata()

    def flush(self) -> None:
        if self.read_only:
            return
        with self._lock:
            if not self._flush_metadata():
                os.fdatasync(self.fd)

    def _flush_metadata(self) -> bool:
        """Write dirty metadata in crash-safe order (module docstring); False if nothing was dirty."""
        if not (self._dirty_rb or self._dirty_rt or self._rt_moved or self._dirty_l2 or self._dirty_l1
                or self._pending_frees):
            return False
        fd, cs = self.fd, self.cluster_size
        # (a) refcounts first: every cluster about to be referenced is counted; data made durable
        self._write_refcounts()
        os.fdatasync(fd)
        # (b) L2 tables
        if self._dirty_l2:
            for off in sorted(self._dirty_l2):
                t = array("Q", self._l2_table(off))
                t.byteswap()
                os.pwrite(fd, t.tobytes(), off)
            self._dirty_l2.clear()
            os.fdatasync(fd)
        # (c) L1 entries and the header's refcount table location
        if self._dirty_l1 or self._rt_moved:
            for i in sorted(self._dirty_l1):
                os.pwrite(fd, struct.pack(">Q", self._l1[i]), self.header.l1_table_offset + 8 * i)
            self._dirty_l1.clear()
            if self._rt_moved:
                os.pwrite(fd, struct.pack(">QI", self._rt_offset, self._rt_clusters), OFF_REFCOUNT_TABLE)
                self._rt_moved = False
            os.fdatasync(fd)
        # (d) drop the references nothing points at any more; give their space back
        if self._pending_frees:
            frees, self._pending_frees = self._pending_frees, []
            for first, count in frees:
                for ci in range(first, first + count):
                    if self._change_refcount(ci, -1) == 0:
                        punch_hole(fd, ci * cs, cs)
            self._write_refcounts()
            self._zbuf_cache.clear()
        return True

    def _write_refcounts(self) -> None:
        fd = self.fd
        for off in sorted(self._dirty_rb):
            os.pwrite(fd, self._rb_cache[off], off)
        self._dirty_rb.clear()
        if self._rt_moved:
            t = array("Q", self._reftable)
            t.byteswap()
            os.pwrite(fd, t.tobytes(), self._rt_offset)
            self._dirty_rt.clear()
        for i in sorted(self._dirty_rt):
            os.pwrite(fd, struct.pack(">Q", self._reftable[i]), self._rt_offset + 8 * i)
        self._dirty_rt.clear()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self.read_only:
                    self._flush_metadata()
                    # a clean close clears the dirty bit, unless the image was dirty when we opened it:
                    # then refcounts may be off from an earlier crash and QEMU should repair them
                    if self.version >= 3 and not self._was_dirty:
                        self.header.incompatible &= ~INCOMPAT_DIRTY
                        os.fdatasync(self.fd)
                        os.pwrite(self.fd, struct.pack(">Q", self.header.incompatible), OFF_INCOMPATIBLE)
                    os.fdatasync(self.fd)
            finally:
                os.close(self.fd)
                if self.backing is not None:
                    self.backing.close()

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- conversion helper ---------------------------------------------------------------------------------

    def next_data(self, offset: int) -> int:
        """The first offset >= offset whose cluster may hold data in this image or its backing chain."""
        cb = self.cluster_bits
        vc = offset >> cb
        per_l2 = 1 << self.l2_bits
        while vc < self.nclusters:
            with self._lock:
                l2off = self._l1[vc >> self.l2_bits] & OFFSET_MASK
                e = self._entry(vc) if l2off else 0
            if not l2off:
                span = min(((vc >> self.l2_bits) + 1) * per_l2, self.nclusters) - vc
            else:
                span = 1
                kind = self._kind(e)
                if kind in (DATA, COMPRESSED):
                    return max(offset, vc << cb)
                if kind == ZERO:
                    vc += 1
                    continue
            start = max(offset, vc << cb)
            if self.backing is not None and start < self.backing.size:
                nd = self.backing.next_data(start)
                if nd < (vc + span) << cb:
                    return max(start, nd)
            vc += span
        return self.size

    def _check_writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EBADF, f"{self.path}: disk image is read-only")


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    """length bytes at offset; past the end of the file reads as zeros."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            return data + bytes(length - len(data))
        data += more
    return data


# --- creation (vioqcow2.c virtio_qcow2_create) -----------------------------------------------------------


def create_qcow2(path: str, size: int, base: str | None = None, cluster_bits: int = 16) -> None:
    """Create path (O_EXCL, mode 0600) as an empty qcow2 v3 image of `size` bytes, optionally over `base`
    (a qcow2 image; its name is stored as given, size 0 means the base's size).

    Layout (qcow2.txt): cluster 0 the header (104 bytes) and the backing name; then the L1 table (all
    zeros: nothing allocated); then the refcount table; then the refcount blocks counting all of these.
    Errors: OSError (EEXIST, ERANGE for absurd sizes); DiskError with vmctl's messages."""
    if base is not None:
        base_size = read_qcow2_size(base)
        if size == 0:
            size = base_size
        elif size != base_size:
            raise DiskError("base size does not match requested size")
    if size <= 0:
        raise DiskError("missing disk size")
    backing = base.encode() if base is not None else b""
    cs = 1 << cluster_bits
    if len(backing) > MAX_BACKING_NAME or V3_HEADER_LENGTH + len(backing) > cs:
        raise DiskError("snapshot path too long")
    l1_size = _div_up(_div_up(size, cs), cs // 8)
    if l1_size * 8 > MAX_L1_BYTES:
        raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
    l1_clusters = max(1, _div_up(l1_size * 8, cs))
    rb_entries = cs * 8 >> 4
    rt_clusters, rblocks = 1, 1
    while True:  # the refcount blocks count themselves and the table
        total = 1 + l1_clusters + rt_clusters + rblocks
        need_blocks = _div_up(total, rb_entries)
        need_rt = _div_up(need_blocks * 8, cs)
        if need_blocks <= rblocks and need_rt <= rt_clusters:
            break
        rblocks, rt_clusters = max(rblocks, need_blocks), max(rt_clusters, need_rt)
    l1_offset = cs
    rt_offset = l1_offset + l1_clusters * cs
    rb_offset = rt_offset + rt_clusters * cs
    header = HEADER_V2.pack(
        VM_MAGIC_QCOW, 3,
        V3_HEADER_LENGTH if backing else 0, len(backing),
        cluster_bits, size,
        0,  # no encryption
        l1_size, l1_offset,
        rt_offset, rt_clusters,
        0, 0,  # no snapshots
    ) + HEADER_V3.pack(0, 0, 0, 4, V3_HEADER_LENGTH)  # no features, 16-bit refcounts
    reftable = struct.pack(f">{rblocks}Q", *(rb_offset + i * cs for i in range(rblocks)))
    refcounts = struct.pack(f">{total}H", *([1] * total))

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, header + backing, 0)
        os.pwrite(fd, reftable, rt_offset)
        os.pwrite(fd, refcounts, rb_offset)
        os.ftruncate(fd, total * cs)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
