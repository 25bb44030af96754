"""virtio-rng, the entropy device (virtio 1.2, 5.4): fills the driver's buffers from the host's CSPRNG."""

from __future__ import annotations

import logging
import os

from vmd.devices.virtio.pci import VirtioDevice
from vmd.devices.virtio.queue import Virtqueue

log = logging.getLogger("vmd.devices")

VIRTIO_ID_RNG = 4
MAX_REQUEST = 64 * 1024  # bytes served per buffer chain, so one request cannot monopolise the thread


class VirtioRng(VirtioDevice):
    device_type = VIRTIO_ID_RNG
    pci_class = 0xFF0000  # "other", as QEMU
    queue_sizes = (256,)

    def __init__(self) -> None:
        # Opened before the VM process drops its privileges; readv fills guest memory in place.
        self._random = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)

    def queue_notify(self, queue: Virtqueue) -> None:
        while True:
            chain = queue.pop()
            if chain is None:
                break
            views, room = [], MAX_REQUEST
            for view in chain.writable:
                if room <= 0:
                    break
                views.append(view[:room])
                room -= len(views[-1])
            try:
                written = os.readv(self._random, views) if views else 0
            except OSError as error:  # never out of queue_notify: the chain goes back, empty
                log.warning("virtio-rng: reading %s failed: %s", "/dev/urandom", error.strerror)
                written = 0
            queue.push(chain.head, written)
        self.transport.interrupt(queue)

    def close(self) -> None:
        os.close(self._random)
