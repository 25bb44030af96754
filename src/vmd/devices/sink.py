"""Ports that swallow writes: the POST code port 0x80 and the I/O delay port 0xED (length 1 each).

Reads return all ones, as an unclaimed ISA port does.  The last value written is kept in ``last_value``
(the last POST code, handy when a firmware hangs).
"""

from __future__ import annotations


class PortSink:
    """Base 0x80 or 0xED, length 1."""

    def __init__(self) -> None:
        self.last_value: int | None = None

    def pio_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def pio_write(self, offset: int, size: int, value: int) -> None:
        self.last_value = value
