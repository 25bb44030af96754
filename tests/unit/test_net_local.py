"""Local interface addresses (vmd.net.local), MAC and group helpers (vmd.net.links) without netlink."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from vmd.ether import parse_mac
from vmd.net.links import GroupTable, LinkError, host_side_mac, random_guest_mac, tap_alias, validate_group
from vmd.net.local import LocalAddressError, host_interfaces, local_addresses, local_addresses6

DEFAULT = ipaddress.IPv4Network("100.64.0.0/10")
A = ipaddress.IPv4Address


@pytest.mark.parametrize(("vm_id", "index", "host", "guest"), [
    (1, 0, "100.64.1.2", "100.64.1.3"),
    (1, 1, "100.64.1.4", "100.64.1.5"),
    (1, 3, "100.64.1.8", "100.64.1.9"),
    (2, 0, "100.64.2.2", "100.64.2.3"),
    (255, 0, "100.64.255.2", "100.64.255.3"),
    (256, 0, "100.65.0.2", "100.65.0.3"),  # vm_id << 8 spills into the second octet
    (257, 2, "100.65.1.6", "100.65.1.7"),
    (0x3FFF, 0x7E, "100.127.255.254", "100.127.255.255"),
])
def test_address_table(vm_id: int, index: int, host: str, guest: str) -> None:
    assert local_addresses(DEFAULT, vm_id, index) == (A(host), A(guest))


def test_other_prefix() -> None:
    p = ipaddress.IPv4Network("10.0.0.0/16")
    assert local_addresses(p, 3, 0) == (A("10.0.3.2"), A("10.0.3.3"))
    with pytest.raises(LocalAddressError, match=r"^dhcp address range exceeded, vm id 256 interface 0$"):
        local_addresses(p, 256, 0)


def test_overflow() -> None:
    with pytest.raises(LocalAddressError, match=r"^dhcp address range exceeded, vm id 32768 interface 0$"):
        local_addresses(DEFAULT, 0x8000, 0)
    # vmd ORs the VM part onto the prefix: vm 0x4000 sets bit 22, already set in 100.64.0.0, so it is
    # accepted and lands where vm 0 would be (vm_priv_addr checks only that the prefix bits are unchanged)
    assert local_addresses(DEFAULT, 0x4000, 0) == (A("100.64.0.2"), A("100.64.0.3"))
    with pytest.raises(LocalAddressError, match=r"^dhcp address range exceeded, vm id 1 interface 127$"):
        local_addresses(DEFAULT, 1, 0x7F)


def test_ipv6() -> None:
    p6 = ipaddress.IPv6Network("fd12:3456:789a::/64")
    host, guest = local_addresses6(p6, DEFAULT, 1, 0)
    # the guest's IPv4 address 100.64.1.3 in bytes 8..11, last byte 1 (host) / 2 (VM)
    assert host == ipaddress.IPv6Address("fd12:3456:789a:0:6440:103::1")
    assert guest == ipaddress.IPv6Address("fd12:3456:789a:0:6440:103::2")
    ifs = host_interfaces(DEFAULT, p6, 1, 0)
    assert [str(i) for i in ifs] == ["100.64.1.2/31", "fd12:3456:789a:0:6440:103:0:1/96"]
    assert [str(i) for i in host_interfaces(DEFAULT, None, 1, 0)] == ["100.64.1.2/31"]


def test_random_guest_mac() -> None:
    rng = random.Random(1)
    for i in range(4):
        mac = parse_mac(random_guest_mac(i, rng))
        assert mac[:3] == b"\xfe\xe1\xbb" and mac[3] == 0xD0 | (i + 1)
    assert parse_mac(random_guest_mac(15, rng))[3] == 0xD0


def test_host_side_mac() -> None:
    assert host_side_mac("fe:e1:bb:d1:12:34") == "fe:e1:ba:d1:12:34"
    h = host_side_mac("52:54:00:12:34:56")
    assert h.startswith("fe:e1:ba:d0:") and h == host_side_mac("52:54:00:12:34:56")
    assert host_side_mac("fe:e1:ba:d0:00:01") != "fe:e1:ba:d0:00:01"
    with pytest.raises(ValueError):
        host_side_mac("zz:00:00:00:00:00")


def test_alias() -> None:
    assert tap_alias(1, 0, "myvm") == "vm1-if0-myvm"
    assert len(tap_alias(12, 3, "x" * 63)) == 63


def test_groups(tmp_path: Path) -> None:
    path = tmp_path / "iproute2" / "group"
    table = GroupTable(str(path))
    assert table.number("vmnet") == 1
    assert table.number("vmnet") == 1
    assert table.number("other") == 2
    text = path.read_text()
    assert "0\tdefault" in text and "1\tvmnet" in text and "2\tother" in text
    path.write_text(path.read_text() + "0x10 hexgroup # comment\n3 taken\n")
    assert table.number("hexgroup") == 16
    assert table.number("fresh") == 4
    for bad in ("vm1", "", "x" * 16, "a b"):
        with pytest.raises(LinkError, match="invalid group name"):
            validate_group(bad)
