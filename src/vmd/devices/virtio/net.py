"""virtio-net, the network device (virtio 1.2, 5.1), on a Linux tap.

One queue pair: receiveq1 (queue 0) and transmitq1 (queue 1); no control queue, no multiqueue.

The VM's owner opens the tap with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and TUNSETVNETHDRSZ 12, so every packet
read from or written to the tap fd starts with a 12-byte header laid out exactly as the driver's struct
virtio_net_hdr with VERSION_1 (5.1.6: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
num_buffers; little-endian on x86). Packets therefore move between guest memory and the tap without a copy:

TX (guest -> host, 5.1.6.2): each transmit chain is the header followed by the frame in device-readable
buffers. Its memoryviews of guest RAM go to os.writev as they are, the guest's header included, one packet
per writev. Every available chain is sent (up to `tx_budget` per run; the rest is picked up by a call_soon
continuation so that a flooding guest cannot starve the event thread), then the driver gets one interrupt.
Before a frame goes out: headers asking for offloads the driver did not negotiate are dropped; with
`locked` (vm.conf's `locked lladdr`) frames whose source MAC is not the guest's are dropped; with a
`responder` (the DHCP server of a local interface) a DHCP request is offered to it, and when it answers,
the request never reaches the tap and the answer is queued for delivery on the receive queue.

RX (host -> guest, 5.1.6.3-4): the tap fd is polled on the VM's event thread only while the receive queue
has buffers. The device pops receive chains ahead of need and keeps them in order ("held"); each packet is
read with one os.readv straight into the writable buffers of the held chains, plus a host scratch buffer at
the end of the iovec:

  * without MRG_RXBUF one chain takes a packet; a packet larger than the chain lands partly in scratch and is
    dropped (the chain is kept for the next packet);
  * with MRG_RXBUF enough chains are held to take the largest packet the driver can receive (1518-byte frames,
    or 65550 bytes with guest GSO), so the packet spreads over as many chains as it needs, in place, and
    num_buffers in the first chain's header says how many. Only when the ring ran dry before that much
    space was held does a packet overflow into scratch: the overflow is copied into further chains as they
    become available (until then the tap is not read), so nothing is truncated.

Each chain of a packet is returned with the bytes it holds; the driver is interrupted once per batch, and a
batch is at most `rx_budget` packets, after which the (level-triggered) event loop serves the other file
descriptors before calling back. When the ring is empty the tap's reader is removed until the driver kicks
the receive queue, so a guest that stops taking packets never makes the event thread spin, and packets wait
in the tap's own queue (which drops when full, as a NIC without descriptors would).

Offloads: the device accepts checksum and TSO offloads from the guest (CSUM, HOST_TSO4/6: the tap takes such
packets from a writer whatever its settings), and offers the guest checksum and TSO offloads on receive
(GUEST_CSUM, GUEST_TSO4/6, GUEST_UFO if asked) only when its owner gave an `offloads` callback: after
negotiation it is called with what the driver took so the owner can TUNSETOFFLOAD the tap accordingly, and the
tap never produces partially checksummed or GSO packets the guest did not negotiate. Headers that still ask
for something not negotiated (queued before the change) are dropped.

Threads: queue notifications, the tap's reader and call_soon continuations all run on the event thread, which
alone touches the receive state. driver_ok() and reset() arrive on a vCPU thread holding the transport's lock;
they only set flags and hand the rest to the event thread with call_soon (no lock is taken, so the two
threads cannot deadlock on the transport's lock).
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vmd.devices.virtio.pci import VirtioDevice, VirtioPciTransport
from vmd.devices.virtio.queue import Chain, QueueError, Virtqueue, copy_into
from vmd.limits import IOV_MAX

log = logging.getLogger("vmd.virtio.net")

VIRTIO_ID_NET = 1
RX_QUEUE, TX_QUEUE = 0, 1
QUEUE_SIZE = 256

# Feature bits (5.1.3)
F_CSUM = 1 << 0  # the device takes packets with a partial checksum
F_GUEST_CSUM = 1 << 1  # the driver takes packets with a partial checksum
F_MAC = 1 << 5
F_GUEST_TSO4 = 1 << 7
F_GUEST_TSO6 = 1 << 8
F_GUEST_ECN = 1 << 9
F_GUEST_UFO = 1 << 10
F_HOST_TSO4 = 1 << 11
F_HOST_TSO6 = 1 << 12
F_HOST_ECN = 1 << 13
F_HOST_UFO = 1 << 14
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16
F_CTRL_VQ = 1 << 17

# virtio_net_config.status (5.1.4)
S_LINK_UP = 1

# struct virtio_net_hdr (5.1.6)
HDR_SIZE = 12
NUM_BUFFERS_OFFSET = 10
HDR_F_NEEDS_CSUM = 1
HDR_F_DATA_VALID = 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6 = 0, 1, 3, 4
GSO_ECN = 0x80

ETH_HLEN = 14
ETH_ALEN = 6
MAX_FRAME = ETH_HLEN + 4 + 1500  # a full, VLAN-tagged frame at the default MTU
MAX_GSO_FRAME = 65562 - HDR_SIZE  # 5.1.6.3: 65562-byte buffers when the driver takes GSO packets
SCRATCH_SIZE = 1 << 17  # catches whatever does not fit the guest's buffers (anything a tap can produce)
RX_IOV = IOV_MAX - 1  # guest buffers in one readv, leaving room for the scratch buffer
RX_BUDGET = 64  # packets per event-thread callback
TX_BUDGET = 128  # chains per run before yielding to other events
MAX_INJECTED = 16  # responder replies waiting for receive buffers

Responder = Callable[[bytes], bytes | None]
Offloads = Callable[[bool, bool, bool, bool], None]


class Reactor(Protocol):
    """What the device needs of the VM's event loop (vmd.eventloop.EventLoop)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...


