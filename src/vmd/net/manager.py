"""NetworkManager: what the daemon calls to set up switches and a VM's interfaces (vmd's parent + priv)."""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmd.config.spec import InterfaceSpec, SwitchSpec
from vmd.ether import parse_mac
from vmd.net.dhcp import DhcpResponder
from vmd.net.errors import NetError
from vmd.net.links import (
    GroupTable,
    LinkError,
    Links,
    SwitchState,
    TapSettings,
    host_side_mac,
    random_guest_mac,
    tap_alias,
)
from vmd.net.local import host_interfaces, local_addresses, local_addresses6
from vmd.net.tap import close_tap, open_tap

log = logging.getLogger("vmd.net")


@dataclass
class VmInterface:
    """One VM NIC as set up on the host.

    fd: the tap fd (non-blocking, vnet header of 12 bytes), -1 once closed or handed off.
    guest_mac / host_mac: "xx:xx:xx:xx:xx:xx"; the guest's goes into the virtio-net config space, the host's
    is the tap's own address (DHCP accepts unicast requests to it).
    local: (host, guest) IPv4 addresses of a local interface, None otherwise; local6 likewise for IPv6.
    locked: `locked lladdr`: the virtio-net device drops guest frames whose source MAC is not guest_mac and
    frames to the guest that are neither to guest_mac nor multicast/broadcast (vionet.c)."""

    fd: int
    ifname: str
    guest_mac: str
    host_mac: str
    local: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    locked: bool
    index: int = 0
    bridge: str | None = None
    local6: tuple[ipaddress.IPv6Address, ipaddress.IPv6Address] | None = None
    preexisting: bool = False  # a persistent tap that was there before us stays after close

    @property
    def guest_mac_bytes(self) -> bytes:
        return parse_mac(self.guest_mac)

    @property
    def host_mac_bytes(self) -> bytes:
        return parse_mac(self.host_mac)

    def dhcp_responder(self, vm_name: str, boot_device: str | None) -> DhcpResponder | None:
        """The DHCP/BOOTP responder of a local interface (None for others)."""
        if self.local is None:
            return None
        host, guest = self.local
        return DhcpResponder.for_vm(self.guest_mac_bytes, self.host_mac_bytes, guest, host, vm_name, boot_device)


