"""A VM's GDB stub socket, made by vmd for the VM process: a Unix socket <dir>/<name>.gdb (dir is `vmd` next to
the control socket: /run/vmd), owned by the user the VM runs for, mode 0600, or 0660 with the VM's owner
group (as its tty). vmd binds it and hands the listening descriptor over; the VM process serves it after it has
dropped its privileges, and vmd removes it when the VM stops.

The directory must be root's (vmd's) and writable by nobody else; the socket is bound in a private directory
inside it and renamed into place once its owner and mode are set, so nobody can connect before that.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tempfile

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class GdbSocketError(Exception):
    """str() is a one-line message naming the socket and the reason."""


def socket_path(directory: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise GdbSocketError(f"{name[:70]!r}: not a VM name a socket can be named after")
    return os.path.join(directory, f"{name}.gdb")


def _check_directory(directory: str) -> None:
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        pass
    except OSError as error:
        raise GdbSocketError(f"{directory}: {error.strerror}") from None
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise GdbSocketError(f"{directory}: not a directory")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise GdbSocketError(f"{directory}: must belong to vmd's user and be writable by nobody else")


def open_gdb_socket(directory: str, name: str, uid: int, gid: int | None) -> tuple[int, str]:
    """Bind and listen on <directory>/<name>.gdb for uid (group gid: mode 0660, else 0600).
    Returns the listening descriptor and the path. A stale socket of that name is replaced."""
    path = socket_path(directory, name)
    _check_directory(directory)
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISSOCK(existing.st_mode):
        raise GdbSocketError(f"{path}: exists and is not a socket")
    private = tempfile.mkdtemp(prefix=".gdb-", dir=directory)  # mode 0700: nobody can reach what is inside
    staging = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staging)
        os.chmod(staging, 0o660 if gid is not None else 0o600)
        if os.geteuid() == 0:
            os.chown(staging, uid, gid if gid is not None else 0)
        sock.listen(1)
        os.rename(staging, path)
    except OSError as error:
        sock.close()
        raise GdbSocketError(f"{path}: {error.strerror or error}") from None
    finally:
        try:
            os.unlink(staging)
        except OSError:
            pass
        os.rmdir(private)
    sock.set_inheritable(False)
    return sock.detach(), path


def remove_gdb_socket(path: str) -> None:
    """Remove the socket once its VM has stopped (only if it is still a socket)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
