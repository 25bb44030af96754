"""Who may do what: vmd's vm_checkperm and vm_checkaccess rules (vmd.c, config.c), and owner names."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """The user at the other end of the control socket (SO_PEERCRED), with its groups."""

    uid: int
    gid: int
    pid: int
    groups: frozenset[int]

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @classmethod
    def lookup(cls, uid: int, gid: int, pid: int) -> Peer:
        groups = {gid}
        try:
            name = pwd.getpwuid(uid).pw_name
            groups.update(os.getgrouplist(name, gid))
        except KeyError:
            pass
        return cls(uid, gid, pid, frozenset(groups))


@dataclass(frozen=True)
class Owner:
    """A VM's owner as vm.conf(5) states it: a user, a group, or both (None when not given)."""

    uid: int | None = None
    gid: int | None = None

    def admits(self, peer: Peer) -> bool:
        """vm_checkperm: root always; the owning user; or a member of the owning group."""
        if peer.is_root:
            return True
        if self.uid is not None and peer.uid == self.uid:
            return True
        return self.gid is not None and self.gid in peer.groups

    def text(self) -> str:
        """As vmctl status prints it: user, user:group or :group, cut at 15 characters."""
        user = _user_name(self.uid) if self.uid is not None else ""
        if self.uid is None and self.gid is None:
            user = "root"
        if self.gid is not None:
            user += ":" + _group_name(self.gid)
        return user[:15]


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class AccessDenied(Exception):
    pass


def check_file_access(path: str, peer: Peer, write: bool = False) -> None:
    """vm_checkaccess: the file must be a regular file the peer could open (owner, group, other bits)."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise AccessDenied(f"{path}: {error.strerror}") from None
    _check_info(info, path, peer, write)


def open_checked(path: str, peer: Peer, write: bool = False) -> int:
    """Open path for vmd's use on behalf of peer, checking the very file it opens (vmd opens, then fstats).

    The path is resolved once, with O_PATH (which neither opens a device nor blocks on a FIFO) and with the
    peer's own user and groups, so directories the peer cannot search stay closed to it; that inode is
    checked as check_file_access does, then reopened through /proc/self/fd. A symlink the user swaps after
    the check cannot point vmd, running as root, at another file."""
    try:
        with _credentials_of(peer):
            handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        raise AccessDenied(f"{path}: {error.strerror}") from None
    try:
        _check_info(os.fstat(handle), path, peer, write)
        return os.open(f"/proc/self/fd/{handle}", (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(handle)


@contextlib.contextmanager
def _credentials_of(peer: Peer) -> Iterator[None]:
    """Take the peer's effective user, group and groups for path resolution, as the kernel checks them.

    vmd's parent is single-threaded, and set*id change every thread anyway; root's ids are restored after."""
    if peer.is_root or os.geteuid() != 0:
        yield
        return
    saved_groups = os.getgroups()
    os.setgroups(sorted(peer.groups))
    os.setegid(peer.gid)
    os.seteuid(peer.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved_groups)


def _check_info(info: os.stat_result, path: str, peer: Peer, write: bool) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise AccessDenied(f"{path}: not a regular file")
    if peer.is_root:
        return
    need_read, need_write = stat.S_IROTH, stat.S_IWOTH if write else 0
    mode = info.st_mode
    if info.st_uid == peer.uid:
        allowed = (mode >> 6) & 7
    elif info.st_gid in peer.groups:
        allowed = (mode >> 3) & 7
    else:
        allowed = mode & 7
    if (allowed & need_read) != need_read or (allowed & need_write) != need_write:
        raise AccessDenied(f"{path}: Permission denied")
