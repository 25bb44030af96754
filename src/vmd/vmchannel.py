"""The channel between vmd and a VM process: one SOCK_SEQPACKET socketpair, JSON messages with file
descriptors beside them (SCM_RIGHTS), and the exit status a VM process reports a guest reboot with.

Both ends import it: the daemon (daemon/supervisor.py) without the machine stack, the VM process
(vmproc.py) with it. The messages are described in vmproc.py.
"""

from __future__ import annotations

import array
import json
import os
import socket

from vmd import boundedjson
from vmd.limits import VM_MESSAGE_MAX

EXIT_REBOOT = 75  # the VM process's exit status after a guest reboot (EX_TEMPFAIL): vmd starts it again
MAX_FDS = 16


def send_message(sock: socket.socket, message: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def receive_message(sock: socket.socket) -> tuple[dict[str, object] | None, list[int]]:
    """One message and the fds that came with it; (None, []) when the peer has gone. A message that is not
    a JSON object, or is too long or nested too deeply, raises ValueError (boundedjson.JsonLimitError)."""
    fds = array.array("i")
    data, ancillary, flags, _address = sock.recvmsg(VM_MESSAGE_MAX + 1, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    try:
        if flags & socket.MSG_TRUNC:
            raise boundedjson.JsonLimitError("too long")
        if not data:
            return None, list(fds)
        message = boundedjson.loads(data, VM_MESSAGE_MAX)
        if not isinstance(message, dict):
            raise ValueError("message is not an object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, list(fds)
