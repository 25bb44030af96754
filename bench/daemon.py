#!/usr/bin/env python3
"""The control plane: how long `vmctl start` takes to return, and `vmctl status` latency with 50 VMs defined.

    python bench/daemon.py [--runs N]

Runs a private vmd (its own socket and vm.conf in a temporary directory) with 50 VMs defined, all running
the demo guest (idle at its prompt), and times the vmctl commands a user types, as whole processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import build_guests  # noqa: E402

VMS = 50


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    demo = build_guests()["demo"]
    with tempfile.TemporaryDirectory() as directory:
        conf = Path(directory) / "vm.conf"
        conf.write_text("".join(f'vm "vm{i}" {{\n disable\n memory 16M\n boot "{demo}"\n}}\n' for i in range(VMS)))
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), VMD_SOCKET=str(Path(directory) / "vmd.sock"))
        daemon = subprocess.Popen([sys.executable, "-m", "vmd.cli", "-d", "-f", str(conf)], env=env,
                                  stderr=subprocess.DEVNULL)
        vmctl = [sys.executable, "-m", "vmd.ctl.main"]
        try:
            while not (Path(directory) / "vmd.sock").exists():
                time.sleep(0.05)
            starts = [timed(vmctl + ["start", f"vm{i}"], env) for i in range(VMS)]
            status = [timed(vmctl + ["status"], env) for _ in range(args.runs)]
            python = [timed([sys.executable, "-c", "import vmd.ctl.main"], env) for _ in range(args.runs)]
            subprocess.run(vmctl + ["stop", "-a", "-w"], env=env, capture_output=True)
        finally:
            daemon.terminate()
            daemon.wait()
    print(f"| measure ({VMS} VMs defined and running) | median | min | max |")
    print("|---|---:|---:|---:|")
    for label, values in (("`vmctl start` to return (each of the 50)", starts),
                          (f"`vmctl status` ({args.runs} runs)", status),
                          ("of which: Python start-up and imports of vmctl", python)):
        print(f"| {label} | {statistics.median(values):.1f} ms | {min(values):.1f} ms | {max(values):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
