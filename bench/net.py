#!/usr/bin/env python3
"""virtio-net: vmd against QEMU (`-netdev tap,vhost=off`) on the same test guest and the same tap, in one run.

    python bench/net.py [--runs N] [--frames N] [--irq msix|poll]

Everything happens in a network namespace the bench creates (and deletes at the end): a persistent tap
`vmdbench0` (vnet_hdr) with 10.88.0.1/24, and a permanent neighbour entry for the guest (10.88.0.2, MAC
fe:e1:ba:d0:00:02). vmd runs as a daemon in the namespace with one VM per case, each with
`interface "vmdbench0"` (vmd attaches an existing persistent tap and leaves it there); QEMU runs in the
namespace with `-netdev tap,ifname=vmdbench0,script=no,downscript=no,vhost=off` and a modern virtio-net-pci.

The guest is tests/guests/src/virtio_net.c (`bench=` modes), timed by its TSC:
  guest->host  `bench=tx`: UDP frames of 1500 and of 64 bytes to 10.88.0.1 port 9, the tx queue kept full;
               the tap's rx counter checks that they arrived.
  host->guest  `bench=rx`: a sender in the namespace writes UDP datagrams (frames of 1500 and 64 bytes) to
               10.88.0.2 port 9, keeping at most --backlog frames queued on the tap (no drops: it reads the
               tap's counters); the guest counts them on its 64 receive buffers, timed first to last.
VMM CPU per frame: the CPU time of the VMM process (vmd's VM process, or QEMU; all threads, from
/proc/<pid>/task/*/schedstat) between the guest's start marker and its result line (read from the console as
they come, so boot and set-up are left out), divided by the frames. It includes the vCPU thread, i.e. the
guest's own work, which is the same guest code for both VMMs; with --irq msix (the default) the guest halts
whenever it waits, so idle time is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import build_guests  # noqa: E402

TAP = "vmdbench0"
HOST_IP = "10.88.0.1"
GUEST_IP = "10.88.0.2"
GUEST_MAC = "fe:e1:ba:d0:00:02"
CASES = (  # (key, mode, frame bytes, label)
    ("tx1500", "tx", 1500, "guest→host, 1500-byte frames"),
    ("tx64", "tx", 64, "guest→host, 64-byte frames"),
    ("rx1500", "rx", 1500, "host→guest, 1500-byte frames"),
    ("rx64", "rx", 64, "host→guest, 64-byte frames"),
)

# Runs in the namespace: UDP to the guest, at most `backlog` frames waiting in the tap (sent less what the
# VMM has read, tx_packets, and what the tap dropped, tx_dropped), until `limit` frames or SIGTERM.
SENDER = r"""
import socket, sys, time
payload, limit, backlog, tap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stats = f"/sys/class/net/{tap}/statistics/"
def done():
    return sum(int(open(stats + n).read()) for n in ("tx_packets", "tx_dropped"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[5], 9))
