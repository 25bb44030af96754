"""virtio-net (virtio 1.2, 5.1) over a packet fd: a SEQPACKET socket pair stands in for the tap (it carries whole
packets, vnet header first, as a tap with IFF_VNET_HDR does); one test runs against a real tap in a network
namespace of its own."""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from vmd.devices.virtio.net import (
    F_CSUM,
    F_GUEST_CSUM,
    F_GUEST_TSO4,
    F_GUEST_TSO6,
    F_GUEST_UFO,
    F_HOST_TSO4,
    F_HOST_TSO6,
    F_MAC,
    F_MRG_RXBUF,
    F_STATUS,
    GSO_TCPV4,
    HDR_F_DATA_VALID,
    HDR_F_NEEDS_CSUM,
    VirtioNet,
)
from vmd.devices.virtio.pci import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, STATUS_NEEDS_RESET

from .virtio_driver import Driver, FakeVector, rings

MAC = bytes.fromhex("fe e1 ba d0 00 01")
OTHER = bytes.fromhex("fe e1 ba d0 00 99")
BROADCAST = b"\xff" * 6
HDR = struct.Struct("<BBHHHHH")  # struct virtio_net_hdr (5.1.6)
RX, TX = 0, 1
ROOT = Path(__file__).resolve().parents[2]


def header(flags: int = 0, gso: int = 0, csum_start: int = 0, csum_offset: int = 0, num: int = 0) -> bytes:
    return HDR.pack(flags, gso, 0, 0, csum_start, csum_offset, num)


def ether(payload: bytes, src: bytes = MAC, dst: bytes = BROADCAST, kind: int = 0x88B5) -> bytes:
    return dst + src + struct.pack("!H", kind) + payload


def ip_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src_ip: bytes, dst_ip: bytes, sport: int, dport: int, payload: bytes, src: bytes = MAC,
              dst: bytes = BROADCAST, udp_sum: int = 0) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), udp_sum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return ether(ip + udp, src, dst, 0x0800)


class FakeEvents:
    """add_reader/remove_reader as the event loop has them; tests call the reader by hand."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}
        self.added = 0

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        assert fd not in self.readers, "a reader registered twice"
        self.readers[fd] = callback
        self.added += 1

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def fire(self, fd: int) -> None:
        self.readers[fd]()


class Net:
    """A device on a socket pair, a test driver with both queues, and helpers for buffers."""

    def __init__(self, features: int | None = None, setup: bool = True, queue_size: int = 256,
                 msix: bool = False, **kwargs: object) -> None:
        self.ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.peer.setblocking(False)
        self.events = FakeEvents()
        self.device = VirtioNet(self.ours.fileno(), MAC, self.events, **kwargs)  # type: ignore[arg-type]
        self.driver = Driver(self.device)
        self.heads = {RX: 0, TX: 0}
        self.rx_buffers: dict[int, tuple[int, int]] = {}  # head -> (address, size)
        if setup:
            self.driver.setup(features=features, queue_size=queue_size, queues=2, msix=msix)

    def reinit(self) -> None:
        """After a reset: fresh rings, as a driver sets them up again."""
        for queue in (RX, TX):
            _desc, avail, used = rings(queue)
            self.driver.memory.write(avail, bytes(4))
            self.driver.memory.write(used, bytes(4))
            self.driver.avail_idxs[queue] = self.driver.used_seens[queue] = self.heads[queue] = 0
        self.driver.setup(queues=2)

    @property
    def fd(self) -> int:
        return self.ours.fileno()

    def close(self) -> None:
        self.device.close()
        self.ours.close()
        self.peer.close()

    def post_rx(self, count: int, size: int = 2048, kick: bool = True) -> list[int]:
        heads = []
        for _ in range(count):
            head = self.heads[RX]
            self.heads[RX] = (head + 1) % self.driver.sizes[RX]
            address = self.driver.buffer(size)
            self.rx_buffers[head] = (address, size)
            self.driver.submit([(address, size, True)], head=head, kick=False, queue=RX)
            heads.append(head)
        if kick:
            self.driver.kick(RX)
        return heads

    def send(self, packet: bytes, split: int = HDR.size, kick: bool = True) -> int:
        """Transmit packet (header + frame) as a chain of two readable buffers, split at `split`."""
        head = self.heads[TX]
        parts = [packet[:split], packet[split:]] if 0 < split < len(packet) else [packet]
        self.heads[TX] = (head + len(parts)) % self.driver.sizes[TX]
        self.driver.submit([(self.driver.buffer(part), len(part), False) for part in parts], head=head,
                           kick=kick, queue=TX)
        return head

    def tap_packets(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.peer.recv(1 << 17))
            except BlockingIOError:
                return out

    def received(self) -> list[bytes]:
        """Packets the driver got on RX (header + frame), merging chains by num_buffers."""
        packets = []
        entries = self.driver.used(RX)
        i = 0
        while i < len(entries):
            head, length = entries[i]
            address, _size = self.rx_buffers[head]
            data = self.driver.memory.read(address, length)
            num = HDR.unpack_from(data)[6]
            assert num >= 1
            for extra_head, extra_length in entries[i + 1 : i + num]:
                extra_address, _ = self.rx_buffers[extra_head]
                data += self.driver.memory.read(extra_address, extra_length)
            assert len(entries[i : i + num]) == num, "a packet's buffers are not all used"
            packets.append(data)
            i += num
        return packets

    @property
    def polling(self) -> bool:
        return self.fd in self.events.readers

    def pump(self) -> None:
        if self.polling:
            self.events.fire(self.fd)

    def failed(self) -> bool:
        return bool(self.driver.status() & STATUS_NEEDS_RESET)


@pytest.fixture
def make() -> Iterator[Callable[..., Net]]:
    made: list[Net] = []

    def factory(**kwargs: object) -> Net:
        made.append(Net(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield factory
    for net in made:
        net.close()


def interrupts(net: Net, queue: int) -> int:
    """MSI-X messages sent for a queue's vector (vector n serves queue n in Driver.setup)."""
    vector = net.driver.transport._msi[queue]
    return cast(FakeVector, vector).fired if vector is not None else 0


