"""Every way vmd boots a real operating system, each with Debian's Linux to its shell: the 64-bit bzImage
protocol (test_linux.py), PVH (the decompressed vmlinux, which carries Xen's PVH note), the 32-bit protocol
with an i386 kernel (linux-image-686, paging on), and SeaBIOS starting EXTLINUX from a disk and ISOLINUX from
the CD-ROM (-B cdrom)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Vmd, kit_cmdline, kit_file

pytestmark = pytest.mark.hwvirt

@pytest.fixture(scope="module")
def vmd() -> Iterator[Vmd]:
    daemon = Vmd("")
    yield daemon
    daemon.close()


def _boot(vmd: Vmd, name: str, *args: str, banner: str | None = None) -> str:
    """Start the VM, read its console up to the kit's shell, stop it; returns what `uname -m` says there.

    One VM at a time: the emulated test host's own kernel has crashed (a stack overflow in error_entry while
    running vm/extlinux) with four guests, two in SeaBIOS, booting at once. (The boot loaders' lines come
    out twice, interleaved: SYSLINUX writes to COM1 and to the BIOS screen, which SeaBIOS copies to COM1;
    only their version banner is matched.)"""
    vmd.must("start", "-m", "256M", *args, name)
    try:
        with vmd.console(name) as console:
            if banner:
                console.expect(banner, timeout=300)
            console.expect(r"vmd guest kit: ready", timeout=400)
            console.wait_shell(timeout=60)
            return console.must("uname -m").strip()
    finally:
        vmd.vmctl("stop", "-f", "-w", name, timeout=60)


def _boot_kind(vmd: Vmd, name: str) -> str:
    match = re.search(rf"{name}: (\S+) boot", vmd.log.read_text())
    assert match, vmd.log_tail()
    return match.group(1)


def test_pvh_boots_the_decompressed_vmlinux(vmd: Vmd) -> None:
    args = ("-b", str(kit_file("vmlinux")), "--initrd", str(kit_file("initrd.img")), "--append", kit_cmdline())
    assert _boot(vmd, "pvh", *args) == "x86_64"
    assert _boot_kind(vmd, "pvh") == "pvh"


def test_an_i386_kernel_boots_through_the_32_bit_protocol(vmd: Vmd) -> None:
    args = ("-b", str(kit_file("i386/vmlinuz")), "--initrd", str(kit_file("i386/initrd.img")),
            "--append", kit_cmdline())
    assert _boot(vmd, "i386", *args) == "i686"
    assert _boot_kind(vmd, "i386") == "linux-bzimage"


def test_seabios_boots_extlinux_from_the_disk(vmd: Vmd, tmp_path: Path) -> None:
    disk = tmp_path / "extlinux.img"  # the kit mounts it: a copy of its own
    subprocess.run(["cp", str(kit_file("extlinux.img")), str(disk)], check=True)
    assert _boot(vmd, "extlinux", "-d", str(disk), "-B", "disk", banner=r"(SYS|EXT)LINUX \d") == "x86_64"
    assert _boot_kind(vmd, "extlinux") == "bios"


def test_seabios_boots_isolinux_from_the_cdrom(vmd: Vmd) -> None:
    args = ("-r", str(kit_file("isolinux.iso")), "-B", "cdrom")
    assert _boot(vmd, "isolinux", *args, banner=r"ISOLINUX \d") == "x86_64"
    assert _boot_kind(vmd, "isolinux") == "bios"
