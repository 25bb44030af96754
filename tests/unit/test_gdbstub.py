"""The GDB remote protocol layer (vmd.gdbstub.RspSession) against a fake target: framing, checksums and
acknowledgements, every command, malformed input, and a fuzz test that nothing escapes the stub."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.gdbstub import (
    MAX_MEMORY_READ,
    MAX_PACKET,
    ExitEvent,
    GdbServer,
    ListenAddress,
    ListenError,
    RspSession,
    StopEvent,
    TargetError,
    Unsupported,
    checksum,
    escape_binary,
    frame,
    open_listener,
    parse_listen_address,
    unescape_binary,
)


class FakeTarget:
    """Two threads, 16 bytes of registers each (two 8-byte registers, the second is the pc), 64 KiB of memory
    at 0x1000, and a log of what the stub asked for."""

    def __init__(self, stopped: bool = True) -> None:
        self.listener: Callable[[], None] | None = None
        self.events: list[StopEvent | ExitEvent] = []
        self.stopped = stopped
        self.event = StopEvent(1)
        self.regs = {1: bytearray(range(16)), 2: bytearray(range(16, 32))}
        self.memory = bytearray(b"\xaa" * 0x10000)
        self.breakpoints: set[tuple[int, int, int]] = set()
        self.resumed: list[dict[int, str]] = []
        self.interrupts = 0
        self.detached = 0
        self.killed = 0
        self.connected: list[bool] = []

    def set_listener(self, listener: Callable[[], None]) -> None:
        self.listener = listener

    def set_connected(self, connected: bool) -> None:
        self.connected.append(connected)

    def poll_event(self) -> StopEvent | ExitEvent | None:
        return self.events.pop(0) if self.events else None

    def is_stopped(self) -> bool:
        return self.stopped

    def stop_event(self) -> StopEvent:
        return self.event

    def threads(self) -> list[int]:
        return [1, 2]

    def thread_name(self, thread: int) -> str:
        return f"vcpu{thread - 1}"

    def features(self, annex: str) -> bytes | None:
        return b"<target>$#}*" + b"x" * 100 + b"</target>" if annex == "target.xml" else None

    def read_registers(self, thread: int) -> bytes:
        return bytes(self.regs[thread])

    def write_registers(self, thread: int, data: bytes) -> None:
        if len(data) != 16:
            raise TargetError(errno.EINVAL)
        self.regs[thread][:] = data

    def read_register(self, thread: int, number: int) -> bytes:
        if number > 1:
            raise TargetError(errno.EINVAL)
        return bytes(self.regs[thread][number * 8 : number * 8 + 8])

    def write_register(self, thread: int, number: int, data: bytes) -> None:
        if number > 1 or len(data) != 8:
            raise TargetError(errno.EINVAL)
        self.regs[thread][number * 8 : number * 8 + 8] = data

    def set_pc(self, thread: int, address: int) -> None:
        self.regs[thread][8:16] = address.to_bytes(8, "little")

    def read_memory(self, thread: int, address: int, length: int) -> bytes:
        start = address - 0x1000
        if not 0 <= start < len(self.memory):
            raise TargetError(errno.EFAULT)
        return bytes(self.memory[start : start + length])

    def write_memory(self, thread: int, address: int, data: bytes) -> None:
        start = address - 0x1000
        if not 0 <= start or start + len(data) > len(self.memory):
            raise TargetError(errno.EFAULT)
        self.memory[start : start + len(data)] = data

    def insert_breakpoint(self, kind: int, address: int, length: int) -> None:
        if kind == 3:
            raise Unsupported()
        if len(self.breakpoints) >= 4:
            raise TargetError(errno.ENOSPC)
        self.breakpoints.add((kind, address, length))

    def remove_breakpoint(self, kind: int, address: int, length: int) -> None:
        self.breakpoints.discard((kind, address, length))

    def resume(self, actions: dict[int, str]) -> None:
        self.resumed.append(actions)
        self.stopped = False

    def interrupt(self) -> None:
        self.interrupts += 1

    def detach(self) -> None:
        self.detached += 1
        self.stopped = False

    def kill(self) -> None:
        self.killed += 1

    def stop(self, event: StopEvent) -> None:
        """As the machine does when a vCPU stops: queue the event and wake the listener."""
        self.stopped = True
        self.event = event
        self.events.append(event)
        if self.listener is not None:
            self.listener()


PACKET = re.compile(rb"\$([^#$]*)#([0-9a-f]{2})")


class Client:
    """The debugger's end: frames packets, collects and checks what the stub answers."""

    def __init__(self, target: FakeTarget | None = None) -> None:
        self.target = target or FakeTarget()
        self.out = bytearray()
        self.session = RspSession(self.target, self.out.extend)

    def send(self, payload: bytes) -> None:
        self.session.feed(frame(payload))

    def replies(self) -> list[bytes]:
        data = bytes(self.out)
        self.out.clear()
        replies = []
        for match in PACKET.finditer(data):
            assert int(match.group(2), 16) == checksum(match.group(1)), data
            replies.append(match.group(1))
        return replies

    def ask(self, payload: bytes) -> bytes:
        """One packet, one reply (the ack checked in ack mode)."""
        self.send(payload)
        data = bytes(self.out)
        if self.session.ack:
            assert data.startswith(b"+"), data
        replies = self.replies()
        assert len(replies) == 1, (payload, data)
        return replies[0]


