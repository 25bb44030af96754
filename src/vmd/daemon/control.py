"""The control socket: JSON lines over a Unix stream socket, peers known by SO_PEERCRED (docs/protocol.md)."""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import struct
from collections.abc import Callable
from typing import Any

from vmd.daemon.permissions import Peer

PROTOCOL_VERSION = 1
MAX_LINE = 65536
MAX_PENDING_OUTPUT = 1 << 20  # answers a client has not read: past this, vmd reads no more requests from it
BACKLOG = 128

log = logging.getLogger("vmd.control")


class RequestError(Exception):
    """A refused request: errno name and message (and vmd's numeric code where it has one)."""

    def __init__(self, errno_name: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno_name = errno_name
        self.message = message
        self.code = code

    @classmethod
    def from_errno(cls, number: int, message: str | None = None) -> RequestError:
        return cls(errno.errorcode.get(number, "EIO"), message or os.strerror(number))


class Client:
    """One connected vmctl. Responses may be sent later (stop -w, wait, start)."""

    def __init__(self, server: ControlServer, sock: socket.socket, peer: Peer) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False
        self.busy = False  # a request is being served; the next waits (one at a time, as the protocol says)
        self.serving = False  # inside _serve_pending (answers queued meanwhile must not recurse into it)

    def respond(self, payload: dict[str, Any]) -> None:
        if self.closed:
            return
        message = {"version": PROTOCOL_VERSION, "ok": True}
        message.update(payload)
        self._queue(message)

    def fail(self, error: RequestError) -> None:
        if self.closed:
            return
        message: dict[str, Any] = {"version": PROTOCOL_VERSION, "ok": False, "errno": error.errno_name,
                                   "error": error.message}
        if error.code is not None:
            message["code"] = error.code
        self._queue(message)

    def _queue(self, message: dict[str, Any]) -> None:
        self.busy = False
        self.outbuf += json.dumps(message).encode() + b"\n"
        self.server._want_write(self)
        self.server._serve_pending(self)


class ControlServer:
    """Accepts clients and hands each request to handler(client, request)."""

    def __init__(self, path: str, selector: selectors.BaseSelector,
                 handler: Callable[[Client, dict[str, Any]], None], group: int = 0) -> None:
        self.path = path
        self.selector = selector
        self.handler = handler
        self.clients: set[Client] = set()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        old_umask = os.umask(0o117)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        os.chown(path, 0, group)
        self.sock.listen(BACKLOG)
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def set_group(self, group: int) -> None:
        os.chown(self.path, 0, group)

    def _accept(self, mask: int) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("accept: %s", error.strerror)
                return
            conn.setblocking(False)
            pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i")))
            client = Client(self, conn, Peer.lookup(uid, gid, pid))
            self.clients.add(client)
            self.selector.register(conn, selectors.EVENT_READ, lambda m, c=client: self._ready(c, m))

    def _want_write(self, client: Client) -> None:
        if client.closed:
            return
        self._flush(client)
        self._update_events(client)

    def _update_events(self, client: Client) -> None:
        """Read requests unless too many answers are unread; wait to write while answers are queued."""
        if client.closed:
            return
        events = selectors.EVENT_READ if len(client.outbuf) < MAX_PENDING_OUTPUT else 0
        if client.outbuf:
            events |= selectors.EVENT_WRITE
        if self.selector.get_key(client.sock).events != events:
            self.selector.modify(client.sock, events, lambda m, c=client: self._ready(c, m))

    def _flush(self, client: Client) -> None:
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close(client)
                return
            del client.outbuf[:sent]

    def _ready(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
            self._update_events(client)
            self._serve_pending(client)
        if mask & selectors.EVENT_READ and not client.closed and len(client.outbuf) < MAX_PENDING_OUTPUT:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close(client)
                return
            client.inbuf += data
            if len(client.inbuf) > MAX_LINE and b"\n" not in client.inbuf:
                log.warning("client pid %d: request too long, closing", client.peer.pid)
                self.close(client)
                return
            self._serve_pending(client)

    def _serve_pending(self, client: Client) -> None:
        if client.serving:  # an answer queued while serving: the loop below goes on with the next request
            return
        client.serving = True
        try:
            while (not client.busy and not client.closed and len(client.outbuf) < MAX_PENDING_OUTPUT
                   and b"\n" in client.inbuf):
                line, _, rest = bytes(client.inbuf).partition(b"\n")
                client.inbuf = bytearray(rest)
                if len(line) > MAX_LINE:
                    self.close(client)
                    return
                self._handle_line(client, line)
        finally:
            client.serving = False

    def _handle_line(self, client: Client, line: bytes) -> None:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            client.fail(RequestError("EINVAL", "malformed request: not JSON"))
            return
        if not isinstance(request, dict):
            client.fail(RequestError("EINVAL", "malformed request: not an object"))
            return
        if request.get("version") != PROTOCOL_VERSION:
            client.fail(RequestError("EPROTO", f"unsupported protocol version {request.get('version')!r}"))
            return
        client.busy = True
        try:
            self.handler(client, request)
        except RequestError as error:
            client.fail(error)
        except Exception as error:  # never let one request take vmd down
            log.exception("request %r failed", request.get("command"))
            client.fail(RequestError("EIO", f"internal error: {type(error).__name__}"))

    def close(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def shutdown(self) -> None:
        for client in list(self.clients):
            self._flush(client)
            self.close(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
