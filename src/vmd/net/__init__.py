"""Networking on the host: taps (tap.py), bridges, groups, VRFs and interface settings through netlink
(links.py), local-interface addresses (local.py) and the DHCP/BOOTP responder (dhcp.py).

The daemon uses the facade NetworkManager (manager.py). It is loaded lazily, so that the VM process can
import vmd.net.dhcp without pulling in pyroute2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmd.net.errors import NetError

if TYPE_CHECKING:
    from vmd.net.manager import NetworkManager, VmInterface

__all__ = ["NetError", "NetworkManager", "VmInterface"]


def __getattr__(name: str) -> Any:
    if name in ("NetworkManager", "VmInterface"):
        from vmd.net import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'vmd.net' has no attribute {name!r}")
