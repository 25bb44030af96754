"""The Linux guest kit that scripts/setup.sh prepares (scripts/guest-kit.sh): what a test or a user relies on.

Debian's kernels (amd64 bzImage, its ELF vmlinux for PVH, i386 bzImage), busybox initramfs images, an ext4 disk,
an EXTLINUX disk and an ISOLINUX CD. None of this needs KVM; the last test boots the amd64 kit under QEMU TCG.
"""

from __future__ import annotations

import gzip
import os
import re
import select
import shutil
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[2] / "guest-kit"
READY = "vmd guest kit: ready"
PROMPT = "vmd-kit# "
# The applets tests use (Debian's busybox-static has no mountpoint: grep /proc/mounts instead).
APPLETS = ("sh mount umount poweroff reboot ls cat echo dmesg ip mkdir uname sleep insmod udhcpc ifconfig route ping"
           " nproc head od hexdump dd sync date hwclock grep wc cut md5sum acpid setsid cttyhack tr sed awk stat"
           " lsmod").split()
XEN_ELFNOTE_PHYS32_ENTRY = 18
XLF_KERNEL_64 = 1 << 0


def kit(name: str) -> Path:
    path = KIT / name
    if not path.exists():
        pytest.skip(f"no {path}: scripts/setup.sh prepares the guest kit")
    return path


class Initramfs:
    """The entries of a gzip-compressed newc cpio archive (the kernel's initramfs format), read without cpio(1)
    so that device nodes need no privilege."""

    def __init__(self, image: Path) -> None:
        data = gzip.decompress(image.read_bytes())
        self.entries: dict[str, tuple[int, bytes]] = {}
        position = 0
        while True:
            header = data[position:position + 110]
            assert header[:6] == b"070701", f"{image}: not a newc cpio archive at {position}"
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
            mode, size, namesize = fields[1], fields[6], fields[11]
            name_at = position + 110
            name = data[name_at:name_at + namesize - 1].decode()
            body_at = (name_at + namesize + 3) // 4 * 4
            if name == "TRAILER!!!":
                break
            self.entries[os.path.normpath(name)] = (mode, data[body_at:body_at + size])
            position = (body_at + size + 3) // 4 * 4

    def mode(self, name: str) -> int:
        assert name in self.entries, f"no {name} in the initramfs"
        return self.entries[name][0]

    def read(self, name: str) -> bytes:
        assert stat.S_ISREG(self.mode(name)), f"{name} is not a regular file"
        return self.entries[name][1]

    def text(self, name: str) -> str:
        return self.read(name).decode()

    def readlink(self, name: str) -> str:
        assert stat.S_ISLNK(self.mode(name)), f"{name} is not a symbolic link"
        return self.entries[name][1].decode()

    def executable(self, name: str) -> bool:
        return stat.S_ISREG(self.mode(name)) and bool(self.mode(name) & 0o111)


@pytest.fixture(scope="module")
def initramfs() -> Initramfs:
    return Initramfs(kit("initrd.img"))


@pytest.fixture(scope="module")
def initramfs_i386() -> Initramfs:
    return Initramfs(kit("i386/initrd.img"))


def bzimage_header(path: Path) -> tuple[int, int, str]:
    """(boot protocol version, xloadflags, kernel version string) of a bzImage; asserts the magic numbers."""
    data = path.read_bytes()
    assert data[0x1FE:0x200] == b"\x55\xaa" and data[0x202:0x206] == b"HdrS", f"{path} is not a bzImage"
    version, = struct.unpack_from("<H", data, 0x206)
    xloadflags, = struct.unpack_from("<H", data, 0x236)
    offset, = struct.unpack_from("<H", data, 0x20E)
    release = data[offset + 0x200:].split(b"\0", 1)[0].decode()
    return version, xloadflags, release


