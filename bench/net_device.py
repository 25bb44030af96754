#!/usr/bin/env python3
"""virtio-net device cost without a VM: packets per second through TX and RX of vmd.devices.virtio.net.

    python bench/net_device.py [--packets N] [--size BYTES]

The unit tests' virtio driver (tests/unit/virtio_driver.py) plays the guest over plain memory, and a SEQPACKET
socket pair plays the tap (whole packets, vnet header first). TX: the driver queues 128 frames and kicks once;
the device writes each to the socket. RX: the other end writes 64 packets, the driver has 256 receive buffers
posted, and the reader callback runs once per batch. Measures the device's Python path per packet (syscalls
included), not a guest's network stack.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.unit.virtio_driver import Driver  # noqa: E402

from vmd.devices.virtio.net import HDR_SIZE, VirtioNet  # noqa: E402

MAC = bytes.fromhex("fe e1 ba d0 00 01")


class Events:
    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.callback = callback

    def remove_reader(self, fd: int) -> None:
        self.callback = None


def bench_tx(packets: int, size: int) -> float:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)  # a batch must fit (a tap never says EAGAIN)
    peer.settimeout(5)
    device = VirtioNet(ours.fileno(), MAC, Events())
    driver = Driver(device, memory_size=16 << 20)
    driver.setup(queues=2, queue_size=256)
    frame = bytes(HDR_SIZE) + b"\xff" * 6 + MAC + b"\x88\xb5" + bytes(size - 14)
    address = driver.buffer(frame)
    batch, sent, start = 128, 0, time.perf_counter()
    while sent < packets:
        for i in range(batch):
            driver.submit([(address, len(frame), False)], head=i, kick=False, queue=1)
        driver.kick(1)
        driver.used(1)
        for _ in range(batch):
            peer.recv(65536)
        sent += batch
    return sent / (time.perf_counter() - start)


def bench_rx(packets: int, size: int) -> float:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)
    events = Events()
    device = VirtioNet(ours.fileno(), MAC, events)
    driver = Driver(device, memory_size=16 << 20)
    driver.setup(queues=2, queue_size=256)
    buffers = [driver.buffer(2048) for _ in range(256)]
    packet = bytes(HDR_SIZE) + b"\xff" * 6 + MAC + b"\x88\xb5" + bytes(size - 14)
    head = 0
    for address in buffers:
        driver.submit([(address, 2048, True)], head=head, kick=False, queue=0)
        head += 1
    driver.kick(0)
    received, start = 0, time.perf_counter()
    while received < packets:
        for _ in range(64):
            peer.send(packet)
        assert events.callback is not None
        events.callback()
        used = driver.used(0)
        received += len(used)
        for entry_head, _length in used:  # give each buffer back
            driver.submit([(buffers[entry_head], 2048, True)], head=entry_head, kick=False, queue=0)
        driver.kick(0)
    return received / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1514, help="frame size in bytes")
    args = parser.parse_args()
    for name, run in (("tx", bench_tx), ("rx", bench_rx)):
        rate = run(args.packets, args.size)
        print(f"{name}: {rate / 1000:.0f} kpps, {rate * args.size * 8 / 1e9:.2f} Gbit/s at {args.size}-byte frames")


if __name__ == "__main__":
    main()