data = bytes(range(256)) * (payload // 256 + 1)
data = data[:payload]
sys.stdin.buffer.read(1)  # go
base, sent = done(), 0
while sent < limit:
    room = backlog - (sent - (done() - base))
    if room <= 0:
        time.sleep(0.0002)
        continue
    for _ in range(min(room, limit - sent)):
        try:
            s.send(data)
            sent += 1
        except OSError:
            break
print("sent", sent, flush=True)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


class Namespace:
    def __init__(self) -> None:
        self.name = f"vmdbench-{os.getpid()}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        self.ip("tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
        self.ip("addr", "add", f"{HOST_IP}/24", "dev", TAP)

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args)

    def exec(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def prepare(self) -> None:
        """Before each run: the tap up, the guest's neighbour entry (a link going down flushes it)."""
        self.ip("link", "set", TAP, "up")
        self.ip("neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "dev", TAP, "nud", "permanent")

    def counters(self) -> dict[str, int]:
        links = json.loads(self.ip("-s", "-j", "link", "show", "dev", TAP).stdout)
        stats = links[0]["stats64"]
        return {"rx_packets": stats["rx"]["packets"], "rx_bytes": stats["rx"]["bytes"],
                "tx_packets": stats["tx"]["packets"], "tx_dropped": stats["tx"]["dropped"]}

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


def cpu_seconds(pid: int) -> float | None:
    """CPU time of every thread of pid (schedstat: nanoseconds run), or None once it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended
    if not tasks or not total:
        return None
    return total / 1e9


def append_line(mode: str, size: int, frames: int, irq: str) -> str:
    common = f"tests= ip={GUEST_IP} router={HOST_IP} irq={irq} count={frames}"
    return f"{common} bench=tx size={size}" if mode == "tx" else f"{common} bench=rx wait=30"


class Result:
    def __init__(self, text: str, cpu: float | None, host_rx: int) -> None:
        self.text, self.cpu, self.host_rx = text, cpu, host_rx

    def rate(self) -> tuple[int, int, int] | None:
        """(frames, bytes, ns) the guest measured."""
        tx = re.search(r"bench_tx_frames (\d+) bench_ns (\d+)", self.text)
        if tx:
            size = int(re.search(r"bench_size (\d+)", self.text).group(1))  # type: ignore[union-attr]
            return int(tx.group(1)), int(tx.group(1)) * size, int(tx.group(2))
        rx = re.search(r"bench_rx_frames (\d+) bench_rx_bytes (\d+) bench_ns (\d+)", self.text)
        if rx:
            return int(rx.group(1)), int(rx.group(2)), int(rx.group(3))
        return None


START = {"tx": "bench_tx start", "rx": "bench_rx ready"}
END = {"tx": "bench_tx_frames", "rx": "bench_rx_frames"}


def drive(ns: Namespace, pid: int, read: object, mode: str, size: int, frames: int, backlog: int,
          timeout: float = 300) -> tuple[str, float | None]:
    """Follow a running VM: read its console (read() -> bytes, or None at the end) and take the CPU time of
    pid when the guest prints that it starts (for rx: when the sender is told to go) and when it prints its
    result. Returns the console text and the CPU seconds in between."""
    text, start, spent = "", None, None
    sender = None
    if mode == "rx":  # started now so that its start-up is not in the measurement; it waits for a byte
        sender = subprocess.Popen(ns.exec(sys.executable, "-c", SENDER, str(size - 42), str(frames * 2),
                                          str(backlog), TAP, GUEST_IP),
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            data = read()  # type: ignore[operator]
            if data is None:
                break
            text += data.decode("latin-1")
            if start is None and START[mode] in text:
                if sender is not None:
                    assert sender.stdin is not None
                    sender.stdin.write(b"g")
                    sender.stdin.close()
                start = cpu_seconds(pid)
            if spent is None and END[mode] in text and start is not None:
                end = cpu_seconds(pid)
                spent = end - start if end is not None else None
            if re.search(r"ALL OK|FAILED \d+", text):
                break
    finally:
        if sender is not None:
            sender.terminate()
            sender.wait()
    return text, spent


def pipe_reader(stream: object) -> object:
    fd = stream.fileno()  # type: ignore[attr-defined]

    def read() -> bytes | None:
        if select.select([fd], [], [], 0.02)[0]:
            data = os.read(fd, 65536)
            return data or None
        return b""
    return read


class Qemu:
    name = "QEMU"

    def __init__(self, ns: Namespace, kernel: Path) -> None:
        self.ns, self.kernel = ns, kernel

    def run(self, mode: str, size: int, frames: int, irq: str, backlog: int) -> Result:
        self.ns.prepare()
        before = self.ns.counters()
        command = self.ns.exec(
            "qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-xsave,-avx,-avx2,-cx16,-arch-capabilities",
            "-m", "32M", "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
            "-kernel", str(self.kernel), "-append", append_line(mode, size, frames, irq),
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={GUEST_MAC}")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL)
        try:
            text, cpu = drive(self.ns, process.pid, pipe_reader(process.stdout), mode, size, frames, backlog)
        finally:
            process.kill()
            process.wait()
        return Result(text, cpu, self.ns.counters()["rx_packets"] - before["rx_packets"])

    def close(self) -> None:
        pass


class Vmd:
    """vmd as a daemon in the namespace; one disabled VM per case, started with vmctl."""

    name = "vmd"

    def __init__(self, ns: Namespace, kernel: Path, frames: int, irq: str) -> None:
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="vmdbench-net-", dir="/tmp")
        self.socket = os.path.join(self.dir, "vmd.sock")
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), VMD_SOCKET=self.socket)
        blocks = []
        for key, mode, size, _label in CASES:
            blocks.append(f"""vm "{key}" {{
    disable
    memory 32M
    boot "{kernel}"
    append "{append_line(mode, size, frames, irq)}"
    interface "{TAP}" {{ lladdr {GUEST_MAC} }}
}}
""")
        config = Path(self.dir) / "vm.conf"
        config.write_text("".join(blocks))
        self.log = open(Path(self.dir) / "vmd.log", "wb")
        self.process = subprocess.Popen(ns.exec(sys.executable, "-m", "vmd.cli", "-d", "-f", str(config)),
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vmd did not start: " + (Path(self.dir) / "vmd.log").read_text())
            time.sleep(0.05)

    def vmctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmd.ctl.main", *args], capture_output=True, text=True,
                              env=self.env, timeout=60)

    def run(self, mode: str, size: int, frames: int, irq: str, backlog: int) -> Result:
        key = next(k for k, m, s, _ in CASES if m == mode and s == size)
        name = key
        self.ns.prepare()
        before = self.ns.counters()
        started = self.vmctl("start", name)
        if started.returncode != 0:
            raise RuntimeError(f"vmctl start {name}: {started.stderr.strip()}")
        rows = json.loads(self.vmctl("status", "--json").stdout)
        row = next(r for r in rows if r["name"] == name)
        fd = os.open(str(row["tty"]), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)

        def read() -> bytes | None:
            if select.select([fd], [], [], 0.02)[0]:
                try:
                    return os.read(fd, 65536) or None
                except OSError:
                    return None
            return b""
        try:
            text, cpu = drive(self.ns, int(row["pid"]), read, mode, size, frames, backlog)
        finally:
            os.close(fd)
            self.vmctl("stop", "-f", "-w", name)
        return Result(text, cpu, self.ns.counters()["rx_packets"] - before["rx_packets"])

    def close(self) -> None:
        self.vmctl("stop", "-a", "-f", "-w")
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        finally:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=2000, help="frames per case and run")
    parser.add_argument("--irq", default="msix", choices=("msix", "poll"), help="the guest's completion mode")
    parser.add_argument("--backlog", type=int, default=128, help="host->guest: most frames queued on the tap")
    parser.add_argument("--verbose", action="store_true", help="print each run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/net.py needs root (network namespaces, taps)", file=sys.stderr)
        return 1
    kernel = build_guests()["virtio_net"]
    ns = Namespace()
    vmms: list[Vmd | Qemu] = []
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        vmms = [Vmd(ns, kernel, args.frames, args.irq), Qemu(ns, kernel)]
        for _ in range(args.runs):
            for key, mode, size, _label in CASES:
                for vmm in vmms:
                    result = vmm.run(mode, size, args.frames, args.irq, args.backlog)
                    measured = result.rate()
                    if args.verbose:
                        print(f"{vmm.name} {key}: {measured} cpu {result.cpu} host_rx {result.host_rx}",
                              file=sys.stderr)
                    if measured is None or not measured[0] or not measured[2]:
                        print(f"{vmm.name} {key}: no result\n{result.text[-2000:]}", file=sys.stderr)
                        continue
                    count, nbytes, ns_ = measured
                    if mode == "tx" and result.host_rx < count:
                        print(f"{vmm.name} {key}: the tap saw {result.host_rx} of {count} frames", file=sys.stderr)
                    seconds = ns_ / 1e9
                    cpu = result.cpu * 1e6 / count if result.cpu is not None else float("nan")
                    results.setdefault((key, vmm.name), []).append((count / seconds, nbytes / seconds / 1e6, cpu))
    finally:
        for vmm in vmms:
            vmm.close()
        ns.close()
    names = [vmm.name for vmm in vmms]
    print(f"| measure (median of {args.runs}, {args.frames} frames, irq={args.irq}) | "
          + " | ".join(names) + " | vmd / QEMU |")
    print("|---|" + "---:|" * (len(names) + 1))
    for key, _mode, _size, label in CASES:
        cells, rates = [], {}
        for name in names:
            values = results.get((key, name))
            if not values:
                cells.append("–")
                continue
            pps = statistics.median(v[0] for v in values)
            mbps = statistics.median(v[1] for v in values)
            cpu = statistics.median(v[2] for v in values)
            rates[name] = pps
            cells.append(f"{pps / 1000:.2f} kframes/s, {mbps:.2f} MB/s ({cpu:.0f} µs CPU/frame)")
        ratio = f"{rates['vmd'] / rates['QEMU']:.2f}" if "vmd" in rates and "QEMU" in rates else "–"
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
