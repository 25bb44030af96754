"""Motorola MC146818 real-time clock with 128 bytes of CMOS NVRAM (ports 0x70-0x71, IRQ 8).

Register map after the MC146818A datasheet ("Address map", "Registers A-D"); NVRAM layout after the PC/AT
BIOS conventions that SeaBIOS (src/hw/rtc.h, src/fw/paravirt.c) and QEMU (hw/rtc/mc146818rtc.c,
hw/i386/pc.c) use.

Ports (register at base 0x70, length 2): offset 0 index (bit 7, the NMI mask, is ignored; reads 0xFF),
offset 1 data.

Time model: the clock reads UTC from ``clock()`` plus an offset.  Guest writes to the time registers set the
offset: with REGB.SET the registers freeze and take writes, and the new time starts when SET is cleared;
without SET a single write takes effect at once.  BCD or binary (REGB.DM) and 24 or 12 hour (REGB.24/12,
hour bit 7 = PM) apply to reads, writes and the alarm; the century lives at 0x32 in the same format.
REGA.UIP reads 1 during the last 244 us of every second.

Interrupts: the periodic (REGB.PIE, rate from REGA.RS), update-ended (REGB.UIE) and alarm (REGB.AIE)
sources run on the scheduler only while enabled, and a periodic tick pauses while IRQF waits for a REGC
read.  PF and UF also appear in REGC for a polling guest, computed from elapsed time at the read.  Reading
REGC returns the flags, clears them and lowers IRQ 8.  REGD reads VRT (0x80).
"""

from __future__ import annotations

import calendar
import math
import threading
import time
from collections.abc import Callable

from vmd.devices.base import IrqLine, Scheduler, Timer

# Register indexes
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 0x06, 0x07, 0x08, 0x09
REGA, REGB, REGC, REGD = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

REGA_UIP = 0x80
REGB_SET = 0x80
REGB_PIE = 0x40
REGB_AIE = 0x20
REGB_UIE = 0x10
REGB_DM = 0x04  # 1 = binary
REGB_24H = 0x02
REGC_IRQF = 0x80
REGC_PF = 0x40
REGC_AF = 0x20
REGC_UF = 0x10
REGD_VRT = 0x80

UIP_WINDOW = 244e-6  # update-in-progress lead time (datasheet: tBUC)
NVRAM_SIZE = 128

# CMOS NVRAM (PC/AT layout; SeaBIOS src/hw/rtc.h names)
CMOS_EQUIPMENT = 0x14
CMOS_MEM_BASE = 0x15  # u16 LE, KiB below 1 MiB
CMOS_MEM_EXT = 0x17  # u16 LE, KiB above 1 MiB (capped)
CMOS_CHECKSUM = 0x2E  # u16 BE, sum of 0x10-0x2D
CMOS_MEM_EXT_COPY = 0x30
CMOS_MEM_EXT2 = 0x34  # u16 LE, 64 KiB units above 16 MiB below 4 GiB
CMOS_MEM_HIGH = 0x5B  # u24 LE, 64 KiB units above 4 GiB
CMOS_CPU_COUNT = 0x5F  # vCPUs - 1 (QEMU / SeaBIOS)

KiB = 1024
MiB = 1024 * KiB


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return ((value >> 4) & 0x0F) * 10 + (value & 0x0F)


