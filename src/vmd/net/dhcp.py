"""vmd's built-in DHCP/BOOTP server for local interfaces (dhcp.c dhcp_request; reference 4.7).

The virtio-net device hands every Ethernet frame the guest sends on a local interface to
DhcpResponder.handle(); a request meant for us comes back as a complete reply frame to put into the guest's
receive queue (and the request is not written to the tap). Anything else returns None. There is no lease
state: each VM interface always gets the same address, so every answer is computed from the request alone.

What is answered (as vmd):

* the frame is at least 14 + 300 (BOOTP_MIN_LEN) and at most 14 + 1500 bytes;
* destination MAC broadcast or the host (tap) MAC; source MAC the guest's;
* IPv4/UDP from port 68 to port 67 (RFC 2131 4.1), the IP header checksum right, the UDP checksum right
  unless it is 0 ("no checksum", RFC 768) or the device says the checksum is still partial;
* op BOOTREQUEST, htype Ethernet, hlen 6, chaddr the guest MAC, and ciaddr 0, an empty `file` and hops 0
  ("Ignore unsupported requests for now": renewals, INFORM, relayed requests, PXE with a file name).

Replies: DHCPDISCOVER -> DHCPOFFER; DHCPREQUEST for our address, or without a requested address -> DHCPACK;
any other DHCP message -> DHCPNAK. Without a DHCP message type (plain BOOTP, RFC 951) a BOOTP reply with the
same vendor extensions. yiaddr is the guest, siaddr the host; options (RFC 2132): 53 message type, 51 lease
time 0xffffffff (infinite), 54 server identifier (DHCP only), 1 mask 255.255.255.254, 3 router = host,
6 DNS server = host, 12 host name (only if given and a valid host name, longer than one character), 255 end;
the reply is padded to 300 bytes of BOOTP. `file` carries the boot file name (vmd: "auto_install" with
`boot device net`). The reply frame comes from the guest MAC with its last byte incremented, as vmd's does, to
the guest MAC and IP, from the host IP, with IP TOS low-delay and TTL 16.

Where we are stricter or differ, on purpose:

* a malformed option area (an option running past the end, no end option) or option overload (option 52,
  RFC 2132 9.3: options continued in `sname`/`file`) gets no answer; vmd parses what it can;
* the Ethernet type must be IPv4, the IP version 4 with a header of at least 20 bytes, not a fragment;
* a DHCPNAK carries what RFC 2131 table 3 allows (yiaddr and siaddr 0, message type and server identifier
  only); vmd fills it like an ACK. Clients only look at the message type of a NAK.
* the UDP checksum of the reply is 0xffff when it computes to 0 (RFC 768).
"""

from __future__ import annotations

import ipaddress
import struct

ETH_HLEN = 14
ETH_P_IP = 0x0800
BROADCAST_MAC = b"\xff" * 6
IPPROTO_UDP = 17
SERVER_PORT = 67  # bootps
CLIENT_PORT = 68  # bootpc
BOOTP_FIXED = 236  # op .. file: struct dhcp_packet up to the options (RFC 2131 figure 1)
BOOTP_MIN_LEN = 300  # RFC 951: the vendor area makes a BOOTP message 300 bytes
MAX_IP_PAYLOAD = 1500
OPTIONS_MAX_LEN = 1500 - 20 - 8 - BOOTP_FIXED  # dhcp.c OPTIONS_MAX_LEN
DHCP_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 3: the magic cookie 99.130.83.99
IPTOS_LOWDELAY = 0x10
REPLY_TTL = 16  # packet.c assemble_udp_ip_header
BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHER = 1
FILE_LEN = 128
SNAME_LEN = 64
INFINITE_LEASE = 0xFFFFFFFF
LOCAL_NETMASK = 0xFFFFFFFE  # 255.255.255.254

# RFC 2132 option codes
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_REQUESTED_ADDRESS = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_END = 255

# RFC 2132 9.6 DHCP message types
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

# RFC 2131 figure 1: op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr[16] sname[64] file[128]
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # RFC 791 3.1
_UDP = struct.Struct("!HHHH")  # RFC 768

assert _BOOTP.size == BOOTP_FIXED


def inet_checksum(data: bytes, start: int = 0) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data = data + b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    """UDP checksum over the IPv4 pseudo header (RFC 768) and the UDP header and data; the checksum field
    inside `udp` must be zero."""
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, len(udp))
    return inet_checksum(pseudo + udp)


def valid_hostname(name: str) -> bool:
    """res_hnok(3): dot-separated labels of letters, digits and hyphens, each starting and ending with a
    letter or digit; one trailing dot allowed."""
    if not name or len(name) > 255:
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not label or not label.isascii():
            return False
        if not (label[0].isalnum() and label[-1].isalnum()):
            return False
        if not all(c.isalnum() or c == "-" for c in label):
            return False
    return True