@dataclass
class NetStats:
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    injected: int = 0  # responder replies delivered instead of a frame going to the tap


@dataclass
class _Held:
    """A receive chain popped ahead of need: its writable capacity and how many views it adds."""

    chain: Chain
    capacity: int
    nviews: int


@dataclass
class _Spill:
    """A packet waiting for more receive buffers: `offset` bytes are in guest buffers, `data` is the rest."""

    length: int
    offset: int
    data: bytes


def _read_at(views: list[memoryview], offset: int, length: int) -> bytes:
    """length bytes at offset in the concatenation of views (fewer if the views end first)."""
    if views and len(views[0]) >= offset + length:
        return bytes(views[0][offset : offset + length])
    out = bytearray()
    for view in views:
        if offset >= len(view):
            offset -= len(view)
            continue
        piece = view[offset : offset + length - len(out)]
        out += piece
        offset = 0
        if len(out) >= length:
            break
    return bytes(out)


def _write_at(views: list[memoryview], offset: int, data: bytes) -> None:
    """Scatter data into the concatenation of views, starting at offset (the views must be long enough)."""
    if views and len(views[0]) >= offset + len(data):
        views[0][offset : offset + len(data)] = data
        return
    done = 0
    for view in views:
        if done >= len(data):
            return
        if offset >= len(view):
            offset -= len(view)
            continue
        chunk = min(len(view) - offset, len(data) - done)
        view[offset : offset + chunk] = data[done : done + chunk]
        done += chunk
        offset = 0


def _checksum(data: bytearray, start: int) -> int:
    """The Internet checksum (RFC 1071) of data[start:], whose checksum field holds the pseudo-header sum."""
    chunk = bytes(data[start:])
    if len(chunk) % 2:
        chunk += b"\0"
    total = sum(struct.unpack(f"!{len(chunk) // 2}H", chunk))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


