"""vmd.disk qcow2: images made by qemu-img read right; images we write pass `qemu-img check` and
`qemu-img compare`; random writes against a raw shadow model; refusals of unsupported features."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmd.disk import DiskError, open_image
from vmd.disk.qcow2 import INCOMPAT_DIRTY, Qcow2Image

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="needs qemu-img and qemu-io")

K = 1024
M = 1024 * K


def qemu_img(*args: str) -> str:
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"qemu-img {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def qemu_io(path: Path, *cmds: str, fmt: str = "qcow2") -> None:
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    r = subprocess.run([*argv, str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "fail" not in r.stdout.lower(), r.stdout + r.stderr


def create(path: Path, size: int, *opts: str, backing: Path | None = None, backing_fmt: str = "qcow2") -> Path:
    argv = ["create", "-q", "-f", "qcow2"]
    o = list(opts)
    if o:
        argv += ["-o", ",".join(o)]
    if backing is not None:
        argv += ["-b", backing.name, "-F", backing_fmt]
    qemu_img(*argv, str(path), str(size))
    return path


def as_raw(path: Path) -> bytes:
    out = path.with_name(path.name + ".as-raw")
    qemu_img("convert", "-O", "raw", str(path), str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def check(path: Path) -> None:
    """qemu-img check: exit 0, no corruptions, no leaks."""
    r = subprocess.run(["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info.get("leaks", 0) == 0 and info.get("corruptions", 0) == 0, info


def compare(path: Path, expected: bytes) -> None:
    ref = path.with_name(path.name + ".expected")
    ref.write_bytes(expected)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(ref), str(path)],
                       capture_output=True, text=True)
    ref.unlink()
    assert r.returncode == 0, r.stdout + r.stderr


def read_all(path: Path) -> bytes:
    img = open_image(str(path), writable=False)
    try:
        buf = bytearray(img.size)
        # several buffers, like a descriptor chain
        views = [memoryview(buf)[i : i + 12345] for i in range(0, len(buf), 12345)]
        assert img.preadv(views, 0) == len(buf)
        return bytes(buf)
    finally:
        img.close()


# --- reading what qemu-img made -----------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster", [512, 4096, 65536])
def test_read_qemu_images(tmp_path: Path, compat: str, cluster: int) -> None:
    img = create(tmp_path / "a.qcow2", 1 * M + 1536, f"compat={compat}", f"cluster_size={cluster}")
    cmds = ["write -P 0xab 0 64k", "write -P 0xcd 100000 7000", "write -P 0x11 1048576 1536"]
    if compat == "1.1":
        cmds += ["write -P 0x22 300k 64k", "write -z 310k 40k"]
    qemu_io(img, *cmds)
    assert read_all(img) == as_raw(img)


def test_read_compressed(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    rnd = random.Random(1)
    data = bytearray(2 * M)
    for i in range(0, len(data), 65536):
        chunk = bytes(rnd.choice(b"abcdefgh") for _ in range(256)) * 64
        data[i : i + len(chunk)] = chunk if (i // 65536) % 3 else bytes(65536)
    data[-5:] = b"tail!"
    src.write_bytes(bytes(data))
    for cluster in ("4096", "65536"):
        img = tmp_path / f"c{cluster}.qcow2"
        qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={cluster}", str(src), str(img))
        assert read_all(img) == bytes(data)
        # a write into a compressed cluster reallocates it; the shared compressed clusters stay counted
        with Qcow2Image(str(img), os.open(img, os.O_RDWR), True) as q:
            q.pwrite(b"X" * 100, 65536 + 50)
            q.pwrite(b"Y" * 4096, 3 * 65536)
            q.discard(4 * 65536, 65536)
        data[65536 + 50 : 65536 + 150] = b"X" * 100
        data[3 * 65536 : 3 * 65536 + 4096] = b"Y" * 4096
        data[4 * 65536 : 5 * 65536] = bytes(65536)
        check(img)
        compare(img, bytes(data))
        data[:] = src.read_bytes()


def test_backing_chains(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"B" * M)  # smaller than the overlays: past it they read zeros
    mid = create(tmp_path / "mid.qcow2", 2 * M, "cluster_size=4096", backing=base, backing_fmt="raw")
    qemu_io(mid, "write -P 0x4d 4096 8192", "write -z 512k 4k")
    top = create(tmp_path / "top.qcow2", 2 * M, backing=mid)
    qemu_io(top, "write -P 0x54 6000 100")
    expect = as_raw(top)
    assert expect[:4096] == b"B" * 4096 and expect[M:] == bytes(M)
    assert read_all(top) == expect
    # copy-on-write: partial writes over backed clusters keep the backing data around them
    img = open_image(str(top))
    img.pwrite(b"w" * 10, 700 * K + 3)
    img.pwrite(b"v" * 10, M - 5)  # across the end of the raw base
    img.write_zeroes(64 * K, 64 * K)  # v3: zero cluster hides the backing data
    img.close()
    e = bytearray(expect)
    e[700 * K + 3 : 700 * K + 13] = b"w" * 10
    e[M - 5 : M + 5] = b"v" * 10
    e[64 * K : 128 * K] = bytes(64 * K)
    check(top)
    compare(top, bytes(e))
    assert read_all(mid) == as_raw(mid)  # the bases are untouched


def test_backing_relative_to_image_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "vms"
    d.mkdir()
    base = create(d / "base.qcow2", M)
    qemu_io(base, "write -P 0x42 0 4k")
    create(d / "over.qcow2", M, backing=base)
    monkeypatch.chdir(tmp_path)  # not the image's directory
    img = open_image("vms/over.qcow2", writable=False)
    assert img.pread(4096, 0) == b"\x42" * 4096
    img.close()


def test_too_many_backing_files(tmp_path: Path) -> None:
    prev = create(tmp_path / "l0.qcow2", M)
    for i in range(1, 4):
        prev = create(tmp_path / f"l{i}.qcow2", M, backing=prev)
    open_image(str(prev), writable=False).close()  # 4 files: vmd's limit
    top = create(tmp_path / "l4.qcow2", M, backing=prev)
    with pytest.raises(DiskError, match="too many backing files"):
        open_image(str(top), writable=False)


def test_missing_base_and_loops(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2", M)
    over = create(tmp_path / "over.qcow2", M, backing=base)
    base.unlink()
    with pytest.raises(DiskError, match=r"over.qcow2: missing base image base.qcow2$"):
        open_image(str(over))
    qemu_img("rebase", "-u", "-b", "over.qcow2", "-F", "qcow2", str(over))  # points at itself
    with pytest.raises(DiskError, match="loops"):
        open_image(str(over))


# --- writing: checked by qemu-img ------------------------------------------------------------------------


@pytest.mark.parametrize("compat, refcount_bits", [("0.10", 16)] + [("1.1", 1 << o) for o in range(7)])
def test_refcount_widths(tmp_path: Path, compat: str, refcount_bits: int) -> None:
    img = create(tmp_path / "r.qcow2", 512 * K, f"compat={compat}", "cluster_size=512",
                 f"refcount_bits={refcount_bits}")
    model = bytearray(512 * K)
    q = open_image(str(img))
    rnd = random.Random(refcount_bits)
    for _ in range(40):
        off, n = rnd.randrange(512 * K - 3000), rnd.randrange(1, 3000)
        b = rnd.randbytes(n)
        q.pwrite(b, off)
        model[off : off + n] = b
    q.discard(0, 64 * K)
    model[: 64 * K] = bytes(64 * K)
    q.close()
    check(img)
    compare(img, bytes(model))


def test_refcount_table_grows(tmp_path: Path) -> None:
    """512-byte clusters with 64-bit refcounts: a refcount block covers 32 KiB, one table cluster 2 MiB."""
    img = create(tmp_path / "g.qcow2", 16 * M, "cluster_size=512", "refcount_bits=64")
    before = struct.unpack_from(">QI", img.read_bytes(), 48)
    model = bytearray(16 * M)
    q = open_image(str(img))
    for i in range(0, 16 * M, 8 * K):
        q.pwrite(bytes([i // (8 * K) % 251 + 1]) * 600, i + 100)
        model[i + 100 : i + 700] = bytes([i // (8 * K) % 251 + 1]) * 600
    q.close()
    after = struct.unpack_from(">QI", img.read_bytes(), 48)
    assert after != before and after[1] > before[1]
    check(img)
    compare(img, bytes(model))


def test_l2_cache_eviction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vmd.disk.qcow2 as qmod

    monkeypatch.setattr(qmod, "MAX_CACHED_L2", 2)
    monkeypatch.setattr(qmod, "DIRTY_LIMIT", 3)
    img = create(tmp_path / "c.qcow2", 2 * M, "cluster_size=512")  # one L2 table maps 32 KiB
    model = bytearray(2 * M)
    q = open_image(str(img))
    for i in range(0, 2 * M, 20 * K):
        q.pwrite(b"%d" % i, i)
        model[i : i + len(b"%d" % i)] = b"%d" % i
    assert q.pread(2 * M, 0) == bytes(model)
    q.close()
    check(img)
    compare(img, bytes(model))


def test_dirty_bit_while_open(tmp_path: Path) -> None:
    img = create(tmp_path / "d.qcow2", M)
    q = open_image(str(img))
    q.pwrite(b"x" * 512, 0)
    assert struct.unpack_from(">Q", img.read_bytes(), 72)[0] & INCOMPAT_DIRTY
    q.flush()
    check(img)  # after a flush the image is consistent even while open
    q.close()
    assert struct.unpack_from(">Q", img.read_bytes(), 72)[0] == 0
    check(img)
    v2 = create(tmp_path / "v2.qcow2", M, "compat=0.10")
    q = open_image(str(v2))
    q.pwrite(b"y" * 5000, 3000)
    check(v2)  # v2: metadata is written at once
    q.close()
    check(v2)


def test_two_writers_refused(tmp_path: Path) -> None:
    img = create(tmp_path / "l.qcow2", M)
    a = open_image(str(img))
    with pytest.raises(DiskError, match=r"l.qcow2: disk image is in use by another VM"):
        open_image(str(img))
    with pytest.raises(DiskError, match="in use"):
        open_image(str(img), writable=False)
    a.close()
    r1 = open_image(str(img), writable=False)
    r2 = open_image(str(img), writable=False)
    with pytest.raises(DiskError, match="in use"):
        open_image(str(img))
    r1.close()
    r2.close()
    # a base in use read-only by an overlay cannot be opened for writing
    over = create(tmp_path / "o.qcow2", M, backing=img)
    o = open_image(str(over))
    with pytest.raises(DiskError, match="in use"):
        open_image(str(img))
    o.close()


def test_concurrent_writers(tmp_path: Path) -> None:
    img = create(tmp_path / "t.qcow2", 4 * M, "cluster_size=4096")
    q = open_image(str(img))
    model = bytearray(4 * M)
    chunks = [(i * 3000, bytes([i % 250 + 1]) * 3000) for i in range(4 * M // 3000)]
    for off, b in chunks:
        model[off : off + len(b)] = b

    def worker(part: list[tuple[int, bytes]]) -> None:
        for off, b in part:
            q.pwritev([memoryview(b)[:1000], memoryview(b)[1000:]], off)

    threads = [threading.Thread(target=worker, args=(chunks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert q.pread(4 * M, 0) == bytes(model)
    q.close()
    check(img)
    compare(img, bytes(model))


def test_flush_orders_data_before_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pwrite of metadata that points at new clusters comes after an fdatasync that follows the data."""
    import vmd.disk.qcow2 as qmod

    img = create(tmp_path / "o.qcow2", M, "cluster_size=4096")
    q = open_image(str(img))
    assert isinstance(q, Qcow2Image)
    log: list[tuple[str, int]] = []
    real_pwrite, real_sync, real_pwritev = os.pwrite, os.fdatasync, os.pwritev

    class Os:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def pwrite(fd: int, data: bytes, off: int) -> int:
            log.append(("meta", off))
            return real_pwrite(fd, data, off)

        @staticmethod
        def fdatasync(fd: int) -> None:
            log.append(("sync", 0))
            real_sync(fd)

    monkeypatch.setattr(qmod, "os", Os())
    import vmd.disk.image as imod

    def pwritev(fd: int, bufs: list[memoryview], off: int) -> int:
        log.append(("data", off))
        return real_pwritev(fd, bufs, off)

    monkeypatch.setattr(imod.os, "pwritev", pwritev)
    q.pwrite(b"d" * 100, 8192)
    q.flush()
    monkeypatch.undo()
    kinds = [k for k, _ in log]
    first_meta = kinds.index("meta")
    assert "data" in kinds[:first_meta] or "data" not in kinds  # data first
    l1 = q.header.l1_table_offset
    l1_write = max(i for i, (k, off) in enumerate(log) if k == "meta" and off == l1)
    l2_writes = [i for i, (k, off) in enumerate(log) if k == "meta" and off != l1 and off >= 3 * 4096]
    assert all(i < l1_write for i in l2_writes)
    assert "sync" in kinds[max(l2_writes) : l1_write]  # L2 durable before the L1 points at it
    assert kinds.index("sync") < min(l2_writes)  # data durable before the L2 points at it
    q.close()
    check(img)


