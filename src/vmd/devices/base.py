"""What every device model is given and what it offers: interrupt lines, timers, and the bus.

A device model is pure logic over guest memory and an interrupt line; it never touches KVM.
Unit tests drive it with a bytearray-backed memory and a RecordingIrq.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vmd.memory import GuestMemory


log = logging.getLogger("vmd")


class IrqLine(Protocol):
    """One interrupt input of the platform (an ISA IRQ / GSI). The device drives its level."""

    def set_level(self, level: bool) -> None: ...


class RecordingIrq:
    """An IrqLine that remembers every level it was set to (for tests and for devices without a line)."""

    def __init__(self) -> None:
        self.level = False
        self.history: list[bool] = []

    def set_level(self, level: bool) -> None:
        self.level = level
        self.history.append(level)

    @property
    def raised(self) -> int:
        """How many rising edges have been seen."""
        edges, previous = 0, False
        for level in self.history:
            if level and not previous:
                edges += 1
            previous = level
        return edges


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Runs callbacks later, on the VM's event thread (never on a vCPU thread)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...

    def monotonic(self) -> float: ...


class PioDevice(Protocol):
    def pio_read(self, offset: int, size: int) -> int: ...

    def pio_write(self, offset: int, size: int, value: int) -> None: ...


class BusError(Exception):
    pass


class Bus:
    """Maps address ranges to handlers; a lookup is one bisect.

    Handlers are (read, write) callables taking the offset inside the range: read(offset, size) -> int,
    write(offset, size, value).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = 0  # bumped on every change, so run loops can cache lookups
        self._starts: list[int] = []
        self._entries: list[tuple[int, int, Callable[[int, int], int], Callable[[int, int, int], None]]] = []

    def add(self, start: int, length: int, read: Callable[[int, int], int],
            write: Callable[[int, int, int], None]) -> None:
        end = start + length
        index = bisect.bisect_right(self._starts, start)
        if index > 0 and self._entries[index - 1][1] > start:
            raise BusError(f"{self.name} range {start:#x}+{length:#x} overlaps an existing device")
        if index < len(self._starts) and self._starts[index] < end:
            raise BusError(f"{self.name} range {start:#x}+{length:#x} overlaps an existing device")
        self._starts.insert(index, start)
        self._entries.insert(index, (start, end, read, write))
        self.version += 1

    def add_pio(self, start: int, length: int, device: PioDevice) -> None:
        self.add(start, length, device.pio_read, device.pio_write)

    def remove(self, start: int) -> None:
        index = bisect.bisect_left(self._starts, start)
        if index < len(self._starts) and self._starts[index] == start:
            del self._starts[index]
            del self._entries[index]
            self.version += 1

    def find(self, address: int) -> tuple[int, int, Callable[[int, int], int],
                                          Callable[[int, int, int], None]] | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0:
            entry = self._entries[index]
            if address < entry[1]:
                return entry
        return None

    def read(self, address: int, size: int) -> int:
        """Read from the device at address; unclaimed addresses read as all ones."""
        entry = self.find(address)
        if entry is None:
            return (1 << (8 * size)) - 1
        return entry[2](address - entry[0], size)

    def write(self, address: int, size: int, value: int) -> None:
        entry = self.find(address)
        if entry is not None:
            entry[3](address - entry[0], size, value)


class _ThreadTimer:
    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _ThreadTimer) -> bool:
        return self.deadline < other.deadline


class ThreadScheduler:
    """A Scheduler backed by one thread and a heap of deadlines."""

    def __init__(self, name: str = "vmd-timers") -> None:
        self._heap: list[_ThreadTimer] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ThreadTimer(time.monotonic() + max(0.0, delay), callback)
        with self._cond:
            heapq.heappush(self._heap, timer)
            self._cond.notify()
        return timer

    def describe(self) -> str:
        """One line: whether the timer thread runs and what it waits for (a hung guest's diagnosis)."""
        with self._cond:
            live = [timer for timer in self._heap if not timer.cancelled]
            due = min((timer.deadline for timer in live), default=None)
        when = "none" if due is None else f"{due - time.monotonic():+.3f} s"
        return f"timers: thread {'alive' if self._thread.is_alive() else 'DEAD'}, {len(live)} pending, next {when}"

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                        continue
                    now = time.monotonic()
                    if self._heap and self._heap[0].deadline <= now:
                        break
                    self._cond.wait(None if not self._heap else self._heap[0].deadline - now)
                if self._stopped:
                    return
                timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception:  # a device bug must not end the timer thread: every later timer would hang
                    log.exception("timer callback failed")


_ManualTimer = _ThreadTimer  # the same cancellable deadline, kept by the manual clock


class ManualScheduler:
    """A Scheduler whose clock only moves when told (for unit tests): advance() runs what fell due."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.timers: list[_ManualTimer] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(self.now + max(0.0, delay), callback)
        self.timers.append(timer)
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for t in self.timers if not t.cancelled)

    def advance(self, seconds: float = 0.0) -> int:
        """Move the clock forward, running due callbacks in deadline order; returns how many ran."""
        target = self.now + seconds
        ran = 0
        while True:
            due = [t for t in self.timers if not t.cancelled and t.deadline <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.deadline)
            self.timers.remove(timer)
            self.now = max(self.now, timer.deadline)
            timer.callback()
            ran += 1
        self.timers = [t for t in self.timers if not t.cancelled]
        self.now = target
        return ran


class MsiVector(Protocol):
    """One message-signalled interrupt the platform delivers (an MSI route with an irqfd behind it)."""

    def program(self, address: int, data: int) -> None: ...

    def fire(self) -> None: ...

    def close(self) -> None: ...


class Platform(Protocol):
    """What a PCI device needs from the machine, without knowing KVM: buses, guest memory, interrupts,
    doorbells (ioeventfds) and the VM's event loop."""

    memory: GuestMemory
    pio: Bus
    mmio: Bus

    def msi_vector(self) -> MsiVector: ...

    def intx_line(self, irq: int) -> IrqLine: ...

    def add_doorbell(self, address: int, length: int, pio: bool, callback: Callable[[], None]) -> object: ...

    def remove_doorbell(self, handle: object) -> None: ...

    def call_soon(self, callback: Callable[[], None]) -> None: ...
