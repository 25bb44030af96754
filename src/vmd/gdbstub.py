"""A GDB remote serial protocol stub for vmd's VMs (GDB manual, appendix E, "GDB Remote Serial Protocol").

RspSession is the protocol: bytes from the debugger in, bytes to it out, over a Target (the machine's side,
vmd.guest_debug.GuestDebug; a fake one in the unit tests). GdbServer owns the listening socket (TCP or
Unix) and serves one debugger at a time on a thread of its own.

All-stop mode: the target stops every vCPU when one stops. Threads are vCPUs, numbered from 1. Packets are
bounded (PacketSize); anything malformed gets an E reply or the empty "unsupported" reply, and nothing a
debugger sends raises out of the stub.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vmd.limits import UNIX_PATH_MAX

log = logging.getLogger("vmd.gdb")

MAX_PACKET = 0x4000  # the largest packet we take (qSupported PacketSize), payload bytes between $ and #
MAX_MEMORY_READ = (MAX_PACKET - 32) // 2  # the most bytes one m reply carries (hex: two characters a byte)
MAX_RETRANSMITS = 3
SIGINT = 2
SIGTRAP = 5
STOP_TIMEOUT = 5.0  # how long a newly connected debugger waits for the running VM to stop
SEND_TIMEOUT = 10.0
CLOSE_LINGER = 1.0  # how long a closing connection waits for the debugger's last acks
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPED = frozenset(b"$#}*")


class TargetError(Exception):
    """A request the target refused; the reply is E<code>."""

    def __init__(self, code: int = errno.EINVAL, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.code = code & 0xFF


class Unsupported(Exception):
    """A request the target does not implement; the reply is the empty packet."""


@dataclass(frozen=True)
class StopEvent:
    """Why the target stopped: the thread that stopped, a signal, and for gdb a reason (swbreak, hwbreak,
    watch, rwatch, awatch; address for the watchpoints)."""

    thread: int
    signal: int = SIGTRAP
    reason: str = ""
    address: int = 0


@dataclass(frozen=True)
class ExitEvent:
    """The VM ended: status for the W packet, message for the debugger's console."""

    status: int = 0
    message: str = ""


class Target(Protocol):
    """What the stub needs from a machine. Thread ids are 1-based. Register, memory and breakpoint calls come
    only while the target is stopped; resume() and interrupt() return at once, and the target later calls
    the listener and answers poll_event() with the StopEvent (or an ExitEvent)."""

    def set_listener(self, listener: Callable[[], None]) -> None: ...
    def set_connected(self, connected: bool) -> None: ...
    def poll_event(self) -> StopEvent | ExitEvent | None: ...
    def is_stopped(self) -> bool: ...
    def stop_event(self) -> StopEvent: ...
    def threads(self) -> list[int]: ...
    def thread_name(self, thread: int) -> str: ...
    def features(self, annex: str) -> bytes | None: ...
    def read_registers(self, thread: int) -> bytes: ...
    def write_registers(self, thread: int, data: bytes) -> None: ...
    def read_register(self, thread: int, number: int) -> bytes: ...
    def write_register(self, thread: int, number: int, data: bytes) -> None: ...
    def set_pc(self, thread: int, address: int) -> None: ...
    def read_memory(self, thread: int, address: int, length: int) -> bytes: ...
    def write_memory(self, thread: int, address: int, data: bytes) -> None: ...
    def insert_breakpoint(self, kind: int, address: int, length: int) -> None: ...
    def remove_breakpoint(self, kind: int, address: int, length: int) -> None: ...
    def resume(self, actions: dict[int, str]) -> None: ...
    def interrupt(self) -> None: ...
    def detach(self) -> None: ...
    def kill(self) -> None: ...


# -- framing (E.1 Overview) -----------------------------------------------------------------------------------


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape_binary(data: bytes) -> bytes:
    """Binary data in a reply: $, #, } and * become } followed by the byte xor 0x20."""
    out = bytearray()
    for byte in data:
        if byte in _ESCAPED:
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    out = bytearray()
    escaped = False
    for byte in data:
        if escaped:
            out.append(byte ^ 0x20)
            escaped = False
        elif byte == 0x7D:
            escaped = True
        else:
            out.append(byte)
    if escaped:
        raise ValueError("binary data ends with an escape")
    return bytes(out)