# -- framing --------------------------------------------------------------------------------------------------


def test_frame_and_checksum() -> None:
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"") == b"$#00"


def test_acks_a_good_packet_and_naks_a_bad_checksum() -> None:
    client = Client()
    client.session.feed(b"$qC#00")
    assert bytes(client.out) == b"-"
    client.out.clear()
    client.session.feed(b"$qC#b4")
    assert bytes(client.out).startswith(b"+$QC1#")


def test_retransmits_on_nak_but_not_forever() -> None:
    client = Client()
    client.ask(b"qC")
    for _ in range(3):
        client.session.feed(b"-")
        assert client.replies() == [b"QC1"]
    client.session.feed(b"-")
    assert client.replies() == []


def test_no_ack_mode() -> None:
    client = Client()
    assert client.ask(b"QStartNoAckMode") == b"OK"
    client.session.feed(b"+")
    client.send(b"qC")
    assert bytes(client.out) == frame(b"QC1")
    client.out.clear()
    client.session.feed(b"-")  # no retransmission without acks
    assert bytes(client.out) == b""


def test_packets_split_and_joined_anyhow() -> None:
    client = Client()
    data = frame(b"qC") + b"garbage+" + frame(b"qAttached")
    for byte in data:
        client.session.feed(bytes((byte,)))
    assert client.replies() == [b"QC1", b"1"]


def test_a_dollar_inside_a_packet_starts_a_new_one() -> None:
    client = Client()
    client.session.feed(b"$qC$qAttached#" + b"%02x" % checksum(b"qAttached"))
    assert client.replies() == [b"1"]


def test_oversized_packet_is_refused_without_growing() -> None:
    client = Client()
    payload = b"M1000,1:" + b"0" * (MAX_PACKET * 2)
    client.send(payload)
    assert client.replies() == [b"E%02x" % errno.EMSGSIZE]
    assert len(client.session._payload) <= MAX_PACKET
    assert client.ask(b"qC") == b"QC1"  # and the stream is still in step


def test_binary_escapes() -> None:
    data = bytes(range(256))
    assert unescape_binary(escape_binary(data)) == data
    assert b"$" not in escape_binary(data) and b"#" not in escape_binary(data)
    with pytest.raises(ValueError):
        unescape_binary(b"ab}")


# -- queries --------------------------------------------------------------------------------------------------


def test_qsupported() -> None:
    client = Client()
    reply = client.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    features = reply.split(b";")
    assert b"PacketSize=%x" % MAX_PACKET in features
    assert b"qXfer:features:read+" in features and b"QStartNoAckMode+" in features
    assert client.session.swbreak and client.session.hwbreak


