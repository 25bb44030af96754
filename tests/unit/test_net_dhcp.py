"""The DHCP/BOOTP responder (vmd.net.dhcp) on hand-built frames."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.net.dhcp import (
    BOOTP_FIXED,
    DHCP_COOKIE,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPNAK,
    DHCPOFFER,
    DHCPREQUEST,
    DhcpResponder,
    inet_checksum,
    udp_checksum,
    valid_hostname,
)

GUEST = bytes.fromhex("fee1bbd11234")
HOST = bytes.fromhex("fee1bad11234")
GUEST_IP = "100.64.1.3"
HOST_IP = "100.64.1.2"
BCAST = b"\xff" * 6


def responder(**kw: object) -> DhcpResponder:
    args: dict[str, object] = dict(guest_mac=GUEST, host_mac=HOST, guest_ip=GUEST_IP, host_ip=HOST_IP)
    args.update(kw)
    return DhcpResponder(**args)  # type: ignore[arg-type]


def options(*opts: tuple[int, bytes], end: bool = True) -> bytes:
    out = bytearray(DHCP_COOKIE)
    for code, value in opts:
        out += bytes([code, len(value)]) + value
    if end:
        out.append(255)
    return bytes(out)


def bootp(op: int = 1, htype: int = 1, hlen: int = 6, hops: int = 0, xid: int = 0x12345678,
          ciaddr: bytes = b"\0" * 4, chaddr: bytes = GUEST, file: bytes = b"", opts: bytes = b"",
          pad_to: int = 300) -> bytes:
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, htype, hlen, hops, xid, 0, 0x8000, ciaddr,
                        b"\0" * 4, b"\0" * 4, b"\0" * 4, chaddr.ljust(16, b"\0"), b"\0" * 64,
                        file.ljust(128, b"\0"))
    data = fixed + opts
    return data.ljust(pad_to, b"\0")


def frame(payload: bytes, dst: bytes = BCAST, src: bytes = GUEST, sport: int = 68, dport: int = 67,
          ip_src: str = "0.0.0.0", ip_dst: str = "255.255.255.255", udp_csum: bool = True,
          ethertype: int = 0x0800, ihl: int = 5, proto: int = 17, ip_csum_ok: bool = True,
          frag: int = 0) -> bytes:
    s = ipaddress.IPv4Address(ip_src).packed
    d = ipaddress.IPv4Address(ip_dst).packed
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if udp_csum:
        c = udp_checksum(s, d, udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    opts = b"\0" * ((ihl - 5) * 4) if ihl >= 5 else b""
    hdr_len = 20 + len(opts)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, hdr_len + len(udp), 0, frag, 64, proto, 0, s, d)
                   + opts)
    c = inet_checksum(bytes(ip))
    if not ip_csum_ok:
        c ^= 0x0101
    ip[10:12] = struct.pack("!H", c)
    return dst + src + struct.pack("!H", ethertype) + bytes(ip) + udp


def discover(**kw: object) -> bytes:
    return frame(bootp(opts=options((53, bytes([DHCPDISCOVER])))), **kw)  # type: ignore[arg-type]


def parse_reply(reply: bytes) -> dict[str, object]:
    """Check the reply's headers and checksums, return its BOOTP fields and options."""
    assert reply[0:6] == GUEST
    assert reply[6:12] == GUEST[:5] + bytes([GUEST[5] + 1])  # vmd: the VM MAC + 1
    assert reply[12:14] == b"\x08\x00"
    ip = reply[14:34]
    vihl, tos, total, _id, frag, ttl, proto, _csum, src, dst = struct.unpack("!BBHHHBBH4s4s", ip)
    assert vihl == 0x45 and tos == 0x10 and ttl == 16 and proto == 17 and frag == 0
    assert total == len(reply) - 14
    assert inet_checksum(ip) == 0
    assert src == ipaddress.IPv4Address(HOST_IP).packed and dst == ipaddress.IPv4Address(GUEST_IP).packed
    udp = reply[34:]
    sport, dport, ulen, usum = struct.unpack("!HHHH", udp[:8])
    assert (sport, dport) == (67, 68) and ulen == len(udp)
    zeroed = udp[:6] + b"\0\0" + udp[8:]
    assert usum == (udp_checksum(src, dst, zeroed) or 0xFFFF)
    data = udp[8:]
    assert len(data) >= 300
    op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file = struct.unpack(
        "!BBBBIHH4s4s4s4s16s64s128s", data[:BOOTP_FIXED])
    assert (op, htype, hlen, hops) == (2, 1, 6, 0)
    assert chaddr == GUEST.ljust(16, b"\0")
    opts: dict[int, bytes] = {}
    o = data[BOOTP_FIXED:]
    assert o[:4] == DHCP_COOKIE
    i = 4
    while o[i] != 255:
        if o[i] == 0:
            i += 1
            continue
        opts[o[i]] = o[i + 2:i + 2 + o[i + 1]]
        i += 2 + o[i + 1]
    return dict(xid=xid, ciaddr=ciaddr, yiaddr=yiaddr, siaddr=siaddr, giaddr=giaddr, file=file.rstrip(b"\0"),
                sname=sname, opts=opts)