def parse_hex(text: bytes, digits: int = 16) -> int:
    """A hexadecimal number of at most digits digits; ValueError otherwise."""
    if not 0 < len(text) <= digits or not _HEX.issuperset(text):
        raise ValueError(f"bad number {text[:20]!r}")
    return int(text, 16)


def parse_hex_bytes(text: bytes) -> bytes:
    if len(text) % 2 or not _HEX.issuperset(text):
        raise ValueError("bad hex data")
    return bytes.fromhex(text.decode())


def parse_thread(text: bytes) -> int:
    """A thread-id: -1 (all), 0 (any) or a positive number; p<pid>.<tid> is taken for its tid."""
    if text.startswith(b"p") and b"." in text:
        text = text.split(b".", 1)[1]
    if text == b"-1":
        return -1
    return parse_hex(text, 8)


class RspSession:
    """The protocol with one debugger. feed() takes what it sent, send() gets what we answer."""

    def __init__(self, target: Target, send: Callable[[bytes], None]) -> None:
        self.target = target
        self._send = send
        self.ack = True
        self.running = False  # resumed: the debugger waits for a stop reply
        self.closed = False  # after D or k: the server closes the connection
        self._state = 0  # framing: 0 outside a packet, 1 in it, 2 and 3 the checksum digits
        self._payload = bytearray()
        self._overflow = False
        self._sum = 0
        self._check = b""
        self._last = b""
        self._retransmits = 0
        self.swbreak = False  # the debugger's qSupported: swbreak+, hwbreak+
        self.hwbreak = False
        event = target.stop_event() if target.is_stopped() else None
        self.thread_g = self.thread_c = event.thread if event else self._first_thread()

    # -- bytes in ------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.closed:
                return
            if self._state == 0:
                if byte == 0x24:  # $
                    self._start()
                elif byte == 0x03:
                    self._interrupt()
                elif byte == 0x2D and self.ack:  # -
                    self._retransmit()
                elif byte == 0x2B:  # +
                    self._retransmits = 0
            elif self._state == 1:
                if byte == 0x23:  # #
                    self._state = 2
                elif byte == 0x24:  # a new packet: the previous one was cut off
                    self._start()
                else:
                    self._sum = (self._sum + byte) & 0xFF
                    if len(self._payload) < MAX_PACKET:
                        self._payload.append(byte)
                    else:
                        self._overflow = True
            else:
                self._check += bytes((byte,))
                if self._state == 2:
                    self._state = 3
                else:
                    self._state = 0
                    self._end_packet()

    def _start(self) -> None:
        self._state = 1
        self._payload = bytearray()
        self._overflow = False
        self._sum = 0
        self._check = b""

    def _end_packet(self) -> None:
        good = _HEX.issuperset(self._check) and int(self._check, 16) == self._sum
        if self.ack:
            if not good:
                self._raw(b"-")
                return
            self._raw(b"+")
        payload = bytes(self._payload)
        if self._overflow:
            self.reply(b"E%02x" % errno.EMSGSIZE)
            return
        try:
            answer = self.dispatch(payload)
        except (ValueError, IndexError, UnicodeError):
            answer = b"E%02x" % errno.EINVAL
        except TargetError as error:
            answer = b"E%02x" % error.code
        except Unsupported:
            answer = b""
        except Exception:  # a bug in a handler must not take the stub down
            log.exception("gdb: packet %r", payload[:64])
            answer = b"E%02x" % errno.EIO
        if answer is not None:
            self.reply(answer)

    def _interrupt(self) -> None:
        if self.running:
            try:
                self.target.interrupt()
            except Exception:
                log.exception("gdb: interrupt")

    # -- bytes out ------------------------------------------------------------------------------------------
    def _raw(self, data: bytes) -> None:
        self._send(data)

    def reply(self, payload: bytes) -> None:
        packet = frame(payload)
        self._last = packet
        self._retransmits = 0
        self._send(packet)

    def _retransmit(self) -> None:
        if self._last and self._retransmits < MAX_RETRANSMITS:
            self._retransmits += 1
            self._send(self._last)

    def stop_reply(self, event: StopEvent) -> bytes:
        text = f"T{event.signal & 0xFF:02x}thread:{event.thread:x};"
        if event.reason in ("watch", "rwatch", "awatch"):
            text += f"{event.reason}:{event.address:x};"
        elif (event.reason == "swbreak" and self.swbreak) or (event.reason == "hwbreak" and self.hwbreak):
            text += f"{event.reason}:;"
        return text.encode()

    def report_stop(self, event: StopEvent) -> None:
        """The target stopped: answer the pending c/s (nothing is pending when we are not running)."""
        if not self.running or self.closed:
            return
        self.running = False
        self.thread_g = self.thread_c = event.thread
        self.reply(self.stop_reply(event))

    def report_exit(self, event: ExitEvent) -> None:
        """The VM ended: tell a debugger that waits (console output, then W); the connection then closes."""
        if self.running and not self.closed:
            if event.message:
                self.reply(b"O" + (event.message.rstrip("\n") + "\n").encode(errors="replace").hex().encode())
            self.reply(b"W%02x" % (event.status & 0xFF))
        self.running = False
        self.closed = True

    # -- packets (E.2 Packets) ------------------------------------------------------------------------------
    def dispatch(self, packet: bytes) -> bytes | None:
        """The reply to one packet (b"" for unsupported), or None when there is none to send now."""
        if not packet:
            return b""
        command = packet[:1]
        if self.running and command not in (b"q", b"Q", b"v", b"H", b"T", b"?"):
            return b"E%02x" % errno.EBUSY  # all-stop: only ^C while the VM runs
        if command == b"q":
            return self._query(packet)
        if command == b"Q":
            if packet == b"QStartNoAckMode":
                self.reply(b"OK")
                self.ack = False
                return None
            return b""
        if command == b"v":
            return self._v_packet(packet)
        if command == b"?":
            return self.stop_reply(self.target.stop_event()) if not self.running else b""
        if command == b"H":
            return self._set_thread(packet)
        if command == b"T":
            return b"OK" if parse_thread(packet[1:]) in self.target.threads() else b"E%02x" % errno.ESRCH
        if command == b"g":
            return self.target.read_registers(self._thread(self.thread_g)).hex().encode()
        if command == b"G":
            self.target.write_registers(self._thread(self.thread_g), parse_hex_bytes(packet[1:]))
            return b"OK"
        if command == b"p":
            number = parse_hex(packet[1:], 8)
            return self.target.read_register(self._thread(self.thread_g), number).hex().encode()
        if command == b"P":
            number_text, _, value = packet[1:].partition(b"=")
            self.target.write_register(self._thread(self.thread_g), parse_hex(number_text, 8),
                                       parse_hex_bytes(value))
            return b"OK"
        if command == b"m":
            address, length = self._address_length(packet[1:])
            data = self.target.read_memory(self._thread(self.thread_g), address, min(length, MAX_MEMORY_READ))
            return data.hex().encode()
        if command in (b"M", b"X"):
            header, sep, data = packet[1:].partition(b":")
            if not sep:
                raise ValueError("no data")
            address, length = self._address_length(header)
            raw = parse_hex_bytes(data) if command == b"M" else unescape_binary(data)
            if len(raw) != length:
                raise ValueError("length does not match the data")
            if raw:
                self.target.write_memory(self._thread(self.thread_g), address, raw)
            return b"OK"
        if command in (b"Z", b"z"):
            return self._breakpoint(packet)
        if command in (b"c", b"C", b"s", b"S"):
            return self._resume_simple(packet)
        if command == b"D":
            self.target.detach()
            self.reply(b"OK")
            self.closed = True
            return None
        if command == b"k":
            self.closed = True
            self.target.kill()
            return None
        return b""

    def _first_thread(self) -> int:
        threads = self.target.threads()
        return threads[0] if threads else 1

    def _thread(self, thread: int) -> int:
        """A concrete thread for register and memory access: 'any' and 'all' mean the one that stopped."""
        if thread in (0, -1):
            return self.target.stop_event().thread if self.target.is_stopped() else self._first_thread()
        if thread not in self.target.threads():
            raise TargetError(errno.ESRCH)
        return thread

    @staticmethod
    def _address_length(text: bytes) -> tuple[int, int]:
        address, sep, length = text.partition(b",")
        if not sep:
            raise ValueError("expected address,length")
        return parse_hex(address), parse_hex(length, 8)

    def _set_thread(self, packet: bytes) -> bytes:
        which, thread = packet[1:2], parse_thread(packet[2:])
        if thread not in (0, -1) and thread not in self.target.threads():
            return b"E%02x" % errno.ESRCH
        if which == b"g":
            self.thread_g = thread
        elif which == b"c":
            self.thread_c = thread
        else:
            return b""
        return b"OK"

    def _query(self, packet: bytes) -> bytes:
        name, _, rest = packet.partition(b":")
        if name == b"qSupported":
            features = set(rest.split(b";")) if rest else set()
            self.swbreak = b"swbreak+" in features
            self.hwbreak = b"hwbreak+" in features
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;vContSupported+"
                    % MAX_PACKET)
        if packet == b"qAttached" or packet.startswith(b"qAttached:"):
            return b"1"  # the VM existed before us: quitting gdb detaches rather than kills
        if packet == b"qC":
            thread = self.thread_g if self.thread_g > 0 else self._thread(0)
            return b"QC%x" % thread
        if packet == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % t for t in self.target.threads())
        if packet == b"qsThreadInfo":
            return b"l"
        if packet.startswith(b"qThreadExtraInfo,"):
            thread = parse_thread(packet[len(b"qThreadExtraInfo,"):])
            if thread not in self.target.threads():
                return b"E%02x" % errno.ESRCH
            return self.target.thread_name(thread).encode().hex().encode()
        if packet == b"qSymbol::":
            return b"OK"
        if name == b"qXfer":
            return self._xfer(rest)
        return b""

    def _xfer(self, rest: bytes) -> bytes:
        parts = rest.split(b":")
        if len(parts) != 4 or parts[0] != b"features" or parts[1] != b"read":
            return b""
        data = self.target.features(parts[2].decode("ascii"))
        if data is None:
            return b"E00"
        offset, length = self._address_length(parts[3])
        chunk = data[offset : offset + min(length, MAX_MEMORY_READ)]
        more = offset + len(chunk) < len(data)
        return (b"m" if more else b"l") + escape_binary(chunk)

    def _v_packet(self, packet: bytes) -> bytes | None:
        if packet == b"vCont?":
            return b"vCont;c;C;s;S"
        if packet.startswith(b"vCont;"):
            if self.running:
                return b"E%02x" % errno.EBUSY
            return self._vcont(packet[len(b"vCont;"):])
        if packet.startswith(b"vKill"):
            self.closed = True
            self.target.kill()
            self.reply(b"OK")
            return None
        return b""  # vMustReplyEmpty and the rest

    def _vcont(self, text: bytes) -> bytes | None:
        threads = self.target.threads()
        actions: dict[int, str] = {}
        default: str | None = None
        for item in text.split(b";"):
            action, sep, thread_text = item.partition(b":")
            if not action or action[:1] not in b"cCsS":
                return b"E%02x" % errno.EINVAL
            if action[:1] in b"CS":
                parse_hex(action[1:], 2)  # a signal to deliver: a VM has none; taken as plain c/s
            kind = action[:1].lower().decode()
            if not sep:
                if default is None:
                    default = kind
                continue
            thread = parse_thread(thread_text)
            if thread == -1:
                if default is None:
                    default = kind
                continue
            if thread == 0:
                thread = self._thread(0)
            if thread not in threads:
                return b"E%02x" % errno.ESRCH
            actions.setdefault(thread, kind)  # the leftmost action for a thread wins
        if default is not None:
            for thread in threads:
                actions.setdefault(thread, default)
        if not actions:
            return b"E%02x" % errno.EINVAL
        self.target.resume(actions)
        self.running = True
        return None

    def _resume_simple(self, packet: bytes) -> bytes | None:
        command, rest = packet[:1], packet[1:]
        if command in (b"C", b"S"):
            signal_text, _, rest = rest.partition(b";")
            parse_hex(signal_text, 2)
        thread = self._thread(self.thread_c)
        if rest:
            self.target.set_pc(thread, parse_hex(rest))
        if command in (b"c", b"C"):
            self.target.resume({t: "c" for t in self.target.threads()})
        else:
            self.target.resume({thread: "s"})  # the others stay stopped, as QEMU's stub steps one CPU
        self.running = True
        return None

    def _breakpoint(self, packet: bytes) -> bytes:
        fields = packet[1:].split(b";", 1)[0].split(b",")
        if len(fields) != 3:
            raise ValueError("expected type,address,kind")
        kind, address, length = parse_hex(fields[0], 1), parse_hex(fields[1]), parse_hex(fields[2], 8)
        if kind > 4:
            return b""
        if packet[:1] == b"Z":
            self.target.insert_breakpoint(kind, address, length)
        else:
            self.target.remove_breakpoint(kind, address, length)
        return b"OK"