def test_thread_queries() -> None:
    client = Client()
    assert client.ask(b"qfThreadInfo") == b"m1,2"
    assert client.ask(b"qsThreadInfo") == b"l"
    assert client.ask(b"qC") == b"QC1"
    assert client.ask(b"qAttached") == b"1"
    assert client.ask(b"qAttached:1") == b"1"
    assert client.ask(b"qThreadExtraInfo,2") == b"vcpu1".hex().encode()
    assert client.ask(b"qThreadExtraInfo,9") == b"E%02x" % errno.ESRCH
    assert client.ask(b"T2") == b"OK"
    assert client.ask(b"T3") == b"E%02x" % errno.ESRCH
    assert client.ask(b"qSymbol::") == b"OK"
    assert client.ask(b"qOffsets") == b""
    assert client.ask(b"vMustReplyEmpty") == b""
    assert client.ask(b"!") == b""


def test_set_thread() -> None:
    client = Client()
    assert client.ask(b"Hg2") == b"OK"
    assert client.ask(b"g") == bytes(range(16, 32)).hex().encode()
    assert client.ask(b"qC") == b"QC2"
    assert client.ask(b"Hg0") == b"OK"  # any: the thread that stopped
    assert client.ask(b"g") == bytes(range(16)).hex().encode()
    assert client.ask(b"Hc-1") == b"OK"
    assert client.ask(b"Hg7") == b"E%02x" % errno.ESRCH
    assert client.ask(b"Hgp1.2") == b"OK"
    assert client.ask(b"Hx1") == b""
    assert client.ask(b"Hgzz") == b"E%02x" % errno.EINVAL


def test_target_xml_in_chunks() -> None:
    client = Client()
    document = client.target.features("target.xml")
    assert document is not None
    got = b""
    while True:
        reply = client.ask(b"qXfer:features:read:target.xml:%x,%x" % (len(got), 7))
        assert reply[:1] in (b"m", b"l")
        got += unescape_binary(reply[1:])
        if reply[:1] == b"l":
            break
    assert got == document
    assert client.ask(b"qXfer:features:read:other.xml:0,100") == b"E00"
    assert client.ask(b"qXfer:features:read:target.xml:1000,100") == b"l"
    assert client.ask(b"qXfer:memory-map:read::0,100") == b""
    assert client.ask(b"qXfer:features:read:target.xml") == b""


def test_stop_reason() -> None:
    client = Client()
    assert client.ask(b"?") == b"T05thread:1;"
    client.target.event = StopEvent(2, 5, "swbreak")
    assert client.ask(b"?") == b"T05thread:2;"  # swbreak only to a debugger that announced it
    client.ask(b"qSupported:swbreak+")
    assert client.ask(b"?") == b"T05thread:2;swbreak:;"
    client.target.event = StopEvent(1, 5, "watch", 0x1234)
    assert client.ask(b"?") == b"T05thread:1;watch:1234;"


# -- registers and memory -------------------------------------------------------------------------------------


def test_registers() -> None:
    client = Client()
    assert client.ask(b"g") == bytes(range(16)).hex().encode()
    assert client.ask(b"G" + b"11" * 16) == b"OK"
    assert client.target.regs[1] == b"\x11" * 16
    assert client.ask(b"G" + b"11" * 15) == b"E%02x" % errno.EINVAL
    assert client.ask(b"G123") == b"E%02x" % errno.EINVAL
    assert client.ask(b"p1") == b"11" * 8
    assert client.ask(b"P1=" + b"22" * 8) == b"OK"
    assert client.ask(b"p1") == b"22" * 8
    assert client.ask(b"p5") == b"E%02x" % errno.EINVAL
    assert client.ask(b"P1=zz") == b"E%02x" % errno.EINVAL
    assert client.ask(b"p") == b"E%02x" % errno.EINVAL
    assert client.ask(b"p" + b"1" * 20) == b"E%02x" % errno.EINVAL


