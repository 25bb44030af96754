"""Interface configuration through netlink (pyroute2): what vmd's priv process does with ioctls
(priv.c vm_priv_ifconfig / vm_priv_brconfig; reference 4.6), mapped to Linux.

OpenBSD                         Linux (here)
------------------------------  ----------------------------------------------------------------------
description vm1-if0-name        IFLA_IFALIAS (`ip link set DEV alias ...`)
bridge(4)/veb(4) + SIOCBRDGADD  a Linux bridge, IFLA_MASTER (`ip link set DEV master BR`)
SIOCAIFGROUP name               IFLA_GROUP, a number; names live in /etc/iproute2/group (see GroupTable)
SIOCSIFFLAGS up/down            IFLA state up/down
tap lladdr (ether_fakeaddr)     IFLA_ADDRESS set to host_side_mac(guest MAC)
SIOCSIFRDOMAIN N                a VRF device vrf<N> with table N as master (N = 0: the main table)

Differences, on purpose:

* Groups: a Linux interface is in exactly one group, an OpenBSD one in many. A tap gets its interface's
  `group`, else its switch's `group`. A bridge that vmd creates is put into the switch's group too, because
  on Linux the layer-3 traffic of bridged VMs enters through the bridge (nftables `iifgroup`).
* rdomain: needs CONFIG_NET_VRF; without it the kernel answers EOPNOTSUPP and we refuse with a clear
  message rather than silently ignoring the setting. A bridge port cannot be a VRF member itself, so a tap on
  a switch follows the switch's rdomain (its bridge is the VRF member); a tap without a switch is enslaved to
  the VRF directly.
* An existing bridge named by a switch is used as is; only its up/down state is set, as vmd does. A missing
  bridge is created (vmd creates missing bridges too, SIOCIFCREATE) and removed again on teardown.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmd.ether import format_mac, parse_mac
from vmd.limits import IFNAME_MAX
from vmd.net.errors import NetError

log = logging.getLogger("vmd.net")

GROUP_FILE = "/etc/iproute2/group"
ALIAS_MAX = 63  # vmd's description buffer is VM_NAME_MAX (64) bytes including the NUL
GROUP_NUMBER_MAX = 0xFFFFFFFF  # IFLA_GROUP is a u32


class LinkError(NetError):
    """A one-line reason the network configuration failed."""


# --- MAC addresses (parsed and written by vmd.ether) --------------------------------------------------------


def random_guest_mac(index: int, rng: random.Random | None = None) -> str:
    """A guest MAC as vmd makes one when none is configured (vmd.c vm_register): ether_fakeaddr()'s
    fe:e1:ba:d0 "incremented by one to differentiate the source", i.e. fe:e1:bb, then 0xd0 | ((index+1) & 0xf)
    and two random bytes (the low and the next byte of one 32-bit random number)."""
    rng = rng or random.SystemRandom()
    r = rng.getrandbits(32)
    return format_mac(bytes([0xFE, 0xE1, 0xBB, 0xD0 | ((index + 1) & 0x0F), r & 0xFF, (r >> 8) & 0xFF]))


def host_side_mac(guest_mac: str) -> str:
    """The MAC we give the tap (the host's end of the link). OpenBSD's tap gets a random ether_fakeaddr()
    address, fe:e1:ba:d0:xx:xx style; we derive it from the guest MAC so that it is stable across restarts:

    * a vmd-style guest MAC fe:e1:bb:XX:YY:ZZ gets fe:e1:ba:XX:YY:ZZ (the guest MAC is "one more" than the
      host's, as in vm_register's comment);
    * any other guest MAC gets fe:e1:ba:d0 plus two bytes of its SHA-256, never equal to the guest MAC.
    Both are locally administered unicast addresses."""
    g = parse_mac(guest_mac)
    if g[:3] == b"\xfe\xe1\xbb":
        h = b"\xfe\xe1\xba" + g[3:]
    else:
        d = hashlib.sha256(g).digest()
        h = b"\xfe\xe1\xba\xd0" + d[:2]
        if h == g:
            h = h[:5] + bytes([h[5] ^ 1])
    return format_mac(h)


# --- interface groups ------------------------------------------------------------------------------------


def validate_group(name: str) -> None:
    """vm.conf(5) / priv_validgroup(): under 16 characters, not ending in a digit."""
    if not name or len(name.encode()) > IFNAME_MAX or name[-1].isdigit():  # priv_validgroup(): < IF_NAMESIZE
        raise LinkError(f"invalid group name: {name}")
    if any(c.isspace() for c in name) or "#" in name:
        raise LinkError(f"invalid group name: {name}")


class GroupTable:
    """Linux interface groups are numbers (IFLA_GROUP, u32); iproute2 names them in /etc/iproute2/group,
    one `NUMBER NAME` per line (decimal or 0x hex; '#' starts a comment; 0 is "default").

    A group name not in the file is added with the lowest free number from 1 up, so that `ip link show group
    NAME` and nftables' `iifgroup` find vmd's interfaces by name. The file is locked (flock) while it is read
    and extended."""

    def __init__(self, path: str = GROUP_FILE) -> None:
        self.path = path

    @staticmethod
    def parse(text: str) -> dict[str, int]:
        table: dict[str, int] = {}
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) < 2:
                continue
            try:
                number = int(parts[0], 0)
            except ValueError:
                continue
            if 0 <= number <= GROUP_NUMBER_MAX:
                table.setdefault(parts[1], number)
        return table

    def read(self) -> dict[str, int]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return self.parse(f.read())
        except FileNotFoundError:
            return {"default": 0}

    def number(self, name: str, create: bool = True) -> int:
        """The number of group `name`, adding it to the file if missing (and `create`)."""
        validate_group(name)
        table = self.read()
        if name in table:
            return table[name]
        if not create:
            raise LinkError(f"unknown group {name}")
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LinkError(f"group {name}: can't open {self.path}: {e.strerror}") from None
        with os.fdopen(fd, "r+", encoding="utf-8", errors="replace") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            text = f.read()
            table = self.parse(text)
            if name in table:
                return table[name]
            used = set(table.values()) | {0}
            number = 1
            while number in used:
                number += 1
            prefix = "" if text == "" else ("" if text.endswith("\n") else "\n")
            if text == "":
                prefix = "# device group names\n0\tdefault\n"
            f.seek(0, os.SEEK_END)
            f.write(f"{prefix}{number}\t{name}\n")
            f.flush()
        log.debug("group %s is number %d in %s", name, number, self.path)
        return number


# --- netlink ---------------------------------------------------------------------------------------------


def _nlerr(what: str, e: NetlinkError) -> LinkError:
    return LinkError(f"{what}: {os.strerror(e.code) if e.code else str(e)}")


def vrf_name(rdomain: int) -> str:
    return f"vrf{rdomain}"


@dataclass
class SwitchState:
    """A switch as set up: its bridge, whether we created it (and must remove it), the VRF it is in."""

    name: str
    bridge: str
    created: bool
    rdomain: int | None = None
    group: str | None = None


@dataclass
class TapSettings:
    """What configure_tap() applies to one tap."""

    alias: str
    host_mac: str | None = None
    master: str | None = None  # bridge name
    rdomain: int | None = None  # only used without a master
    group: int | None = None
    up: bool = True
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = field(default_factory=list)


class Links:
    """Netlink operations on the network namespace this object was created in (the calling thread's).

    All errors come out as LinkError with a one-line message."""

    def __init__(self, ipr: Any | None = None, groups: GroupTable | None = None) -> None:
        self._own = ipr is None
        self.ipr: Any = ipr if ipr is not None else IPRoute()
        self.groups = groups or GroupTable()
        self._created_vrfs: set[str] = set()

    def close(self) -> None:
        if self._own:
            self.ipr.close()

    # lookups
    def index(self, ifname: str) -> int | None:
        try:
            found = self.ipr.link_lookup(ifname=ifname)
        except NetlinkError:
            return None
        return int(found[0]) if found else None

    def _require(self, ifname: str) -> int:
        idx = self.index(ifname)
        if idx is None:
            raise LinkError(f"interface {ifname} does not exist")
        return idx

    def link_info(self, ifname: str) -> dict[str, Any] | None:
        """A few attributes of an interface, for checks and tests: kind, alias, group, address, up, master."""
        idx = self.index(ifname)
        if idx is None:
            return None
        msg = self.ipr.get_links(idx)[0]
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
        master = msg.get_attr("IFLA_MASTER")
        master_name = None
        if master:
            mmsg = self.ipr.get_links(master)[0]
            master_name = mmsg.get_attr("IFLA_IFNAME")
        return {
            "index": idx,
            "kind": kind,
            "alias": msg.get_attr("IFLA_IFALIAS"),
            "group": msg.get_attr("IFLA_GROUP"),
            "address": msg.get_attr("IFLA_ADDRESS"),
            "up": bool(msg["flags"] & 1),  # IFF_UP
            "master": master_name,
        }

    def kind(self, ifname: str) -> str | None:
        info = self.link_info(ifname)
        return None if info is None else info["kind"]

    # generic operations
    def set_link(self, ifname: str, **attrs: Any) -> None:
        idx = self._require(ifname)
        try:
            self.ipr.link("set", index=idx, **attrs)
        except NetlinkError as e:
            raise _nlerr(f"{ifname}: can't set {', '.join(sorted(attrs))}", e) from None

    def set_up(self, ifname: str, up: bool) -> None:
        self.set_link(ifname, state="up" if up else "down")

    def delete(self, ifname: str) -> None:
        """Remove an interface; a missing one is fine."""
        idx = self.index(ifname)
        if idx is None:
            return
        try:
            self.ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code != 19:  # ENODEV: gone meanwhile
                raise _nlerr(f"can't remove {ifname}", e) from None

    def add_address(self, ifname: str, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        """Add an address; an existing identical one is replaced (vmd deletes the IPv6 one first)."""
        idx = self._require(ifname)
        try:
            self.ipr.addr("replace", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            raise _nlerr(f"{ifname}: can't add address {iface}", e) from None

    # VRFs (rdomain)
    def ensure_vrf(self, rdomain: int) -> str:
        """The VRF device for `rdomain` (N > 0): vrf<N> with routing table N, created and brought up if
        missing. Refuses an existing vrf<N> of another kind or table."""
        name = vrf_name(rdomain)
        idx = self.index(name)
        if idx is not None:
            msg = self.ipr.get_links(idx)[0]
            linkinfo = msg.get_attr("IFLA_LINKINFO")
            kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
            if kind != "vrf":
                raise LinkError(f"rdomain {rdomain}: interface {name} exists and is not a vrf")
            data = linkinfo.get_attr("IFLA_INFO_DATA")
            table = data.get_attr("IFLA_VRF_TABLE") if data is not None else None
            if table is not None and table != rdomain:
                raise LinkError(f"rdomain {rdomain}: {name} uses table {table}, not {rdomain}")
            return name
        try:
            self.ipr.link("add", ifname=name, kind="vrf", vrf_table=rdomain)
        except NetlinkError as e:
            if e.code == 95:  # EOPNOTSUPP: no CONFIG_NET_VRF / vrf module
                raise LinkError(f"rdomain {rdomain}: the kernel has no VRF support (CONFIG_NET_VRF), "
                                "rdomain can't be used") from None
            raise _nlerr(f"rdomain {rdomain}: can't create {name}", e) from None
        self._created_vrfs.add(name)
        self.set_up(name, True)
        return name

    def set_rdomain(self, ifname: str, rdomain: int | None) -> None:
        """Put an interface into rdomain N (its VRF), or back into the main table for 0."""
        if rdomain is None:
            return
        if rdomain == 0:
            info = self.link_info(ifname)
            if info is not None and info["master"] and self.kind(info["master"]) == "vrf":
                self.set_link(ifname, master=0)
            return
        vrf = self.ensure_vrf(rdomain)
        self.set_link(ifname, master=self._require(vrf))

    def remove_created_vrfs(self) -> None:
        for name in sorted(self._created_vrfs):
            try:
                self.delete(name)
            except LinkError as e:
                log.warning("%s", e)
        self._created_vrfs.clear()

    # switches
    def ensure_switch(self, sw: Any, switch_id: int = 0) -> SwitchState:
        """Make the switch's bridge ready: an existing bridge is used as is (only brought up/down per the
        spec, as vm_priv_brconfig does), a missing one is created, described `switch<id>-<name>`, put into
        the switch's group and rdomain, and brought up/down."""
        bridge = sw.interface
        if not bridge:
            raise LinkError(f'switch "{sw.name}" is missing interface name')
        info = self.link_info(bridge)
        created = False
        if info is not None:
            if info["kind"] != "bridge":
                raise LinkError(f'switch "{sw.name}": interface {bridge} exists and is not a bridge')
        else:
            if len(bridge.encode()) > 15 or "/" in bridge or ":" in bridge:
                raise LinkError(f"failed to create switch {sw.name}: invalid interface name {bridge}")
            try:
                self.ipr.link("add", ifname=bridge, kind="bridge")
            except NetlinkError as e:
                raise _nlerr(f"failed to create switch {sw.name}", e) from None
            created = True
            try:
                self.set_link(bridge, ifalias=f"switch{switch_id}-{sw.name}"[:ALIAS_MAX])
                if sw.group:
                    self.set_link(bridge, group=self.groups.number(sw.group))
            except LinkError:
                self.delete(bridge)
                raise
        try:
            if sw.rdomain:
                self.set_rdomain(bridge, sw.rdomain)
            self.set_up(bridge, sw.up)
        except LinkError:
            if created:
                self.delete(bridge)
            raise
        return SwitchState(sw.name, bridge, created, sw.rdomain, sw.group)

    def remove_switch(self, state: SwitchState) -> None:
        """Remove the bridge only if ensure_switch() created it."""
        if state.created:
            self.delete(state.bridge)

    # taps
    def configure_tap(self, ifname: str, s: TapSettings) -> None:
        """vm_priv_ifconfig for one tap: alias, lladdr, master (bridge) or rdomain, group, addresses, up/down.
        (vmd brings the interface up before adding the local address; the order makes no difference, Linux
        keeps addresses on a down interface, but with the address first the routes appear together.)"""
        self._require(ifname)
        self.set_link(ifname, ifalias=s.alias[:ALIAS_MAX])
        if s.host_mac:
            self.set_link(ifname, address=s.host_mac)
        if s.master:
            self.set_link(ifname, master=self._require(s.master))
        elif s.rdomain:
            self.set_rdomain(ifname, s.rdomain)
        if s.group is not None:
            self.set_link(ifname, group=s.group)
        for addr in s.addresses:
            self.add_address(ifname, addr)
        self.set_up(ifname, s.up)


def tap_alias(vm_id: int, index: int, vm_name: str) -> str:
    """The description vmd gives a VM's tap: `vm<id>-if<n>-<name>`, cut to 63 bytes."""
    return f"vm{vm_id}-if{index}-{vm_name}".encode()[:ALIAS_MAX].decode(errors="ignore")


def addresses_of(links: Links, ifname: str) -> list[str]:
    """The addresses on an interface as "addr/len" strings (for checks and tests)."""
    idx = links.index(ifname)
    if idx is None:
        return []
    out = []
    for msg in links.ipr.get_addr(index=idx):
        out.append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
    return out


def existing(names: Iterable[str], links: Links) -> list[str]:
    return [n for n in names if links.index(n) is not None]
