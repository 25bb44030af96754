"""vmd.disk's qcow2 code against images qemu-img made (tests/unit/fixtures/qcow2, see make.py there): v2 and
v3 headers, 4 KiB and 64 KiB clusters, zero clusters, compressed clusters and a raw backing file. These run
where QEMU is not installed; test_disk_qcow2.py checks much more where it is."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from vmd.disk import open_image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "qcow2"
_spec = importlib.util.spec_from_file_location("qcow2_fixtures", FIXTURES / "make.py")
assert _spec is not None and _spec.loader is not None
recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipes)


def unpack(directory: Path) -> None:
    for packed in FIXTURES.glob("*.gz"):
        (directory / packed.name[:-3]).write_bytes(gzip.decompress(packed.read_bytes()))


def expected(name: str) -> bytes:
    data = bytearray(recipes.SIZE)
    if name == "top":
        data[: 512 * recipes.K] = bytes([recipes.BASE_BYTE]) * (512 * recipes.K)
    for offset, length, byte in recipes.RECIPES[name][1]:
        data[offset : offset + length] = bytes([byte or 0]) * length
    return bytes(data)


def read_all(path: Path) -> bytes:
    image = open_image(str(path), writable=False)
    try:
        return image.pread(image.size, 0)
    finally:
        image.close()


@pytest.mark.parametrize("name", ["v2-4k", "v3-64k", "top"])
def test_images_qemu_made_read_as_qemu_wrote_them(tmp_path: Path, name: str) -> None:
    unpack(tmp_path)
    data = read_all(tmp_path / f"{name}.qcow2")
    assert len(data) == recipes.SIZE
    assert data == expected(name)


def test_compressed_clusters_read_back(tmp_path: Path) -> None:
    unpack(tmp_path)
    assert read_all(tmp_path / "compressed.qcow2") == recipes.compressed_source()


def test_writes_over_backed_and_compressed_clusters_read_back(tmp_path: Path) -> None:
    unpack(tmp_path)
    for name, before in (("top", expected("top")), ("compressed", recipes.compressed_source())):
        path = tmp_path / f"{name}.qcow2"
        image = open_image(str(path))
        image.pwrite(b"w" * 10, 4096 + 3)  # a cluster that is backed (top) or compressed
        image.pwrite(b"v" * 5000, 200 * 1024)
        image.close()
        after = bytearray(before)
        after[4096 + 3 : 4096 + 13] = b"w" * 10
        after[200 * 1024 : 200 * 1024 + 5000] = b"v" * 5000
        assert read_all(path) == bytes(after), name
        if shutil.which("qemu-img"):
            check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
    assert read_all(tmp_path / "base-raw.img") == bytes([recipes.BASE_BYTE]) * (512 * recipes.K)  # untouched
