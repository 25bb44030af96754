"""`vmctl create`: raw and qcow2 images (size, sparseness, no overwrite) and conversion between them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmd.ctl.create import detect_format, parse_disktype
from vmd.ctl.main import main

MB = 1024 * 1024


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_create_raw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    assert run(capsys, "create", "-s", "10G", str(img)) == (0, "", "vmctl: raw imagefile created\n")
    st = img.stat()
    assert st.st_size == 10 * 1024 * MB
    assert st.st_blocks == 0  # sparse
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_create_rounds_to_mb(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    img = tmp_path / "d"
    assert run(capsys, "cr", "-s", "1.5M", str(img)) == (
        0, "", "vmctl: disk size rounded to 1.0M\nvmctl: raw imagefile created\n")
    assert img.stat().st_size == MB
    img2 = tmp_path / "e"
    assert run(capsys, "create", "-s", "4.5G", f"raw:{img2}") == (0, "", "vmctl: raw imagefile created\n")
    assert img2.stat().st_size == 4608 * MB


def test_create_never_overwrites(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"precious")
    assert run(capsys, "create", "-s", "1M", str(img)) == (
        1, "", "vmctl: create imagefile operation failed: File exists\n")
    assert img.read_bytes() == b"precious"
    assert run(capsys, "create", "-s", "1M", str(tmp_path / "no" / "dir.img")) == (
        1, "", "vmctl: create imagefile operation failed: No such file or directory\n")


@pytest.mark.parametrize(
    "argv, err",
    [
        (["-s", "100K"], "vmctl: disk size must be at least 1MB\n"),
        (["-s", "x"], "vmctl: invalid disk size: x: Invalid argument\n"),
        (["-b", "base.qcow2", "-s", "1M"], "vmctl: base images require qcow2 disk format\n"),
        (["-b", "base", "-i", "in"], "vmctl: conflicting -b and -i arguments\n"),
    ],
)
def test_create_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], err: str) -> None:
    assert run(capsys, "create", *argv, str(tmp_path / "out.img")) == (1, "", err)
    assert not (tmp_path / "out.img").exists()


def test_create_missing_size(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = str(tmp_path / "o.img")
    assert run(capsys, "create", out) == (
        1, "", f"could not create {out}: missing size argument\n"
        "usage:\tvmctl [-v] create [-b base | -i disk] [-s size] disk\n")


def _sparse_source(path: Path) -> bytes:
    """A 3.25 MB source: data at 0, at 1 MB + 100 and in its last bytes; holes elsewhere."""
    size = 3 * MB + 256 * 1024
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"boot sector" * 10)
        f.seek(MB + 100)
        f.write(os.urandom(70000))  # crosses a 64 KiB chunk boundary
        f.seek(size - 5)
        f.write(b"tail!")
    return path.read_bytes()


def test_convert_raw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    data = _sparse_source(src)
    dst = tmp_path / "dst.img"
    assert run(capsys, "create", "-i", str(src), str(dst)) == (
        0, "", "vmctl: destination size rounded to 4 megabytes\nvmctl: raw imagefile created\n")
    out = dst.read_bytes()
    assert len(out) == 4 * MB
    assert out[: len(data)] == data and out[len(data):] == bytes(4 * MB - len(data))
    # only the chunks holding data were written: 1 + 2 + 1 chunks of 64 KiB
    assert dst.stat().st_blocks * 512 <= 4 * 64 * 1024


def test_convert_with_size(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    data = _sparse_source(src)
    dst = tmp_path / "big.img"
    assert run(capsys, "create", "-i", str(src), "-s", "1G", str(dst)) == (
        0, "", "vmctl: raw imagefile created\n")
    assert dst.stat().st_size == 1024 * MB
    with open(dst, "rb") as f:
        assert f.read(len(data)) == data
    assert run(capsys, "create", "-i", str(src), "-s", "2M", str(tmp_path / "small.img")) == (
        1, "", "vmctl: size cannot be smaller than input disk size\n")
    assert not (tmp_path / "small.img").exists()


def test_convert_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "create", "-i", str(tmp_path / "missing"), str(tmp_path / "o")) == (
        1, "", "vmctl: failed to open source image file\n")
    src = tmp_path / "s"
    src.write_bytes(b"x" * 10)
    existing = tmp_path / "exists"
    existing.write_bytes(b"keep")
    assert run(capsys, "create", "-i", str(src), str(existing)) == (
        1, "", "vmctl: failed to create destination image file\n")
    assert existing.read_bytes() == b"keep"


def test_convert_empty_and_hole_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "holes"
    with open(src, "wb") as f:
        f.truncate(2 * MB)
    dst = tmp_path / "h2"
    assert run(capsys, "create", "-i", str(src), str(dst)) == (0, "", "vmctl: raw imagefile created\n")
    assert dst.stat().st_size == 2 * MB and dst.stat().st_blocks == 0


def test_disktype() -> None:
    assert parse_disktype("qcow2:/x/y.img") == ("qcow2", "/x/y.img")
    assert parse_disktype("raw:/x/y.qcow2") == ("raw", "/x/y.qcow2")
    assert parse_disktype("/nonexistent/a.QCOW2") == ("qcow2", "/nonexistent/a.QCOW2")
    assert parse_disktype("/nonexistent/a.raw") == ("raw", "/nonexistent/a.raw")
    assert parse_disktype("/nonexistent/a.") == ("raw", "/nonexistent/a.")
    assert parse_disktype("/nonexistent/a") == ("raw", "/nonexistent/a")
    assert detect_format("/nonexistent/a") == (None, "/nonexistent/a")
    assert detect_format("/nonexistent/a.raw") == ("raw", "/nonexistent/a.raw")


def test_disktype_magic(tmp_path: Path) -> None:
    f = tmp_path / "img"
    f.write_bytes(b"QFI\xfb\x00\x00\x00\x03")
    assert parse_disktype(str(f)) == ("qcow2", str(f))
    assert detect_format(str(f)) == ("qcow2", str(f))


# --- qcow2 (through vmd.disk)


def _qemu_img_check(path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("qemu-img") is None:
        return
    r = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_create_qcow2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    img = tmp_path / "disk.qcow2"
    assert run(capsys, "create", "-s", "10G", str(img)) == (0, "", "vmctl: qcow2 imagefile created\n")
    head = img.read_bytes()[:104]
    assert head[:8] == b"QFI\xfb\x00\x00\x00\x03"
    assert int.from_bytes(head[24:32], "big") == 10 * 1024 * MB
    assert stat.S_IMODE(img.stat().st_mode) == 0o600
    _qemu_img_check(img)
    assert run(capsys, "create", "-s", "1M", str(img)) == (
        1, "", "vmctl: create imagefile operation failed: File exists\n")


def test_create_qcow2_overlay(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "create", "-s", "2G", "base.qcow2")[0] == 0
    assert run(capsys, "create", "-b", "base.qcow2", "qcow2:over") == (
        0, "", "vmctl: qcow2 imagefile created\n")
    data = (tmp_path / "over").read_bytes()
    assert int.from_bytes(data[24:32], "big") == 2048 * MB
    assert data[104:114] == b"base.qcow2"  # the backing name as given
    _qemu_img_check(tmp_path / "over")
    assert run(capsys, "create", "-b", "base.qcow2", "-s", "1G", "x.qcow2") == (
        1, "", "vmctl: base size does not match requested size\n")
    (tmp_path / "plain").write_bytes(bytes(4096))
    assert run(capsys, "create", "-b", "plain", "y.qcow2") == (
        1, "", "vmctl: base image is not a qcow2 file\n")
    assert run(capsys, "create", "-s", "3E", "z.qcow2") == (
        1, "", "vmctl: create imagefile operation failed: Numerical result out of range\n")
    assert not (tmp_path / "x.qcow2").exists() and not (tmp_path / "z.qcow2").exists()


def test_convert_raw_qcow2_both_ways(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    data = _sparse_source(src)
    q = tmp_path / "mid.qcow2"
    assert run(capsys, "create", "-i", str(src), str(q)) == (
        0, "", "vmctl: destination size rounded to 4 megabytes\nvmctl: qcow2 imagefile created\n")
    _qemu_img_check(q)
    assert q.stat().st_size < MB  # only the chunks holding data were allocated
    back = tmp_path / "back.raw"
    assert run(capsys, "create", "-i", f"qcow2:{q}", str(back)) == (0, "", "vmctl: raw imagefile created\n")
    out = back.read_bytes()
    assert out[: len(data)] == data and out[len(data):] == bytes(4 * MB - len(data))
    assert back.stat().st_blocks * 512 <= 4 * 64 * 1024
    q2 = tmp_path / "copy.qcow2"
    assert run(capsys, "create", "-i", str(q), "-s", "8M", str(q2)) == (0, "", "vmctl: qcow2 imagefile created\n")
    _qemu_img_check(q2)
    assert int.from_bytes(q2.read_bytes()[24:32], "big") == 8 * MB


def test_convert_overlay_flattens(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from vmd.disk import open_image

    monkeypatch.chdir(tmp_path)
    assert run(capsys, "create", "-s", "2M", "base.qcow2")[0] == 0
    img = open_image("base.qcow2")
    img.pwrite(b"base" * 1000, 0)
    img.close()
    assert run(capsys, "create", "-b", "base.qcow2", "over.qcow2")[0] == 0
    img = open_image("over.qcow2")
    img.pwrite(b"over", 100)
    img.close()
    assert run(capsys, "create", "-i", "over.qcow2", "flat.raw") == (0, "", "vmctl: raw imagefile created\n")
    flat = (tmp_path / "flat.raw").read_bytes()
    assert flat[:100] == (b"base" * 25) and flat[100:104] == b"over" and flat[104:4000] == (b"base" * 1000)[104:]


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from vmd.ctl.create import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    p = Progress("x.img", 100, quiet)
    p.update(50, force=True)
    p.finish()
    assert quiet.getvalue() == ""
    tty = Tty()
    p = Progress("x.img", 100, tty)
    p.update(50, force=True)
    assert tty.getvalue().startswith("\rx.img [") and tty.getvalue().endswith("]  50%")
    p.finish()
    assert tty.getvalue().endswith("] 100%\n")