class VirtioNet(VirtioDevice):
    device_type = VIRTIO_ID_NET
    pci_class = 0x020000  # network controller, Ethernet
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)
    rx_budget = RX_BUDGET
    tx_budget = TX_BUDGET

    def __init__(self, tap_fd: int, mac: bytes, events: Reactor, locked: bool = False,
                 responder: Responder | None = None, offloads: Offloads | None = None,
                 ufo: bool = False) -> None:
        """tap_fd: a tap with IFF_VNET_HDR and a 12-byte vnet header (the owner keeps and closes it).
        events: the VM's event loop. locked: drop frames from other source MACs (vm.conf `locked lladdr`).
        responder: answers a frame the guest sends (a DHCP request) with a frame for the guest, or None.
        offloads: offloads(csum, tso4, tso6, ufo) sets the tap's receive offloads (TUNSETOFFLOAD) to what the
        driver negotiated; without it the guest is offered no receive offloads. ufo: offer GUEST_UFO too."""
        if len(mac) != ETH_ALEN:
            raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
        self.tap_fd = tap_fd
        self.mac = bytes(mac)
        self.events = events
        self.locked = locked
        self.responder = responder
        self.offloads = offloads
        self.link_up = True
        features = F_MAC | F_STATUS | F_MRG_RXBUF | F_CSUM | F_HOST_TSO4 | F_HOST_TSO6
        if offloads is not None:
            features |= F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | (F_GUEST_UFO if ufo else 0)
        self.device_features = features
        self.stats = NetStats()
        os.set_blocking(tap_fd, False)  # the event thread must never wait on the tap
        # Negotiated state: written by driver_ok()/reset() (a vCPU thread), read on the event thread.
        self._active = False
        self._generation = 0
        self._mergeable = False
        self._rx_max = HDR_SIZE + MAX_FRAME
        self._guest_csum = False
        self._guest_gso: frozenset[int] = frozenset()
        self._host_csum = False
        self._host_gso: frozenset[int] = frozenset()
        self._offloads_on = False
        # Event-thread state.
        self._seen_generation = 0
        self._polling = False
        self._tap_dead = False
        self._held: deque[_Held] = deque()
        self._views: list[memoryview] = []  # the writable views of the held chains, in order
        self._held_capacity = 0
        self._spill: _Spill | None = None
        self._injected: deque[bytes] = deque()
        self._pushed = 0  # receive packets returned in the current batch
        self._tx_scheduled = False
        self._scratch = memoryview(bytearray(SCRATCH_SIZE))

    def attach(self, transport: VirtioPciTransport) -> None:
        super().attach(transport)
        self._rx = transport.queues[RX_QUEUE]
        self._tx = transport.queues[TX_QUEUE]

    @property
    def config(self) -> bytes:
        # struct virtio_net_config (5.1.4): mac, status, max_virtqueue_pairs, mtu (the last two unused here)
        return struct.pack("<6sHHH", self.mac, S_LINK_UP if self.link_up else 0, 1, 1500)

    def set_link(self, up: bool) -> None:
        """Report the link up or down (the STATUS feature's LINK_UP bit, with a configuration interrupt)."""
        if up != self.link_up:
            self.link_up = up
            if getattr(self, "transport", None) is not None:
                self.transport.config_changed()

    # -- lifecycle (vCPU threads) ---------------------------------------------------------------------
    def driver_ok(self) -> None:
        features = self.transport.negotiated
        self._mergeable = bool(features & F_MRG_RXBUF)
        # 5.1.3.1: the guest offloads depend on GUEST_CSUM, the host ones on CSUM
        csum = bool(features & F_GUEST_CSUM)
        tso4 = csum and bool(features & F_GUEST_TSO4)
        tso6 = csum and bool(features & F_GUEST_TSO6)
        ufo = csum and bool(features & F_GUEST_UFO)
        self._guest_csum = csum
        self._guest_gso = frozenset(kind for kind, on in ((GSO_TCPV4, tso4), (GSO_TCPV6, tso6), (GSO_UDP, ufo))
                                    if on)
        self._rx_max = HDR_SIZE + (MAX_GSO_FRAME if self._guest_gso else MAX_FRAME)
        self._host_csum = bool(features & F_CSUM)
        self._host_gso = frozenset(kind for kind, bit in ((GSO_TCPV4, F_HOST_TSO4), (GSO_TCPV6, F_HOST_TSO6),
                                                          (GSO_UDP, F_HOST_UFO))
                                   if self._host_csum and features & bit)
        if csum or self._offloads_on:
            self._set_offloads(csum, tso4, tso6, ufo)
        self._active = True
        self.transport.platform.call_soon(self._start)

    def reset(self) -> None:
        self._active = False
        self._generation += 1
        if self._offloads_on:
            self._set_offloads(False, False, False, False)
        self.transport.platform.call_soon(self._sync)

    def close(self) -> None:
        """The VM is going away: stop reading the tap (its owner closes it)."""
        self._active = False
        self._generation += 1
        self._sync()

    def _set_offloads(self, csum: bool, tso4: bool, tso6: bool, ufo: bool) -> None:
        if self.offloads is None:
            return
        try:
            self.offloads(csum, tso4, tso6, ufo)
        except OSError as error:  # the tap keeps its old offloads; _rx_header_ok drops what the guest can't take
            log.warning("virtio-net: cannot set the tap's offloads: %s", error)
            return
        self._offloads_on = csum or tso4 or tso6 or ufo

    # -- event thread ---------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Catch up with resets and stops requested from other threads."""
        if self._seen_generation != self._generation:
            self._seen_generation = self._generation
            self._drop_rx_state()
        if not self._active:
            self._stop_polling()

    def _drop_rx_state(self) -> None:
        self._held.clear()
        self._views.clear()
        self._held_capacity = 0
        self._spill = None
        self._injected.clear()

    def _start(self) -> None:
        self._rx_service()
        if self._tx.has_work():
            self._tx_service()

    def _stop_polling(self) -> None:
        if self._polling:
            self._polling = False
            self.events.remove_reader(self.tap_fd)

    def _fail(self, reason: str) -> None:
        self._stop_polling()
        self._drop_rx_state()
        self.transport.fail(reason)

    def queue_notify(self, queue: Virtqueue) -> None:
        if queue.index == RX_QUEUE:
            self._rx_service()  # new receive buffers: deliver what waits and poll the tap again
        elif queue.index == TX_QUEUE:
            self._tx_service()

    # -- transmit (5.1.6.2) ---------------------------------------------------------------------------
    def _tx_service(self) -> None:
        self._sync()
        tx = self._tx
        if not self._active or not tx.ready or tx.broken:
            return
        sent = 0
        try:
            while sent < self.tx_budget and self._active:  # (a reset from a vCPU thread ends the batch)
                chain = tx.pop()
                if chain is None:
                    break
                self._transmit(chain)
                tx.push(chain.head, 0)
                sent += 1
        except QueueError as error:
            self._fail(str(error))
            return
        if sent:
            self.transport.interrupt(tx)
        if sent >= self.tx_budget and not self._tx_scheduled and tx.has_work():
            # The guest kicked once for all of these; finish after the other events (no kick will come).
            self._tx_scheduled = True
            self.transport.platform.call_soon(self._tx_resume)
        if self._injected:
            self._rx_service()

    def _tx_resume(self) -> None:
        self._tx_scheduled = False
        self._tx_service()

    def _transmit(self, chain: Chain) -> None:
        views = chain.readable
        length = chain.readable_length
        if length < HDR_SIZE:
            raise QueueError(f"transmit chain of {length} bytes has no virtio-net header (5.1.6.2)")
        head = _read_at(views, 0, HDR_SIZE + ETH_HLEN)
        if not HDR_SIZE + ETH_HLEN <= length <= HDR_SIZE + MAX_GSO_FRAME or not self._tx_header_ok(head[0], head[1]):
            self.stats.tx_dropped += 1  # no frame is larger than a GSO packet (5.1.6.2): nothing is copied
            return
        if self.locked and head[HDR_SIZE + ETH_ALEN : HDR_SIZE + 2 * ETH_ALEN] != self.mac:
            self.stats.tx_dropped += 1  # vm.conf "locked lladdr": the guest may not use another address
            return
        if self.responder is not None and self._dhcp_request(views, head, length):
            reply = self._respond(b"".join(views))
            if reply is not None:
                self._inject(reply)
                return
        try:
            os.writev(self.tap_fd, views)  # at most IOV_MAX buffers: the queue refuses longer chains
        except OSError as error:
            self.stats.tx_dropped += 1
            if self.stats.tx_dropped == 1 or self.stats.tx_dropped % 10000 == 0:
                log.warning("virtio-net: tap write failed: %s (%d dropped)", error, self.stats.tx_dropped)
            return
        self.stats.tx_packets += 1
        self.stats.tx_bytes += length - HDR_SIZE

    def _tx_header_ok(self, flags: int, gso_type: int) -> bool:
        """The driver may only ask for offloads it negotiated (5.1.6.2.1)."""
        if flags & HDR_F_NEEDS_CSUM and not self._host_csum:
            return False
        if gso_type == GSO_NONE:
            return True
        return not gso_type & GSO_ECN and gso_type in self._host_gso

    @staticmethod
    def _dhcp_request(views: list[memoryview], head: bytes, length: int) -> bool:
        """Is this an unfragmented IPv4 UDP datagram to port 67 (BOOTP/DHCP server)?"""
        if head[HDR_SIZE + 12 : HDR_SIZE + 14] != b"\x08\x00":
            return False
        ip_start = HDR_SIZE + ETH_HLEN
        ip = _read_at(views, ip_start, 20)
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17 or (ip[6] & 0x3F) or ip[7]:
            return False
        udp = ip_start + (ip[0] & 0xF) * 4
        return length >= udp + 8 and _read_at(views, udp + 2, 2) == b"\x00\x43"

    def _respond(self, packet: bytes) -> bytes | None:
        """Offer a request (header + frame) to the responder, with its checksum completed if the driver left
        that to us (5.1.6.2: NEEDS_CSUM, the sum from csum_start to the end goes at csum_start + csum_offset)."""
        assert self.responder is not None
        flags, _gso, _hdr_len, _gso_size, start, offset, _num = struct.unpack_from("<BBHHHHH", packet)
        frame = bytearray(packet[HDR_SIZE:])
        if flags & HDR_F_NEEDS_CSUM:
            if start + offset + 2 > len(frame):
                return None  # a bogus header: the frame goes to the tap, which judges it
            frame[start + offset : start + offset + 2] = struct.pack("!H", _checksum(frame, start))
        try:
            return self.responder(bytes(frame))
        except Exception:  # a responder bug must not stop the transmit queue
            log.exception("virtio-net: responder failed")
            return None

    def _inject(self, frame: bytes) -> None:
        if len(self._injected) >= MAX_INJECTED or len(frame) > MAX_FRAME:
            self.stats.rx_dropped += 1
            return
        self._injected.append(bytes(HDR_SIZE) + frame)  # a zero header: no offloads; num_buffers set on delivery

    # -- receive (5.1.6.3, 5.1.6.4) -------------------------------------------------------------------
    def _rx_service(self) -> None:
        self._sync()
        rx = self._rx
        if not self._active or not rx.ready or rx.broken:
            self._stop_polling()
            return
        self._pushed = 0
        try:
            self._receive()
        except QueueError as error:
            self._fail(str(error))
            return
        if self._pushed:
            self.transport.interrupt(rx)
        self._update_polling()

    def _update_polling(self) -> None:
        rx = self._rx
        want = (self._active and not self._tap_dead and self._spill is None and rx.ready and not rx.broken
                and (bool(self._held) or rx.has_work()))
        if want and not self._polling:
            self._polling = True
            self.events.add_reader(self.tap_fd, self._rx_service)
        elif not want:
            self._stop_polling()

    def _receive(self) -> None:
        work = 0
        if self._spill is not None:
            if not self._finish_spill():
                return
            work += 1
        while self._injected and work < self.rx_budget:
            packet = self._injected[0]
            self._gather(len(packet))
            if not self._held or (self._mergeable and self._held_capacity < len(packet)):
                break  # the reply waits for more buffers; the tap's packets need fewer, perhaps
            self._injected.popleft()
            work += 1
            if not self._mergeable and self._held[0].capacity < len(packet):
                self.stats.rx_dropped += 1
                continue
            copy_into(self._views, packet)
            self._complete(len(packet))
            self.stats.injected += 1
        while work < self.rx_budget and self._active and not self._tap_dead:
            self._gather(self._rx_max)
            if not self._held:
                return
            views = self._views if len(self._views) <= RX_IOV else self._views[:RX_IOV]
            try:
                length = os.readv(self.tap_fd, [*views, self._scratch])
            except BlockingIOError:
                return
            except OSError as error:
                log.warning("virtio-net: tap read failed: %s; no more receiving", error)
                self._tap_dead = True
                return
            if length == 0:  # end of file: not a tap after all, or its other end went away
                log.warning("virtio-net: end of file on the tap; no more receiving")
                self._tap_dead = True
                return
            work += 1
            direct = self._held_capacity if views is self._views else sum(len(view) for view in views)
            if length < HDR_SIZE or length > direct + len(self._scratch):
                self.stats.rx_dropped += 1  # runt, or truncated by the tap (it returns the whole length)
                continue
            if length <= direct:
                self._complete(length)
                continue
            if not self._mergeable:
                self.stats.rx_dropped += 1  # larger than the driver's buffer: keep the chain for the next one
                continue
            self._spill = _Spill(length, direct, bytes(self._scratch[: length - direct]))
            if not self._finish_spill():
                return

    def _gather(self, want: int, unlimited: bool = False) -> None:
        """Hold receive chains: one without MRG_RXBUF; with it, until `want` bytes fit (or the ring is empty)."""
        rx = self._rx
        while not self._held or (self._mergeable and self._held_capacity < want
                                 and (unlimited or len(self._views) < RX_IOV)):
            chain = rx.pop()
            if chain is None:
                return
            if chain.readable:
                raise QueueError("receive chain with device-readable buffers (5.1.6.3)")
            capacity = chain.writable_length
            if capacity < HDR_SIZE:
                raise QueueError(f"receive chain of {capacity} bytes cannot hold the virtio-net header (5.1.6.3.1)")
            self._held.append(_Held(chain, capacity, len(chain.writable)))
            self._views.extend(chain.writable)
            self._held_capacity += capacity

    def _finish_spill(self) -> bool:
        """Copy a spilled packet's overflow into further chains; False while the ring cannot take it yet."""
        spill = self._spill
        assert spill is not None
        self._gather(spill.length, unlimited=True)
        if self._held_capacity < spill.length:
            if len(self._held) < self._rx.size:
                return False
            self.stats.rx_dropped += 1  # every buffer the ring can offer is held and still too small
        else:
            _write_at(self._views, spill.offset, spill.data)
            self._complete(spill.length)
        self._spill = None
        return True

    def _complete(self, length: int) -> None:
        """Return the held chains holding a length-byte packet (header included) to the driver."""
        views = self._views
        flags, gso_type = _read_at(views, 0, 2)
        if not self._rx_header_ok(flags, gso_type):
            self.stats.rx_dropped += 1  # the chains stay held for the next packet
            return
        if flags and not self._guest_csum:
            _write_at(views, 0, b"\0")  # 5.1.6.4.1: flags are zero without GUEST_CSUM (the tap may say DATA_VALID)
        self._pushed += 1
        self.stats.rx_packets += 1
        self.stats.rx_bytes += length - HDR_SIZE
        first = self._held[0]
        if first.capacity >= length:  # the usual case: one chain (num_buffers 1, 5.1.6.4)
            _write_at(views, NUM_BUFFERS_OFFSET, b"\x01\x00")
            self._rx.push(first.chain.head, length)
            self._held.popleft()
            self._held_capacity -= first.capacity
            del views[: first.nviews]
            return
        used: list[tuple[_Held, int]] = []
        remaining = length
        for held in self._held:
            take = min(held.capacity, remaining)
            used.append((held, take))
            remaining -= take
            if remaining == 0:
                break
        # 5.1.6.4: num_buffers is how many chains the packet took (only with MRG_RXBUF can it exceed 1)
        _write_at(views, NUM_BUFFERS_OFFSET, struct.pack("<H", len(used)))
        rx = self._rx
        nviews = 0
        for held, take in used:
            rx.push(held.chain.head, take)
            self._held.popleft()
            self._held_capacity -= held.capacity
            nviews += held.nviews
        del views[:nviews]

    def _rx_header_ok(self, flags: int, gso_type: int) -> bool:
        """Only what the driver negotiated (5.1.6.4.1): a partial checksum needs GUEST_CSUM, GSO the matching
        GUEST_TSO4/6 or GUEST_UFO (never ECN, which is not offered)."""
        if flags & HDR_F_NEEDS_CSUM and not self._guest_csum:
            return False
        return gso_type == GSO_NONE or gso_type in self._guest_gso