def elf_notes(data: bytes) -> list[tuple[bytes, int, bytes]]:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    notes = []
    for index in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
        position, end = p_offset, p_offset + p_filesz
        while p_type == 4 and position + 12 <= end:  # PT_NOTE
            namesz, descsz, kind = struct.unpack_from("<III", data, position)
            name = data[position + 12:position + 12 + namesz].rstrip(b"\0")
            desc_at = position + 12 + (namesz + 3) // 4 * 4
            notes.append((name, kind, data[desc_at:desc_at + descsz]))
            position = desc_at + (descsz + 3) // 4 * 4
    return notes


def elf_class(data: bytes) -> tuple[int, int, bool]:
    """(EI_CLASS, e_machine, has a PT_INTERP) of an ELF file."""
    assert data[:4] == b"\x7fELF"
    machine, = struct.unpack_from("<H", data, 0x12)
    if data[4] == 2:
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    else:
        phoff, = struct.unpack_from("<I", data, 0x1C)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x2A)
    interp = any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))
    return data[4], machine, interp


def test_the_amd64_kernel_is_a_64_bit_bzimage() -> None:
    version, xloadflags, release = bzimage_header(kit("vmlinuz"))
    assert version >= 0x20C and xloadflags & XLF_KERNEL_64
    assert release.split()[0].endswith("-amd64"), release


def test_vmlinux_is_the_same_kernel_as_an_elf64_with_a_pvh_entry_point() -> None:
    data = kit("vmlinux").read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little-endian
    assert struct.unpack_from("<HH", data, 0x10) == (2, 62)  # ET_EXEC, EM_X86_64
    entries = [desc for name, kind, desc in elf_notes(data) if name == b"Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY]
    assert len(entries) == 1 and int.from_bytes(entries[0][:4], "little") != 0
    release = bzimage_header(kit("vmlinuz"))[2].split()[0]
    assert f"Linux version {release} ".encode() in data


def test_the_i386_kernel_is_a_32_bit_bzimage() -> None:
    version, xloadflags, release = bzimage_header(kit("i386/vmlinuz"))
    assert not xloadflags & XLF_KERNEL_64
    assert release.split()[0].endswith("-686"), release


def test_cmdline_is_one_line_for_the_serial_console() -> None:
    text = kit("cmdline").read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    words = text.split()
    assert words[0] == "console=ttyS0"
    assert "quiet" in words  # errors, the power-down line and the kit's own lines still show


@pytest.mark.parametrize("arch", ["amd64", "i386"])
def test_the_initramfs_loads_every_module_after_what_it_needs(arch: str, request: pytest.FixtureRequest) -> None:
    root: Initramfs = request.getfixturevalue("initramfs" if arch == "amd64" else "initramfs_i386")
    order = root.text("lib/modules/order").split()
    wanted = ["virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko", "virtio_scsi.ko", "virtio-rng.ko", "sr_mod.ko",
              "sd_mod.ko", "crc32c_generic.ko", "ext4.ko", "isofs.ko", "button.ko", "evdev.ko"]
    for module in wanted:
        assert module in order, (module, order)
    for module in order:
        assert root.read(f"lib/modules/{module}")[:4] == b"\x7fELF", module
    before = [("virtio.ko", "virtio_pci.ko"), ("virtio_ring.ko", "virtio_blk.ko"), ("scsi_mod.ko", "virtio_scsi.ko"),
              ("cdrom.ko", "sr_mod.ko"), ("crc32c_generic.ko", "ext4.ko"), ("jbd2.ko", "ext4.ko"),
              ("mbcache.ko", "ext4.ko"), ("crc16.ko", "ext4.ko")]
    for first, then in before:
        assert order.index(first) < order.index(then), (first, then, order)
    ko = root.read("lib/modules/ext4.ko")
    assert ko[4] == (2 if arch == "amd64" else 1)  # ELF class of the architecture
    assert not ko.endswith(b"~Module signature appended~\n")  # unsigned: no RSA check on every insmod


@pytest.mark.parametrize("arch", ["amd64", "i386"])
def test_the_initramfs_has_a_static_busybox_of_its_architecture(arch: str, request: pytest.FixtureRequest) -> None:
    root: Initramfs = request.getfixturevalue("initramfs" if arch == "amd64" else "initramfs_i386")
    assert elf_class(root.read("bin/busybox")) == ((2, 62, False) if arch == "amd64" else (1, 3, False))
    assert root.readlink("init") == "bin/busybox"  # busybox init runs etc/inittab
    for applet in APPLETS:
        assert root.readlink(f"bin/{applet}") == "busybox", applet
    assert root.readlink("sbin") == "bin"
    assert stat.S_ISCHR(root.mode("dev/console"))


def test_init_boots_mounts_the_disk_prints_the_ready_line_and_gives_a_shell(initramfs: Initramfs) -> None:
    inittab = initramfs.text("etc/inittab")
    assert "::sysinit:/etc/kit/rcS" in inittab
    assert "::respawn:/bin/cttyhack /bin/sh -l" in inittab  # a controlling tty: job control, ^C
    assert "::shutdown:/etc/kit/shutdown" in inittab
    assert initramfs.executable("etc/kit/rcS")
    script = initramfs.text("etc/kit/rcS")
    for line in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys", "mount -t devtmpfs devtmpfs /dev",
                 "mount -t devpts devpts /dev/pts", "</lib/modules/order", "acpid -c /etc/acpi",
                 'echo "vmd guest kit: /dev/vda mounted on /mnt"', f'echo "{READY}"'):
        assert line in script, line
    assert script.rstrip().endswith(f'echo "{READY}"')  # the last thing before the shell
    assert f"PS1='{PROMPT}'" in initramfs.text("etc/profile")


