"""vmmci, OpenBSD's VMM control interface (the host side of the guest's vmmci(4) driver).

A legacy virtio 0.9 PCI device with no virtqueues, only a small configuration area (legacy.py gives the
register file). OpenBSD guests bind to it through virtio_pci(4), which takes any function with vendor
PCI_VENDOR_OPENBSD (0x0b5d) and product PCI_PRODUCT_OPENBSD_CONTROL (0x0777), treats it as virtio 0.9 and
reads the virtio device type from the subsystem id: PCI_PRODUCT_VIRTIO_VMMCI, 0xffff, a private id.

Device configuration (from offset 0x14 of the I/O BAR, the place without MSI-X):

    +0   command: reads as the command the host posted; a guest write is its acknowledgement (or, with
         no command pending, the guest announcing its own SHUTDOWN)
    +4   host time, seconds, low 32 bits   (reading this register samples the host clock, as vmd)
    +8   host time, seconds, high 32 bits  (reading it samples too: OpenBSD reads an 8-byte register
                                           high half first, so a stale sample here would pair the high
                                           half of one time with the low half of the next)
    +12  host time, microseconds, low 32 bits (of the last sample)
    +16  host time, microseconds, high 32 bits (always 0)

Feature bits: TIMESYNC (1) the guest may read the host time; ACK (2) the guest acknowledges commands by
writing them back; SYNCRTC (4) the guest understands SYNCRTC. Commands: NONE 0, SHUTDOWN 1, REBOOT 2,
SYNCRTC 3. Posting a command sets it, raises a configuration-change interrupt and (for SHUTDOWN/REBOOT)
arms a 3-second timer; the guest's acknowledgement stretches it to 120 seconds, for rc.shutdown to run. A
SHUTDOWN the guest writes with nothing pending (it is halting on its own) arms the 3-second timer. When the
timer runs out, `on_timeout(command)` tells the machine to end the VM, as vmd's vm_shutdown.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from vmd.devices.base import Bus, IrqLine, Scheduler, Timer
from vmd.devices.virtio.legacy import LegacyVirtioPci

log = logging.getLogger("vmd.vmmci")

PCI_VENDOR_OPENBSD = 0x0B5D
PCI_PRODUCT_OPENBSD_CONTROL = 0x0777
PCI_PRODUCT_VIRTIO_VMMCI = 0xFFFF  # the subsystem id: virtio_pci(4) takes the child's device type from it
PCI_CLASS_COMMUNICATIONS_MISC = 0x078000  # class 0x07 communications, subclass 0x80 other

# Feature bits (vmmci.c)
VMMCI_F_TIMESYNC = 1 << 0
VMMCI_F_ACK = 1 << 1
VMMCI_F_SYNCRTC = 1 << 2

# Commands (enum vmmci_cmd)
VMMCI_NONE = 0
VMMCI_SHUTDOWN = 1
VMMCI_REBOOT = 2
VMMCI_SYNCRTC = 3
COMMAND_NAMES = {VMMCI_NONE: "none", VMMCI_SHUTDOWN: "shutdown", VMMCI_REBOOT: "reboot", VMMCI_SYNCRTC: "syncrtc"}

# Configuration registers (offsets in the device-specific area)
CONFIG_COMMAND = 0
CONFIG_TIME_SEC = 4
CONFIG_TIME_USEC = 12
CONFIG_SIZE = 20

# Timeouts (vmd.h VMMCI_TIMEOUT_SHORT / VMMCI_TIMEOUT_LONG), seconds
TIMEOUT_SHORT = 3
TIMEOUT_LONG = 120


class Vmmci(LegacyVirtioPci):
    """The vmmci PCI function. Plug it into the PciBus; with `pio` given it places its I/O BAR itself.

    Callbacks (set as attributes): `on_guest_ack(command)` for every command the guest writes back (a
    SHUTDOWN while `command` is NONE is the guest halting on its own); `on_timeout(command)` when the
    shutdown/reboot timer runs out (SHUTDOWN or REBOOT: what the VM should do now). Timers need a
    `scheduler`; without one none are armed and the machine keeps time itself."""

    host_features = VMMCI_F_TIMESYNC | VMMCI_F_ACK | VMMCI_F_SYNCRTC
    config_size = CONFIG_SIZE

    def __init__(self, intx: IrqLine, clock: Callable[[], float] = time.time, *, pio: Bus | None = None,
                 scheduler: Scheduler | None = None, interrupt_line: int | None = None) -> None:
        self.clock = clock
        self.scheduler = scheduler
        self.command = VMMCI_NONE
        self._time = (0, 0)  # the last host time sample: seconds, microseconds
        self._timer: Timer | None = None
        self.on_guest_ack: Callable[[int], None] | None = None
        self.on_timeout: Callable[[int], None] | None = None
        super().__init__(PCI_VENDOR_OPENBSD, PCI_PRODUCT_OPENBSD_CONTROL, PCI_CLASS_COMMUNICATIONS_MISC,
                         PCI_VENDOR_OPENBSD, PCI_PRODUCT_VIRTIO_VMMCI, intx, revision=0, pio=pio,
                         interrupt_line=interrupt_line)

    # -- host side ------------------------------------------------------------------------------------
    def request_shutdown(self) -> bool:
        """Ask the guest to power off. False when no driver is running (the caller stops the VM hard)."""
        return self._post(VMMCI_SHUTDOWN)

    def request_reboot(self) -> bool:
        """Ask the guest to reboot. False when no driver is running."""
        return self._post(VMMCI_REBOOT)

    def sync_rtc(self) -> bool:
        """Ask the guest to re-read its clock (the host time jumped). Only if it negotiated SYNCRTC, and never
        over a pending shutdown or reboot. Returns whether the request went out."""
        with self.lock:
            if not self.driver_ready or not self.guest_features & VMMCI_F_SYNCRTC:
                log.debug("RTC sync skipped (no driver, or the guest does not support RTC sync)")
                return False
            if self.command in (VMMCI_SHUTDOWN, VMMCI_REBOOT):
                return False
            if self.command != VMMCI_SYNCRTC:
                self.command = VMMCI_SYNCRTC
                self.interrupt_config()
            return True

    def _post(self, command: int) -> bool:
        with self.lock:
            if not self.driver_ready:
                return False
            if command == self.command:
                return True  # already posted; the timer keeps running
            self.command = command
            self.interrupt_config()
            self._arm(TIMEOUT_SHORT)
            return True

    # -- timers ---------------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.scheduler is not None:
            self._timer = self.scheduler.call_later(seconds, self._expired)

    def cancel_timer(self) -> None:
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    @property
    def timer_armed(self) -> bool:
        return self._timer is not None

    def _expired(self) -> None:
        with self.lock:
            self._timer = None
            outcome = VMMCI_REBOOT if self.command == VMMCI_REBOOT else VMMCI_SHUTDOWN
        log.debug("vmmci timer expired: %s", COMMAND_NAMES[outcome])
        if self.on_timeout is not None:
            self.on_timeout(outcome)

    # -- guest side -----------------------------------------------------------------------------------
    def device_config_read(self, offset: int, size: int) -> int:
        with self.lock:
            if offset in (CONFIG_TIME_SEC, CONFIG_TIME_SEC + 4):  # sample the clock (vmd: gettimeofday)
                now = self.clock()
                seconds = int(now // 1)
                self._time = (seconds, min(999_999, int(round((now - seconds) * 1_000_000))))
            seconds, micros = self._time
            data = struct.pack("<IQQ", self.command, seconds & (2**64 - 1), micros)
        return int.from_bytes(data[offset : offset + size], "little")

    def device_config_write(self, offset: int, size: int, value: int) -> None:
        if offset != CONFIG_COMMAND or size != 4:
            return
        arm: float | None = None
        with self.lock:
            if value == VMMCI_NONE:
                return
            if value == VMMCI_SHUTDOWN and self.command == VMMCI_NONE:
                log.debug("the guest requested shutdown")  # give it a moment to halt or reboot
                arm = TIMEOUT_SHORT
            elif value in (VMMCI_SHUTDOWN, VMMCI_REBOOT):
                if value == self.command:  # acknowledged: allow time for a graceful shutdown
                    log.debug("the guest acknowledged %s", COMMAND_NAMES[value])
                    arm = TIMEOUT_LONG
            elif value == VMMCI_SYNCRTC:
                if self.command == VMMCI_SYNCRTC:
                    self.command = VMMCI_NONE
            else:
                log.warning("vmmci: illegal request %d from the guest", value)
                return
            if arm is not None:
                self._arm(arm)
        if self.on_guest_ack is not None:
            self.on_guest_ack(value)

    def device_reset(self) -> None:
        """A driver reset keeps the posted command and the timer (vmd keeps both): a guest rebooting in
        answer to REBOOT resets the device on its way down."""

    def machine_reset(self) -> None:
        """The VM restarted: forget the command and the timer, back to power-on state."""
        self.cancel_timer()
        with self.lock:
            self.command = VMMCI_NONE
            self._time = (0, 0)
        self.hard_reset()
