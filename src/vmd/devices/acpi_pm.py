"""ACPI fixed-hardware power-management registers: PM1a event and control blocks and the PM timer.

ACPI 6.4, chapter 4.8 (ACPI hardware specification, fixed hardware registers):

    base + 0  PM1a_EVT_BLK  PM1_STS (16 bits, 4.8.3.1.1) then PM1_EN (16 bits, 4.8.3.1.2)
    base + 4  PM1a_CNT_BLK  PM1_CNT (16 bits, 4.8.3.2.1)
    base + 8  PM_TMR_BLK    PM_TMR  (32-bit register, 24-bit counter at 3.579545 MHz, 4.8.3.3)

The layout is the one of QEMU's PIIX4 power-management function (base 0x600 there too), so what a guest
learns from the FADT is what it would find on a QEMU "pc" machine.

Choices:

* The system is always in ACPI mode: the FADT has SMI_CMD = 0 (5.2.9), SCI_EN reads as 1 and cannot be
  cleared. Nothing else (no SMM) could handle events anyway.
* Only the power button (PWRBTN_STS/PWRBTN_EN, bit 8) raises the SCI. The timer status TMR_STS (bit 0)
  is never set, so TMR_EN has no effect (Linux, OpenBSD and SeaBIOS only read the counter).
* The DSDT declares only ``\\_S5`` with SLP_TYP = 5 (SLP_TYP_S5). Writing SLP_EN with that type powers
  the VM off. The DSDT offers no other sleep state, so SLP_EN with any other SLP_TYP (a guest that
  guessed S1-S4 values) is ignored: we cannot suspend, and turning the VM off for a suspend request would
  lose the guest's state.
* The SCI is a level: high while (PM1_STS & PM1_EN) has a power-button bit set. It is ISA IRQ 9,
  level-triggered and active-high (the MADT and MP table say so).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from vmd.acpi_layout import PM_LENGTH, SLP_TYP_S5
from vmd.devices.base import IrqLine

log = logging.getLogger("vmd.acpi")

# PM1_STS bits (ACPI 6.4 table 4.16)
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
PCIEXP_WAKE_STS = 1 << 14
WAK_STS = 1 << 15
PM1_STS_W1C = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | PCIEXP_WAKE_STS | WAK_STS
# PM1_EN bits (table 4.17)
TMR_EN = 1 << 0
GBL_EN = 1 << 5
PWRBTN_EN = 1 << 8
SLPBTN_EN = 1 << 9
RTC_EN = 1 << 10
PCIEXP_WAKE_DIS = 1 << 14
PM1_EN_MASK = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN | PCIEXP_WAKE_DIS
# PM1_CNT bits (table 4.18)
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2  # write-only: would signal the BIOS through an SMI; ignored
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13  # write-only, reads as 0

PM_TIMER_HZ = 3_579_545  # 4.8.3.3
PM_TIMER_MASK = 0xFF_FFFF  # 24-bit counter (FADT flag TMR_VAL_EXT clear)


class AcpiPm:
    """The PM1a event/control blocks and PM timer, registered on the I/O bus at PM_BASE, PM_LENGTH."""

    def __init__(self, sci: IrqLine, on_poweroff: Callable[[], None],
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._sci = sci
        self._on_poweroff = on_poweroff
        self._clock_ns = clock_ns
        self._epoch = clock_ns()
        self._lock = threading.Lock()
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN  # always in ACPI mode (no SMI_CMD)
        self.poweroffs = 0

    # -- what the machine uses -------------------------------------------------------------------------
    def press_power_button(self) -> bool:
        """Press the fixed-feature power button (ACPI 6.4, 4.8.2.2.1.1): set PWRBTN_STS and raise the
        SCI if the guest enabled it. Returns whether the guest listens (PWRBTN_EN and SCI_EN set);
        when it does not, nothing in the guest will act on the press."""
        with self._lock:
            self.pm1_sts |= PWRBTN_STS
            self._update_sci()
            return bool(self.pm1_en & PWRBTN_EN) and bool(self.pm1_cnt & SCI_EN)

    @property
    def listening(self) -> bool:
        """Would a power-button press reach the guest?"""
        with self._lock:
            return bool(self.pm1_en & PWRBTN_EN) and bool(self.pm1_cnt & SCI_EN)

    def timer(self) -> int:
        """The PM timer counter (24 bits)."""
        elapsed = self._clock_ns() - self._epoch
        return (elapsed * PM_TIMER_HZ // 1_000_000_000) & PM_TIMER_MASK

    # -- register file ---------------------------------------------------------------------------------
    def _register_bytes(self) -> bytearray:
        data = bytearray(PM_LENGTH)
        data[0:2] = self.pm1_sts.to_bytes(2, "little")
        data[2:4] = self.pm1_en.to_bytes(2, "little")
        data[4:6] = (self.pm1_cnt & ~SLP_EN).to_bytes(2, "little")
        data[8:12] = self.timer().to_bytes(4, "little")
        return data

    def pio_read(self, offset: int, size: int) -> int:
        with self._lock:
            data = self._register_bytes()
        return int.from_bytes(data[offset : offset + size].ljust(size, b"\xff"), "little")

    def pio_write(self, offset: int, size: int, value: int) -> None:
        """Any access width at any offset: the bytes written are applied register by register
        (a 32-bit write at +0 sets PM1_STS and PM1_EN together, as the hardware allows)."""
        poweroff = False
        with self._lock:
            for index in range(size):
                where = offset + index
                byte = (value >> (8 * index)) & 0xFF
                if where in (0, 1):  # PM1_STS: write 1 to clear
                    self.pm1_sts &= ~((byte << (8 * where)) & PM1_STS_W1C)
                elif where in (2, 3):
                    shift = 8 * (where - 2)
                    self.pm1_en = (self.pm1_en & ~(0xFF << shift)) | ((byte << shift) & PM1_EN_MASK)
                elif where in (4, 5):
                    shift = 8 * (where - 4)
                    written = byte << shift
                    keep = self.pm1_cnt & ~(0xFF << shift)
                    # SCI_EN stays set (always ACPI mode); GBL_RLS and SLP_EN are write-only
                    self.pm1_cnt = (keep | (written & (BM_RLD | SLP_TYP_MASK))) | SCI_EN
                    if written & SLP_EN:
                        poweroff = self._sleep_locked()
                # the PM timer (+8) is read-only; +6, +7 and +12-15 are reserved
            self._update_sci()
        if poweroff:
            self._on_poweroff()

    def _sleep_locked(self) -> bool:
        """SLP_EN was written: enter the sleep state in SLP_TYP (ACPI 6.4, 4.8.3.2.1 / 16.1)."""
        sleep_type = (self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
        if sleep_type == SLP_TYP_S5:
            self.poweroffs += 1
            return True
        log.warning("guest asked for sleep type %d, which the DSDT does not offer: ignored", sleep_type)
        return False

    def _update_sci(self) -> None:
        level = bool(self.pm1_sts & self.pm1_en & (PWRBTN_STS | SLPBTN_STS | RTC_STS | GBL_STS | TMR_STS))
        self._sci.set_level(level and bool(self.pm1_cnt & SCI_EN))
