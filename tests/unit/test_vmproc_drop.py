"""The VM process after its privilege drop (chroot to an empty directory, the _vmd user): threads that end
during interpreter shutdown must not abort it. glibc loads libgcc_s the first time a thread exits; in the
empty root it cannot, and the VM process died with "libgcc_s.so.1 must be installed for pthread_exit to
work", so under vmd a guest's reboot was reported as a crash and the VM was not restarted."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# A daemon thread that wakes up while the interpreter shuts down, after the drop: it calls pthread_exit.
PROGRAM = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from vmd.vmproc import drop_privileges

    def spin():
        while True:
            time.sleep(0.001)

    class SlowToDie:
        def __del__(self):
            time.sleep(0.3)  # finalization is under way: the thread wakes up and must exit

    threading.Thread(target=spin, daemon=True).start()
    keep = SlowToDie()
    drop_privileges("_vmd")
    print("dropped", flush=True)
""")


def test_threads_ending_after_the_drop_do_not_abort_the_vm_process() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    try:
        pwd.getpwnam("_vmd")
    except KeyError:
        pytest.skip("no _vmd user (scripts/setup.sh creates it)")
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(SRC)], capture_output=True, text=True, timeout=60)
    assert "dropped" in done.stdout, done.stderr
    assert "libgcc_s" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
