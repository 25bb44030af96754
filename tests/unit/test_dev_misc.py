"""debug-exit, port sinks and the i8042 reset line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.devices.debug_exit import DebugExit
from vmd.devices.i8042 import I8042
from vmd.devices.sink import PortSink


def test_debug_exit_status() -> None:
    seen: list[int] = []
    dev = DebugExit(seen.append)
    dev.pio_write(0, 1, 0)
    dev.pio_write(0, 1, 0x10)
    dev.pio_write(0, 4, 0x1234)  # low byte only
    assert seen == [1, 0x21, 0x69]
    assert dev.pio_read(0, 1) == 0


def test_sink() -> None:
    sink = PortSink()
    assert sink.last_value is None
    sink.pio_write(0, 1, 0x42)
    assert sink.last_value == 0x42
    assert sink.pio_read(0, 1) == 0xFF
    assert sink.pio_read(0, 2) == 0xFFFF


def test_i8042_reset_pulse() -> None:
    resets: list[None] = []
    kbc = I8042(lambda: resets.append(None))
    assert kbc.status_read(0, 1) & 0x01 == 0
    assert kbc.data_read(0, 1) == 0
    kbc.command_write(0, 1, 0xFE)
    assert len(resets) == 1
    kbc.pio_write(4, 1, 0xFE)
    assert len(resets) == 2
    kbc.command_write(0, 1, 0xFF)  # pulse nothing
    assert len(resets) == 2


def test_i8042_self_test_and_command_byte() -> None:
    kbc = I8042(lambda: None)
    kbc.command_write(0, 1, 0xAA)
    assert kbc.status_read(0, 1) & 0x01
    assert kbc.data_read(0, 1) == 0x55
    assert kbc.status_read(0, 1) & 0x01 == 0
    kbc.command_write(0, 1, 0x60)
    kbc.data_write(0, 1, 0x61)
    kbc.command_write(0, 1, 0x20)
    assert kbc.pio_read(0, 1) == 0x61
    kbc.command_write(0, 1, 0xAB)
    assert kbc.pio_read(0, 1) == 0x00


def test_i8042_output_port_reset() -> None:
    resets: list[None] = []
    kbc = I8042(lambda: resets.append(None))
    kbc.command_write(0, 1, 0xD1)
    kbc.data_write(0, 1, 0x03)
    assert not resets
    kbc.command_write(0, 1, 0xD1)
    kbc.data_write(0, 1, 0x02)
    assert len(resets) == 1


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.sampled_from([1, 2, 4]),
                         st.integers(0, 0xFFFFFFFF)), max_size=100)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_random_accesses_never_raise(accesses: list[tuple[bool, int, int, int]]) -> None:
    kbc = I8042(lambda: None)
    sink = PortSink()
    dbg = DebugExit(lambda status: None)
    for write, offset, size, value in accesses:
        for dev in (kbc, sink, dbg):
            if write:
                dev.pio_write(offset, size, value)
            else:
                assert 0 <= dev.pio_read(offset, size) < (1 << (8 * size))