# --- random operations against a raw shadow model -----------------------------------------------------------

Op = tuple[str, int, int, int]  # kind (write, zeroes, discard, read), offset, length, byte value
Scenario = tuple[str, int, bool, int, list[Op]]


@st.composite
def scenario(draw: st.DrawFn) -> Scenario:
    compat = draw(st.sampled_from(["0.10", "1.1"]))
    cluster = draw(st.sampled_from([512, 1024, 4096]))
    backing = draw(st.booleans())
    size = 64 * K + draw(st.integers(0, 3)) * 512  # qemu-img rounds sizes to 512 bytes
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from("wwwzdr"))
        off = draw(st.integers(0, size - 1))
        n = draw(st.integers(1, min(3 * cluster, size - off)))
        ops.append((kind, off, n, draw(st.integers(1, 255))))
    return compat, cluster, backing, size, ops


@settings(max_examples=int(os.environ.get("DISK_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_random_ops_match_model(sc: Scenario) -> None:
    compat, cluster, with_backing, size, ops = sc
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base_data = b""
        argv = ["create", "-q", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster}"]
        if with_backing:
            base_data = bytes(range(256)) * 200  # 51200 bytes: smaller than the overlay
            (tmp / "base.raw").write_bytes(base_data)
            argv += ["-b", "base.raw", "-F", "raw"]
        img = tmp / "x.qcow2"
        qemu_img(*argv, str(img), str(size))
        model = bytearray(size)
        model[: min(size, len(base_data))] = base_data[:size]
        q = open_image(str(img))
        assert isinstance(q, Qcow2Image)
        for kind, off, n, v in ops:
            if kind == "w":
                q.pwrite(bytes([v]) * n, off)
                model[off : off + n] = bytes([v]) * n
            elif kind == "z":
                q.write_zeroes(off, n)
                model[off : off + n] = bytes(n)
            elif kind == "d":
                q.discard(off, n)
                if compat == "1.1" or not with_backing:
                    first, last = q._whole_clusters(off, n)
                    a, b = first * cluster, min(last * cluster, size)
                    if a < b:
                        model[a:b] = bytes(b - a)
            else:
                assert q.pread(n, off) == bytes(model[off : off + n])
        assert q.pread(size, 0) == bytes(model)
        q.close()
        check(img)
        compare(img, bytes(model))
        assert read_all(img) == bytes(model)


# --- refusals -------------------------------------------------------------------------------------------------


def patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def test_refusals(tmp_path: Path) -> None:
    def refused(img: Path, message: str, writable: bool = False) -> None:
        with pytest.raises(DiskError) as ei:
            open_image(str(img), writable=writable).close()
        assert str(ei.value) == f"{img}: {message}"

    a = create(tmp_path / "v.qcow2", M)
    patch(a, 4, ">I", 4)
    refused(a, "unknown qcow2 version 4")
    b = create(tmp_path / "f.qcow2", M)
    patch(b, 72, ">Q", 1 << 5)
    refused(b, "unsupported features 20")
    c = create(tmp_path / "e.qcow2", M)
    patch(c, 32, ">I", 1)
    refused(c, "encrypted images are not supported")
    d = create(tmp_path / "r.qcow2", M)
    patch(d, 96, ">I", 7)
    refused(d, "unsupported refcount size")
    e = create(tmp_path / "x.qcow2", M, "data_file=" + str(tmp_path / "x.data"))
    refused(e, "external data files are not supported")
    f = create(tmp_path / "l2.qcow2", M, "extended_l2=on")
    refused(f, "extended L2 entries (subclusters) are not supported")
    g = create(tmp_path / "z.qcow2", M)
    patch(g, 72, ">Q", 1 << 3)
    with open(g, "r+b") as fh:  # compression_type lives at byte 104 when header_length > 104
        fh.seek(100)
        hl = struct.unpack(">I", fh.read(4))[0]
        assert hl > 104
        fh.seek(104)
        fh.write(b"\x01")
    refused(g, "compression type zstd is not supported")
    h = tmp_path / "junk.qcow2"
    h.write_bytes(b"QFI\xfb" + bytes(20))
    refused(h, "not a qcow2 image")
    i = create(tmp_path / "s.qcow2", M)
    qemu_img("snapshot", "-c", "snap", str(i))
    open_image(str(i), writable=False).close()  # reading is fine
    refused(i, "internal snapshots are not supported for writing", writable=True)
    j = create(tmp_path / "c.qcow2", M)
    patch(j, 72, ">Q", 2)
    open_image(str(j), writable=False).close()
    refused(j, "image is marked corrupt; repair it with qemu-img check -r all", writable=True)


def test_out_of_range_and_read_only(tmp_path: Path) -> None:
    img = create(tmp_path / "o.qcow2", M)
    q = open_image(str(img), writable=False)
    with pytest.raises(ValueError):
        q.pread(2, M - 1)
    with pytest.raises(OSError):
        q.pwrite(b"x", 0)
    q.close()
