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
    """vm_checkaccess: the file must be a regular file the peer can open. Checked by opening it as the peer
    (open_checked), never by a stat as root: what the peer learns is what its own open(2) would tell it."""
    os.close(open_checked(path, peer, write))


def open_checked(path: str, peer: Peer, write: bool = False) -> int:
    """Open path for vmd's use on behalf of peer: the open is the peer's own, so the kernel decides with
    the peer's user and groups, POSIX ACLs and LSMs included, and its error is the one the peer would get.

    The path is resolved once, with O_PATH (which neither opens a device nor blocks on a FIFO), and must
    name a regular file; that very inode is then opened through /proc/self/fd, still as the peer. A symlink
    the user swaps in between cannot point vmd, running as root, at another file."""
    try:
        with _credentials_of(peer):
            handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(handle).st_mode):
                    raise AccessDenied(f"{path}: not a regular file")
                flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOCTTY
                return os.open(f"/proc/self/fd/{handle}", flags)
            finally:
                os.close(handle)
    except OSError as error:
        raise AccessDenied(f"{path}: {error.strerror}") from None


@contextlib.contextmanager
def _credentials_of(peer: Peer) -> Iterator[None]:
    """Take the peer's effective user, group and groups for the open, as the kernel checks them.

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