# -- the server -----------------------------------------------------------------------------------------------


def describe_address(sock: socket.socket) -> str:
    """Where a listening socket is, as one would give it to gdb's `target remote`."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return str(address)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GdbServer:
    """Serves debuggers on a listening socket, one at a time, for the target attached (one per machine: a
    rebooted VM is a new machine, and the debugger sees the old one exit)."""

    def __init__(self, listener: socket.socket, name: str = "vm") -> None:
        self.listener = listener
        self.name = name
        listener.setblocking(False)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._pending: Target | None = None
        self._target: Target | None = None
        self._client: socket.socket | None = None
        self._session: RspSession | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._lost = False  # the connection broke while we wrote to it

    # -- from other threads ------------------------------------------------------------------------------------
    def attach(self, target: Target) -> None:
        """Serve this target from now on (a new machine). Its events wake the server thread."""
        target.set_listener(self._wake)
        with self._lock:
            self._pending = target
        self._wake()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gdb-stub", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closing = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._drop_client()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.listener.close()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    # -- the server thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing:
            try:
                self._step()
            except Exception:  # never let the stub thread die with the VM running
                log.exception("gdb: server error")
                self._drop_client()
                time.sleep(0.1)
        try:
            self._poll_target()  # a VM that has just ended: the debugger hears of it
        except Exception:
            log.exception("gdb: server error")

    def _step(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._poll_target()  # the old machine's exit first
            if self._session is not None:
                self._drop_client()
            self._target = pending
        readers: list[int | socket.socket] = [self._wake_r]
        if self._target is not None:
            readers.append(self.listener)
        if self._client is not None:
            readers.append(self._client)
        ready, _, _ = select.select(readers, [], [], 1.0)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass
        self._poll_target()
        if self.listener in ready:
            self._accept()
        if self._client is not None and self._client in ready:
            self._read_client()

    def _poll_target(self) -> None:
        target = self._target
        while target is not None:
            event = target.poll_event()
            if event is None:
                return
            if isinstance(event, ExitEvent):
                if self._session is not None:
                    self._session.report_exit(event)
                self._drop_client()
                self._target = None
                return
            if self._session is not None:
                self._session.report_stop(event)
                self._after_session()
            else:
                target.detach()  # stopped for a debugger that has gone: let it run, without breakpoints

    def _accept(self) -> None:
        try:
            client, peer = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.warning("gdb: accept: %s", error)
            return
        if self._client is not None or self._target is None:
            log.warning("%s: gdb: a debugger is already connected; refused another", self.name)
            client.close()
            return
        target = self._target
        client.setblocking(True)
        client.settimeout(SEND_TIMEOUT)
        if client.family in (socket.AF_INET, socket.AF_INET6):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not target.is_stopped():
            target.interrupt()  # a debugger finds the VM stopped, as QEMU stops it when gdb connects
            if not self._wait_stopped(target):
                log.warning("%s: gdb: the VM did not stop for the debugger", self.name)
                client.close()
                return
        self._client = client
        self._lost = False
        self._session = RspSession(target, self._send)
        target.set_connected(True)
        log.info("%s: gdb: debugger connected%s", self.name, f" from {peer[0]}:{peer[1]}" if peer else "")

    def _wait_stopped(self, target: Target) -> bool:
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and not self._closing:
            event = target.poll_event()
            if isinstance(event, StopEvent):
                return True
            if isinstance(event, ExitEvent):
                self._target = None
                return False
            select.select([self._wake_r], [], [], 0.1)
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass
        return False

    def _read_client(self) -> None:
        assert self._client is not None and self._session is not None
        try:
            data = self._client.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_session()
            return
        self._session.feed(data)
        self._after_session()

    def _after_session(self) -> None:
        if self._lost:
            self._lost = False
            self._end_session()
        elif self._session is not None and self._session.closed:
            self._drop_client()

    def _end_session(self) -> None:
        """The debugger went away without D: remove its breakpoints and let the VM run (after it stops)."""
        session, target = self._session, self._target
        self._drop_client()
        if session is None or target is None:
            return
        log.info("%s: gdb: debugger disconnected", self.name)
        target.set_connected(False)
        if target.is_stopped():
            target.detach()
        else:
            target.interrupt()  # _poll_target detaches once it has stopped

    def _send(self, data: bytes) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.sendall(data)
        except OSError as error:
            log.info("%s: gdb: connection lost: %s", self.name, error)
            self._lost = True
            if self._session is not None:
                self._session.closed = True

    def _drop_client(self) -> None:
        """Close the connection gracefully: what we sent last (W, OK) is read, not lost to a reset."""
        client = self._client
        self._client = None
        self._session = None
        if client is None:
            return
        try:
            client.shutdown(socket.SHUT_WR)
            client.settimeout(CLOSE_LINGER)
            deadline = time.monotonic() + CLOSE_LINGER
            while time.monotonic() < deadline and client.recv(4096):
                pass  # the debugger's last acks
        except OSError:
            pass
        client.close()


# -- where to listen ----------------------------------------------------------------------------------------------

DEFAULT_HOST = "127.0.0.1"  # as QEMU's -gdb tcp::1234 would be reachable by anyone; we stay local by default
HOST_MAX = 253


class ListenError(Exception):
    """A --gdb address that is wrong or cannot be listened on; str() is a user-facing message."""


@dataclass(frozen=True)
class ListenAddress:
    """TCP host and port, or a Unix socket path (path set, host and port unused)."""

    host: str = DEFAULT_HOST
    port: int = 0
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """`[host:]port` (IPv6 hosts in brackets), or a Unix socket path: anything with a '/'."""
    if "/" in text:
        if len(os.fsencode(text)) > UNIX_PATH_MAX:
            raise ListenError(f"{text[:60]}...: socket path too long (at most {UNIX_PATH_MAX} bytes)")
        if "\0" in text:
            raise ListenError("socket path contains a NUL byte")
        return ListenAddress(path=text)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        raise ListenError(f"{text[:80]}: invalid gdb port (1 to 65535, or a socket path with a '/')")
    if len(host) > HOST_MAX or any(c.isspace() for c in host):
        raise ListenError(f"{text[:80]}: invalid gdb host")
    return ListenAddress(host=host or DEFAULT_HOST, port=int(port_text))


def open_listener(address: ListenAddress) -> socket.socket:
    """A listening socket (backlog 1) for address; a Unix socket is made mode 0600. ListenError on failure."""
    if address.path is not None:
        return _open_unix(address.path)
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise ListenError(f"gdb: {address}: {getattr(error, 'strerror', None) or error}") from None
    family, kind, proto, _name, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(1)
    except OSError as error:
        sock.close()
        raise ListenError(f"gdb: {address}: {error.strerror or error}") from None
    sock.set_inheritable(False)
    return sock


def _open_unix(path: str) -> socket.socket:
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise ListenError(f"gdb: {path}: {error.strerror}") from None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise ListenError(f"gdb: {path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket nobody listens on
        else:
            raise ListenError(f"gdb: {path}: another process is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(1)
    except OSError as error:
        sock.close()
        raise ListenError(f"gdb: {path}: {error.strerror or error}") from None
    finally:
        os.umask(previous)
    sock.set_inheritable(False)
    return sock
