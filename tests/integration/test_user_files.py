"""Files a user names are opened as that user (issue 9, items 4 and 5): the kernel decides, POSIX ACLs
included, and a user learns nothing about a file their own open(2) could not reach."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_daemon import OWNER, Vmd, _config, users  # noqa: F401  (users is a fixture)

# A POSIX ACL as the kernel stores it (system.posix_acl_access; include/uapi/linux/posix_acl_xattr.h):
# version 2, then (tag, perm, id) entries sorted by tag.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF


def _deny(path: Path, uid: int) -> None:
    """rw-r--r-- for everyone but uid, which gets nothing (setfacl -m u:uid:--- path)."""
    entries = [(ACL_USER_OBJ, 6, UNDEFINED), (ACL_USER, 0, uid), (ACL_GROUP_OBJ, 4, UNDEFINED),
               (ACL_MASK, 4, UNDEFINED), (ACL_OTHER, 4, UNDEFINED)]
    os.setxattr(path, "system.posix_acl_access",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries))


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user can search (pytest's own temporary directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vmdt-files-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _request_as(user: str, socket_path: str, request: dict[str, object]) -> dict[str, object]:
    """One request on the control socket from a process of user's, as a client other than vmctl would send
    it (vmctl checks paths itself first; vmd may not rely on that)."""
    client = ("import json, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b'\\n')\n"
              "data = b''\n"
              "while not data.endswith(b'\\n'):\n"
              "    chunk = s.recv(65536)\n"
              "    if not chunk: break\n"
              "    data += chunk\n"
              "print(data.decode())\n")
    done = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups",
                           "--", sys.executable, "-c", client, socket_path, json.dumps({"version": 1, **request})],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done
    answer = json.loads(done.stdout)
    assert isinstance(answer, dict)
    return answer


@pytest.fixture
def daemon(shared: Path, guests: dict[str, Path], users: dict[str, int]) -> Iterator[Vmd]:  # noqa: F811
    tmp_path = shared
    kernel = tmp_path / "demo.elf"
    shutil.copy(guests["demo"], kernel)
    os.chmod(kernel, 0o644)
    vmd = Vmd(tmp_path, _config(guests, f"""
vm "mine" {{
    disable
    memory 16M
    boot "{kernel}"
    owner {OWNER}
}}
"""))
    vmd.start()
    yield vmd
    vmd.stop()


def test_a_kernel_an_acl_denies_the_user_is_refused(daemon: Vmd, shared: Path, guests: dict[str, Path]) -> None:
    tmp_path = shared
    # The mode bits say anyone may read it; the ACL says the owner may not (cat refuses them). It used to
    # boot as their kernel, checked by its mode bits only.
    denied = tmp_path / "denied.elf"
    shutil.copy(guests["demo"], denied)
    os.chmod(denied, 0o644)
    _deny(denied, pwd.getpwnam(OWNER).pw_uid)
    refused = daemon.vmctl("start", "-b", str(denied), "mine", user=OWNER)  # vmctl opens it as the user first
    assert (refused.returncode, refused.stderr.strip()) == (
        1, f"vmctl: cannot open kernel '{denied}': Permission denied"), refused
    answer = _request_as(OWNER, daemon.socket, {"command": "start", "target": "mine", "kernel": str(denied)})
    assert (answer.get("ok"), answer.get("error")) == (False, f"{denied}: Permission denied"), answer
    assert daemon.status()["mine"]["state"] == "stopped"
    allowed = tmp_path / "allowed.elf"  # the same file without the ACL boots
    shutil.copy(guests["demo"], allowed)
    os.chmod(allowed, 0o644)
    started = daemon.vmctl("start", "-b", str(allowed), "mine", user=OWNER)
    assert started.returncode == 0, started
    daemon.wait_state("mine", "running")
    daemon.vmctl("stop", "-f", "-w", "mine")


def test_a_user_learns_nothing_of_files_in_a_directory_they_cannot_search(daemon: Vmd, shared: Path,
                                                                           guests: dict[str, Path]) -> None:
    # vmd used to stat the file as root first: "No such file or directory" for a missing one and
    # "Permission denied" for one that is there told the user what root's private directory holds.
    private = shared / "private"
    private.mkdir(mode=0o700)
    shutil.copy(guests["demo"], private / "there.elf")
    answers = []
    for name in ("there.elf", "missing.elf"):
        answer = _request_as(OWNER, daemon.socket, {"command": "start", "target": "mine",
                                                    "kernel": str(private / name)})
        assert answer.get("ok") is False, answer
        answers.append(str(answer.get("error")).replace(name, "NAME"))
    assert answers == [f"{private}/NAME: Permission denied"] * 2
    assert daemon.status()["mine"]["state"] == "stopped"
