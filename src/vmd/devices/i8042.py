"""A minimal i8042 keyboard controller: enough for the reset line and firmware/kernel probes.

One object serves both ports.  Preferred: register it twice on the I/O bus with
``bus.add(0x60, 1, kbc.data_read, kbc.data_write)`` and
``bus.add(0x64, 1, kbc.status_read, kbc.command_write)``.
``pio_read`` / ``pio_write`` also serve a single range 0x60-0x64 (base 0x60, length 5: offset 0 is data,
offset 4 is status/command, offsets 1-3 read 0xFF and ignore writes), but that range would shadow port
0x61, which belongs to the PIT speaker stub.

Behaviour (8042 command set as documented for the IBM PC/AT):

- Status (0x64 read): 0x1C (system flag, last write was a command, keyboard unlocked) plus OBF (bit 0)
  when a reply byte waits on 0x60.  No keyboard or mouse is attached, so nothing else ever arrives.
- 0xFE (pulse output port bit 0): CPU reset -> ``on_reset()``.  Also 0xF0-0xFD with bit 0 clear.
- 0xAA controller self-test -> 0x55; 0xAB / 0xA9 interface tests -> 0x00 (passed);
  0x20 read command byte; 0x60 write command byte (next data byte); 0xD0 read output port;
  0xD1 write output port (next data byte; bit 0 clear resets the CPU).
- Everything else is accepted and ignored.  A data port read with nothing waiting returns 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

STATUS_OBF = 0x01
STATUS_BASE = 0x1C  # SYS (bit 2) | CMD/DATA (bit 3) | keyboard not inhibited (bit 4)


class I8042:
    """Ports 0x60 (data) and 0x64 (status/command)."""

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._output: int | None = None  # reply byte waiting on port 0x60
        self._command_byte = 0x45  # keyboard interrupt on, system flag, translation
        self._output_port = 0x01  # bit 0: CPU not in reset
        self._pending: int | None = None  # command that waits for a data byte

    # -- two-range interface --------------------------------------------------------------------------

    def data_read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._output
            self._output = None
        return 0 if value is None else value

    def data_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        reset = False
        with self._lock:
            pending, self._pending = self._pending, None
            if pending == 0x60:
                self._command_byte = value
            elif pending == 0xD1:
                self._output_port = value
                reset = not value & 0x01
            # Bytes for the (absent) keyboard are ignored.
        if reset:
            self._on_reset()

    def status_read(self, offset: int, size: int) -> int:
        with self._lock:
            return STATUS_BASE | (STATUS_OBF if self._output is not None else 0)

    def command_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            self._pending = None
            if value == 0xAA:
                self._output = 0x55
            elif value in (0xA9, 0xAB):
                self._output = 0x00
            elif value == 0x20:
                self._output = self._command_byte
            elif value == 0xD0:
                self._output = self._output_port
            elif value in (0x60, 0xD1):
                self._pending = value
        if 0xF0 <= value <= 0xFF and not value & 0x01:
            # Pulse output port bits; bit 0 is the CPU reset line (0xFE is the usual one).
            self._on_reset()

    # -- single-range interface (base 0x60, length 5) ----------------------------------------------------

    def pio_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.data_read(0, size)
        if offset == 4:
            return self.status_read(0, size)
        return 0xFF

    def pio_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.data_write(0, size, value)
        elif offset == 4:
            self.command_write(0, size, value)
