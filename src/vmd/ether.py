"""Ethernet addresses: the one parser of `lladdr` text, for vm.conf, the network layer and the machine.

This is a bottom-layer module: it imports nothing from vmd.
"""

from __future__ import annotations

import re

# ether_aton(3) as vm.conf(5) `lladdr` takes it: six groups of one or two hex digits separated by ':'
_MAC = re.compile(r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}")


def parse_mac(text: str) -> bytes:
    """'fe:e1:ba:d0:0:1' -> b'\\xfe\\xe1\\xba\\xd0\\x00\\x01'; ValueError if it is not six hex groups."""
    if not _MAC.fullmatch(text):
        raise ValueError(f"invalid address: {text}")
    return bytes(int(part, 16) for part in text.split(":"))


def format_mac(mac: bytes) -> str:
    """Six bytes as lower-case xx:xx:xx:xx:xx:xx (ether_ntoa(3) with two digits a byte)."""
    if len(mac) != 6:
        raise ValueError(f"not a MAC address: {mac.hex()}")
    return ":".join(f"{b:02x}" for b in mac)