def test_discover_gets_offer() -> None:
    r = parse_reply(responder().handle(discover()) or b"")
    assert r["xid"] == 0x12345678
    assert r["yiaddr"] == bytes([100, 64, 1, 3]) and r["siaddr"] == bytes([100, 64, 1, 2])
    opts = r["opts"]
    assert isinstance(opts, dict)
    assert opts[53] == bytes([DHCPOFFER])
    assert opts[51] == b"\xff\xff\xff\xff"
    assert opts[54] == bytes([100, 64, 1, 2])
    assert opts[1] == bytes([255, 255, 255, 254])
    assert opts[3] == bytes([100, 64, 1, 2])
    assert opts[6] == bytes([100, 64, 1, 2])
    assert 12 not in opts
    assert r["file"] == b""


def test_request_gets_ack() -> None:
    for extra in ([], [(50, bytes([100, 64, 1, 3]))], [(50, b"\0\0\0\0")]):
        f = frame(bootp(opts=options((53, bytes([DHCPREQUEST])), *extra)))
        r = parse_reply(responder().handle(f) or b"")
        opts = r["opts"]
        assert isinstance(opts, dict)
        assert opts[53] == bytes([DHCPACK])
        assert r["yiaddr"] == bytes([100, 64, 1, 3])


def test_request_for_other_address_gets_nak() -> None:
    f = frame(bootp(opts=options((53, bytes([DHCPREQUEST])), (50, bytes([10, 0, 0, 5])))))
    r = parse_reply(responder().handle(f) or b"")
    opts = r["opts"]
    assert isinstance(opts, dict)
    assert opts[53] == bytes([DHCPNAK])
    assert opts[54] == bytes([100, 64, 1, 2])
    assert set(opts) == {53, 54}
    assert r["yiaddr"] == b"\0\0\0\0"


def test_other_message_types_get_nak() -> None:
    f = frame(bootp(opts=options((53, bytes([DHCPDECLINE])))))
    opts = parse_reply(responder().handle(f) or b"")["opts"]
    assert isinstance(opts, dict) and opts[53] == bytes([DHCPNAK])


def test_plain_bootp() -> None:
    for payload in (bootp(), bootp(opts=b"\x63\x82\x53\x63" + b"\xff"), bootp(opts=b"\x01\x02\x03\x04")):
        r = parse_reply(responder().handle(frame(payload)) or b"")
        opts = r["opts"]
        assert isinstance(opts, dict)
        assert 53 not in opts and 51 not in opts and 54 not in opts
        assert opts[1] == bytes([255, 255, 255, 254]) and opts[3] == opts[6] == bytes([100, 64, 1, 2])
        assert r["yiaddr"] == bytes([100, 64, 1, 3])


def test_unicast_to_host_mac_is_answered() -> None:
    assert responder().handle(discover(dst=HOST, ip_dst=HOST_IP)) is not None


def test_pxe_boot_file_and_hostname() -> None:
    res = DhcpResponder.for_vm(GUEST, HOST, GUEST_IP, HOST_IP, "myvm", "net")
    r = parse_reply(res.handle(discover()) or b"")
    opts = r["opts"]
    assert isinstance(opts, dict)
    assert r["file"] == b"auto_install"
    assert opts[12] == b"myvm"
    # without boot device net: neither
    res = DhcpResponder.for_vm(GUEST, HOST, GUEST_IP, HOST_IP, "myvm", "disk")
    r = parse_reply(res.handle(discover()) or b"")
    assert r["file"] == b"" and 12 not in r["opts"]  # type: ignore[operator]


def test_invalid_hostname_left_out() -> None:
    for name in ("a", "bad_name", "-x", "x-", "a..b", "x_"):
        r = parse_reply(responder(hostname=name).handle(discover()) or b"")
        assert 12 not in r["opts"]  # type: ignore[operator]
    assert valid_hostname("vm1.example.com") and valid_hostname("a-b.") and not valid_hostname("a.-b")


