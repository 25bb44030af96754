"""The VM's event thread: epoll over doorbells (ioeventfds), device fds and a wake-up eventfd."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger("vmd.events")


class EventLoop:
    """One thread that waits on file descriptors and runs their callbacks; call_soon from any thread."""

    def __init__(self, name: str = "vmd-events") -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._soon: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        with self._lock:
            self._callbacks.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def call_soon(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._soon.append(callback)
        os.eventfd_write(self._wake, 1)

    def stop(self) -> None:
        self._stopped = True
        os.eventfd_write(self._wake, 1)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._epoll.close()
        os.close(self._wake)

    def _run(self) -> None:
        while not self._stopped:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            for fd, _mask in events:
                handler: Callable[[], None] | None
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    with self._lock:
                        soon, self._soon = self._soon, []
                    for callback in soon:
                        self._call(callback)
                    continue
                with self._lock:
                    handler = self._callbacks.get(fd)
                if handler is not None:
                    self._call(handler)

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # a device bug must not end the event thread
            log.exception("event callback failed")