class _Malformed(Exception):
    pass


def _parse_options(opts: bytes) -> tuple[int, bytes | None]:
    """Walk the options after the cookie (RFC 2132 2): returns (message type or 0, requested address).
    Raises _Malformed for an option that runs past the end, a missing end option, or option overload."""
    msgtype = 0
    requested: bytes | None = None
    i = 0
    n = len(opts)
    while True:
        if i >= n:
            raise _Malformed("no end option")
        code = opts[i]
        if code == OPT_END:
            return msgtype, requested
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= n:
            raise _Malformed("option length missing")
        length = opts[i + 1]
        if i + 2 + length > n:
            raise _Malformed("option runs past the end")
        value = opts[i + 2:i + 2 + length]
        if code == OPT_OVERLOAD:
            raise _Malformed("option overload")
        if code == OPT_MESSAGE_TYPE and length == 1:
            msgtype = value[0]
        elif code == OPT_REQUESTED_ADDRESS and length == 4:
            requested = bytes(value)
        i += 2 + length


class DhcpResponder:
    """Answers DHCP/BOOTP requests of one VM interface. handle() never raises."""

    def __init__(self, guest_mac: bytes, host_mac: bytes, guest_ip: ipaddress.IPv4Address | str,
                 host_ip: ipaddress.IPv4Address | str, hostname: str | None = None,
                 bootfile: str | None = None) -> None:
        if len(guest_mac) != 6 or len(host_mac) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        self.guest_mac = bytes(guest_mac)
        self.host_mac = bytes(host_mac)
        self.guest_ip = ipaddress.IPv4Address(guest_ip)
        self.host_ip = ipaddress.IPv4Address(host_ip)
        # dhcp.c: the host name only when valid and longer than one character
        self.hostname = hostname if hostname and len(hostname) > 1 and valid_hostname(hostname) else None
        file = (bootfile or "").encode()
        if len(file) >= FILE_LEN:
            raise ValueError("boot file name too long")
        self.bootfile = file
        # vmd: the reply comes from the VM's MAC with the last byte incremented
        self.reply_mac = self.guest_mac[:5] + bytes([(self.guest_mac[5] + 1) & 0xFF])

    @classmethod
    def for_vm(cls, guest_mac: bytes, host_mac: bytes, guest_ip: ipaddress.IPv4Address | str,
               host_ip: ipaddress.IPv4Address | str, vm_name: str, boot_device: str | None) -> DhcpResponder:
        """As vmd sets it up: with `boot device net` (pxeboot) the reply names the boot file "auto_install"
        and carries the VM name as the host name; otherwise neither."""
        if boot_device == "net":
            return cls(guest_mac, host_mac, guest_ip, host_ip, hostname=vm_name, bootfile="auto_install")
        return cls(guest_mac, host_mac, guest_ip, host_ip)

    # --- parsing ---

    def handle(self, frame: bytes | bytearray | memoryview, *, csum_partial: bool = False) -> bytes | None:
        """The reply frame for a request frame the guest sent (without the virtio-net header), or None.

        csum_partial: the frame's virtio-net header had VIRTIO_NET_HDR_F_NEEDS_CSUM, so its UDP checksum
        field holds only the pseudo-header sum; it is not checked then."""
        try:
            return self._handle(bytes(frame), csum_partial)
        except (_Malformed, struct.error, IndexError, ValueError):
            return None

    def _handle(self, buf: bytes, csum_partial: bool) -> bytes | None:
        n = len(buf)
        if n < ETH_HLEN + BOOTP_MIN_LEN or n > ETH_HLEN + MAX_IP_PAYLOAD:
            return None
        dmac, smac = buf[0:6], buf[6:12]
        if dmac != BROADCAST_MAC and dmac != self.host_mac:
            return None
        if smac != self.guest_mac:
            return None
        if struct.unpack_from("!H", buf, 12)[0] != ETH_P_IP:
            return None

        # IPv4 header (RFC 791 3.1)
        off = ETH_HLEN
        vihl, _tos, total_len, _id, frag, _ttl, proto, _sum, src_ip, dst_ip = _IPV4.unpack_from(buf, off)
        if vihl >> 4 != 4:
            return None
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or off + ihl > n or proto != IPPROTO_UDP:
            return None
        if inet_checksum(buf[off:off + ihl]) != 0:
            return None
        if frag & 0x3FFF:  # more fragments, or a fragment offset
            return None
        if total_len < ihl + _UDP.size or off + total_len > n:
            return None

        # UDP header (RFC 768)
        uoff = off + ihl
        sport, dport, ulen, usum = _UDP.unpack_from(buf, uoff)
        if sport != CLIENT_PORT or dport != SERVER_PORT:
            return None
        if ulen < _UDP.size or ihl + ulen > total_len:
            return None
        if usum != 0 and not csum_partial:
            udp = bytearray(buf[uoff:uoff + ulen])
            udp[6:8] = b"\0\0"
            want = udp_checksum(src_ip, dst_ip, bytes(udp)) or 0xFFFF
            if want != usum:
                return None

        # BOOTP fixed part (RFC 2131 2, figure 1)
        payload = buf[uoff + _UDP.size:uoff + ulen]
        if len(payload) < BOOTP_FIXED:
            return None
        (op, htype, hlen, hops, xid, _secs, _flags, ciaddr, _yiaddr, _siaddr, _giaddr, chaddr, _sname,
         file) = _BOOTP.unpack_from(payload, 0)
        if op != BOOTREQUEST or htype != HTYPE_ETHER or hlen != 6 or chaddr[:6] != self.guest_mac:
            return None
        if ciaddr != b"\0\0\0\0" or file[0] != 0 or hops != 0:
            return None

        # Vendor extensions / DHCP options: vmd only looks for options if there is room for the cookie
        # and at least one option; otherwise (or without the cookie) the request is plain BOOTP.
        msgtype = 0
        requested: bytes | None = None
        opts = payload[BOOTP_FIXED:]
        if len(DHCP_COOKIE) + 3 < len(opts) < OPTIONS_MAX_LEN and opts[:4] == DHCP_COOKIE:
            msgtype, requested = _parse_options(opts[4:])

        return self._reply(xid, htype, msgtype, requested)

    # --- the reply ---

    def _reply(self, xid: int, htype: int, msgtype: int, requested: bytes | None) -> bytes | None:
        host = self.host_ip.packed
        guest = self.guest_ip.packed
        opts = bytearray(DHCP_COOKIE)
        yiaddr, siaddr = guest, host
        nak = False
        if msgtype:
            # "There is no need for a real state machine as we always answer with the same client IP and
            # options for the VM." (dhcp.c)
            if msgtype == DHCPDISCOVER:
                reply_type = DHCPOFFER
            elif msgtype == DHCPREQUEST and (requested is None or requested in (b"\0\0\0\0", guest)):
                reply_type = DHCPACK
            else:
                reply_type = DHCPNAK
            nak = reply_type == DHCPNAK
            opts += bytes([OPT_MESSAGE_TYPE, 1, reply_type])
            if nak:
                # RFC 2131 4.3.2 / table 3: a NAK has no yiaddr, no lease and no configuration options
                yiaddr = siaddr = b"\0\0\0\0"
                opts += bytes([OPT_SERVER_ID, 4]) + host
            else:
                opts += bytes([OPT_LEASE_TIME, 4]) + struct.pack("!I", INFINITE_LEASE)  # RFC 2132 9.2
                opts += bytes([OPT_SERVER_ID, 4]) + host  # RFC 2132 9.7
        if not nak:
            opts += bytes([OPT_SUBNET_MASK, 4]) + struct.pack("!I", LOCAL_NETMASK)  # RFC 2132 3.3
            opts += bytes([OPT_ROUTER, 4]) + host  # RFC 2132 3.5
            opts += bytes([OPT_DNS, 4]) + host  # RFC 2132 3.8
            if self.hostname is not None:
                name = self.hostname.encode()
                opts += bytes([OPT_HOSTNAME, len(name)]) + name  # RFC 2132 3.14
        opts.append(OPT_END)

        file = b"" if nak else self.bootfile
        bootp = _BOOTP.pack(BOOTREPLY, htype, 6, 0, xid, 0, 0, b"\0" * 4, yiaddr, siaddr, b"\0" * 4,
                            self.guest_mac.ljust(16, b"\0"), b"\0" * SNAME_LEN, file.ljust(FILE_LEN, b"\0"))
        data = bootp + bytes(opts)
        if len(data) < BOOTP_MIN_LEN:
            data = data.ljust(BOOTP_MIN_LEN, b"\0")
        return self._frame(data)

    def _frame(self, data: bytes) -> bytes:
        host = self.host_ip.packed
        guest = self.guest_ip.packed
        ulen = _UDP.size + len(data)
        udp = _UDP.pack(SERVER_PORT, CLIENT_PORT, ulen, 0) + data
        usum = udp_checksum(host, guest, udp) or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
        udp = udp[:6] + struct.pack("!H", usum) + udp[8:]
        iph = bytearray(_IPV4.pack(0x45, IPTOS_LOWDELAY, 20 + ulen, 0, 0, REPLY_TTL, IPPROTO_UDP, 0, host,
                                   guest))
        iph[10:12] = struct.pack("!H", inet_checksum(bytes(iph)))
        eth = self.guest_mac + self.reply_mac + struct.pack("!H", ETH_P_IP)
        return eth + bytes(iph) + udp
