#!/usr/bin/env python3
"""Debian's Linux (the guest kit) booting under vmd and under QEMU, on the same hardware KVM, in one run.

    python bench/linux_boot.py [--runs N] [--memory MiB]

Each run starts `vmd run` and `qemu-system-x86_64 -enable-kvm` in turn with the kit's bzImage, initramfs and
its command line without `quiet` (so that the kernel prints), one vCPU, and times, from process start:
  first kernel line   the kernel's "Linux version" banner on the serial console
  /init               "Run /init as init process": the kernel is up and starts userspace
  ready               the kit's init printed "vmd guest kit: ready" (modules loaded, a shell comes next)
and, at ready, the VMM's own CPU time: user + system time of every thread of the VMM process less the time
its vCPU threads spent running the guest (guest_time in /proc/PID/task/TID/stat): what the VMM itself cost.
QEMU boots the bzImage through SeaBIOS and its linuxboot option ROM; vmd loads it itself and enters it in 64-bit
mode.

This needs a hardware KVM (VT-x or AMD-V). Where this machine's is not one, the benchmark runs itself inside
the hardware-virtualization test host (tests/hwvirt/testhost.py), where both VMMs share the nested KVM: the
absolute times there are those of an emulated machine; the ratios are what carries over.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hwvirt.testhost import TestHost, TestHostError, inside_test_host, kvm_is_hardware  # noqa: E402

KIT = ROOT / "guest-kit"
MARKS = (("first kernel line", "Linux version"), ("/init", "Run /init as init process"),
         ("ready", "vmd guest kit: ready"))
BOOT_TIMEOUT = 900.0  # seconds for one boot; a boot in the test host takes one or two minutes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def kit_append() -> str:
    words = (KIT / "cmdline").read_text().split()
    return " ".join(word for word in words if word != "quiet")


def vmd_command(memory: int) -> list[str]:
    return [sys.executable, "-m", "vmd.cli", "run", "-m", f"{memory}M", "-b", str(KIT / "vmlinuz"),
            "--initrd", str(KIT / "initrd.img"), "--append", kit_append(), "bootbench"]


def qemu_command(memory: int) -> list[str]:
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-m", f"{memory}M", "-nodefaults", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", str(KIT / "vmlinuz"), "-initrd", str(KIT / "initrd.img"),
            "-append", kit_append()]


def vmm_cpu_seconds(pid: int) -> float:
    """User + system time of every thread of pid, less the time spent in the guest (proc(5): fields 14, 15, 43)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # fields from the third on: state is fields[0]
        utime, stime, guest = int(fields[11]), int(fields[12]), int(fields[40])
        total += utime + stime - guest
    return total / CLOCK_TICKS


def boot(command: list[str]) -> dict[str, float]:
    """One boot to the ready line: seconds from process start to each mark, and the VMM's CPU seconds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env)
    assert process.stdout is not None
    text, times = b"", {}
    try:
        while len(times) < len(MARKS):
            if time.perf_counter() - start > BOOT_TIMEOUT:
                raise SystemExit(f"linux_boot: {command[0]} did not reach the kit's ready line in {BOOT_TIMEOUT:.0f}"
                                 f" s; it printed:\n{text[-2000:].decode(errors='replace')}")
            if not select.select([process.stdout], [], [], 0.5)[0]:
                continue
            data = os.read(process.stdout.fileno(), 65536)
            if not data:
                raise SystemExit(f"linux_boot: {command[0]} exited ({process.wait()}) before the ready line; it"
                                 f" printed:\n{text[-2000:].decode(errors='replace')}")
            text += data
            now = time.perf_counter() - start
            for label, mark in MARKS:
                if label not in times and mark.encode() in text:
                    times[label] = now
        times["VMM CPU"] = vmm_cpu_seconds(process.pid)
    finally:
        process.kill()
        process.wait()
    return times


def measure(runs: int, memory: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {"vmd": {}, "qemu": {}}
    for _ in range(runs):
        for name, command in (("vmd", vmd_command(memory)), ("qemu", qemu_command(memory))):
            for label, seconds in boot(command).items():
                results[name].setdefault(label, []).append(seconds)
    return results


def table(results: dict[str, dict[str, list[float]]], runs: int) -> str:
    lines = [f"| from process start to (median of {runs}) | vmd | QEMU | vmd / QEMU |", "|---|---:|---:|---:|"]
    for label in [label for label, _mark in MARKS] + ["VMM CPU"]:
        ours, theirs = statistics.median(results["vmd"][label]), statistics.median(results["qemu"][label])
        name = "VMM CPU to ready (user+sys less guest time)" if label == "VMM CPU" else label
        lines.append(f"| {name} | {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=512, help="guest RAM in MiB (default 512)")
    args = parser.parse_args()
    if not (KIT / "vmlinuz").exists():
        print("linux_boot: no guest kit in guest-kit/: run scripts/setup.sh", file=sys.stderr)
        return 1
    if kvm_is_hardware() or inside_test_host():
        print(table(measure(args.runs, args.memory), args.runs))
        return 0
    print("linux_boot: this machine's KVM is not VT-x/AMD-V: running in the hardware-virtualization test host",
          file=sys.stderr)
    try:
        with TestHost() as host:
            result = host.run([str(ROOT / ".venv" / "bin" / "python"), str(Path(__file__).resolve()),
                               "--runs", str(args.runs), "--memory", str(args.memory)],
                              timeout=args.runs * 2 * BOOT_TIMEOUT,
                              on_output=lambda chunk: (sys.stdout.buffer.write(chunk), sys.stdout.flush()))
    except (TestHostError, TimeoutError) as error:
        print(f"linux_boot: {error}", file=sys.stderr)
        return 1
    return result.status


if __name__ == "__main__":
    sys.exit(main())
