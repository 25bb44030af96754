"""The control socket: JSON lines over a Unix stream socket, peers known by SO_PEERCRED (docs/protocol.md).

Every client is bounded (docs/protocol.md "Limits"): one request line, one request served at a time and
at most one more buffered, unread answers, connections per user and in all; running out of descriptors
pauses accepting instead of spinning, and an error while serving a client closes that client only.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from vmd import boundedjson
from vmd.daemon.permissions import Peer
from vmd.limits import (
    CONTROL_CLIENTS_MAX,
    CONTROL_CLIENTS_PER_UID,
    CONTROL_INPUT_MAX,
    CONTROL_LINE_MAX,
    CONTROL_OUTPUT_MAX,
)

PROTOCOL_VERSION = 1
BACKLOG = 128
READ_SIZE = 65536
ACCEPT_PAUSE = 1.0  # out of descriptors with no reserve left: accept again after this, or when a client goes
LOG_INTERVAL = 60.0  # a warning a client can provoke is logged at most once in this time

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
        self.inbuf = bytearray()  # at most CONTROL_INPUT_MAX: vmd stops reading when it is full
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
        self._queue(error_message(error))

    def _queue(self, message: dict[str, Any]) -> None:
        self.busy = False
        self.outbuf += json.dumps(message).encode() + b"\n"
        self.server._answered(self)


def error_message(error: RequestError) -> dict[str, Any]:
    message: dict[str, Any] = {"version": PROTOCOL_VERSION, "ok": False, "errno": error.errno_name,
                               "error": error.message}
    if error.code is not None:
        message["code"] = error.code
    return message


TOO_MANY = RequestError("EMFILE", "too many connections")


class ControlServer:
    """Accepts clients and hands each request to handler(client, request); on_close(client) is called
    when a client goes (its pending requests are forgotten). call_later(delay, callback) schedules the
    retry when vmd runs out of descriptors."""

    def __init__(self, path: str, selector: selectors.BaseSelector,
                 handler: Callable[[Client, dict[str, Any]], None], group: int = 0,
                 on_close: Callable[[Client], None] | None = None,
                 call_later: Callable[[float, Callable[[], None]], object] | None = None) -> None:
        self.path = path
        self.selector = selector
        self.handler = handler
        self.on_close = on_close
        self.call_later = call_later
        self.clients: set[Client] = set()
        self.per_uid: Counter[int] = Counter()  # connections of each user but root
        self.accepting = True  # False while the listener is paused (out of descriptors)
        self._out_of_fds = False  # since the last accept that worked: logged once
        self._logged: dict[str, float] = {}
        self._reserve: int | None = self._open_reserve()  # freed to accept-and-refuse when out of fds
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
        selector.register(self.sock, selectors.EVENT_READ, self._accept_guarded)

    def set_group(self, group: int) -> None:
        os.chown(self.path, 0, group)

    # -- accepting ------------------------------------------------------------------------------------
    @staticmethod
    def _open_reserve() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _warn(self, key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """A line a client can cause again and again: at most one for each key per LOG_INTERVAL."""
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[key] = now
            log.log(level, message, *args)

    def _accept_guarded(self, mask: int) -> None:
        try:
            self._accept()
        except Exception as error:  # a bug here must not end the loop (and must not spin: pause)
            log.error("accept: %s: %s", type(error).__name__, error)
            self._pause()

    def _accept(self) -> None:
        for _ in range(BACKLOG):  # a bounded batch, so that the clients already connected are served too
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._accept_without_fds(error):
                        return
                    continue
                self._warn("accept", "accept: %s", error.strerror)
                return
            if self._out_of_fds:
                self._out_of_fds = False
                self._warn("accepting", "accepting connections again", level=logging.INFO)
            self._admit(conn)

    def _accept_without_fds(self, error: OSError) -> bool:
        """accept failed for want of descriptors: take the next connection with the reserve descriptor
        and refuse it with a line (root's takes the place of another user's), or pause accepting when
        there is no reserve. True when the connection was dealt with and the next may be tried."""
        if not self._out_of_fds:
            self._out_of_fds = True
            self._warn("emfile", "accept: %s: refusing connections until a descriptor is free", error.strerror)
        if self._reserve is None:
            self._pause()
            return False
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            conn = None
        except OSError:
            self._reserve = self._open_reserve()
            self._pause()
            return False
        if conn is not None:
            if _peer_uid(conn) == 0 and self._evict_for_root():
                self._admit(conn)  # in the place of the client just closed
            else:
                _refuse(conn, TOO_MANY)
        self._reserve = self._open_reserve()
        if self._reserve is None:
            self._pause()
            return False
        return conn is not None

    def _evict_for_root(self) -> bool:
        """Close one client of another user, idle ones first, to make room for root's."""
        others = [c for c in self.clients if not c.peer.is_root]
        if not others:
            return False
        victim = min(others, key=lambda c: (c.busy or bool(c.inbuf), id(c)))
        self._warn("evict", "out of descriptors: closed a connection of uid %d for root's", victim.peer.uid)
        try:
            victim.sock.send(json.dumps(error_message(TOO_MANY)).encode() + b"\n")
        except OSError:
            pass
        self.close(victim)
        return True

    def _pause(self) -> None:
        """Stop polling the listener until a client goes or ACCEPT_PAUSE has passed (a readable listener we
        cannot accept from would wake the loop for ever)."""
        if not self.accepting:
            return
        self.accepting = False
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        if self.call_later is not None:
            self.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if self.accepting or self.sock.fileno() < 0:
            return
        if self._reserve is None:
            self._reserve = self._open_reserve()
        self.accepting = True
        self.selector.register(self.sock, selectors.EVENT_READ, self._accept_guarded)

    def _admit(self, conn: socket.socket) -> None:
        """A new connection, within the limits: CONTROL_CLIENTS_PER_UID for each user and CONTROL_CLIENTS_MAX
        in all for users other than root; root's connections are not counted (only descriptors bound them)."""
        conn.setblocking(False)
        try:
            pid, uid, gid = _peer_ids(conn)
        except OSError:
            conn.close()
            return
        if uid != 0:
            if self.per_uid[uid] >= CONTROL_CLIENTS_PER_UID or sum(self.per_uid.values()) >= CONTROL_CLIENTS_MAX:
                self._warn(f"cap{uid}", "uid %d: too many connections, refusing more", uid)
                _refuse(conn, TOO_MANY)
                return
            self.per_uid[uid] += 1
        client = Client(self, conn, Peer.lookup(uid, gid, pid))
        self.clients.add(client)
        self.selector.register(conn, selectors.EVENT_READ, lambda m, c=client: self._ready_guarded(c, m))

    # -- serving --------------------------------------------------------------------------------------
    def _answered(self, client: Client) -> None:
        """An answer was queued: send what can be sent, go on with the next request, and read again."""
        self._flush(client)
        self._serve_pending(client)
        self._update_events(client)

    def _update_events(self, client: Client) -> None:
        """Read requests while there is room for them and answers are read; write while answers are queued.
        A client with a request pending fills at most CONTROL_INPUT_MAX, then vmd stops reading from it."""
        if client.closed:
            return
        reading = len(client.outbuf) < CONTROL_OUTPUT_MAX and len(client.inbuf) < CONTROL_INPUT_MAX
        events = selectors.EVENT_READ if reading else 0
        if client.outbuf:
            events |= selectors.EVENT_WRITE
        if self.selector.get_key(client.sock).events != events:
            self.selector.modify(client.sock, events, lambda m, c=client: self._ready_guarded(c, m))

    def _flush(self, client: Client) -> None:
        while client.outbuf and not client.closed:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close(client)
                return
            del client.outbuf[:sent]

    def _ready_guarded(self, client: Client, mask: int) -> None:
        try:
            self._ready(client, mask)
        except Exception as error:  # one client's trouble closes that client, never the loop
            self._warn("client-error", "client pid %d: %s: %s, closing", client.peer.pid, type(error).__name__,
                       error)
            self.close(client)

    def _ready(self, client: Client, mask: int) -> None:
        if client.closed:
            return
        if not mask:  # hung up (or an error) while vmd was not reading from it
            self.close(client)
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        room = CONTROL_INPUT_MAX - len(client.inbuf)
        if mask & selectors.EVENT_READ and not client.closed and len(client.outbuf) < CONTROL_OUTPUT_MAX \
                and room > 0:
            try:
                data = client.sock.recv(min(READ_SIZE, room))
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self.close(client)
                return
            if data:
                client.inbuf += data
                if len(client.inbuf) > CONTROL_LINE_MAX and b"\n" not in client.inbuf:
                    self._warn("too-long", "client pid %d: request too long, closing", client.peer.pid)
                    self.close(client)
                    return
        self._serve_pending(client)
        self._update_events(client)

    def _serve_pending(self, client: Client) -> None:
        if client.serving:  # an answer queued while serving: the loop below goes on with the next request
            return
        client.serving = True
        try:
            while (not client.busy and not client.closed and len(client.outbuf) < CONTROL_OUTPUT_MAX
                   and b"\n" in client.inbuf):
                end = client.inbuf.index(b"\n")
                line = bytes(client.inbuf[:end])
                del client.inbuf[:end + 1]
                self._handle_line(client, line)
        finally:
            client.serving = False

    def _handle_line(self, client: Client, line: bytes) -> None:
        try:
            request = boundedjson.loads(line, CONTROL_LINE_MAX)
        except boundedjson.JsonLimitError as error:
            client.fail(RequestError("EINVAL", f"malformed request: {error}"))
            return
        except ValueError:  # UnicodeDecodeError included
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
        if not client.peer.is_root:
            self.per_uid[client.peer.uid] -= 1
            if self.per_uid[client.peer.uid] <= 0:
                del self.per_uid[client.peer.uid]
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        client.inbuf = bytearray()
        client.outbuf = bytearray()
        if self.on_close is not None:
            self.on_close(client)
        self._resume()  # a descriptor is free again

    def shutdown(self) -> None:
        self.accepting = True  # so that _resume (from close) does not register the listener again
        for client in list(self.clients):
            self._flush(client)
            self.close(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _peer_ids(conn: socket.socket) -> tuple[int, int, int]:
    """SO_PEERCRED: (pid, uid, gid)."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid, gid


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        return _peer_ids(conn)[1]
    except OSError:
        return None


def _refuse(conn: socket.socket, error: RequestError) -> None:
    """Answer a connection vmd will not serve with one line, and close it."""
    conn.setblocking(False)
    try:
        conn.send(json.dumps(error_message(error)).encode() + b"\n")
    except OSError:
        pass
    conn.close()