def test_the_power_button_powers_off_after_unmounting_the_disks(initramfs: Initramfs) -> None:
    handler = "etc/acpi/PWRF/00000080"  # busybox acpid's action for KEY_POWER
    assert initramfs.executable(handler) and "exec poweroff" in initramfs.text(handler)
    assert initramfs.executable("etc/kit/shutdown")
    text = initramfs.text("etc/kit/shutdown")
    assert "sync" in text and "umount" in text and "remount,ro" in text


def test_udhcpc_has_a_default_script_that_configures_the_lease(initramfs: Initramfs) -> None:
    script = "etc/udhcpc/default.script"
    assert script.encode() in initramfs.read("bin/busybox")  # where Debian's busybox looks for it
    assert initramfs.executable(script)
    text = initramfs.text(script)
    assert "bound | renew)" in text and 'ip addr add "$ip/${mask:-24}"' in text
    assert 'ip route add default via "$gateway"' in text


def debugfs(image: Path, request: str) -> str:
    if shutil.which("debugfs") is None:
        pytest.skip("no debugfs (e2fsprogs)")
    done = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return done.stdout


def test_the_disk_is_ext4_with_the_marker_file() -> None:
    image = kit("disk.img")
    superblock = image.read_bytes()[1024:2048]
    assert struct.unpack_from("<H", superblock, 56)[0] == 0xEF53
    assert debugfs(image, "cat hello.txt") == "hello from the vmd guest kit disk\n"


def test_the_extlinux_disk_boots_from_its_first_sector() -> None:
    image = kit("extlinux.img")
    data = image.read_bytes()[:2048]
    assert data[510:512] == b"\x55\xaa"  # SeaBIOS boots sector 0: EXTLINUX's boot sector on the ext4 volume
    assert struct.unpack_from("<H", data, 1024 + 56)[0] == 0xEF53
    listing = debugfs(image, "ls -l /")
    for name in ("ldlinux.sys", "ldlinux.c32", "extlinux.conf", "vmlinuz", "initrd.img", "hello.txt", "banner.lua",
                 "lua.c32"):
        assert re.search(rf"\s{re.escape(name)}\s*$", listing, re.M), name
    config = debugfs(image, "cat extlinux.conf").splitlines()
    assert config[0] == "SERIAL 0 115200"
    assert f"  APPEND {kit('cmdline').read_text().strip()}" in config
    assert 'print("vmd guest kit: EXTLINUX is booting the kit")' in debugfs(image, "cat banner.lua")


