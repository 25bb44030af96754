"""MC146818 RTC and CMOS NVRAM, driven as Linux, OpenBSD and SeaBIOS drive it."""

from __future__ import annotations

import calendar

from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.devices.base import ManualScheduler, RecordingIrq
from vmd.devices.rtc import Rtc

MiB = 1024 * 1024
GiB = 1024 * MiB
# 2024-02-29 13:45:56 UTC, a Thursday
T0 = calendar.timegm((2024, 2, 29, 13, 45, 56, 0, 0, 0))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(t: float = T0 + 0.5, below: int = 512 * MiB, above: int = 0,
         vcpus: int = 2) -> tuple[Rtc, RecordingIrq, ManualScheduler, Clock]:
    irq = RecordingIrq()
    sched = ManualScheduler()
    clock = Clock(t)
    return Rtc(irq, sched, below, above, vcpus, clock), irq, sched, clock


def rd(rtc: Rtc, index: int) -> int:
    rtc.pio_write(0, 1, index | 0x80)  # NMI mask bit set, as many kernels do
    return rtc.pio_read(1, 1)


def wr(rtc: Rtc, index: int, value: int) -> None:
    rtc.pio_write(0, 1, index)
    rtc.pio_write(1, 1, value)


def read_time(rtc: Rtc) -> tuple[int, ...]:
    return tuple(rd(rtc, i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32))


def test_bcd_then_binary() -> None:
    rtc, _, _, _ = make()
    assert rd(rtc, 0x0B) & 0x06 == 0x02  # BCD, 24h
    assert read_time(rtc) == (0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20)
    wr(rtc, 0x0B, 0x06)  # binary
    assert read_time(rtc) == (56, 45, 13, 5, 29, 2, 24, 20)


def test_12_hour_mode() -> None:
    rtc, _, _, clock = make()
    wr(rtc, 0x0B, 0x00)  # BCD, 12h
    assert rd(rtc, 4) == 0x80 | 0x01  # 1 PM
    wr(rtc, 0x0B, 0x04)  # binary, 12h
    assert rd(rtc, 4) == 0x80 | 1
    clock.t = calendar.timegm((2024, 1, 1, 0, 30, 0, 0, 0, 0))
    assert rd(rtc, 4) == 12  # midnight = 12 AM
    clock.t += 12 * 3600
    assert rd(rtc, 4) == 0x80 | 12  # noon = 12 PM


def test_set_time_with_set_bit() -> None:
    rtc, _, _, clock = make()
    wr(rtc, 0x0B, 0x82)  # SET, BCD, 24h
    for index, value in ((0, 0x00), (2, 0x30), (4, 0x08), (7, 0x01), (8, 0x01), (9, 0x99), (0x32, 0x19)):
        wr(rtc, index, value)
    clock.t += 10  # frozen while SET
    assert rd(rtc, 0) == 0x00
    assert not rd(rtc, 0x0A) & 0x80
    wr(rtc, 0x0B, 0x02)
    assert read_time(rtc)[:3] == (0x00, 0x30, 0x08)
    clock.t += 61
    assert read_time(rtc) == (0x01, 0x31, 0x08, 0x06, 0x01, 0x01, 0x99, 0x19)  # 1999-01-01 was a Friday


def test_single_write_without_set() -> None:
    rtc, _, _, _ = make()
    wr(rtc, 0x09, 0x30)
    assert rd(rtc, 0x09) == 0x30
    assert rd(rtc, 0x00) == 0x56


def test_12h_write_pm() -> None:
    rtc, _, _, _ = make()
    wr(rtc, 0x0B, 0x86)  # SET, binary, 24h
    wr(rtc, 0x0B, 0x84)  # SET, binary, 12h
    wr(rtc, 4, 0x80 | 11)  # 11 PM
    wr(rtc, 0x0B, 0x06)  # binary, 24h: the registers were written in 12h mode
    assert rd(rtc, 4) == 23


def test_uip() -> None:
    rtc, _, _, clock = make(t=T0 + 0.5)
    assert not rd(rtc, 0x0A) & 0x80
    clock.t = T0 + 0.9999
    assert rd(rtc, 0x0A) & 0x80
    assert rd(rtc, 0x0A) & 0x7F == 0x26
    clock.t = T0 + 1.0001
    assert not rd(rtc, 0x0A) & 0x80


def test_regd_and_index_port() -> None:
    rtc, _, _, _ = make()
    assert rd(rtc, 0x0D) == 0x80
    assert rtc.pio_read(0, 1) == 0xFF