def offered(net: Net) -> int:
    return net.driver.device_features()


# -- configuration ------------------------------------------------------------------------------------------
def test_identity_configuration_and_features(make: Callable[..., Net]) -> None:
    net = make(setup=False)
    assert net.driver.transport.config_read(2, 2) == 0x1041  # virtio device 1 (5.1.1)
    assert net.driver.transport.config_read(0x08, 4) >> 8 == 0x020000  # network, Ethernet
    features = offered(net)
    for bit in (F_MAC, F_STATUS, F_MRG_RXBUF, F_CSUM, F_HOST_TSO4, F_HOST_TSO6, F_VERSION_1):
        assert features & bit
    assert not features & (F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO)  # no offloads callback
    mac = bytes(net.driver.platform.mmio.read(0xE000_2000 + i, 1) for i in range(6))
    assert mac == MAC
    assert net.driver.platform.mmio.read(0xE000_2006, 2) == 1  # LINK_UP (5.1.4)
    net.device.set_link(False)
    assert net.driver.platform.mmio.read(0xE000_2006, 2) == 0

    with_offloads = make(setup=False, offloads=lambda *a: None, ufo=True)
    assert offered(with_offloads) & (F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO) == \
        F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO


def test_offloads_follow_what_the_driver_negotiated(make: Callable[..., Net]) -> None:
    calls: list[tuple[bool, ...]] = []
    net = make(setup=False, offloads=lambda *a: calls.append(a))
    net.driver.setup(queues=2)
    assert calls == [(True, True, True, False)]
    net.driver.common_write(0x14, 1, 0)  # reset: the tap stops handing out offloaded packets
    assert calls[-1] == (False, False, False, False)
    calls.clear()
    net.driver.setup(queues=2, features=offered(net) & ~(F_GUEST_TSO6 | F_GUEST_CSUM))
    assert calls == []  # nothing to enable: TSO without GUEST_CSUM is void (5.1.3.1)
    net.driver.common_write(0x14, 1, 0)
    net.driver.setup(queues=2, features=offered(net) & ~F_GUEST_TSO6)
    assert calls == [(True, True, False, False)]