def test_the_iso_has_an_el_torito_no_emulation_isolinux_and_the_marker(tmp_path: Path) -> None:
    image = kit("isolinux.iso")
    with image.open("rb") as iso:
        iso.seek(17 * 2048)
        record = iso.read(2048)
        assert record[:7] == b"\x00CD001\x01" and record[7:30] == b"EL TORITO SPECIFICATION"
        catalog_sector, = struct.unpack_from("<I", record, 0x47)
        iso.seek(catalog_sector * 2048)
        catalog = iso.read(64)
        assert catalog[0] == 1 and catalog[30:32] == b"\x55\xaa"  # validation entry
        assert catalog[32] == 0x88 and catalog[33] == 0  # bootable, no emulation
        sectors, load = struct.unpack_from("<HI", catalog, 38)
        assert sectors == 4
        iso.seek(load * 2048)
        assert iso.read(8) == Path("/usr/lib/ISOLINUX/isolinux.bin").read_bytes()[:8]
    if shutil.which("xorriso") is None:
        pytest.skip("no xorriso")
    listing = subprocess.run(["xorriso", "-indev", str(image), "-find", "/", "-type", "f"], capture_output=True,
                             text=True, check=True).stdout
    for name in ("/hello.txt", "/vmlinuz", "/initrd.img", "/isolinux/isolinux.bin", "/isolinux/ldlinux.c32",
                 "/isolinux/isolinux.cfg", "/isolinux/banner.lua"):
        assert f"'{name}'" in listing, name
    marker = tmp_path / "hello.txt"
    subprocess.run(["xorriso", "-indev", str(image), "-osirrox", "on", "-extract", "/hello.txt", str(marker)],
                   capture_output=True, check=True)
    assert marker.read_text() == "hello from the vmd guest kit cdrom\n"


class Qemu:
    """QEMU TCG on the kit, its COM1 on a pipe and its monitor on a unix socket."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.monitor = workdir / "monitor.sock"
        self.process = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none", "-no-reboot", "-nic", "none",
             "-serial", "stdio", "-monitor", f"unix:{self.monitor},server,nowait", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = b""

    def expect(self, text: str, timeout: float) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} did not appear in {timeout:.0f} s:\n{self.tail()}"
            if select.select([self.process.stdout], [], [], min(left, 0.5))[0]:
                data = os.read(self.process.stdout.fileno(), 65536)
                assert data, "QEMU exited:\n" + self.tail()
                self.output += data

    def tail(self) -> str:
        return self.output[-3000:].decode(errors="replace")

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def press_power_button(self) -> None:
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.connect(str(self.monitor))
            monitor.sendall(b"system_powerdown\n")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.5)[0]:
                self.output += os.read(self.process.stdout.fileno(), 65536)
        assert self.process.poll() is not None, "QEMU still runs:\n" + self.tail()
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def test_the_kit_boots_under_qemu_mounts_the_disk_and_the_power_button_keeps_its_writes(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64")
    disk = tmp_path / "disk.img"
    shutil.copyfile(kit("disk.img"), disk)
    qemu = Qemu(tmp_path, "-kernel", str(kit("vmlinuz")), "-initrd", str(kit("initrd.img")),
                "-append", kit("cmdline").read_text().strip(), "-device", "virtio-rng-pci",
                "-drive", f"file={disk},if=virtio,format=raw")
    try:
        qemu.expect(READY, 120)
        assert b"vmd guest kit: /dev/vda mounted on /mnt" in qemu.output
        qemu.expect(PROMPT, 30)
        qemu.type("cat /mnt/hello.txt; echo 'written by the guest' >/mnt/guest.txt; echo @@done")
        qemu.expect("@@done\r\n", 30)
        assert b"hello from the vmd guest kit disk" in qemu.output
        qemu.press_power_button()
        assert qemu.wait(60) == 0
        assert b"vmd guest kit: power button pressed, powering off" in qemu.output
        assert b"reboot: Power down" in qemu.output
    finally:
        qemu.close()
    assert debugfs(disk, "cat guest.txt") == "written by the guest\n"