def test_memory() -> None:
    client = Client()
    assert client.ask(b"M1000,4:01020304") == b"OK"
    assert client.ask(b"m1000,4") == b"01020304"
    assert client.ask(b"m1002,0") == b""
    assert client.ask(b"X1004,3:" + escape_binary(b"$#}")) == b"OK"
    assert client.target.memory[4:7] == b"$#}"
    assert client.ask(b"X1004,0:") == b"OK"
    assert client.ask(b"m0,4") == b"E%02x" % errno.EFAULT
    assert client.ask(b"M1000,4:0102") == b"E%02x" % errno.EINVAL  # length and data disagree
    assert client.ask(b"M1000,4") == b"E%02x" % errno.EINVAL
    assert client.ask(b"m1000") == b"E%02x" % errno.EINVAL
    assert client.ask(b"m1000,zz") == b"E%02x" % errno.EINVAL
    assert client.ask(b"m11111111111111111,1") == b"E%02x" % errno.EINVAL  # more than 64 bits


def test_memory_reads_are_bounded() -> None:
    client = Client()
    reply = client.ask(b"m1000,ffffffff")
    assert len(reply) == 2 * MAX_MEMORY_READ
    assert len(frame(reply)) <= MAX_PACKET + 4


# -- breakpoints ----------------------------------------------------------------------------------------------


def test_breakpoints() -> None:
    client = Client()
    assert client.ask(b"Z0,1000,1") == b"OK"
    assert client.ask(b"Z1,2000,1") == b"OK"
    assert client.ask(b"Z2,3000,4") == b"OK"
    assert client.ask(b"Z3,3000,4") == b""  # unsupported
    assert client.ask(b"Z4,3008,8;X1,0") == b"OK"  # a condition is ignored
    assert client.target.breakpoints == {(0, 0x1000, 1), (1, 0x2000, 1), (2, 0x3000, 4), (4, 0x3008, 8)}
    assert client.ask(b"Z0,4000,1") == b"E%02x" % errno.ENOSPC
    assert client.ask(b"z0,1000,1") == b"OK"
    assert (0, 0x1000, 1) not in client.target.breakpoints
    assert client.ask(b"Z9,1000,1") == b""
    assert client.ask(b"Z0,1000") == b"E%02x" % errno.EINVAL
    assert client.ask(b"Z,,") == b"E%02x" % errno.EINVAL


# -- running --------------------------------------------------------------------------------------------------


def test_continue_and_stop() -> None:
    client = Client()
    client.send(b"c")
    assert client.replies() == []  # the reply is the stop
    assert client.target.resumed == [{1: "c", 2: "c"}]
    assert client.session.running
    assert client.ask(b"g") == b"E%02x" % errno.EBUSY  # all-stop: nothing but ^C while it runs
    client.session.feed(b"\x03")
    assert client.target.interrupts == 1
    client.session.report_stop(StopEvent(2, 2))
    assert client.replies() == [b"T02thread:2;"]
    assert client.ask(b"qC") == b"QC2"  # the thread that stopped is the current one
    client.session.feed(b"\x03")  # ^C while stopped: nothing to do
    assert client.target.interrupts == 1


def test_continue_at_an_address() -> None:
    client = Client()
    client.send(b"c2000")
    assert client.target.regs[1][8:16] == (0x2000).to_bytes(8, "little")
    client.session.report_stop(StopEvent(1))
    client.replies()
    client.send(b"C05;3000")
    assert client.target.regs[1][8:16] == (0x3000).to_bytes(8, "little")
    assert client.target.resumed[-1] == {1: "c", 2: "c"}


def test_step_runs_one_thread() -> None:
    client = Client()
    client.ask(b"Hc2")
    client.send(b"s")
    assert client.target.resumed == [{2: "s"}]
    client.session.report_stop(StopEvent(2))
    assert client.replies() == [b"T05thread:2;"]
    client.send(b"S05")
    assert client.target.resumed[-1] == {2: "s"}