# -- transmit -----------------------------------------------------------------------------------------------
def test_tx_writes_header_and_frame_to_the_tap_with_one_interrupt_per_batch(make: Callable[..., Net]) -> None:
    net = make(msix=True)
    packets = [header() + ether(bytes([i]) * (60 + i)) for i in range(3)]
    heads = [net.send(packet, kick=False) for packet in packets[:2]]
    heads.append(net.send(packets[2], split=0, kick=False))
    net.driver.kick(TX)
    assert net.tap_packets() == packets  # the guest's header reaches the tap as it is
    assert net.driver.used(TX) == [(head, 0) for head in heads]
    assert interrupts(net, TX) == 1
    assert net.device.stats.tx_packets == 3


def test_tx_budget_yields_and_finishes(make: Callable[..., Net]) -> None:
    net = make()
    net.device.tx_budget = 4
    packets = [header() + ether(bytes([i]) * 60) for i in range(10)]
    for packet in packets:
        net.send(packet, kick=False)
    net.driver.kick(TX)
    assert net.tap_packets() == packets
    assert len(net.driver.used(TX)) == 10


def test_tx_offloads_must_have_been_negotiated(make: Callable[..., Net]) -> None:
    net = make(features=offered(Net(setup=False)) & ~(F_HOST_TSO4 | F_CSUM | F_HOST_TSO6))
    frame = ether(b"x" * 100)
    net.send(header(gso=GSO_TCPV4) + frame)
    net.send(header(flags=HDR_F_NEEDS_CSUM, csum_start=14, csum_offset=6) + frame)
    net.send(header() + frame)
    assert net.tap_packets() == [header() + frame]
    assert net.device.stats.tx_dropped == 2
    assert len(net.driver.used(TX)) == 3

    full = make()
    full.send(header(flags=HDR_F_NEEDS_CSUM, gso=GSO_TCPV4, csum_start=34, csum_offset=16) + frame)
    assert len(full.tap_packets()) == 1


def test_locked_lladdr_drops_spoofed_frames(make: Callable[..., Net]) -> None:
    net = make(locked=True)
    good, spoofed = header() + ether(b"a" * 50), header() + ether(b"b" * 50, src=OTHER)
    net.send(spoofed)
    net.send(good)
    net.send(header() + b"short")  # a runt: dropped as well
    assert net.tap_packets() == [good]
    assert len(net.driver.used(TX)) == 3
    assert net.device.stats.tx_dropped == 2

    unlocked = make()
    unlocked.send(spoofed)
    assert unlocked.tap_packets() == [spoofed]


# -- receive ------------------------------------------------------------------------------------------------
def test_rx_packets_land_in_guest_buffers(make: Callable[..., Net]) -> None:
    net = make(msix=True, features=offered(Net(setup=False)) & ~F_EVENT_IDX)
    assert not net.polling  # no receive buffers yet
    net.post_rx(8)
    assert net.polling
    packets = [header() + ether(bytes([i]) * (100 * i + 50)) for i in range(1, 4)]
    for packet in packets:
        net.peer.send(packet)
    net.pump()
    got = net.received()
    assert [g[HDR.size :] for g in got] == [p[HDR.size :] for p in packets]
    assert all(HDR.unpack_from(g)[6] == 1 for g in got)  # num_buffers (5.1.6.4)
    assert interrupts(net, RX) == 1  # one interrupt for the batch
    assert net.device.stats.rx_packets == 3 and net.polling


def test_rx_merges_buffers_for_a_large_packet(make: Callable[..., Net]) -> None:
    net = make()
    net.post_rx(8, size=100)
    big = header() + ether(bytes(range(256)) * 2)  # 12 + 526 bytes: six 100-byte buffers
    small = header() + ether(b"s" * 40)
    net.peer.send(big)
    net.peer.send(small)
    net.pump()
    entries = net.driver.used(RX)
    assert [length for _, length in entries] == [100] * 5 + [38, 66]
    net.driver.used_seens[RX] -= 7  # read them again, as packets
    first, second = net.received()
    assert HDR.unpack_from(first)[6] == 6 and first[HDR.size :] == big[HDR.size :]
    assert HDR.unpack_from(second)[6] == 1 and second[HDR.size :] == small[HDR.size :]


