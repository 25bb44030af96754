"""Long-lived worker threads for device requests that block (disk and CD-ROM I/O).

A plain SimpleQueue and threads that live as long as the device: cheaper per request than
concurrent.futures, which matters on the I/O path (bench/blk.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vmd.virtio")


class RequestWorkers:
    """Run submitted calls on `count` threads; close() lets queued calls finish, then stops the threads."""

    def __init__(self, name: str, count: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        self._jobs.put((call, args))

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, args = job
            try:
                call(*args)
            except Exception:  # a device bug must not kill the worker: the next request still gets served
                log.exception("device request failed")
