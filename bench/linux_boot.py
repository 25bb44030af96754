#!/usr/bin/env python3
"""Debian's Linux (the guest kit) booting under vmd and under QEMU, on the same hardware KVM, in one run.

    python bench/linux_boot.py [--runs N] [--memory MiB] [--vcpus N] [--timeout S]

Each run starts `vmd run` and `qemu-system-x86_64 -enable-kvm` in turn with the kit's bzImage, initramfs and
its command line without `quiet` (so that the kernel prints), one vCPU unless --vcpus, and times, from process
start:
  first kernel line   the kernel's "Linux version" banner on the serial console
  /init               "Run /init as init process": the kernel is up and starts userspace
  ready               the kit's init printed "vmd guest kit: ready" (modules loaded, a shell comes next)
and, at ready, the VMM's own CPU time: user + system time of every thread of the VMM process less the time
its vCPU threads spent running the guest (guest_time in /proc/PID/task/TID/stat): what the VMM itself cost.
A boot that does not reach ready within --timeout seconds, or whose kernel reports an RCU stall, is counted as
stalled and left out of the medians: on an emulated host, how often each VMM's guests stall is a result too.
QEMU boots the bzImage through SeaBIOS and its linuxboot option ROM; vmd loads it itself and enters it in 64-bit
mode. Both guests see the host's CPU without XSAVE (vmd's default baseline template; QEMU -cpu host,-xsave).

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
STALL = b"rcu: INFO: rcu_preempt detected stalls"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def kit_append() -> str:
    words = (KIT / "cmdline").read_text().split()
    return " ".join(word for word in words if word != "quiet")


def vmd_command(memory: int, vcpus: int) -> list[str]:
    return [sys.executable, "-m", "vmd.cli", "run", "-m", f"{memory}M", "-p", str(vcpus), "-b", str(KIT / "vmlinuz"),
            "--initrd", str(KIT / "initrd.img"), "--append", kit_append(), "bootbench"]


def qemu_command(memory: int, vcpus: int) -> list[str]:
    # -xsave: as vmd's baseline CPU (its default), no XSAVE; on the emulated test host QEMU's -cpu host guests
    # with more than one vCPU fail at boot ("XSAVE consistency problem") with it.
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-xsave", "-m", f"{memory}M", "-smp", str(vcpus),
            "-nodefaults", "-nographic",
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


def boot(command: list[str], timeout: float) -> dict[str, float] | None:
    """One boot to the ready line: seconds from process start to each mark, and the VMM's CPU seconds; None
    when the guest stalled (no ready line within timeout, or an RCU stall report)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env)
    assert process.stdout is not None
    text, times = b"", {}
    try:
        while len(times) < len(MARKS):
            if time.perf_counter() - start > timeout or STALL in text:
                print(f"linux_boot: {os.path.basename(command[0])} {command[1:3]}: stalled after"
                      f" {time.perf_counter() - start:.0f} s; it printed:\n{text[-1500:].decode(errors='replace')}",
                      file=sys.stderr)
                return None
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


def measure(runs: int, memory: int, vcpus: int, timeout: float) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {"vmd": {"stalled": []}, "qemu": {"stalled": []}}
    for _ in range(runs):
        for name, command in (("vmd", vmd_command(memory, vcpus)), ("qemu", qemu_command(memory, vcpus))):
            times = boot(command, timeout)
            results[name]["stalled"].append(0.0 if times else 1.0)
            shown = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in (times or {}).items()) or "stalled"
            print(f"linux_boot: {name}: {shown}", file=sys.stderr, flush=True)
            for label, seconds in (times or {}).items():
                results[name].setdefault(label, []).append(seconds)
    return results


def table(results: dict[str, dict[str, list[float]]], runs: int, vcpus: int) -> str:
    def median(name: str, label: str) -> float:
        values = results[name].get(label, [])
        return statistics.median(values) if values else float("nan")

    lines = [f"| {vcpus} vCPU(s), from process start to (median of {runs}) | vmd | QEMU | vmd / QEMU |",
             "|---|---:|---:|---:|"]
    for label in [label for label, _mark in MARKS] + ["VMM CPU"]:
        ours, theirs = median("vmd", label), median("qemu", label)
        name = "VMM CPU to ready (user+sys less guest time)" if label == "VMM CPU" else label
        lines.append(f"| {name} | {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f} |")
    stalled = [int(sum(results[name]["stalled"])) for name in ("vmd", "qemu")]
    lines.append(f"| boots that stalled | {stalled[0]} of {runs} | {stalled[1]} of {runs} | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=512, help="guest RAM in MiB (default 512)")
    parser.add_argument("--vcpus", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument("--timeout", type=float, default=BOOT_TIMEOUT,
                        help=f"seconds a boot may take before it counts as stalled (default {BOOT_TIMEOUT:.0f})")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100 or not 1 <= args.vcpus <= 64 or not 16 <= args.memory <= 65536:
        print("linux_boot: --runs 1..100, --vcpus 1..64, --memory 16..65536", file=sys.stderr)
        return 1
    if not (KIT / "vmlinuz").exists():
        print("linux_boot: no guest kit in guest-kit/: run scripts/setup.sh", file=sys.stderr)
        return 1
    if kvm_is_hardware() or inside_test_host():
        print(table(measure(args.runs, args.memory, args.vcpus, args.timeout), args.runs, args.vcpus))
        return 0
    print("linux_boot: this machine's KVM is not VT-x/AMD-V: running in the hardware-virtualization test host",
          file=sys.stderr)
    try:
        with TestHost() as host:
            result = host.run([str(ROOT / ".venv" / "bin" / "python"), str(Path(__file__).resolve()),
                               "--runs", str(args.runs), "--memory", str(args.memory), "--vcpus", str(args.vcpus),
                               "--timeout", str(args.timeout)],
                              timeout=args.runs * 2 * args.timeout + 60,
                              on_output=lambda chunk: (sys.stdout.buffer.write(chunk), sys.stdout.flush()))
    except (TestHostError, TimeoutError) as error:
        print(f"linux_boot: {error}", file=sys.stderr)
        return 1
    return result.status


if __name__ == "__main__":
    sys.exit(main())
