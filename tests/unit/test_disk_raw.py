"""vmd.disk: raw images, format detection, locking, the opener hook, and image creation."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vmd.disk import DiskError, Qcow2Image, RawImage, create_image, detect_format, file_format, open_image
from vmd.disk.qcow2 import create_qcow2

K = 1024
M = 1024 * K
has_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def qemu_check(path: Path) -> None:
    r = subprocess.run(["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info.get("leaks", 0) == 0 and info.get("corruptions", 0) == 0, info


@pytest.mark.parametrize("head, fmt", [
    (b"QFI\xfb\0\0\0\3", "qcow2"),  # vmd.h VM_MAGIC_QCOW first, whatever follows
    (b"QFI\xfb", "qcow2"),
    (b"QFI", "raw"),  # too short for the magic
    (b"qfi\xfb\0\0\0\3", "raw"),
    (b"", "raw"),
    (b"\0QFI\xfb", "raw"),  # the magic must come first
])
def test_format_detection(tmp_path: Path, head: bytes, fmt: str) -> None:
    """The one qcow2 detection, by name (vm.conf disks, vmctl -d/create) and by fd (open_image)."""
    p = tmp_path / "d.img"
    p.write_bytes(head)
    assert file_format(str(p)) == fmt
    fd = os.open(p, os.O_RDONLY)
    try:
        assert detect_format(fd) == fmt
    finally:
        os.close(fd)


def test_format_of_an_unreadable_name_is_raw(tmp_path: Path) -> None:
    assert file_format(str(tmp_path / "missing")) == "raw"
    assert file_format(str(tmp_path)) == "raw"  # a directory


def test_raw_vectored_io(tmp_path: Path) -> None:
    p = tmp_path / "d.raw"
    create_image(str(p), "raw", 1 * M)
    assert p.stat().st_size == M and p.stat().st_blocks == 0
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    img = open_image(str(p))
    assert isinstance(img, RawImage) and img.size == M and not img.read_only
    a, b = bytearray(b"x" * 1000), bytearray(b"y" * 3096)
    assert img.pwritev([memoryview(a), memoryview(b)], 4096) == 4096
    guest = bytearray(8192)
    views = [memoryview(guest)[:100], memoryview(guest)[100:5000], memoryview(guest)[5000:]]
    assert img.preadv(views, 4000) == 8192
    assert guest[:96] == bytes(96) and guest[96:1096] == a and guest[1096:4192] == b and guest[4192:] == bytes(4000)
    with pytest.raises(ValueError):
        img.preadv([memoryview(bytearray(2))], M - 1)
    img.write_zeroes(4096, 10)
    assert img.pread(12, 4094) == b"\0" * 12
    img.discard(0, 64 * K)
    assert img.pread(64 * K, 0) == bytes(64 * K)
    assert img.next_data(0) == M  # only holes left
    img.pwrite(b"z", 300 * K)
    assert img.next_data(0) <= 300 * K
    img.flush()
    img.close()
    img.close()  # idempotent


def test_raw_read_only_and_locks(tmp_path: Path) -> None:
    p = tmp_path / "d.raw"
    p.write_bytes(bytes(4096))
    w = open_image(str(p), "raw")
    with pytest.raises(DiskError) as ei:
        open_image(str(p), "raw")
    assert str(ei.value) == f"{p}: disk image is in use by another VM"
    with pytest.raises(DiskError, match="in use"):
        open_image(str(p), "raw", writable=False)
    w.close()
    r = open_image(str(p), "raw", writable=False)
    assert r.read_only
    with pytest.raises(OSError):
        r.pwrite(b"x", 0)
    r2 = open_image(str(p), writable=False)
    r.close()
    r2.close()


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(DiskError) as ei:
        open_image(str(tmp_path / "missing"))
    assert str(ei.value) == f"{tmp_path / 'missing'}: No such file or directory"
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(DiskError, match="unrecognized disk format vmdk"):
        open_image(str(tmp_path / "f"), "vmdk")


def test_detection_and_explicit_format(tmp_path: Path) -> None:
    q = tmp_path / "noext"
    create_qcow2(str(q), M)
    img = open_image(str(q), writable=False)
    assert isinstance(img, Qcow2Image) and img.size == M
    img.close()
    img = open_image(str(q), "raw", writable=False)  # an explicit format wins, as with vmd's `format raw`
    assert isinstance(img, RawImage) and img.size == q.stat().st_size
    img.close()


def test_opener_hook(tmp_path: Path) -> None:
    """The parent opens every file of the chain; the VM process reopens it from the fds it was sent."""
    base = tmp_path / "base.qcow2"
    create_qcow2(str(base), M)
    over = tmp_path / "over.qcow2"
    create_qcow2(str(over), 0, base=str(base))
    opened: dict[str, int] = {}

    def parent_opener(path: str, writable: bool) -> int:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        opened[os.path.realpath(path)] = os.dup(fd)
        return fd

    open_image(str(over), opener=parent_opener).close()
    assert set(opened) == {str(over.resolve()), str(base.resolve())}
    img = open_image(str(over), opener=lambda path, writable: opened[os.path.realpath(path)])
    img.pwrite(b"hello", 0)
    assert img.pread(5, 0) == b"hello"
    img.close()


@has_qemu
def test_create_qcow2_layouts(tmp_path: Path) -> None:
    # 64 KiB clusters like vmd; a tiny disk and a huge one (many L1 clusters)
    for size in (M, 3 * 1024**4):
        p = tmp_path / f"s{size}.qcow2"
        create_image(str(p), "qcow2", size)
        qemu_check(p)
    # 512-byte clusters force several refcount blocks and refcount-table clusters at creation
    p = tmp_path / "small.qcow2"
    create_qcow2(str(p), 2 * 1024**3, cluster_bits=9)
    qemu_check(p)
    img = open_image(str(p))
    img.pwrite(b"q" * 5000, 1024**3)
    img.close()
    qemu_check(p)
    with pytest.raises(FileExistsError):
        create_image(str(p), "qcow2", M)
    with pytest.raises(OSError, match="Numerical result out of range"):
        create_image(str(tmp_path / "huge.qcow2"), "qcow2", 3 * 1024**6)
    assert not (tmp_path / "huge.qcow2").exists()


def test_create_messages(tmp_path: Path) -> None:
    base = tmp_path / "b.qcow2"
    create_image(str(base), "qcow2", 2 * M)
    for args, msg in [
        ((str(tmp_path / "x"), "qcow2", M, str(base)), "base size does not match requested size"),
        ((str(tmp_path / "x"), "qcow2", 0, None), "missing disk size"),
        ((str(tmp_path / "x"), "raw", M, str(base)), "base images require qcow2 disk format"),
        ((str(tmp_path / "x"), "qcow2", 0, str(tmp_path / "nobase")), "failure to read base image header"),
    ]:
        with pytest.raises(DiskError) as ei:
            create_image(*args)
        assert str(ei.value) == msg
    (tmp_path / "plain").write_bytes(bytes(512))
    with pytest.raises(DiskError, match="^base image is not a qcow2 file$"):
        create_image(str(tmp_path / "y"), "qcow2", 0, str(tmp_path / "plain"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
