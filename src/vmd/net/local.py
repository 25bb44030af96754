"""Local interfaces (vm.conf(5) `local interface`, vmctl -L): addresses as vmd computes them (priv.c
vm_priv_addr / vm_priv_addr6; reference 4.7).

IPv4, with the default `local prefix 100.64.0.0/10`:

* the VM id picks a /24-sized range: vm_id << 8 (it spills past the third octet, so vm 256 is 100.65.0.x);
* interface `index` (its position among all the VM's interfaces) picks the /31 (index + 1) * 2 in it, the
  first /31 is skipped so that no gateway ends in .0;
* the host (gateway) gets the even address, the VM the odd one;
* the sum is OR'd onto the prefix and must stay inside it, and index must be below 0x7f; otherwise
  "dhcp address range exceeded, vm id %u interface %d".

IPv6 (`local inet6 [prefix ...]`): the prefix, with the VM's IPv4 address in bytes 8..11 and the last byte 1
for the host or 2 for the VM; the host side gets a /96.
"""

from __future__ import annotations

import ipaddress

from vmd.net.errors import NetError

LOCAL_MASK = 31  # 255.255.255.254, one /31 per interface
LOCAL_MASK6 = 96
MAX_LOCAL_INDEX = 0x7E  # idx >= 0x7f is refused


class LocalAddressError(NetError):
    """The VM id or interface index does not fit in the local prefix."""


def _range_exceeded(vm_id: int, index: int) -> LocalAddressError:
    return LocalAddressError(f"dhcp address range exceeded, vm id {vm_id} interface {index}")


def _addr4(prefix: ipaddress.IPv4Network, vm_id: int, index: int, is_vm: bool) -> ipaddress.IPv4Address:
    if index < 0 or index > MAX_LOCAL_INDEX or vm_id < 0:
        raise _range_exceeded(vm_id, index)
    offset = ((vm_id << 8) | ((index + 1) * 2)) + (1 if is_vm else 0)
    offset &= 0xFFFFFFFF  # vmd computes in a uint32_t
    base = int(prefix.network_address)
    addr = offset | base
    if addr & int(prefix.netmask) != base:
        raise _range_exceeded(vm_id, index)
    return ipaddress.IPv4Address(addr)


def local_addresses(prefix: ipaddress.IPv4Network, vm_id: int,
                    index: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """(host address, guest address) of interface `index` of VM `vm_id`. Raises LocalAddressError."""
    return _addr4(prefix, vm_id, index, False), _addr4(prefix, vm_id, index, True)


def local_addresses6(prefix6: ipaddress.IPv6Network, prefix: ipaddress.IPv4Network, vm_id: int,
                     index: int) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
    """(host, guest) IPv6 addresses: prefix6, the guest's IPv4 address in bytes 8..11, last byte 1 or 2."""
    guest4 = _addr4(prefix, vm_id, index, True)
    raw = bytearray(prefix6.network_address.packed)
    raw[8:12] = guest4.packed
    host = bytearray(raw)
    host[15] = 1
    guest = bytearray(raw)
    guest[15] = 2
    return ipaddress.IPv6Address(bytes(host)), ipaddress.IPv6Address(bytes(guest))


def host_interfaces(prefix: ipaddress.IPv4Network, prefix6: ipaddress.IPv6Network | None, vm_id: int,
                    index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The addresses vmd puts on the host side of a local interface: host/31 and, with `local inet6`,
    host6/96."""
    host, _ = local_addresses(prefix, vm_id, index)
    out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
        ipaddress.IPv4Interface(f"{host}/{LOCAL_MASK}")]
    if prefix6 is not None:
        host6, _ = local_addresses6(prefix6, prefix, vm_id, index)
        out.append(ipaddress.IPv6Interface(f"{host6}/{LOCAL_MASK6}"))
    return out


def configure_local(ifname: str, host: ipaddress.IPv4Interface,
                    host6: ipaddress.IPv6Interface | None = None, links: object | None = None) -> None:
    """Put the host side addresses on a local interface through netlink (vm_priv_ifconfig's SIOCAIFADDR and
    SIOCAIFADDR_IN6). `links` is a links.Links; one is opened for the call when not given."""
    from vmd.net.links import Links  # netlink only where it is needed; address math stays importable alone

    own = links is None
    lk = Links() if links is None else links
    assert isinstance(lk, Links)
    try:
        lk.add_address(ifname, host)
        if host6 is not None:
            lk.add_address(ifname, host6)
    finally:
        if own:
            lk.close()
