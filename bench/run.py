#!/usr/bin/env python3
"""vmd against QEMU on the same test guest, in the same run: medians and ratios.

    python bench/run.py [--runs N] [--markdown]

Measures, for `vmd run` and `qemu-system-x86_64 -enable-kvm` (Debian's QEMU):
  start    process start to the guest's first serial byte (wall clock, host side)
  pio      cost of one port-I/O exit to a userspace device, measured by the guest with its TSC
  serial   serial output throughput: bytes per second the guest can print, polling LSR as a driver does
  rss      VMM resident memory beyond guest RAM (RssAnon + RssFile; guest RAM is a memfd in both)
The guest is tests/guests' `bench` guest (Multiboot), which QEMU boots through SeaBIOS and its multiboot ROM.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMORY_MIB = 64


def build_guests() -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("guest_build", ROOT / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: Path(path) for name, path in module.build_all(str(ROOT / "tests" / "guests" / "out")).items()}


def vmd_command(kernel: Path, append: str) -> list[str]:
    return [sys.executable, "-m", "vmd.cli", "run", "-m", f"{MEMORY_MIB}M", "-b", str(kernel), "--append", append,
            "bench"]


def qemu_command(kernel: Path, append: str) -> list[str]:
    cpu = "host,-xsave,-avx,-avx2,-cx16,-arch-capabilities"  # what the baseline template hides; MSR 0x10a fails here
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", cpu, "-m", f"{MEMORY_MIB}M",
            "-object", f"memory-backend-memfd,id=ram,size={MEMORY_MIB}M", "-machine", "pc,memory-backend=ram",
            "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
            "-append", append, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"))


class Outcome:
    """What one run printed, when each marker first appeared, and the peak beyond-RAM RSS."""

    def __init__(self) -> None:
        self.text = ""
        self.first_byte: float | None = None
        self.marks: dict[str, float] = {}
        self.peak_rss_kib = 0


def run_to_end(command: list[str], marks: tuple[str, ...] = (), timeout: float = 120.0) -> Outcome:
    """Run command to its end, timing (from process start) its first output byte and each marker."""
    outcome = Outcome()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment())
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = start + timeout
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                break
            now = time.perf_counter() - start
            if outcome.first_byte is None:
                outcome.first_byte = now
            outcome.text += data.decode("latin-1")
            for mark in marks:
                if mark not in outcome.marks and mark in outcome.text:
                    outcome.marks[mark] = now
        outcome.peak_rss_kib = max(outcome.peak_rss_kib, beyond_ram_rss_kib(process.pid))
        if time.perf_counter() > deadline:
            process.kill()
            break
    process.wait()
    return outcome


def beyond_ram_rss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    fields = dict(re.findall(r"^(RssAnon|RssFile):\s+(\d+) kB", text, re.M))
    return int(fields.get("RssAnon", 0)) + int(fields.get("RssFile", 0))


def number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


SERIAL_BYTES = 50000


def measure(kernel: Path, runs: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {"vmd": {}, "qemu": {}}
    for _ in range(runs):
        for name, make in (("vmd", vmd_command), ("qemu", qemu_command)):
            table = results[name]
            run = run_to_end(make(kernel, "mode=firstbyte"))
            if run.first_byte is not None:
                table.setdefault("start", []).append(run.first_byte * 1000)
            run = run_to_end(make(kernel, "mode=pio n=20000"))
            value = number(r"pio_ns (\d+)", run.text)
            if value is not None:
                table.setdefault("pio", []).append(value / 1000)
            run = run_to_end(make(kernel, f"mode=serial bytes={SERIAL_BYTES}"), marks=("serial_start", "serial_done"))
            if len(run.marks) == 2:
                seconds = run.marks["serial_done"] - run.marks["serial_start"]
                table.setdefault("serial", []).append(SERIAL_BYTES / seconds / 1000)
            table.setdefault("rss", []).append(run.peak_rss_kib / 1024)
    return results


ROWS = (
    ("start", "start to first serial byte", "ms", "lower"),
    ("pio", "one PIO exit to a userspace device", "µs", "lower"),
    ("serial", "serial output throughput", "KB/s", "higher"),
    ("rss", "VMM resident memory beyond guest RAM", "MiB", "lower"),
)


def table(results: dict[str, dict[str, list[float]]], runs: int) -> str:
    lines = [f"| measure ({runs} runs, medians) | vmd | QEMU | vmd/QEMU | better is |",
             "|---|---:|---:|---:|---|"]
    for key, label, unit, better in ROWS:
        ours, theirs = results["vmd"].get(key), results["qemu"].get(key)
        a = statistics.median(ours) if ours else None
        b = statistics.median(theirs) if theirs else None
        ratio = f"{a / b:.2f}" if a is not None and b else "–"
        fa = f"{a:.1f} {unit}" if a is not None else "–"
        fb = f"{b:.1f} {unit}" if b is not None else "–"
        lines.append(f"| {label} | {fa} | {fb} | {ratio} | {better} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    kernel = build_guests()["bench"]
    results = measure(kernel, args.runs)
    print(table(results, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