def test_rx_overflow_waits_for_more_buffers(make: Callable[..., Net]) -> None:
    net = make()
    net.post_rx(2, size=100)
    packet = header() + ether(bytes(range(200)) * 2)  # 426 bytes: more than the ring holds now
    net.peer.send(packet)
    later = header() + ether(b"later" * 20)
    net.peer.send(later)
    net.pump()
    assert net.driver.used(RX) == [] and not net.polling  # waiting, not spinning on the tap
    net.post_rx(2, size=100)  # the driver adds buffers and kicks, still not enough
    assert net.driver.used(RX) == [] and not net.polling
    net.post_rx(4, size=100)  # now the packet fits, and so does the next one
    net.driver.used_seens[RX] = 0
    got = net.received()
    assert got[0][HDR.size :] == packet[HDR.size :] and HDR.unpack_from(got[0])[6] == 5
    assert got[1][HDR.size :] == later[HDR.size :] and HDR.unpack_from(got[1])[6] == 2
    assert net.polling


def test_rx_without_mrg_rxbuf_drops_what_does_not_fit(make: Callable[..., Net]) -> None:
    net = make(features=offered(Net(setup=False)) & ~F_MRG_RXBUF)
    net.post_rx(2, size=200)
    too_big = header() + ether(b"B" * 400)
    fits = header() + ether(b"f" * 100)
    net.peer.send(too_big)
    net.peer.send(fits)
    net.pump()
    got = net.received()
    assert [g[HDR.size :] for g in got] == [fits[HDR.size :]]
    assert HDR.unpack_from(got[0])[6] == 1  # num_buffers is 1 without MRG_RXBUF too
    assert net.device.stats.rx_dropped == 1
    assert net.driver.used_seens[RX] == 1  # the buffer the big one scribbled on was reused


def test_rx_headers_only_carry_negotiated_offloads(make: Callable[..., Net]) -> None:
    net = make()  # no offloads callback: the guest has no receive offloads
    net.post_rx(4)
    frame = ether(b"z" * 80)
    net.peer.send(header(gso=GSO_TCPV4) + frame)  # GSO the guest did not take: dropped
    net.peer.send(header(flags=HDR_F_NEEDS_CSUM) + frame)  # partial checksum it cannot finish: dropped
    net.peer.send(header(flags=HDR_F_DATA_VALID) + frame)  # checksum verified: flags become 0 (5.1.6.4.1)
    net.pump()
    (got,) = net.received()
    assert HDR.unpack(got[: HDR.size]) == (0, 0, 0, 0, 0, 0, 1) and got[HDR.size :] == frame
    assert net.device.stats.rx_dropped == 2

    offloading = make(offloads=lambda *a: None)
    offloading.post_rx(4)
    offloading.peer.send(header(flags=HDR_F_NEEDS_CSUM, gso=GSO_TCPV4) + frame)
    offloading.pump()
    (got,) = offloading.received()
    assert got[:2] == bytes([HDR_F_NEEDS_CSUM, GSO_TCPV4])


def test_a_stalled_rx_queue_stops_polling_and_work_is_bounded(make: Callable[..., Net]) -> None:
    net = make(features=offered(Net(setup=False)) & ~F_EVENT_IDX, msix=True)
    net.post_rx(100, size=256)
    for i in range(130):
        net.peer.send(header() + ether(struct.pack("!H", i) * 20))
    net.pump()
    assert len(net.received()) == 64  # one callback serves at most rx_budget packets
    assert interrupts(net, RX) == 1
    net.pump()
    assert len(net.received()) == 36
    assert not net.polling  # out of buffers: the tap is left alone until the driver kicks
    net.post_rx(40, size=256)
    got = net.received()  # the kick delivers at once
    net.pump()
    got += net.received()
    assert len(got) == 30
    assert [struct.unpack_from("!H", g, HDR.size + 14)[0] for g in got] == list(range(100, 130))
    assert net.polling  # buffers left, tap drained


# -- the responder ------------------------------------------------------------------------------------------
class Responder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, frame: bytes) -> bytes | None:
        self.frames.append(frame)
        if frame.endswith(b"please answer"):
            return ether(b"an answer", src=OTHER, dst=MAC, kind=0x0800)
        return None


