#!/usr/bin/env python3
"""Run every test guest under QEMU and check its result protocol.

Usage: python3 tests/guests/qemu_check.py [name ...]

A guest passes when its serial output has "ALL OK" and QEMU exits with 1
(isa-debug-exit value 0 -> status (0 << 1) | 1). Interactive guests get their
input once their prompt shows up. The openbsd guests and the bzImage's 64-bit
entry go through out/vmdshim.elf, a multiboot loader that recreates vmd's
entry state, because QEMU cannot boot them that way itself.
"""
from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build import build_all, fnv1a32  # noqa: E402

QEMU = ["qemu-system-x86_64", "-enable-kvm", "-display", "none", "-no-reboot", "-nodefaults",
        "-chardev", "stdio,id=c0,mux=off", "-serial", "chardev:c0",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01", "-m", "128"]
MEM = 128 << 20


def run(args: list[str], dialogue: list[tuple[str, str]] = (), timeout: float = 90) -> tuple[int, str]:
    """Start QEMU; for each (wait_for, send) pair, send once wait_for appears."""
    p = subprocess.Popen(QEMU + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    out = b""
    steps = list(dialogue)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if steps and steps[0][0].encode() in out:
            p.stdin.write(steps.pop(0)[1].encode())
            p.stdin.flush()
        if not sel.select(0.2):
            if p.poll() is not None:
                break
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        out += chunk
    else:
        p.kill()
    rc = p.wait()
    return rc, out.decode(errors="replace")


def cases(paths: dict[str, Path], initrd: Path, isum: str) -> dict[str, tuple[list[str], list, str]]:
    common = f"expect=hello-world initrd_sum={isum} mem={MEM}"
    alltests = "tests=mem,cmdline,initrd,pci,mptable,rtc,pit,ioapic,lapic,serial"
    shim = str(paths["vmdshim"])
    return {
        "multiboot": (["-kernel", str(paths["multiboot"]), "-initrd", str(initrd), "-append",
                       f"{common} {alltests}"], [("ready>", "hello there\r")], "got hello there"),
        "multiboot-aout": (["-kernel", str(paths["multiboot-aout"]), "-initrd", str(initrd),
                            "-append", common], [], ""),
        "demo": (["-kernel", str(paths["demo"])],
                 [("vmd-demo# ", "echo hi\r"), ("hi\r\nvmd-demo# ", "date\r"),
                  ("Z\r\nvmd-demo# ", "poweroff\r")], "powering off"),
        "bench-pio": (["-kernel", str(paths["bench"]), "-append", "mode=pio n=1000"], [], "pio_ns"),
        "bench-serial": (["-kernel", str(paths["bench"]), "-append", "mode=serial bytes=2000"], [],
                         "serial_done"),
        "openbsd64": (["-kernel", shim, "-initrd", str(paths["openbsd64"])], [], ""),
        "openbsd64-cs64": (["-kernel", shim, "-initrd", str(paths["openbsd64"]), "-append", "cs64"], [], ""),
        "openbsd32": (["-kernel", shim, "-initrd", str(paths["openbsd32"])], [], ""),
        "pvh": (["-kernel", str(paths["pvh"]), "-initrd", str(initrd), "-append",
                 f"{common} tests=mem,cmdline,initrd,pci,mptable,rtc,pit,ioapic,lapic"], [], ""),
        "bzimage": (["-kernel", str(paths["bzimage"]), "-initrd", str(initrd), "-append", common], [],
                    "entry 16"),
        "bzimage-64": (["-kernel", shim, "-initrd", f"{paths['bzimage']},{initrd}", "-append",
                        f"bz {common}"], [], "entry 64"),
        "biosboot": (["-option-rom", f"{paths['biosboot']},bootindex=0", "-boot", "menu=off"], [],
                     "ram_total"),
    }


VQEMU = ["-cpu", "host,-xsave,-avx,-avx2,-cx16,-arch-capabilities"]


def _blk(img: Path, extra: str = "", dev: str = "") -> list[str]:
    return ["-drive", f"file={img},if=none,id=d0,format=raw{extra}",
            "-device", f"virtio-blk-pci,drive=d0,disable-legacy=on{dev}"]


def virtio_cases(paths: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], list, str]]:
    """The virtio guests (lib/virtio.c) against QEMU's virtio-pci devices."""
    out: dict[str, tuple[list[str], list, str]] = {}
    if "virtio_blk" in paths:
        blk = str(paths["virtio_blk"])
        data = bytes((i * 131 + (i >> 9) * 7) & 0xFF for i in range(2048 * 512))
        rw_tests = "tests=id,rw,qd,range,discard,zeroes expect_id=vmdtest"
        for irq, dev in [("poll", ""), ("msix", ""), ("intx", ",vectors=0"), ("intx-ioapic", ",vectors=0")]:
            img = tmp / f"blk-{irq}.img"
            img.write_bytes(data)
            out[f"virtio-blk-{irq}"] = (["-kernel", blk, "-append", f"{rw_tests} irq={irq}"] + VQEMU +
                                        _blk(img, dev=f",serial=vmdtest{dev}"), [], "ok zeroes")
        img = tmp / "blk-plain.img"
        img.write_bytes(data)
        out["virtio-blk-noevidx"] = (["-kernel", blk, "-append", f"{rw_tests} irq=msix event_idx=0 indirect=0"] +
                                     VQEMU + _blk(img, dev=",serial=vmdtest"), [], "ok qd")
        ro = tmp / "blk-ro.img"
        ro.write_bytes(data)
        rsum = f"{fnv1a32(data[100 * 512:400 * 512]):08x}"
        out["virtio-blk-ro"] = (["-kernel", blk, "-append", f"tests=read,ro sector=100 count=300 expect_sum={rsum} "
                                 "irq=msix"] + VQEMU + _blk(ro, ",readonly=on"), [], f"fnv1a32 {rsum}")
        out["virtio-blk-bench"] = (["-kernel", blk, "-append", "bench=randread size=4096 count=300 qd=8 irq=msix"] +
                                   VQEMU + _blk(ro, ",readonly=on"), [], "bench_ns")
    if "virtio_rng" in paths:
        for irq, dev in [("poll", ""), ("msix", ""), ("intx", ",vectors=0")]:
            out[f"virtio-rng-{irq}"] = (["-kernel", str(paths["virtio_rng"]), "-append", f"irq={irq}"] + VQEMU +
                                        ["-device", f"virtio-rng-pci,disable-legacy=on{dev}"], [], "rng ok")
    if "virtio_scsi" in paths and shutil.which("xorriso"):
        isodir = tmp / "isodir"
        isodir.mkdir(exist_ok=True)
        (isodir / "data.bin").write_bytes(bytes((i * 37 + (i >> 11)) & 0xFF for i in range(300000)))
        iso = tmp / "cd.iso"
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(isodir)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        raw = iso.read_bytes()
        csum = f"{fnv1a32(raw[16 * 2048:56 * 2048]):08x}"
        blocks = len(raw) // 2048
        cd = ["-drive", f"file={iso},if=none,id=cd0,media=cdrom", "-device", "scsi-cd,drive=cd0"]
        for irq, dev in [("poll", ""), ("msix", ""), ("intx", ",vectors=0")]:
            out[f"virtio-scsi-{irq}"] = (["-kernel", str(paths["virtio_scsi"]), "-append",
                                          f"tests=inquiry,tur,capacity,read,sense,badtarget lba=16 count=40 "
                                          f"expect_sum={csum} irq={irq}"] + VQEMU +
                                         ["-device", f"virtio-scsi-pci,disable-legacy=on{dev}"] + cd, [],
                                         f"blocks {blocks}")
    if "virtio_net" in paths:
        for irq, dev in [("poll", ""), ("msix", ""), ("intx", ",vectors=0")]:
            out[f"virtio-net-{irq}"] = (["-kernel", str(paths["virtio_net"]), "-append", f"irq={irq}"] + VQEMU +
                                        ["-netdev", "user,id=n0,hostname=vmdguest",
                                         "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on{dev}"], [],
                                        "lease 10.0.2.15 router 10.0.2.2 dns 10.0.2.3 hostname vmdguest")
    return out


def main(argv: list[str]) -> int:
    paths = build_all()
    with tempfile.TemporaryDirectory() as tmp:
        initrd = Path(tmp) / "initrd.bin"
        initrd.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(3000)))
        isum = f"{fnv1a32(initrd.read_bytes()):08x}"
        failed = 0
        allcases = cases(paths, initrd, isum)
        allcases.update(virtio_cases(paths, Path(tmp)))
        for name, (args, dialogue, must) in allcases.items():
            if argv[1:] and name not in argv[1:]:
                continue
            rc, out = run(args, dialogue)
            good = rc == 1 and "ALL OK" in out and (must in out) and "FAIL" not in out
            if name == "demo":
                good = rc == 1 and must in out
            print(f"{'PASS' if good else 'FAIL'} {name} (qemu exit {rc})")
            if not good:
                failed += 1
                print(out[-3000:])
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
