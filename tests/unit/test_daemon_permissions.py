"""vmd opens the file it checked: a symlink swapped after the check cannot make it open another one as root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmd.daemon.core as core
from vmd.daemon.control import RequestError
from vmd.daemon.core import Daemon
from vmd.daemon.permissions import AccessDenied, Peer, open_checked

USER = Peer(uid=54321, gid=54321, pid=0, groups=frozenset({54321}))


@pytest.fixture
def searchable(tmp_path: Path) -> Iterator[Path]:
    """A directory other users can reach: vmd resolves paths with the requesting user's own credentials,
    and pytest's temporary directories sit under a 0700 one."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vmd-perm-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def files(searchable: Path) -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make files for another user")
    tmp_path = searchable
    mine = tmp_path / "mine.img"
    mine.write_bytes(b"user data" + bytes(503))
    os.chown(mine, USER.uid, USER.gid)
    os.chmod(mine, 0o600)
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"root only" + bytes(503))
    os.chmod(secret, 0o600)
    link = tmp_path / "link.img"
    link.symlink_to(mine)
    return {"mine": mine, "secret": secret, "link": link}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    daemon = Daemon(str(tmp_path / "vmd.sock"), str(tmp_path / "vm.conf"), lambda path: ([], core.Settings()))
    yield daemon
    daemon.control.shutdown()


def test_a_disk_link_swapped_after_the_check_never_opens_the_other_file(files: dict[str, Path], daemon: Daemon,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = os.stat
    swapped = []

    def stat_then_swap(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if str(path) == str(files["link"]) and not swapped:
            swapped.append(True)  # the user's race: once vmd has looked, the link points elsewhere
            files["link"].unlink()
            files["link"].symlink_to(files["secret"])
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    opened: dict[str, int] = {}
    try:
        daemon.launcher.open_disk("vm", 0, {"path": str(files["link"]), "format": "raw"}, USER, opened)
    except RequestError:
        pass  # refusing is fine
    try:
        assert [os.pread(fd, 9, 0) for fd in opened.values()] in ([], [b"user data"])
    finally:
        for fd in opened.values():
            os.close(fd)


def test_open_checked_opens_the_inode_it_checked(files: dict[str, Path]) -> None:
    fd = open_checked(str(files["link"]), USER, write=True)
    try:
        assert os.pread(fd, 9, 0) == b"user data"
    finally:
        os.close(fd)
    with pytest.raises(AccessDenied):
        open_checked(str(files["secret"]), USER)


def test_open_checked_neither_blocks_on_a_fifo_nor_opens_a_device(files: dict[str, Path], searchable: Path) -> None:
    tmp_path = searchable
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    for path in (str(fifo), "/dev/null", str(tmp_path)):
        for peer in (USER, Peer(0, 0, 0, frozenset({0}))):
            with pytest.raises(AccessDenied, match="not a regular file"):
                open_checked(path, peer)


def test_a_vm_restarted_without_a_client_is_checked_as_its_user_not_group_root(daemon: Daemon,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest reboot (or autostart) re-opens the VM's files for run_uid: with that user's groups, not gid 0."""
    seen: list[Peer] = []

    def capture(definition: object, peer: Peer) -> None:
        seen.append(peer)
        raise RequestError("EINVAL", "stop here")

    monkeypatch.setattr(daemon.launcher, "validate", capture)
    entry = daemon.registry.add(core.VmDefinition(name="vm", kernel="/nonexistent"), configured=True, uid=USER.uid)
    with pytest.raises(RequestError):
        daemon.start_entry(entry, USER.uid)
    assert seen and seen[0].uid == USER.uid and 0 not in seen[0].groups


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user's credentials needs root")
def test_a_readable_file_in_a_directory_the_user_cannot_enter_is_refused(searchable: Path) -> None:
    locked = searchable / "private"
    locked.mkdir(mode=0o700)
    image = locked / "disk.img"
    image.write_bytes(b"root's directory, world-readable file")
    image.chmod(0o644)
    nobody = Peer(65534, 65534, 0, frozenset({65534}))
    with pytest.raises(AccessDenied, match="Permission denied"):
        open_checked(str(image), nobody)
    locked.chmod(0o711)  # searchable: now the file's own mode decides, and it is world-readable
    fd = open_checked(str(image), nobody)
    os.close(fd)
    assert os.geteuid() == 0 and os.getegid() == 0  # vmd is root again afterwards
