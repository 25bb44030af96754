"""Taps, bridges and interface settings through netlink, inside a network namespace each test creates.

Nothing here touches the host's own interfaces: the test thread enters a fresh namespace with setns(2) before
anything is opened and leaves it afterwards; the namespace is then deleted with everything in it.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pyroute2 = pytest.importorskip("pyroute2")
from pyroute2 import netns  # noqa: E402

from vmd.config.spec import InterfaceSpec, SwitchSpec  # noqa: E402
from vmd.net import NetError, NetworkManager  # noqa: E402
from vmd.net.links import GroupTable, Links, addresses_of  # noqa: E402
from vmd.net.tap import TapError, open_tap, set_offload, tap_name  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root and /dev/net/tun")


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vmdtest-{os.getpid()}"
    netns.create(name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(name, flags=0)
        yield name
    finally:
        netns.setns(home)
        os.close(home)
        netns.remove(name)


@pytest.fixture
def links(ns: str, tmp_path: Path) -> Iterator[Links]:
    lk = Links(groups=GroupTable(str(tmp_path / "group")))
    try:
        yield lk
    finally:
        lk.close()


def names(lk: Links) -> set[str]:
    return {m.get_attr("IFLA_IFNAME") for m in lk.ipr.get_links()}


def test_open_tap_auto_and_named(links: Links) -> None:
    fd0, n0 = open_tap("tap")
    fd1, n1 = open_tap(None)
    fd2, n2 = open_tap("vmdt-web")
    try:
        assert (n0, n1, n2) == ("tap0", "tap1", "vmdt-web")
        assert tap_name(fd0) == "tap0"
        assert fcntl.fcntl(fd0, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd0, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert links.kind("tap0") == "tun"
        with pytest.raises(OSError) as e:
            os.read(fd0, 2048)
        assert e.value.errno == errno.EAGAIN
        with pytest.raises(TapError, match="in use"):
            open_tap("tap0")
        assert set_offload(fd0, True, True, True, False) == 0x07
        set_offload(fd0, True, True, True, True)
        set_offload(fd0, False, False, False, False)
    finally:
        for fd in (fd0, fd1, fd2):
            os.close(fd)
    assert names(links) == {"lo"}


def test_open_tap_refuses(links: Links) -> None:
    for bad in ("x" * 16, "a/b", "a:b", "tap%d", "a b", ""):
        with pytest.raises(TapError, match="invalid tap name"):
            open_tap(bad)
    links.ipr.link("add", ifname="notatap", kind="bridge")
    with pytest.raises(TapError, match="not a tap"):
        open_tap("notatap")
    links.delete("notatap")
    assert names(links) == {"lo"}


def test_switch_created_and_removed(links: Links, tmp_path: Path) -> None:
    sw = SwitchSpec(name="uplink", interface="vmdbr0", group="vmnet", up=True)
    state = links.ensure_switch(sw, 1)
    assert state.created and state.bridge == "vmdbr0"
    info = links.link_info("vmdbr0")
    assert info is not None
    assert info["kind"] == "bridge" and info["alias"] == "switch1-uplink" and info["up"]
    assert info["group"] == GroupTable(str(tmp_path / "group")).number("vmnet") == 1
    links.remove_switch(state)
    assert names(links) == {"lo"}


def test_existing_bridge_used_as_is(links: Links) -> None:
    links.ipr.link("add", ifname="br7", kind="bridge")
    links.set_link("br7", ifalias="admin's")
    state = links.ensure_switch(SwitchSpec(name="lan", interface="br7", group="vmnet"), 1)
    assert not state.created
    info = links.link_info("br7")
    assert info is not None and info["alias"] == "admin's" and info["group"] == 0 and info["up"]
    links.remove_switch(state)
    assert "br7" in names(links)
    fd, _ = open_tap("vmdt1")
    try:
        with pytest.raises(NetError, match='switch "bad": interface vmdt1 exists and is not a bridge'):
            links.ensure_switch(SwitchSpec(name="bad", interface="vmdt1"), 2)
    finally:
        os.close(fd)
    with pytest.raises(NetError, match='switch "none" is missing interface name'):
        links.ensure_switch(SwitchSpec(name="none"), 3)


def test_switch_down(links: Links) -> None:
    state = links.ensure_switch(SwitchSpec(name="s", interface="vmdbr1", up=False), 1)
    info = links.link_info("vmdbr1")
    assert info is not None and not info["up"]
    links.remove_switch(state)


def test_vm_interfaces(ns: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mgr = NetworkManager(group_file=str(tmp_path / "group"))
    try:
        mgr.setup_switches([SwitchSpec(name="uplink", interface="vmdbr0", group="swgrp"),
                            SwitchSpec(name="off", interface="vmdbr9", enabled=False)])
        specs = [
            InterfaceSpec(local=True),
            InterfaceSpec(name="tap", switch="uplink", lladdr="fe:e1:ba:d0:00:01", locked=True),
            InterfaceSpec(name="vmdtap5", group="vmnet", up=False),
            InterfaceSpec(switch="nosuch"),
        ]
        with caplog.at_level(logging.WARNING, logger="vmd.net"):
            ifs = mgr.create_vm_interfaces(3, "myvm", specs, ipaddress.IPv4Network("100.64.0.0/10"),
                                           ipaddress.IPv6Network("fd00:1:2:3::/64"))
        assert 'switch "nosuch" not found' in caplog.text
        assert [v.ifname for v in ifs] == ["tap0", "tap1", "vmdtap5", "tap2"]
        lk = mgr.links

        local = ifs[0]
        assert local.local == (ipaddress.IPv4Address("100.64.3.2"), ipaddress.IPv4Address("100.64.3.3"))
        assert local.guest_mac.startswith("fe:e1:bb:d1:") and local.host_mac.startswith("fe:e1:ba:d1:")
        info = lk.link_info("tap0")
        assert info is not None
        assert info["alias"] == "vm3-if0-myvm" and info["address"] == local.host_mac and info["up"]
        assert info["master"] is None
        addrs = addresses_of(lk, "tap0")
        assert "100.64.3.2/31" in addrs and "fd00:1:2:3:6440:303:0:1/96" in addrs
        dhcp = local.dhcp_responder("myvm", None)
        assert dhcp is not None and str(dhcp.guest_ip) == "100.64.3.3"

        sw = ifs[1]
        assert sw.locked and sw.guest_mac == "fe:e1:ba:d0:00:01" and sw.local is None
        info = lk.link_info("tap1")
        assert info is not None
        assert info["master"] == "vmdbr0" and info["alias"] == "vm3-if1-myvm"
        assert info["group"] == GroupTable(str(tmp_path / "group")).number("swgrp")
        assert sw.dhcp_responder("myvm", None) is None

        info = lk.link_info("vmdtap5")
        assert info is not None
        assert not info["up"] and info["group"] == GroupTable(str(tmp_path / "group")).number("vmnet")
        info = lk.link_info("tap2")
        assert info is not None and info["master"] is None

        mgr.destroy_vm_interfaces(ifs)
        assert all(v.fd == -1 for v in ifs)
        assert names(lk) == {"lo", "vmdbr0"}
    finally:
        mgr.teardown()
        assert names(mgr.links) == {"lo"}
        mgr.close()


def test_failure_closes_everything(ns: str, tmp_path: Path) -> None:
    mgr = NetworkManager(group_file=str(tmp_path / "group"))
    try:
        specs = [InterfaceSpec(local=True), InterfaceSpec(local=True, name="bad/name")]
        with pytest.raises(NetError, match="invalid tap name"):
            mgr.create_vm_interfaces(1, "vm", specs, ipaddress.IPv4Network("100.64.0.0/10"), None)
        assert names(mgr.links) == {"lo"}
        with pytest.raises(NetError, match="dhcp address range exceeded, vm id 256 interface 0"):
            mgr.create_vm_interfaces(256, "vm", [InterfaceSpec(local=True)],
                                     ipaddress.IPv4Network("10.0.0.0/16"), None)
        assert names(mgr.links) == {"lo"}
    finally:
        mgr.close()


def test_persistent_tap_survives(links: Links) -> None:
    fd, name = open_tap("vmdp0")
    fcntl.ioctl(fd, 0x400454CB, 1)  # TUNSETPERSIST
    os.close(fd)
    mgr = NetworkManager(links=links)
    ifs = mgr.create_vm_interfaces(1, "vm", [InterfaceSpec(name="vmdp0", local=True)],
                                   ipaddress.IPv4Network("100.64.0.0/10"), None)
    assert ifs[0].preexisting and "100.64.1.2/31" in addresses_of(links, "vmdp0")
    mgr.destroy_vm_interfaces(ifs)
    assert "vmdp0" in names(links) and addresses_of(links, "vmdp0") == []
    fd, _ = open_tap("vmdp0")
    fcntl.ioctl(fd, 0x400454CB, 0)
    os.close(fd)
    assert names(links) == {"lo"}


def test_rdomain(links: Links) -> None:
    sw = SwitchSpec(name="r", interface="vmdbr3", rdomain=3)
    try:
        state = links.ensure_switch(sw, 1)
    except NetError as e:
        assert "rdomain 3" in str(e) and "VRF" in str(e)
        assert names(links) == {"lo"}  # the half-made bridge is gone again
        return
    info = links.link_info("vmdbr3")
    assert info is not None and info["master"] == "vrf3"
    links.remove_switch(state)
    links.remove_created_vrfs()
    assert names(links) == {"lo"}


def test_tap_frames_carry_the_vnet_header(links: Links) -> None:
    """Frames through the tap fd have the 12-byte virtio-net header in front (TUNSETVNETHDRSZ 12)."""
    import select
    import socket

    fd, name = open_tap("tap")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))  # local experimental type
    try:
        links.set_up(name, True)
        sock.bind((name, 0))
        frame = b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x88\xb5" + b"hello, vmd".ljust(46, b"\0")
        # guest -> host: header (all zero: no offload) + frame written to the fd
        os.write(fd, bytes(12) + frame)
        assert select.select([sock], [], [], 2)[0]
        assert sock.recv(2048) == frame
        # host -> guest: the fd gives header + frame
        sock.send(frame)
        for _ in range(50):  # skip what the kernel sends by itself (IPv6 MLD, router solicitations)
            assert select.select([fd], [], [], 2)[0]
            data = os.read(fd, 2048)
            if data[12:] == frame:
                break
        else:
            pytest.fail("our frame did not come out of the tap")
        assert len(data) == 12 + len(frame) and data[:12] == bytes(12)
    finally:
        sock.close()
        os.close(fd)