def test_vcont() -> None:
    client = Client()
    assert client.ask(b"vCont?") == b"vCont;c;C;s;S"
    client.send(b"vCont;s:2;c")
    assert client.target.resumed == [{2: "s", 1: "c"}]
    client.session.report_stop(StopEvent(2))
    client.replies()
    client.send(b"vCont;c:1;s:1")  # the leftmost action for a thread wins; thread 2 stays stopped
    assert client.target.resumed[-1] == {1: "c"}
    client.session.report_stop(StopEvent(1))
    client.replies()
    client.send(b"vCont;C05:-1")
    assert client.target.resumed[-1] == {1: "c", 2: "c"}
    client.session.report_stop(StopEvent(1))
    client.replies()
    for bad in (b"vCont;x", b"vCont;", b"vCont;c:9", b"vCont;Czz", b"vCont;s:zz"):
        reply = client.ask(bad)
        assert reply.startswith(b"E"), bad
    assert not client.session.running


def test_detach_and_kill() -> None:
    client = Client()
    assert client.ask(b"D") == b"OK"
    assert client.target.detached == 1 and client.session.closed
    client = Client()
    assert client.ask(b"D;1") == b"OK"
    client = Client()
    client.send(b"k")
    assert client.replies() == [] and client.target.killed == 1 and client.session.closed
    client = Client()
    assert client.ask(b"vKill;1") == b"OK"
    assert client.target.killed == 1


def test_exit_while_running_is_told_with_w() -> None:
    client = Client()
    client.send(b"c")
    client.session.report_exit(ExitEvent(3, "vm x: debug exit, status 7"))
    output, exited = client.replies()
    assert output.startswith(b"O") and bytes.fromhex(output[1:].decode()) == b"vm x: debug exit, status 7\n"
    assert exited == b"W03"
    assert client.session.closed


def test_exit_while_stopped_just_closes() -> None:
    client = Client()
    client.session.report_exit(ExitEvent(0, "gone"))
    assert client.replies() == [] and client.session.closed


def test_unknown_and_empty_packets_are_empty_replies() -> None:
    client = Client()
    for payload in (b"", b"qFoo", b"QFoo", b"vFoo", b"j", b"\xff\xfe"):
        assert client.ask(payload) == b"", payload


def test_a_bug_in_the_target_is_an_error_reply_not_an_exception() -> None:
    client = Client()

    def broken(thread: int) -> bytes:
        raise RuntimeError("bug")

    client.target.read_registers = broken  # type: ignore[method-assign]
    assert client.ask(b"g") == b"E%02x" % errno.EIO
    assert client.ask(b"qC") == b"QC1"


# -- fuzz -----------------------------------------------------------------------------------------------------

COMMANDS = [b"?", b"g", b"G", b"p", b"P", b"m", b"M", b"X", b"c", b"C", b"s", b"S", b"Z", b"z", b"H", b"T", b"D", b"k",
            b"q", b"Q", b"v", b"vCont;", b"qXfer:features:read:", b"qSupported:", b"qThreadExtraInfo,"]


PACKETS = st.tuples(st.sampled_from(COMMANDS), st.binary(max_size=30)).map(lambda t: frame(t[0] + t[1]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), PACKETS, st.sampled_from([b"\x03", b"+", b"-", b"$", b"#", b"}"])),
                max_size=30))
def test_fuzz_nothing_escapes(chunks: list[bytes]) -> None:
    client = Client()
    for chunk in chunks:
        client.session.feed(chunk)
        if client.session.closed:
            break
        if client.session.running and client.target.stopped is False:
            client.session.report_stop(StopEvent(1))
    client.replies()  # every packet the stub sent is well framed with a good checksum
    assert len(client.session._payload) <= MAX_PACKET


