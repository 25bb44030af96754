#!/usr/bin/env python3
"""virtio-blk: vmd against QEMU on the same test guest and the same image, in one run.

    python bench/blk.py [--runs N] [--mib SIZE]

The guest (tests/guests/src/virtio_blk.c, `bench=` modes) times its own requests with the TSC: sequential
64 KiB reads and writes at queue depth 16, and 4 KiB random reads at queue depth 16 (the guest's request
slots). QEMU uses virtio-blk-pci with cache=none (O_DIRECT) and with cache=writeback; vmd reads and writes
through the page cache and syncs on FLUSH. The VMM's CPU time (user+sys of the process, from
/proc/<pid>/stat, less that of a run with 16 requests: boot and set-up) is divided by the number of requests.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import build_guests  # noqa: E402

CLOCK = os.sysconf("SC_CLK_TCK")
CASES = (
    ("seqread", 65536, "sequential 64 KiB reads, QD16", "MiB/s"),
    ("seqwrite", 65536, "sequential 64 KiB writes, QD16", "MiB/s"),
    ("randread", 4096, "random 4 KiB reads, QD16", "kIOPS"),
)


def vmd(kernel: Path, image: Path, append: str) -> list[str]:
    return [sys.executable, "-m", "vmd.cli", "run", "-m", "64M", "-b", str(kernel), "-d", str(image),
            "--append", append, "bench"]


def qemu(cache: str) -> object:
    def command(kernel: Path, image: Path, append: str) -> list[str]:
        return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-xsave,-avx,-avx2,-cx16,-arch-capabilities",
                "-m", "64M", "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
                "-kernel", str(kernel), "-append", append,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
                "-drive", f"file={image},if=none,id=d0,format=raw,cache={cache},aio=threads",
                "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]
    return command


def run(command: list[str]) -> tuple[str, float]:
    """Output and the process's CPU seconds (user + system)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    cpu = 0.0
    chunks = []
    assert process.stdout is not None
    while True:
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK
        except (OSError, IndexError, ValueError):
            pass
        data = process.stdout.read1(65536)  # type: ignore[attr-defined]
        if not data:
            break
        chunks.append(data)
    process.wait()
    return b"".join(chunks).decode("latin-1"), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=64, help="image size and bytes moved per case (MiB)")
    args = parser.parse_args()
    kernel = build_guests()["virtio_blk"]
    vmms = {"vmd": vmd, "QEMU cache=none": qemu("none"), "QEMU cache=writeback": qemu("writeback")}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as directory:
        image = Path(directory) / "bench.raw"
        with open(image, "wb") as disk:
            disk.write(os.urandom(1 << 20) * args.mib)
        # CPU spent booting and setting up, measured with a token request count, is taken off each run
        baseline: dict[tuple[str, str], float] = {}
        for mode, size, _label, _unit in CASES:
            for name, make in vmms.items():
                append = f"tests= bench={mode} size={size} count=16 qd=16 irq=msix"
                baseline[(mode, name)] = run(make(kernel, image, append))[1]  # type: ignore[operator]
        for _ in range(args.runs):
            for mode, size, _label, _unit in CASES:
                count = args.mib * (1 << 20) // size if mode != "randread" else 20000
                append = f"tests= bench={mode} size={size} count={count} qd=16 irq=msix"
                for name, make in vmms.items():
                    out, cpu = run(make(kernel, image, append))  # type: ignore[operator]
                    done = re.search(r"bench_bytes (\d+)", out)
                    ns = re.search(r"bench_ns (\d+)", out)
                    if not done or not ns:
                        continue
                    seconds = int(ns.group(1)) / 1e9
                    rate = int(done.group(1)) / seconds
                    value = rate / (1 << 20) if mode != "randread" else rate / size / 1000
                    spent = max(0.0, cpu - baseline[(mode, name)])
                    results.setdefault((mode, name), []).append((value, spent * 1e6 / count))
    names = list(vmms)
    print(f"| measure (median of {args.runs}) | " + " | ".join(names) + " | vmd / QEMU cache=none |")
    print("|---|" + "---:|" * (len(names) + 1))
    for mode, _size, label, unit in CASES:
        cells, rates = [], {}
        for name in names:
            values = results.get((mode, name))
            if not values:
                cells.append("–")
                continue
            rate = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            rates[name] = rate
            cells.append(f"{rate:.1f} {unit} ({cpu:.0f} µs CPU/req)")
        ratio = f"{rates['vmd'] / rates['QEMU cache=none']:.2f}" if "vmd" in rates and "QEMU cache=none" in rates \
            else "–"
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
