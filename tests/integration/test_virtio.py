"""Virtio devices under `vmd run`, driven by the freestanding virtio test guests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Run
from .test_guests import assert_all_ok, field, fnv1a32

MiB = 1 << 20


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as disk:
        disk.truncate(8 * MiB)
    return path


@pytest.mark.parametrize("irq", ["msix", "intx", "poll"])
def test_blk_reads_writes_flushes_and_serves_a_queue_of_requests(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                                 raw_disk: Path, irq: str) -> None:
    result = vmd_run("-m", "32M", "-b", str(guests["virtio_blk"]), "-d", str(raw_disk),
                     "--append", f"tests=id,rw,qd,discard,zeroes irq={irq} expect_id=vd0", "blk")
    assert_all_ok(result)
    assert field(result, r"^capacity (\d+)") == str(8 * MiB // 512)
    assert field(result, r"^id (\S+)") == "vd0"
    if irq != "poll":
        assert int(field(result, r"^irqs (\d+)")) > 0


def test_blk_reads_what_the_host_put_on_the_disk(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                 raw_disk: Path) -> None:
    payload = os.urandom(64 * 1024)
    with open(raw_disk, "r+b") as disk:
        disk.seek(1000 * 512)
        disk.write(payload)
    append = f"tests=read sector=1000 count=128 expect_sum={fnv1a32(payload):08x} irq=msix"
    assert_all_ok(vmd_run("-m", "32M", "-b", str(guests["virtio_blk"]), "-d", str(raw_disk), "--append", append, "r"))


def test_blk_read_only_disk_refuses_writes(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                           raw_disk: Path) -> None:
    before = raw_disk.read_bytes()
    result = vmd_run("-m", "32M", "-b", str(guests["virtio_blk"]), "--read-only", str(raw_disk),
                     "--append", "tests=ro irq=msix", "ro")
    assert_all_ok(result)
    assert raw_disk.read_bytes() == before


def test_qcow2_written_by_the_guest_passes_qemu_img_check(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                         tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(4 * MiB))
    image = tmp_path / "overlay.qcow2"
    made = qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", base.name, str(image))
    assert made.returncode == 0, made.stderr
    result = vmd_run("-m", "32M", "-b", str(guests["virtio_blk"]), "-d", str(image),
                     "--append", "tests=rw,qd,zeroes irq=msix", "q")
    assert_all_ok(result)
    check = qemu_img("check", str(image))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout
    # what the guest reads back through vmd is what qemu-img reads from the image
    flat = tmp_path / "flat.raw"
    assert qemu_img("convert", "-O", "raw", str(image), str(flat)).returncode == 0
    data = flat.read_bytes()
    sector, count = 2048, 256
    expect = fnv1a32(data[sector * 512 : (sector + count) * 512])
    append = f"tests=read sector={sector} count={count} expect_sum={expect:08x} irq=msix"
    assert_all_ok(vmd_run("-m", "32M", "-b", str(guests["virtio_blk"]), "-d", str(image), "--append", append, "q2"))


def test_a_disk_in_use_is_refused(vmd_run: Callable[..., Run], guests: dict[str, Path], raw_disk: Path) -> None:
    import fcntl

    with open(raw_disk, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = vmd_run("-m", "32M", "-b", str(guests["virtio_blk"]), "-d", str(raw_disk), "busy")
    assert result.returncode == 1
    assert result.stderr.strip() == f"vmd: {raw_disk}: disk image is in use by another VM"


def test_rng_gives_the_guest_entropy(vmd_run: Callable[..., Run], guests: dict[str, Path]) -> None:
    result = vmd_run("-m", "32M", "-b", str(guests["virtio_rng"]), "--append", "irq=msix", "rng")
    assert_all_ok(result)
    assert int(field(result, r"^rng ok (\d+) bytes")) >= 4096


DURABLE_BASE = 4096  # sectors


def _kill_during_durable_writes(image: Path, guests: dict[str, Path], kill_after: int) -> list[int]:
    """Boot the durable guest, SIGKILL vmd once `kill_after` rounds were reported flushed; the rounds seen."""
    import re as _re
    import select
    import signal
    import time

    from .test_guests import _spawn

    process = _spawn("-m", "32M", "-b", str(guests["virtio_blk"]), "-d", str(image),
                     "--append", "tests=durable rounds=400 irq=msix", "durable")
    seen = b""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 0.1)[0]:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                if len(_re.findall(rb"^flushed \d+", seen, _re.M)) >= kill_after:
                    process.send_signal(signal.SIGKILL)  # vmd run is the VM: no chance to clean up
                    break
        process.wait(timeout=30)
        seen += process.stdout.read()
    finally:
        process.kill()
    return [int(n) for n in _re.findall(rb"^flushed (\d+)", seen, _re.M)]


def _block(data: bytes, round_number: int) -> bytes:
    return (0xD0D00000 | round_number).to_bytes(4, "little") * 1024


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_flushed_writes_survive_sigkill(guests: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    import random

    image = tmp_path / f"durable.{fmt}"
    assert qemu_img("create", "-f", fmt, str(image), "8M").returncode == 0
    for attempt in range(3):
        flushed = _kill_during_durable_writes(image, guests, kill_after=random.randint(5, 60))
        assert flushed, "the guest reported no flushed write"
        if fmt == "qcow2":
            check = qemu_img("check", "--output=human", str(image))
            # leaked clusters are allowed after a crash (exit 3); corruption (exit 2) is not
            assert check.returncode in (0, 3), check.stdout + check.stderr
            assert "ERROR" not in check.stdout, check.stdout
            flat = tmp_path / "flat.raw"
            flat.unlink(missing_ok=True)
            assert qemu_img("convert", "-O", "raw", str(image), str(flat)).returncode == 0
            data = flat.read_bytes()
        else:
            data = image.read_bytes()
        for round_number in flushed:
            offset = (DURABLE_BASE + 8 * round_number) * 512
            assert data[offset : offset + 4096] == _block(data, round_number), (attempt, round_number)


def test_scsi_cdrom_reads_an_iso(vmd_run: Callable[..., Run], guests: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "iso"
    tree.mkdir()
    (tree / "payload.bin").write_bytes(os.urandom(256 * 1024))
    iso = tmp_path / "test.iso"
    made = subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(tree)], capture_output=True)
    assert made.returncode == 0, made.stderr
    data = iso.read_bytes()
    lba, count = 20, 8
    expect = fnv1a32(data[lba * 2048 : (lba + count) * 2048])
    result = vmd_run("-m", "32M", "-b", str(guests["virtio_scsi"]), "-r", str(iso), "--append",
                     f"tests=inquiry,tur,capacity,read,sense lba={lba} count={count} expect_sum={expect:08x} irq=msix",
                     "cd")
    assert_all_ok(result)
    assert field(result, r"^blocks (\d+)") == str(len(data) // 2048)
    assert field(result, r"^block_size (\d+)") == "2048"
    assert "sense ILLEGAL REQUEST" in result.stdout


def test_seabios_boots_from_a_virtio_blk_disk(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                              tmp_path: Path) -> None:
    disk = tmp_path / "boot.img"
    disk.write_bytes(guests["bootsector"].read_bytes())
    with open(disk, "r+b") as image:
        image.truncate(4 * MiB)
    result = vmd_run("-m", "64M", "-d", str(disk), "-B", "disk", "diskboot", timeout=240)
    assert result.returncode == 0, result
    assert "vmd test boot sector: started by the BIOS from the disk" in result.stdout


def test_seabios_boots_isolinux_from_the_cdrom(guests: dict[str, Path], tmp_path: Path) -> None:
    """SeaBIOS finds the ISO on the virtio-scsi CD-ROM (bootorder from -B cdrom) and starts ISOLINUX.

    On this host's software KVM ISOLINUX then stops at an instruction the KVM cannot emulate (an iret in
    protected mode): the VM ends with a KVM internal error and its registers, after the boot loader's banner.
    On a host with VT-x/AMD-V it goes on to its prompt."""
    import select
    import signal
    import time

    from .test_guests import _spawn

    tree = tmp_path / "iso" / "isolinux"
    tree.mkdir(parents=True)
    for source in ("/usr/lib/ISOLINUX/isolinux.bin", "/usr/lib/syslinux/modules/bios/ldlinux.c32"):
        (tree / Path(source).name).write_bytes(Path(source).read_bytes())
    (tree / "isolinux.cfg").write_text("SERIAL 0 115200\nPROMPT 1\nTIMEOUT 0\nDEFAULT none\nLABEL none\n"
                                       "  KERNEL /none\n")
    iso = tmp_path / "boot.iso"
    made = subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-b", "isolinux/isolinux.bin",
                           "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                           str(tmp_path / "iso")], capture_output=True)
    assert made.returncode == 0, made.stderr
    process = _spawn("-m", "64M", "-r", str(iso), "-B", "cdrom", "cdboot")
    seen = b""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while b"ISOLINUX" not in seen and time.monotonic() < deadline and process.poll() is None:
            if select.select([process.stdout], [], [], 0.2)[0]:
                seen += os.read(process.stdout.fileno(), 4096)
        assert b"Booting from DVD/CD" in seen, seen
        assert b"ISOLINUX" in seen, seen
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        finally:
            process.kill()