class NetworkManager:
    """Switches and VM interfaces in the network namespace it was created in. Errors are NetError with a
    one-line message; a switch that a VM interface names but that is not set up is only logged
    (`switch "%s" not found`), and the interface stays unattached, as vmd does."""

    def __init__(self, links: Links | None = None, group_file: str | None = None,
                 rng: random.Random | None = None) -> None:
        groups = GroupTable(group_file) if group_file else None
        self._own_links = links is None
        self.links = links if links is not None else Links(groups=groups)
        if links is not None and groups is not None:
            self.links.groups = groups
        self.rng = rng or random.SystemRandom()
        self.switches: dict[str, tuple[SwitchSpec, SwitchState]] = {}

    def close(self) -> None:
        if self._own_links:
            self.links.close()

    # switches
    def setup_switches(self, switches: Iterable[SwitchSpec]) -> None:
        """Set up every enabled switch (ids 1, 2, ... in file order, as vmd numbers them). On an error the
        switches set up by this call are torn down again."""
        done: list[str] = []
        for switch_id, sw in enumerate(switches, start=1):
            if not sw.enabled or sw.name in self.switches:
                continue
            try:
                state = self.links.ensure_switch(sw, switch_id)
            except NetError:
                for name in done:
                    self.links.remove_switch(self.switches.pop(name)[1])
                raise
            self.switches[sw.name] = (sw, state)
            done.append(sw.name)
            log.debug("switch %s: bridge %s%s", sw.name, state.bridge, " (created)" if state.created else "")

    def reconcile_switches(self, switches: Iterable[SwitchSpec]) -> None:
        """vm.conf was reloaded: remove the switches that are gone, disabled or changed (a bridge vmd did not
        create stays, as always), then set up the new and changed ones."""
        wanted = list(switches)
        settings = {sw.name: _switch_settings(sw) for sw in wanted if sw.enabled}
        for name, (sw, state) in list(self.switches.items()):
            if settings.get(name) != _switch_settings(sw):
                try:
                    self.links.remove_switch(state)
                except NetError as error:
                    log.warning("%s", error)
                del self.switches[name]
        self.setup_switches(wanted)

    def teardown(self) -> None:
        """Remove the bridges and VRFs this manager created; existing ones are left alone."""
        errors = []
        for _name, (_sw, state) in list(self.switches.items()):
            try:
                self.links.remove_switch(state)
            except NetError as e:
                errors.append(str(e))
        self.switches.clear()
        self.links.remove_created_vrfs()
        for msg in errors:
            log.warning("%s", msg)

    # VM interfaces
    def create_vm_interfaces(self, vm_id: int, vm_name: str, interfaces: Sequence[InterfaceSpec],
                             local_prefix: ipaddress.IPv4Network,
                             local_prefix6: ipaddress.IPv6Network | None) -> list[VmInterface]:
        """Open and configure one tap per interface (`interfaces` is the VM's full list, VmSpec.all_interfaces(),
        so that the index of a local interface is its position among all of them, as in vmd).

        local_prefix6 None: no IPv6 on local interfaces (`local inet6` off). On an error every tap opened so
        far is closed and NetError is raised."""
        created: list[VmInterface] = []
        try:
            for index, spec in enumerate(interfaces):
                created.append(self._create_one(vm_id, vm_name, index, spec, local_prefix, local_prefix6))
        except NetError:
            self.destroy_vm_interfaces(created)
            raise
        return created

    def _create_one(self, vm_id: int, vm_name: str, index: int, spec: InterfaceSpec,
                    local_prefix: ipaddress.IPv4Network,
                    local_prefix6: ipaddress.IPv6Network | None) -> VmInterface:
        sw_entry = self.switches.get(spec.switch) if spec.switch else None
        if spec.switch and sw_entry is None:
            log.warning('switch "%s" not found', spec.switch)
        sw_spec, sw_state = sw_entry if sw_entry else (None, None)
        eff = spec.effective(sw_spec)

        guest_mac = eff.lladdr or random_guest_mac(index, self.rng)
        guest_mac = guest_mac.lower()
        try:
            parse_mac(guest_mac)
        except ValueError:
            raise LinkError(f"invalid lladdr {guest_mac}") from None
        host_mac = host_side_mac(guest_mac)

        group_name = eff.group or (sw_spec.group if sw_spec else None)
        group = self.links.groups.number(group_name) if group_name else None

        local = local6 = None
        addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        if eff.local:
            local = local_addresses(local_prefix, vm_id, index)
            if local_prefix6 is not None:
                local6 = local_addresses6(local_prefix6, local_prefix, vm_id, index)
            addresses = host_interfaces(local_prefix, local_prefix6, vm_id, index)

        bridge = sw_state.bridge if sw_state else None
        if bridge and eff.rdomain and eff.rdomain != (sw_spec.rdomain if sw_spec else None):
            log.warning("vm %s interface %d: rdomain %d ignored, a bridge port follows its switch's rdomain",
                        vm_name, index, eff.rdomain)

        requested = spec.name if spec.name and spec.name != "tap" else None
        preexisting = requested is not None and self.links.index(requested) is not None
        fd, ifname = open_tap(requested)
        vif = VmInterface(fd, ifname, guest_mac, host_mac, local, eff.locked, index, bridge, local6, preexisting)
        try:
            self.links.configure_tap(ifname, TapSettings(
                alias=tap_alias(vm_id, index, vm_name), host_mac=host_mac, master=bridge,
                rdomain=None if bridge else eff.rdomain, group=group, up=eff.up, addresses=addresses))
        except NetError:
            self.destroy_vm_interfaces([vif])
            raise
        log.debug("vm %s interface %d: %s guest %s host %s%s", vm_name, index, ifname, guest_mac, host_mac,
                  f" local {local[0]}/{local[1]}" if local else "")
        return vif

    def destroy_vm_interfaces(self, interfaces: Iterable[VmInterface]) -> None:
        """Close the taps. A tap we created disappears with its fd; a persistent tap that existed before is
        detached, stripped of the addresses we gave it and brought down, and stays."""
        for vif in interfaces:
            if vif.preexisting:
                try:
                    info = self.links.link_info(vif.ifname)
                    if info is not None:
                        if info["master"]:
                            self.links.set_link(vif.ifname, master=0)
                        idx = info["index"]
                        for msg in self.links.ipr.get_addr(index=idx):
                            addr = msg.get_attr("IFA_ADDRESS")
                            if addr in {str(a) for pair in (vif.local, vif.local6) if pair for a in pair}:
                                self.links.ipr.addr("del", index=idx, address=addr, prefixlen=msg["prefixlen"])
                        self.links.set_up(vif.ifname, False)
                except Exception as e:  # cleanup must go on
                    log.warning("%s: cleanup: %s", vif.ifname, e)
            if vif.fd >= 0:
                close_tap(vif.fd)
                vif.fd = -1


def _switch_settings(sw: SwitchSpec) -> tuple[object, ...]:
    """What makes a switch what it is (not where in vm.conf it was written)."""
    return (sw.interface, sw.group, sw.locked_lladdr, sw.rdomain, sw.up)