def test_periodic_interrupt_and_regc() -> None:
    rtc, irq, sched, _ = make()
    wr(rtc, 0x0A, 0x29)  # 128 Hz
    assert sched.pending == 0
    wr(rtc, 0x0B, 0x42)  # PIE
    assert sched.pending == 1
    sched.advance(1 / 128)
    assert irq.level
    assert sched.pending == 0  # paused until REGC is read
    flags = rd(rtc, 0x0C)
    assert flags & 0xC0 == 0xC0
    assert not irq.level
    assert rd(rtc, 0x0C) & 0x80 == 0
    assert sched.pending == 1
    sched.advance(1 / 128)
    assert irq.level
    assert irq.raised == 2
    wr(rtc, 0x0B, 0x02)
    rd(rtc, 0x0C)
    assert sched.pending == 0


def test_update_interrupt() -> None:
    rtc, irq, sched, clock = make(t=T0 + 0.25)
    wr(rtc, 0x0B, 0x12)  # UIE
    assert not irq.level
    clock.t = T0 + 1.01
    sched.advance(0.76)
    assert irq.level
    assert rd(rtc, 0x0C) & 0x90 == 0x90
    assert not irq.level


def test_update_timer_woken_early_waits() -> None:
    rtc, irq, sched, clock = make(t=T0 + 0.25)
    wr(rtc, 0x0B, 0x12)
    clock.t = T0 + 0.999  # the host wall clock lags the scheduler's
    sched.advance(0.76)
    assert not irq.level
    clock.t = T0 + 1.0005
    sched.advance(0.01)
    assert irq.level


def test_alarm_interrupt() -> None:
    rtc, irq, sched, clock = make(t=T0 + 0.5)
    wr(rtc, 0x01, 0x58)  # alarm at xx:xx:58 (BCD)
    wr(rtc, 0x03, 0xC0)
    wr(rtc, 0x05, 0xC0)
    wr(rtc, 0x0B, 0x22)  # AIE
    for _ in range(2):
        clock.t += 1.0
        sched.advance(1.0)
    assert irq.level
    assert rd(rtc, 0x0C) & 0xA0 == 0xA0


def test_polled_flags() -> None:
    rtc, irq, sched, clock = make(t=T0 + 0.5)
    rd(rtc, 0x0C)
    clock.t += 1.0
    sched.advance(1.0)
    flags = rd(rtc, 0x0C)
    assert flags & 0x50 == 0x50 and not flags & 0x80
    assert not irq.history


def test_nvram_memory_and_checksum() -> None:
    rtc, _, _, _ = make(below=0xE0000000, above=2 * GiB, vcpus=4)
    nv = rtc.nvram
    assert nv(0x15) | nv(0x16) << 8 == 640
    assert nv(0x17) | nv(0x18) << 8 == 0xFFFF
    assert nv(0x30) | nv(0x31) << 8 == 0xFFFF
    assert nv(0x34) | nv(0x35) << 8 == (0xE0000000 - 16 * MiB) >> 16
    assert nv(0x5B) | nv(0x5C) << 8 | nv(0x5D) << 16 == (2 * GiB) >> 16
    assert nv(0x5F) == 3
    total = sum(nv(i) for i in range(0x10, 0x2E))
    assert (nv(0x2E) << 8 | nv(0x2F)) == total
    small, _, _, _ = make(below=8 * MiB)
    assert small.nvram(0x17) | small.nvram(0x18) << 8 == 7 * 1024
    assert small.nvram(0x34) == 0 and small.nvram(0x35) == 0
    # NVRAM read and write through the ports
    wr(small, 0x40, 0xA5)
    assert rd(small, 0x40) == 0xA5
    small.set_nvram(0x10, 0x40)
    assert (small.nvram(0x2E) << 8 | small.nvram(0x2F)) == sum(small.nvram(i) for i in range(0x10, 0x2E))


ops = st.lists(st.tuples(st.sampled_from(["r", "w", "tick"]), st.integers(0, 1), st.integers(0, 0xFF),
                         st.floats(0, 3)), max_size=150)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_random_accesses_never_raise(accesses: list[tuple[str, int, int, float]]) -> None:
    rtc, _, sched, clock = make()
    for kind, offset, value, delay in accesses:
        if kind == "r":
            assert 0 <= rtc.pio_read(offset, 1) <= 0xFF
        elif kind == "w":
            rtc.pio_write(offset, 1, value)
        else:
            clock.t += delay
            sched.advance(delay)