# -- listening addresses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,address", [
    ("1234", ListenAddress("127.0.0.1", 1234)),
    (":1234", ListenAddress("127.0.0.1", 1234)),
    ("0.0.0.0:1", ListenAddress("0.0.0.0", 1)),
    ("localhost:65535", ListenAddress("localhost", 65535)),
    ("[::1]:1234", ListenAddress("::1", 1234)),
    ("/run/vmd/x.gdb", ListenAddress(path="/run/vmd/x.gdb")),
    ("./x.sock", ListenAddress(path="./x.sock")),
])
def test_parse_listen_address(text: str, address: ListenAddress) -> None:
    assert parse_listen_address(text) == address


@pytest.mark.parametrize("text", ["", "0", "65536", "99999999", "x", "host:", "host:port", "-1", "1e3", "١٢٣",
                                  "a b:1", "/" + "x" * 200, "/a\0b", "h" * 300 + ":1"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ListenError) as error:
        parse_listen_address(text)
    assert "\n" not in str(error.value)


def test_unix_listener_is_private_and_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "gdb.sock")
    first = open_listener(ListenAddress(path=path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ListenError, match="another process is listening"):
        open_listener(ListenAddress(path=path))
    first.close()
    second = open_listener(ListenAddress(path=path))  # stale: nobody listens any more
    second.close()
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(ListenError, match="not a socket"):
        open_listener(ListenAddress(path=str(plain)))


def test_tcp_listener_in_use() -> None:
    first = open_listener(ListenAddress("127.0.0.1", _free_port()))
    port = first.getsockname()[1]
    try:
        with pytest.raises(ListenError) as error:
            open_listener(ListenAddress("127.0.0.1", port))
        assert str(port) in str(error.value)
    finally:
        first.close()
    with pytest.raises(ListenError):
        open_listener(ListenAddress("no-such-host.invalid", 1234))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the server, over a real socket ---------------------------------------------------------------------------


class Wire:
    """A socket client of GdbServer, with acks."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.reply()

    def reply(self) -> bytes:
        while True:
            match = PACKET.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                self.sock.sendall(b"+")
                return match.group(1)
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_server_one_client_at_a_time_stop_and_exit() -> None:
    listener = open_listener(ListenAddress("127.0.0.1", _free_port()))
    port = listener.getsockname()[1]
    server = GdbServer(listener, "t")
    target = FakeTarget()
    server.attach(target)
    server.start()
    try:
        first = Wire(port)
        assert first.ask(b"?") == b"T05thread:1;"
        second = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert second.recv(10) == b""  # refused: one debugger at a time
        second.close()
        first.sock.sendall(frame(b"c"))
        _eventually(lambda: bool(target.resumed))
        first.sock.sendall(b"\x03")
        _eventually(lambda: target.interrupts == 1)
        target.stop(StopEvent(2, 2))
        assert first.reply() == b"T02thread:2;"
        first.sock.sendall(frame(b"c"))
        _eventually(lambda: len(target.resumed) == 2)
        target.events.append(ExitEvent(0, "vm t: guest powered off"))
        assert target.listener is not None
        target.listener()
        assert first.reply().startswith(b"O")
        assert first.reply() == b"W00"
        first.close()
    finally:
        server.close()


def test_server_a_vanished_debugger_lets_the_vm_run() -> None:
    listener = open_listener(ListenAddress("127.0.0.1", _free_port()))
    port = listener.getsockname()[1]
    server = GdbServer(listener, "t")
    target = FakeTarget()
    server.attach(target)
    server.start()
    try:
        wire = Wire(port)
        assert wire.ask(b"Z0,1000,1") == b"OK"
        wire.close()
        _eventually(lambda: target.detached == 1)
        assert target.connected == [True, False]
        # a debugger that connects to a running VM finds it stopped
        thread = threading.Timer(0.2, lambda: target.stop(StopEvent(1, 5)))
        thread.start()
        wire = Wire(port)
        assert wire.ask(b"?") == b"T05thread:1;"
        assert target.interrupts == 1
        wire.close()
    finally:
        server.close()