def test_the_responder_answers_dhcp_requests_on_rx(make: Callable[..., Net]) -> None:
    responder = Responder()
    net = make(responder=responder)
    request = udp_frame(bytes(4), b"\xff" * 4, 68, 67, b"please answer")
    net.send(header() + request)
    assert net.tap_packets() == []  # answered locally: never reaches the tap
    assert responder.frames == [request]
    net.post_rx(2)  # the answer waited for receive buffers
    (got,) = net.received()
    assert got == header(num=1) + ether(b"an answer", src=OTHER, dst=MAC, kind=0x0800)
    assert net.device.stats.injected == 1

    ignored = udp_frame(bytes(4), b"\xff" * 4, 68, 67, b"no answer")
    dns = udp_frame(b"\x0a\0\0\2", b"\x0a\0\0\1", 5353, 53, b"please answer")
    net.send(header() + ignored)
    net.send(header() + dns)
    assert net.tap_packets() == [header() + ignored, header() + dns]
    assert responder.frames[1:] == [ignored]  # only DHCP requests are offered


def test_the_responder_sees_checksums_completed(make: Callable[..., Net]) -> None:
    responder = Responder()
    net = make(responder=responder)
    src, dst = b"\x0a\0\0\2", b"\xff" * 4
    payload = b"please answer"
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    partial = ~ip_checksum(pseudo) & 0xFFFF  # what a guest stack leaves for the device to finish
    request = udp_frame(src, dst, 68, 67, payload, udp_sum=partial)
    net.send(header(flags=HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6) + request)
    (seen,) = responder.frames
    udp = seen[34:]
    assert ip_checksum(pseudo + udp) == 0  # a valid UDP checksum now
    assert net.tap_packets() == []


# -- hostile drivers and lifecycle --------------------------------------------------------------------------
def test_hostile_rx_chains_fail_the_device(make: Callable[..., Net]) -> None:
    readable = make()
    readable.driver.submit([(readable.driver.buffer(b"x" * 64), 64, False), (readable.driver.buffer(64), 64, True)],
                           queue=RX)
    assert readable.failed() and not readable.polling

    tiny = make()
    tiny.post_rx(1, size=8)  # smaller than the header (5.1.6.3.1)
    assert tiny.failed() and not tiny.polling
    tiny.peer.send(header() + ether(b"x" * 50))
    assert tiny.driver.used(RX) == []


def test_hostile_tx_chains_fail_the_device(make: Callable[..., Net]) -> None:
    net = make()
    net.send(b"123456", split=0)  # no room for the header
    assert net.failed() and net.tap_packets() == []

    loop = make()
    driver = loop.driver
    address = driver.buffer(b"y" * 64)
    # a descriptor that points at itself
    struct.pack_into("<QIHH", driver.memory.view(0x1C000, 16 * 256), 0, address, 64, 1, 0)
    driver.memory.write_u16(0x20000 + 4, 0)
    driver.memory.write_u16(0x20000 + 2, 1)
    driver.kick(TX)
    assert loop.failed() and loop.tap_packets() == []


def test_reset_stops_reading_and_forgets_pending_answers(make: Callable[..., Net]) -> None:
    net = make(responder=Responder())
    net.post_rx(1, size=100)
    net.peer.send(header() + ether(b"x" * 300))  # overflows into a wait for buffers
    net.pump()
    net.send(header() + udp_frame(bytes(4), b"\xff" * 4, 68, 67, b"please answer"))
    assert not net.polling
    net.driver.common_write(0x14, 1, 0)
    assert not net.polling and not net.device._injected and net.device._spill is None
    net.peer.send(header() + ether(b"after reset" * 5))
    net.reinit()
    net.post_rx(4)
    got = net.received()
    assert [g[HDR.size :] for g in got] == [ether(b"after reset" * 5)]


def test_close_leaves_the_tap_open(make: Callable[..., Net]) -> None:
    net = make()
    net.post_rx(2)
    assert net.polling
    net.device.close()
    assert not net.polling
    os.fstat(net.fd)  # still open: the owner closes it


# -- a real tap -----------------------------------------------------------------------------------------------
CLONE_NEWNET = 0x40000000
TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04


