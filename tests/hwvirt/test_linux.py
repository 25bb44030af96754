"""Debian's Linux kernel (the guest kit) under vmd, as a user runs it: vm.conf, vmd, vmctl and the console.

One daemon, in a network namespace of the test's own, runs every VM of this module: booting Linux takes
about half a minute of the test host's time, so each VM is booted once and checked for many things.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Console, Vmd, ip, kit_cmdline, kit_file

pytestmark = pytest.mark.hwvirt

HOST_TEXT = "written by the host before boot"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A raw copy of the kit's ext4 disk, and a qcow2 overlay over another copy (its backing file)."""
    work = tmp_path_factory.mktemp("images")
    raw = work / "raw.img"
    subprocess.run(["cp", str(kit_file("disk.img")), str(raw)], check=True)
    host_file = work / "host.txt"
    host_file.write_text(HOST_TEXT + "\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {host_file} host.txt", str(raw)], check=True,
                   capture_output=True)
    base = work / "base.img"
    subprocess.run(["cp", str(kit_file("disk.img")), str(base)], check=True)
    overlay = work / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)],
                   check=True)
    return {"raw": raw, "base": base, "qcow2": overlay}


@pytest.fixture(scope="module")
def vmd(netns: str) -> Iterator[Vmd]:
    kernel, initrd, cmdline = kit_file("vmlinuz"), kit_file("initrd.img"), kit_cmdline()
    daemon = Vmd(f"""
switch "lan" {{
    interface vmdhwbr0
}}
vm "peer" {{
    disable
    memory 256M
    boot "{kernel}"
    initrd "{initrd}"
    append "{cmdline}"
    interface {{ switch "lan" }}
}}
""", netns)
    yield daemon
    daemon.close()


@pytest.fixture(scope="module")
def linux(vmd: Vmd, images: dict[str, Path]) -> Iterator[Console]:
    """The main guest, started ad hoc by root: one vCPU, a raw and a qcow2 disk, the kit's CD in the CD-ROM
    drive, a local interface (-L, its first interface, eth0) and one on the switch (eth1). SMP is
    test_lifecycle.py's: with this guest at 2 vCPUs and the peer beside it, its vCPU 1 once took a triple fault
    in the emulated SVM (the test host has 2 vCPUs for 3 nested ones)."""
    vmd.must("start", "-m", "1G", "-b", str(kit_file("vmlinuz")), "--initrd", str(kit_file("initrd.img")),
             "--append", kit_cmdline(), "-d", str(images["raw"]), "-d", str(images["qcow2"]),
             "-r", str(kit_file("isolinux.iso")), "-L", "-n", "lan", "linux")
    console = vmd.console("linux")
    console.wait_shell(timeout=400)
    yield console
    console.close()


def test_the_guest_reaches_userspace(linux: Console) -> None:
    assert linux.must("uname -sm").split() == ["Linux", "x86_64"]
    assert linux.must("cat /sys/devices/system/cpu/online").strip() == "0"


def test_the_ext4_disk_is_mounted_and_holds_what_the_host_wrote(linux: Console) -> None:
    mounts = linux.must("cat /proc/mounts")
    assert re.search(r"^/dev/vda /mnt ext4 ", mounts, re.M), mounts
    assert linux.must("cat /mnt/host.txt").strip() == HOST_TEXT


def test_hwrng_gives_bytes_from_virtio_rng(linux: Console) -> None:
    assert "virtio_rng" in linux.must("cat /sys/class/misc/hw_random/rng_current")
    dump = linux.must("dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1")
    values = dump.split()
    assert len(values) == 32 and len(set(values)) > 8, dump


def test_an_iso_on_the_cdrom_mounts_as_iso9660(linux: Console) -> None:
    linux.must("mkdir -p /cdrom && mount -t iso9660 -o ro /dev/sr0 /cdrom")
    assert linux.must("cat /cdrom/hello.txt").strip() == "hello from the vmd guest kit cdrom"
    assert re.search(r"^/dev/sr0 /cdrom iso9660 ro", linux.must("cat /proc/mounts"), re.M)
    linux.must("umount /cdrom")


def test_a_local_interface_gets_its_address_from_vmd_and_pings_both_ways(linux: Console, netns: str) -> None:
    # The host side of the local interface is the only /31 in the namespace; the guest has the next address.
    links = ip("-n", netns, "-4", "-o", "addr", "show").stdout
    host_addresses = re.findall(r"inet (100\.64\.\d+\.\d+)/31", links)
    assert len(host_addresses) == 1, links
    host = host_addresses[0]
    guest = ".".join([*host.split(".")[:3], str(int(host.split(".")[3]) + 1)])
    iface = "eth0"
    lease = linux.must(f"udhcpc -i {iface} -n -q -t 5 -T 2 2>&1; ip -4 -o addr show dev {iface}", timeout=120)
    assert f"inet {guest}/31" in lease, lease
    linux.must(f"ping -c 2 -W 5 {host}", timeout=60)
    ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "3", "-W", "5", guest], capture_output=True,
                          text=True, timeout=60)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_two_guests_on_one_switch_ping_each_other(vmd: Vmd, linux: Console) -> None:
    vmd.must("start", "peer")
    with vmd.console("peer") as peer:
        peer.wait_shell(timeout=400)
        linux.must("ip addr add 10.77.0.1/24 dev eth1 && ip link set eth1 up")
        peer.must("ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up")
        peer.must("ping -c 2 -W 5 10.77.0.1", timeout=60)
        linux.must("ping -c 2 -W 5 10.77.0.2", timeout=60)
    vmd.must("stop", "-f", "-w", "peer")


def test_vmctl_stop_powers_linux_off_through_the_power_button_and_its_writes_are_on_disk(
        vmd: Vmd, linux: Console, images: dict[str, Path]) -> None:
    linux.must("echo 'written by the guest on raw' > /mnt/guest.txt")
    linux.must("mkdir -p /qcow && mount /dev/vdb /qcow && echo 'written by the guest on qcow2' > /qcow/guest.txt")
    vmd.must("stop", "linux")  # asks: vmd presses the ACPI power button
    linux.expect(r"vmd guest kit: file systems synced and unmounted", timeout=120)
    linux.expect(r"reboot: Power down", timeout=60)  # Linux's own power-off, after the kit's handler
    vmd.wait_state("linux", None, timeout=60)  # started ad hoc: gone once stopped
    raw = subprocess.run(["debugfs", "-R", "cat guest.txt", str(images["raw"])], capture_output=True, text=True)
    assert raw.stdout.strip() == "written by the guest on raw", raw.stderr
    check = subprocess.run(["qemu-img", "check", str(images["qcow2"])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    flat = images["qcow2"].with_suffix(".flat")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(images["qcow2"]), str(flat)], check=True)
    qcow = subprocess.run(["debugfs", "-R", "cat guest.txt", str(flat)], capture_output=True, text=True)
    assert qcow.stdout.strip() == "written by the guest on qcow2", qcow.stderr
    base = subprocess.run(["debugfs", "-R", "cat guest.txt", str(images["base"])], capture_output=True, text=True)
    assert "written by the guest" not in base.stdout  # the backing file stays as it was
