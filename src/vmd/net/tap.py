"""Linux TAP devices: the counterpart of OpenBSD's /dev/tapN character devices.

vmd opens /dev/tapN (the named one, or the first free one of tap0..tap255, vmm.c opentap()). On Linux a tap
is an interface attached to a file descriptor of /dev/net/tun (Documentation/networking/tuntap.rst):

* TUNSETIFF with IFF_TAP (Ethernet frames), IFF_NO_PI (no 4-byte packet-information prefix) and
  IFF_VNET_HDR (each frame carries a struct virtio_net_hdr in front, so checksum and segmentation offloads
  pass straight between the guest and the host kernel);
* TUNSETVNETHDRSZ 12: the virtio 1.x header (virtio 1.2, 5.1.6 "struct virtio_net_hdr", with num_buffers);
* TUNSETOFFLOAD: which offloads the reader (our virtio-net device) accepts from the kernel.

A name given as "tap" (or None) lets the kernel pick the next free tapN ("tap%d"); any other name is used as
is: an existing, unused persistent tap of that name is attached (like OpenBSD's /dev/tapN), a missing one is
created, and an existing interface that is not a tap is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from vmd.limits import IFNAME_MAX
from vmd.net.errors import NetError

TUN_PATH = "/dev/net/tun"

# <linux/if_tun.h>: ioctl numbers, _IOW('T', nr, int|unsigned int) and _IOR('T', nr, unsigned int)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8

# TUNSETIFF flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# TUNSETOFFLOAD flags
TUN_F_CSUM = 0x01  # the reader accepts frames with a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM)
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

VNET_HDR_LEN = 12  # struct virtio_net_hdr_v1 (virtio 1.2, 5.1.6)
AUTO_TAP = "tap"  # vm.conf(5): "tap" means the next free tap
_KERNEL_PICK = "tap%d"  # the kernel replaces %d by the lowest free number (dev_alloc_name)

# struct ifreq: 16 bytes of name, then a union of which TUNSETIFF uses a short of flags; 40 bytes on x86-64
_IFREQ = struct.Struct("16sH22x")


class TapError(NetError):
    """A one-line reason a tap could not be opened or configured."""


def validate_ifname(name: str) -> None:
    """Refuse a name Linux would refuse (dev_valid_name in net/core/dev.c) or misread: empty, too long, ".",
    "..", a '/', ':', '%' (a kernel name template) or white space."""
    if not name:
        raise TapError("invalid tap name: empty name")
    if len(name.encode()) > IFNAME_MAX:
        raise TapError(f"invalid tap name {name}: longer than {IFNAME_MAX} characters")
    if name in (".", "..") or any(c in name for c in "/:%") or any(c.isspace() for c in name):
        raise TapError(f"invalid tap name {name}")


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def open_tap(name: str | None = None) -> tuple[int, str]:
    """Open a tap and return (fd, interface name). The fd is non-blocking and close-on-exec.

    name None or "tap": the kernel picks the next free tapN. Raises TapError with a one-line message."""
    if name is None or name == AUTO_TAP:
        request = _KERNEL_PICK
    else:
        validate_ifname(name)
        request = name
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(f"can't open {TUN_PATH}: {e.strerror}") from None
    try:
        ifr = _IFREQ.pack(request.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            out = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            raise _setiff_error(request, e) from None
        ifname = _IFREQ.unpack(out)[0].rstrip(b"\0").decode()
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        except OSError as e:
            raise TapError(f"{ifname}: can't set the virtio-net header size: {e.strerror}") from None
        return fd, ifname
    except BaseException:
        os.close(fd)
        raise


def _setiff_error(request: str, e: OSError) -> TapError:
    shown = "tap" if request == _KERNEL_PICK else request
    if e.errno == errno.EBUSY:
        return TapError(f"can't open tap {shown}: in use")
    if e.errno == errno.EINVAL and request != _KERNEL_PICK and _interface_exists(request):
        return TapError(f"invalid tap name {shown}: an interface of that name exists and is not a tap")
    if e.errno == errno.EPERM:
        return TapError(f"can't open tap {shown}: permission denied")
    return TapError(f"can't open tap {shown}: {e.strerror}")


def tap_name(fd: int) -> str:
    """The interface name of an open tap fd (TUNGETIFF)."""
    out = fcntl.ioctl(fd, TUNGETIFF, _IFREQ.pack(b"", 0))
    return str(_IFREQ.unpack(out)[0].rstrip(b"\0").decode())


def offload_flags(csum: bool, tso4: bool, tso6: bool, ufo: bool) -> int:
    """TUNSETOFFLOAD flags. Segmentation offloads need checksum offload, as in the kernel (tun.c
    set_offload: TSO and UFO flags are only looked at with TUN_F_CSUM)."""
    flags = 0
    if csum:
        flags |= TUN_F_CSUM
        if tso4:
            flags |= TUN_F_TSO4
        if tso6:
            flags |= TUN_F_TSO6
        if ufo:
            flags |= TUN_F_UFO
    return flags


def set_offload(fd: int, csum: bool, tso4: bool, tso6: bool, ufo: bool) -> int:
    """Tell the kernel which offloads the reader of `fd` handles; returns the flags actually set.

    The virtio-net device calls this once the guest has acked its features (VIRTIO_NET_F_GUEST_CSUM,
    GUEST_TSO4, GUEST_TSO6, GUEST_UFO). A kernel that refuses UFO (EINVAL) is asked again without it."""
    flags = offload_flags(csum, tso4, tso6, ufo)
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError as e:
        if e.errno != errno.EINVAL or not flags & TUN_F_UFO:
            raise TapError(f"can't set tap offloads: {e.strerror}") from None
        flags &= ~TUN_F_UFO
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as e2:
            raise TapError(f"can't set tap offloads: {e2.strerror}") from None
    return flags


def close_tap(fd: int) -> None:
    """Close a tap fd; a non-persistent tap disappears with its last fd."""
    try:
        os.close(fd)
    except OSError:
        pass