class Rtc:
    """MC146818 RTC + CMOS; base port 0x70, length 2."""

    def __init__(self, irq: IrqLine, scheduler: Scheduler, memory_below_4g: int, memory_above_4g: int,
                 vcpus: int, clock: Callable[[], float] = time.time) -> None:
        self._irq = irq
        self._scheduler = scheduler
        self._clock = clock
        self._lock = threading.Lock()
        self._index = 0
        self._nvram = bytearray(NVRAM_SIZE)
        self._offset = 0.0  # guest time = clock() + offset
        self._frozen: bytearray | None = None  # time registers while REGB.SET is set
        self._irq_level = False
        self._periodic_timer: Timer | None = None
        self._periodic_deadline = 0.0  # monotonic time of the last scheduled periodic tick
        self._periodic_paused = False
        self._update_timer: Timer | None = None
        self._last_update_second = 0
        self._last_poll_mono = scheduler.monotonic()
        self._last_poll_second = math.floor(self._now())
        nv = self._nvram
        nv[REGA] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        nv[REGB] = REGB_24H
        nv[REGD] = REGD_VRT
        self._fill_memory(memory_below_4g, memory_above_4g, vcpus)

    # -- NVRAM set-up -------------------------------------------------------------------------------------

    def _fill_memory(self, below: int, above: int, vcpus: int) -> None:
        nv = self._nvram
        nv[CMOS_EQUIPMENT] = 0x02  # math coprocessor present, VGA/EGA display, no floppy
        nv[CMOS_MEM_BASE:CMOS_MEM_BASE + 2] = (640).to_bytes(2, "little")
        ext = min(max(below - MiB, 0) // KiB, 0xFFFF)
        nv[CMOS_MEM_EXT:CMOS_MEM_EXT + 2] = ext.to_bytes(2, "little")
        nv[CMOS_MEM_EXT_COPY:CMOS_MEM_EXT_COPY + 2] = ext.to_bytes(2, "little")
        ext2 = min(max(below - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
        nv[CMOS_MEM_EXT2:CMOS_MEM_EXT2 + 2] = ext2.to_bytes(2, "little")
        high = min(max(above, 0) // (64 * KiB), 0xFFFFFF)
        nv[CMOS_MEM_HIGH:CMOS_MEM_HIGH + 3] = high.to_bytes(3, "little")
        nv[CMOS_CPU_COUNT] = max(vcpus - 1, 0) & 0xFF
        self._update_checksum()

    def _update_checksum(self) -> None:
        total = sum(self._nvram[0x10:0x2E]) & 0xFFFF
        self._nvram[CMOS_CHECKSUM:CMOS_CHECKSUM + 2] = total.to_bytes(2, "big")

    def set_nvram(self, index: int, value: int) -> None:
        """Set a CMOS byte from the host side (boot flags and such); keeps the checksum right."""
        with self._lock:
            self._nvram[index & 0x7F] = value & 0xFF
            if 0x10 <= index < 0x2E:
                self._update_checksum()

    def nvram(self, index: int) -> int:
        return self._nvram[index & 0x7F]

    # -- time encoding ---------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() + self._offset

    def _encode(self, value: int) -> int:
        return value if self._nvram[REGB] & REGB_DM else _to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self._nvram[REGB] & REGB_DM else _from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self._nvram[REGB] & REGB_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _decode_hour(self, value: int) -> int:
        if self._nvram[REGB] & REGB_24H:
            return self._decode(value & 0x7F) % 24
        hour = self._decode(value & 0x7F) % 12
        return hour + 12 if value & 0x80 else hour

    def _time_registers(self, when: float) -> dict[int, int]:
        tm = time.gmtime(math.floor(when))
        return {
            SECONDS: self._encode(tm.tm_sec % 60),
            MINUTES: self._encode(tm.tm_min),
            HOURS: self._encode_hour(tm.tm_hour),
            DAY_OF_WEEK: self._encode((tm.tm_wday + 1) % 7 + 1),  # Sunday = 1
            DAY_OF_MONTH: self._encode(tm.tm_mday),
            MONTH: self._encode(tm.tm_mon),
            YEAR: self._encode(tm.tm_year % 100),
            CENTURY: self._encode(tm.tm_year // 100),
        }

    def _registers_to_time(self, regs: bytearray | dict[int, int]) -> int:
        def field(index: int, low: int, high: int) -> int:
            return min(max(self._decode(regs[index]), low), high)

        year = field(CENTURY, 0, 99) * 100 + field(YEAR, 0, 99)
        return calendar.timegm((max(year, 1), field(MONTH, 1, 12), field(DAY_OF_MONTH, 1, 31),
                                self._decode_hour(regs[HOURS]), field(MINUTES, 0, 59),
                                field(SECONDS, 0, 59), 0, 0, 0))

    def _snapshot(self) -> bytearray:
        regs = bytearray(NVRAM_SIZE)
        for index, value in self._time_registers(self._now()).items():
            regs[index] = value
        return regs

    # -- ports -------------------------------------------------------------------------------------------

    def pio_read(self, offset: int, size: int) -> int:
        if offset != 1:
            return 0xFF
        with self._lock:
            return self._read(self._index)

    def pio_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == 0:
                self._index = value & 0x7F  # bit 7 masks NMI: ignored
            elif offset == 1:
                self._write(self._index, value)

    def _read(self, index: int) -> int:
        if index in TIME_REGISTERS:
            if self._frozen is not None:
                return self._frozen[index]
            return self._time_registers(self._now())[index]
        if index == REGA:
            value = self._nvram[REGA] & 0x7F
            if self._frozen is None and math.modf(self._now())[0] >= 1.0 - UIP_WINDOW:
                value |= REGA_UIP
            return value
        if index == REGC:
            flags = self._nvram[REGC] | self._polled_flags()
            self._nvram[REGC] = 0
            self._set_irq(False)
            if self._periodic_paused:
                self._periodic_paused = False
                self._schedule_periodic(resume=True)
            return flags
        return self._nvram[index]

    def _write(self, index: int, value: int) -> None:
        if index in TIME_REGISTERS:
            if self._frozen is not None:
                self._frozen[index] = value
            else:
                now = self._now()
                regs = self._snapshot()
                regs[index] = value
                self._offset = self._registers_to_time(regs) + math.modf(now)[0] - self._clock()
                self._reschedule()
        elif index == REGA:
            old = self._nvram[REGA]
            self._nvram[REGA] = value & 0x7F
            if (old ^ value) & 0x0F:
                self._reschedule()
        elif index == REGB:
            self._write_regb(value)
        elif index in (REGC, REGD):
            pass  # read-only
        else:
            self._nvram[index] = value  # a guest writing CMOS keeps its own checksum, as BIOS setup does

    def _write_regb(self, value: int) -> None:
        old = self._nvram[REGB]
        if value & REGB_SET:
            value &= ~REGB_UIE  # setting SET clears UIE (datasheet, register B bit 7)
            if not old & REGB_SET:
                self._frozen = self._snapshot()
        if old & REGB_SET and not value & REGB_SET and self._frozen is not None:
            # The new time starts now, at the beginning of its second; the registers are read in the
            # format (DM, 24/12) they were written in.
            self._offset = self._registers_to_time(self._frozen) - self._clock()
            self._frozen = None
            self._last_poll_second = math.floor(self._now())
        self._nvram[REGB] = value
        self._reschedule()

    # -- interrupts --------------------------------------------------------------------------------------

    def _set_irq(self, level: bool) -> None:
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    def _raise(self, flag: int) -> None:
        """Set a REGC flag; IRQF and the line follow when its enable bit is set."""
        regb = self._nvram[REGB]
        enabled = {REGC_PF: REGB_PIE, REGC_AF: REGB_AIE, REGC_UF: REGB_UIE}[flag]
        self._nvram[REGC] |= flag
        if regb & enabled:
            self._nvram[REGC] |= REGC_IRQF
            self._set_irq(True)

    def _period(self) -> float | None:
        rate = self._nvram[REGA] & 0x0F
        if not rate:
            return None
        if rate <= 2:
            rate += 7  # rates 1 and 2 alias 8 and 9 (256 Hz and 128 Hz) on a 32.768 kHz time base
        return (1 << (rate - 1)) / 32768.0

    def _polled_flags(self) -> int:
        """PF and UF for a guest that polls REGC with the interrupts off."""
        flags = 0
        mono = self._scheduler.monotonic()
        period = self._period()
        if period is not None and mono - self._last_poll_mono >= period:
            flags |= REGC_PF
        self._last_poll_mono = mono
        if self._frozen is None:
            second = math.floor(self._now())
            if second != self._last_poll_second:
                flags |= REGC_UF
            self._last_poll_second = second
        return flags

    def _reschedule(self) -> None:
        self._schedule_periodic(resume=False)
        self._schedule_update()

    def _schedule_periodic(self, resume: bool) -> None:
        if self._periodic_timer is not None:
            self._periodic_timer.cancel()
            self._periodic_timer = None
        period = self._period()
        if period is None or not self._nvram[REGB] & REGB_PIE:
            self._periodic_paused = False
            return
        now = self._scheduler.monotonic()
        if resume and self._periodic_deadline:
            # Keep the phase: the next tick after now on the original grid.
            missed = math.floor((now - self._periodic_deadline) / period) + 1
            deadline = self._periodic_deadline + max(missed, 1) * period
        else:
            deadline = now + period
        self._periodic_deadline = deadline
        self._periodic_timer = self._scheduler.call_later(deadline - now, self._on_periodic)

    def _on_periodic(self) -> None:
        with self._lock:
            self._periodic_timer = None
            if not self._nvram[REGB] & REGB_PIE:
                return
            self._raise(REGC_PF)
            if self._nvram[REGC] & REGC_IRQF:
                # Nothing more can be signalled until REGC is read: pause, resume there.
                self._periodic_paused = True
                return
            self._schedule_periodic(resume=True)

    def _schedule_update(self) -> None:
        if self._update_timer is not None:
            self._update_timer.cancel()
            self._update_timer = None
        regb = self._nvram[REGB]
        if regb & REGB_SET or not regb & (REGB_UIE | REGB_AIE):
            return
        now = self._now()
        self._last_update_second = math.floor(now)
        delay = 1.0 - math.modf(now)[0]
        self._update_timer = self._scheduler.call_later(delay + 1e-6, self._on_update)

    def _on_update(self) -> None:
        with self._lock:
            self._update_timer = None
            regb = self._nvram[REGB]
            if regb & REGB_SET:
                return
            second = math.floor(self._now())
            if second == self._last_update_second:
                self._schedule_update()  # woke early (host clocks drift apart): wait for the boundary
                return
            self._last_update_second = second
            self._raise(REGC_UF)
            if regb & REGB_AIE and self._alarm_matches():
                self._raise(REGC_AF)
            self._schedule_update()

    def _alarm_matches(self) -> bool:
        regs = self._time_registers(self._now())
        for alarm, current in ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS)):
            value = self._nvram[alarm]
            if value & 0xC0 == 0xC0:
                continue  # "don't care"
            if value != regs[current]:
                return False
        return True