def test_filters() -> None:
    res = responder()
    other = bytes.fromhex("020000000001")
    assert res.handle(discover(src=other)) is None  # not the VM's MAC
    assert res.handle(discover(dst=other)) is None  # not broadcast or the host
    assert res.handle(discover(sport=67)) is None
    assert res.handle(discover(dport=68)) is None
    assert res.handle(discover(ethertype=0x86DD)) is None
    assert res.handle(discover(proto=6)) is None
    assert res.handle(discover(frag=0x2000)) is None
    assert res.handle(discover(ip_csum_ok=False)) is None
    assert res.handle(discover(ihl=6)) is not None  # IP options are fine
    pd = bytes([DHCPDISCOVER])
    assert res.handle(frame(bootp(op=2, opts=options((53, pd))))) is None
    assert res.handle(frame(bootp(htype=6, opts=options((53, pd))))) is None
    assert res.handle(frame(bootp(hlen=16, opts=options((53, pd))))) is None
    assert res.handle(frame(bootp(chaddr=other, opts=options((53, pd))))) is None
    assert res.handle(frame(bootp(ciaddr=b"\x64\x40\x01\x03", opts=options((53, pd))))) is None
    assert res.handle(frame(bootp(hops=1, opts=options((53, pd))))) is None
    assert res.handle(frame(bootp(file=b"pxelinux.0", opts=options((53, pd))))) is None


def test_bad_udp_checksum() -> None:
    f = bytearray(discover())
    f[40] ^= 0xFF  # the UDP checksum (14 + 20 + 6)
    assert responder().handle(bytes(f)) is None
    # a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) is not checked
    assert responder().handle(bytes(f), csum_partial=True) is not None
    # no checksum at all is fine (RFC 768)
    assert responder().handle(discover(udp_csum=False)) is not None


def test_truncated_and_oversized() -> None:
    f = discover()
    res = responder()
    for n in (0, 1, 13, 14, 33, 41, 100, 313, len(f) - 1):
        assert res.handle(f[:n]) is None
    assert res.handle(frame(bootp(opts=options((53, b"\x01")), pad_to=1500))) is None  # > 1514 bytes
    # an IP total length beyond the frame
    g = bytearray(f)
    g[16:18] = struct.pack("!H", len(f))
    g[24:26] = b"\0\0"
    g[24:26] = struct.pack("!H", inet_checksum(bytes(g[14:34])))
    assert res.handle(bytes(g)) is None


def test_malformed_options() -> None:
    res = responder()
    # an option whose length runs past the end of the packet
    body = bootp(pad_to=0)
    opts = DHCP_COOKIE + bytes([53, 1, 1, 12, 200]) + b"x" * 10
    assert res.handle(frame(body + opts)) is None
    # no end option (the area is full of a long option that ends exactly at the end)
    opts = DHCP_COOKIE + bytes([53, 1, 1, 60, 60]) + b"y" * 60
    assert res.handle(frame(body + opts)) is None
    # option overload (52)
    opts = options((53, bytes([DHCPDISCOVER])), (52, b"\x02"))
    assert res.handle(frame(bootp(opts=opts))) is None


def test_pad_options_and_wrong_type_length() -> None:
    opts = DHCP_COOKIE + b"\0\0" + bytes([53, 1, DHCPDISCOVER]) + b"\xff"
    r = parse_reply(responder().handle(frame(bootp(opts=opts))) or b"")
    assert r["opts"][53] == bytes([DHCPOFFER])  # type: ignore[index]
    # a message type of the wrong length is ignored: BOOTP
    opts = options((53, b"\x01\x01"))
    r = parse_reply(responder().handle(frame(bootp(opts=opts))) or b"")
    assert 53 not in r["opts"]  # type: ignore[operator]


def test_wrap_of_reply_mac() -> None:
    mac = bytes.fromhex("fee1bbd1ffff")
    res = DhcpResponder(mac, HOST, GUEST_IP, HOST_IP)
    out = res.handle(frame(bootp(chaddr=mac, opts=options((53, b"\x01"))), src=mac)) or b""
    assert out[6:12] == bytes.fromhex("fee1bbd1ff00")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1600))
def test_fuzz_random_bytes_never_raise(data: bytes) -> None:
    assert responder().handle(data) is None or True


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8),
       st.binary(max_size=400))
def test_fuzz_mutated_requests_never_raise(pos: int, patch: bytes, opts: bytes) -> None:
    base = bytearray(frame(bootp(opts=DHCP_COOKIE + opts)))
    p = min(pos, len(base) - 1)
    base[p:p + len(patch)] = patch
    out = responder().handle(bytes(base))
    if out is not None:
        parse_reply(out)
