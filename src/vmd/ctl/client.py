"""The client end of vmd's control protocol (docs/protocol.md): JSON lines over a Unix stream socket.

One request, one response line; a connection may carry several requests in turn. Every failure of the
transport becomes a CtlError whose text is what vmctl prints after `vmctl: ` (main.c `vmmaction`:
`connect: <socket>: <strerror>`, `write error`, `read error`, `pipe closed`,
`unexpected response received from vmd`).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from vmd import boundedjson

SOCKET_PATH = "/run/vmd.sock"
SOCKET_ENV = "VMD_SOCKET"  # overrides SOCKET_PATH (tests, non-root daemons)
PROTOCOL_VERSION = 1
MAX_RESPONSE = 16 * 1024 * 1024  # a status list of many VMs is far below this
UNEXPECTED = "unexpected response received from vmd"


class CtlError(Exception):
    """A one-line error; main prints `vmctl: <text>` and exits 1."""


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or SOCKET_PATH


class Client:
    """A connection to vmd's control socket."""

    def __init__(self, path: str | None = None, timeout: float | None = None) -> None:
        self.path = path or socket_path()
        self._buf = b""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise CtlError(f"connect: {self.path}: {_strerror(e)}") from None
        self._sock = sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the response object (whatever `ok` says)."""
        msg = {"version": PROTOCOL_VERSION, "command": command}
        msg.update({k: v for k, v in fields.items() if v is not None})
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        try:
            self._sock.sendall(data)
        except OSError as e:
            if self._buf or self._refused():  # vmd said why before it closed (too many connections)
                return self._read_response()
            raise CtlError(f"write error: {_strerror(e)}") from None
        return self._read_response()

    def _refused(self) -> bool:
        """Did vmd leave an answer on a connection it closed (a refusal)? Then it is read as the response."""
        try:
            self._sock.setblocking(False)
            self._buf += self._sock.recv(65536)
        except OSError:
            return False
        return bool(self._buf)

    def _read_response(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_RESPONSE:
                raise CtlError(UNEXPECTED)
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:
                raise CtlError(f"read error: {_strerror(e)}") from None
            if not chunk:
                raise CtlError("pipe closed")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            resp = boundedjson.loads(line, MAX_RESPONSE)
        except ValueError:  # not JSON, not UTF-8, or nested too deeply
            raise CtlError(UNEXPECTED) from None
        if (
            not isinstance(resp, dict)
            or not isinstance(resp.get("ok"), bool)
            or resp.get("version", PROTOCOL_VERSION) != PROTOCOL_VERSION
        ):
            raise CtlError(UNEXPECTED)
        return resp


def _strerror(e: OSError) -> str:
    if e.errno is not None:
        return os.strerror(e.errno)
    return str(e) or e.__class__.__name__


def error_text(resp: dict[str, Any]) -> str | None:
    """The `error` text of a failed response (None if vmd sent none)."""
    err = resp.get("error")
    if isinstance(err, str) and err:
        return err
    name = resp.get("errno")
    if isinstance(name, str):
        import errno as errno_mod

        num = getattr(errno_mod, name, None)
        if isinstance(num, int):
            return os.strerror(num)
    return None