def tap_scenario() -> None:
    """Runs in a child process: a network namespace of its own, a tap, a UDP socket on the host side."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    for knob in ("all", "default"):  # no IPv6 chatter (router solicitations, MLD) on the tap
        try:
            Path(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6").write_text("1")
        except OSError:
            pass
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"vmdnet0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", HDR.size))
    host_mac = bytes.fromhex("fe e1 ba d1 00 01")
    for command in (["ip", "link", "set", "vmdnet0", "address", host_mac.hex(":")],
                    ["ip", "addr", "add", "10.77.0.1/24", "dev", "vmdnet0"],
                    ["ip", "link", "set", "vmdnet0", "up"],
                    ["ip", "neigh", "add", "10.77.0.2", "lladdr", MAC.hex(":"), "dev", "vmdnet0"]):
        subprocess.run(command, check=True)
    offloads: list[int] = []

    def set_offloads(csum: bool, tso4: bool, tso6: bool, ufo: bool) -> None:
        flags = (TUN_F_CSUM | (TUN_F_TSO4 if tso4 else 0) | (TUN_F_TSO6 if tso6 else 0)) if csum else 0
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        offloads.append(flags)

    events = FakeEvents()
    device = VirtioNet(fd, MAC, events, offloads=set_offloads)
    driver = Driver(device)
    driver.setup(queues=2)
    assert offloads == [TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6]
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("10.77.0.1", 7777))
    host.settimeout(5)

    # guest -> host: a UDP datagram (checksum 0: none) through TX and the tap to the socket
    frame = udp_frame(b"\x0a\x4d\0\2", b"\x0a\x4d\0\1", 5555, 7777, b"ping from the guest", dst=host_mac)
    net_tx = driver.buffer(header() + frame)
    driver.submit([(net_tx, HDR.size + len(frame), False)], queue=TX)
    data, peer = host.recvfrom(2048)
    assert data == b"ping from the guest" and peer == ("10.77.0.2", 5555), (data, peer)
    assert driver.used(TX) == [(0, 0)]

    # host -> guest: the answer comes out of the tap into the guest's receive buffers, checksum left partial
    buffers = {}
    for head in range(8):
        buffers[head] = driver.buffer(2048)
        driver.submit([(buffers[head], 2048, True)], head=head, queue=RX)
    host.sendto(b"pong from the host", ("10.77.0.2", 5555))
    for _ in range(50):
        assert select.select([fd], [], [], 5)[0], "nothing came out of the tap"
        events.fire(fd)
        entries = driver.used(RX)
        packets = [driver.memory.read(buffers[head], length) for head, length in entries]
        mine = [p for p in packets if p.endswith(b"pong from the host")]
        if mine:
            break
    else:
        raise AssertionError("the answer never reached the guest")
    flags, gso, _hl, _gs, csum_start, csum_offset, num_buffers = HDR.unpack_from(mine[0])
    assert num_buffers == 1 and gso == 0
    assert flags & HDR_F_NEEDS_CSUM and (csum_start, csum_offset) == (14 + 20, 6), (flags, csum_start)
    assert mine[0][HDR.size : HDR.size + 12] == MAC + host_mac
    device.close()
    os.close(fd)
    print("tap scenario ok")


def _can_make_taps() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None


@pytest.mark.skipif(not _can_make_taps(), reason="needs root, /dev/net/tun and ip(8)")
def test_a_real_tap_in_a_network_namespace() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", "from tests.unit.test_virtio_net import tap_scenario; "
                             "tap_scenario()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if "unshare(CLONE_NEWNET)" in result.stderr:
        pytest.skip("no network namespaces here")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tap scenario ok" in result.stdout


def test_indirect_rx_chains_are_taken_too(make: Callable[..., Net]) -> None:
    net = make()
    assert offered(net) & F_INDIRECT_DESC
    driver = net.driver
    table = driver.buffer(32)
    first, second = driver.buffer(8), driver.buffer(200)
    struct.pack_into("<QIHHQIHH", driver.memory.view(table, 32), 0, first, 8, 3, 1, second, 200, 2, 0)
    struct.pack_into("<QIHH", driver.memory.view(0x10000, 16 * 256), 0, table, 32, 4, 0)
    driver.memory.write_u16(0x14000 + 4, 0)
    driver.avail_idxs[RX] = 1
    driver.memory.write_u16(0x14000 + 2, 1)
    driver.kick(RX)
    packet = header() + ether(b"i" * 60)
    net.peer.send(packet)
    net.pump()
    assert driver.used(RX) == [(0, len(packet))]
    data = driver.memory.read(first, 8) + driver.memory.read(second, len(packet) - 8)
    assert data[HDR.size :] == packet[HDR.size :] and HDR.unpack_from(data)[6] == 1
