"""QEMU isa-debug-exit compatible exit port (0xF4, length 1).

A write of v ends the VM with status (v << 1) | 1, as QEMU's ``-device isa-debug-exit`` (iobase 0xF4,
iosize 1) does.  Wider writes use the value's low byte.  Reads return 0.
"""

from __future__ import annotations

from collections.abc import Callable


class DebugExit:
    """Base port 0xF4, length 1."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def pio_read(self, offset: int, size: int) -> int:
        return 0

    def pio_write(self, offset: int, size: int, value: int) -> None:
        self._on_exit(((value & 0xFF) << 1) | 1)
