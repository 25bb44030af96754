"""The ACPI PM1 registers and PM timer (devices/acpi_pm.py; ACPI 6.4, 4.8.3)."""

from __future__ import annotations

from vmd.acpi_layout import SLP_TYP_S5
from vmd.devices.acpi_pm import (
    PM_TIMER_HZ,
    PWRBTN_EN,
    PWRBTN_STS,
    SCI_EN,
    SLP_EN,
    SLP_TYP_SHIFT,
    WAK_STS,
    AcpiPm,
)
from vmd.devices.base import RecordingIrq


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000

    def __call__(self) -> int:
        return self.ns


def make(clock: Clock | None = None) -> tuple[AcpiPm, RecordingIrq, list[str]]:
    irq = RecordingIrq()
    events: list[str] = []
    pm = AcpiPm(irq, on_poweroff=lambda: events.append("poweroff"), clock_ns=clock or Clock())
    return pm, irq, events


def test_reset_state_is_acpi_mode_with_nothing_enabled() -> None:
    pm, irq, _ = make()
    assert pm.pio_read(0, 2) == 0  # PM1_STS
    assert pm.pio_read(2, 2) == 0  # PM1_EN
    assert pm.pio_read(4, 2) == SCI_EN  # always in ACPI mode (FADT SMI_CMD = 0)
    assert not irq.level


def test_button_without_pwrbtn_en_sets_status_but_no_sci() -> None:
    pm, irq, _ = make()
    assert pm.press_power_button() is False
    assert pm.pio_read(0, 2) & PWRBTN_STS
    assert not irq.level
    assert not pm.listening


def test_button_with_pwrbtn_en_raises_a_level_until_the_status_is_cleared() -> None:
    pm, irq, _ = make()
    pm.pio_write(2, 2, PWRBTN_EN)
    assert pm.listening
    assert pm.press_power_button() is True
    assert irq.level and irq.raised == 1
    pm.pio_write(0, 2, 0)  # writing zeroes clears nothing
    assert irq.level
    pm.pio_write(0, 2, PWRBTN_STS)  # write 1 to clear
    assert pm.pio_read(0, 2) & PWRBTN_STS == 0
    assert not irq.level


def test_enabling_after_a_press_raises_the_sci() -> None:
    pm, irq, _ = make()
    pm.press_power_button()
    pm.pio_write(2, 2, PWRBTN_EN)
    assert irq.level
    pm.pio_write(2, 2, 0)
    assert not irq.level


def test_status_bits_are_write_one_to_clear_bytewise_and_dword_wide() -> None:
    pm, irq, _ = make()
    pm.pm1_sts = PWRBTN_STS | WAK_STS
    pm.pio_write(1, 1, PWRBTN_STS >> 8)  # the high byte alone
    assert pm.pio_read(0, 2) == WAK_STS
    # one 32-bit write at +0: clears WAK_STS in PM1_STS and sets PM1_EN
    pm.pio_write(0, 4, WAK_STS | (PWRBTN_EN << 16))
    assert pm.pio_read(0, 4) == PWRBTN_EN << 16
    assert pm.pio_read(3, 1) == PWRBTN_EN >> 8


def test_sci_en_cannot_be_cleared_and_slp_en_reads_zero() -> None:
    pm, _, events = make()
    pm.pio_write(4, 2, 0)
    assert pm.pio_read(4, 2) & SCI_EN
    pm.pio_write(4, 2, 3 << SLP_TYP_SHIFT)
    assert pm.pio_read(4, 2) == SCI_EN | 3 << SLP_TYP_SHIFT
    assert events == []


def test_slp_en_with_the_s5_type_powers_off() -> None:
    pm, _, events = make()
    pm.pio_write(4, 2, SCI_EN | SLP_TYP_S5 << SLP_TYP_SHIFT)
    assert events == []
    pm.pio_write(4, 2, SCI_EN | SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN)
    assert events == ["poweroff"]
    assert pm.pio_read(4, 2) & SLP_EN == 0


def test_slp_en_as_a_byte_write_to_the_high_half() -> None:
    pm, _, events = make()
    pm.pio_write(5, 1, (SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN) >> 8)
    assert events == ["poweroff"]


def test_other_sleep_types_are_ignored() -> None:
    pm, _, events = make()
    for sleep_type in (0, 1, 3, 4, 7):
        pm.pio_write(4, 2, sleep_type << SLP_TYP_SHIFT | SLP_EN)
    assert events == []


def test_pm_timer_counts_at_3_58_mhz_and_wraps_at_24_bits() -> None:
    clock = Clock()
    pm, _, _ = make(clock)
    assert pm.pio_read(8, 4) == 0
    clock.ns += 1_000_000_000
    assert pm.pio_read(8, 4) == PM_TIMER_HZ
    clock.ns += 5 * 1_000_000_000  # 6 * 3579545 > 2**24
    assert pm.pio_read(8, 4) == (6 * PM_TIMER_HZ) & 0xFFFFFF
    assert pm.pio_read(8, 4) < 1 << 24
    pm.pio_write(8, 4, 0)  # read-only
    assert pm.pio_read(8, 4) == (6 * PM_TIMER_HZ) & 0xFFFFFF


def test_reserved_bytes_read_zero() -> None:
    pm, _, _ = make()
    assert pm.pio_read(6, 2) == 0
    assert pm.pio_read(12, 4) == 0
