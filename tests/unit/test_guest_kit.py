"""The Linux guest kit that scripts/setup.sh prepares: Debian's kernel and a busybox initramfs that can reach
vmd's devices (for hosts with VT-x/AMD-V; a full kernel does not boot in useful time on a software KVM)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[2] / "guest-kit"


@pytest.fixture(scope="module")
def initramfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = KIT / "initrd.img"
    if not image.exists():
        pytest.skip("no guest kit: scripts/setup.sh prepares it")
    target = tmp_path_factory.mktemp("initramfs")
    subprocess.run(["cpio", "-id", "--quiet"], input=gzip.decompress(image.read_bytes()), cwd=target, check=True)
    return target


def test_the_kernel_is_a_bzimage() -> None:
    kernel = KIT / "vmlinuz"
    if not kernel.exists():
        pytest.skip("no guest kit: scripts/setup.sh prepares it")
    header = kernel.read_bytes()[:0x300]
    assert header[0x1FE:0x200] == b"\x55\xaa" and header[0x202:0x206] == b"HdrS"


def test_the_initramfs_loads_the_virtio_drivers_in_dependency_order(initramfs: Path) -> None:
    order = (initramfs / "lib/modules/order").read_text().split()
    for driver in ("virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko", "virtio_scsi.ko", "ext4.ko"):
        assert driver in order, order
        assert (initramfs / "lib/modules" / driver).exists()
    assert order.index("virtio_pci.ko") < order.index("virtio_blk.ko")
    assert order.index("jbd2.ko") < order.index("ext4.ko")
    init = (initramfs / "init").read_text()
    assert "insmod" in init and "/lib/modules/order" in init
    assert (initramfs / "bin/busybox").exists()
