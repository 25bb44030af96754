"""ns16550A UART (COM1: ports 0x3F8-0x3FF, IRQ 4).

Register file after the National Semiconductor PC16550D datasheet (section 8, "Registers"):

    offset  DLAB=0 read / write       DLAB=1
    0       RBR / THR                 DLL
    1       IER                       DLM
    2       IIR / FCR
    3       LCR
    4       MCR
    5       LSR
    6       MSR
    7       SCR (a real scratch register)

Model choices (the host side is fast, so transmission is instantaneous):

- Bytes written to THR go to ``output`` at once; LSR always shows THRE|TEMT, so a polling guest never has
  to read LSR twice.  The THR-empty interrupt is re-armed through the scheduler (``call_later(0)``) after a
  THR write, which batches a burst of writes made by an interrupt handler into one interrupt, as a real
  transmit FIFO would.  Without a scheduler it is re-armed at once.
- Receive: a 16-byte FIFO (1 byte in 16450 mode, FCR bit 0 clear).  ``feed()`` puts host input in the FIFO;
  what does not fit waits in a host-side backlog, so nothing is dropped and OE is only seen in loopback
  mode.  The backlog is bounded (INPUT_BACKLOG): ``input_room()`` tells the console how much more it may
  read, so a guest that does not read (or is paused) stops the typing at the pty, as hardware flow control
  stops a sender.  When the guest empties the FIFO, the next backlog burst moves in from the scheduler
  (``call_later(0)``), so the IRQ line falls and rises between bursts (the PIC input is edge-triggered).
  The character-timeout interrupt (IIR 0xC, datasheet 8.4 table IV) is
  raised when data below the trigger level has sat for about four character times at the programmed baud
  rate (capped at 20 ms), through the scheduler; without one it is reported at once.
- The IRQ output is not gated by MCR.OUT2 (QEMU does not gate it either): a guest that enables IER gets
  interrupts.
- MSR: in loopback mode (MCR bit 4) the modem inputs mirror MCR (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD);
  otherwise DCD|DSR|CTS (0xB0).  Delta bits follow changes and clear on an MSR read.

Thread-safety: pio accesses (vCPU threads), ``feed()``/``send_break()`` (console thread) and timer callbacks
(event thread) serialise on one lock; ``output`` is called outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vmd.devices.base import IrqLine, Scheduler, Timer

# IER bits (datasheet 8.5)
IER_ERBFI = 0x01  # received data available
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status

# IIR values (datasheet 8.4, table IV)
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_CTI = 0x0C
IIR_FIFO = 0xC0

# FCR bits (datasheet 8.6)
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER = (1, 4, 8, 14)

# LCR / MCR bits
LCR_DLAB = 0x80
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

# LSR bits (datasheet 8.7)
LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_FIFOE = 0x80
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI | LSR_FIFOE

# MSR bits (datasheet 8.9)
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_IDLE = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_SIZE = 16
INPUT_BACKLOG = 64 * 1024  # host input the UART holds for a guest that is not reading
CLOCK_HZ = 115200  # 1.8432 MHz / 16
MAX_TIMEOUT = 0.020


class Uart16550:
    """ns16550A with a 16-byte receive FIFO; base port 0x3F8, length 8."""

    def __init__(self, irq: IrqLine, output: Callable[[bytes], None],
                 scheduler: Scheduler | None = None) -> None:
        self._irq = irq
        self._output = output
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._irq_level = False
        self._ier = 0
        self._lcr = 0x03  # 8N1
        self._mcr = 0
        self._lsr_errors = 0  # OE/PE/FE/BI/FIFOE, cleared by an LSR read
        self._msr = MSR_IDLE
        self._scr = 0
        self._dll = 0x01  # 115200 baud
        self._dlm = 0
        self._fifo_enabled = False
        self._trigger = 1
        self._rx = bytearray()  # receive FIFO (or the single RBR in 16450 mode)
        self._backlog = bytearray()  # host input waiting for FIFO room
        self._thre_pending = False
        self._thre_timer: Timer | None = None
        self._timeout_pending = False
        self._timeout_timer: Timer | None = None
        self._refill_timer: Timer | None = None

    # -- host side ------------------------------------------------------------------------------------

    def input_room(self) -> int:
        """How many more bytes of host input the backlog takes; the console reads no more than this."""
        with self._lock:
            return max(0, INPUT_BACKLOG - len(self._backlog))

    def feed(self, data: bytes) -> None:
        """Host input (console keystrokes): into the RX FIFO, the rest into the backlog."""
        if not data:
            return
        with self._lock:
            self._backlog += data
            self._refill()
            self._rx_arrived()
            self._update_irq()

    def send_break(self) -> None:
        """A break condition on the line: a NUL character with LSR.BI (datasheet 8.7, bit 4)."""
        with self._lock:
            self._receive_byte(0)
            self._lsr_errors |= LSR_BI | (LSR_FIFOE if self._fifo_enabled else 0)
            self._rx_arrived()
            self._update_irq()

    def describe(self) -> str:
        """One line of the interrupt state, for a hung guest's diagnosis (the VM process's SIGUSR2)."""
        held = not self._lock.acquire(timeout=0.1)
        try:
            return (f"uart: ier={self._ier:#x} iir={self._iir():#x} irq={int(self._irq_level)}"
                    f" thre_pending={int(self._thre_pending)} thre_timer={int(self._thre_timer is not None)}"
                    f" rx={len(self._rx)} backlog={len(self._backlog)} lsr_errors={self._lsr_errors:#x}"
                    f" mcr={self._mcr:#x} lcr={self._lcr:#x}" + (" (its lock is held)" if held else ""))
        finally:
            if not held:
                self._lock.release()

    # -- guest side ------------------------------------------------------------------------------------

    def pio_read(self, offset: int, size: int) -> int:
        if offset == 5:  # LSR, the hot path of a polling driver
            with self._lock:
                lsr = LSR_THRE | LSR_TEMT | self._lsr_errors | (LSR_DR if self._rx else 0)
                if self._lsr_errors:
                    self._lsr_errors = 0
                    self._update_irq()
                return lsr
        with self._lock:
            return self._read(offset & 7)

    def pio_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            with self._lock:
                if not self._lcr & LCR_DLAB:
                    if self._mcr & MCR_LOOP:
                        # Loopback: the transmitter feeds the receiver (datasheet 8.8, MCR bit 4).
                        self._receive_byte(value)
                        self._rx_arrived()
                        self._rearm_thre()
                        self._update_irq()
                        return
                    if self._ier & IER_ETBEI:
                        self._rearm_thre()
                else:
                    self._dll = value
                    return
            self._output(bytes((value,)))
            return
        with self._lock:
            self._write(offset & 7, value)

    # -- registers ------------------------------------------------------------------------------------

    def _read(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                return self._dll
            return self._read_rbr()
        if offset == 1:
            return self._dlm if dlab else self._ier
        if offset == 2:
            iir = self._iir()
            if iir & 0x0F == IIR_THRI:
                # Reading IIR when it reports THRE clears that interrupt (datasheet table IV).
                self._thre_pending = False
                self._update_irq()
            return iir
        if offset == 3:
            return self._lcr
        if offset == 4:
            return self._mcr
        if offset == 6:
            msr = self._msr
            if msr & 0x0F:
                self._msr = msr & 0xF0
                self._update_irq()
            return msr
        if offset == 7:
            return self._scr
        return 0xFF

    def _write(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == 1:
            if dlab:
                self._dlm = value
                return
            old = self._ier
            self._ier = value & 0x0F
            if self._ier & IER_ETBEI and not old & IER_ETBEI:
                # Enabling ETBEI with THR empty raises the interrupt at once (as real parts and QEMU).
                self._thre_pending = True
            if self._ier & IER_ERBFI and not old & IER_ERBFI:
                self._arm_timeout()
            self._update_irq()
        elif offset == 2:
            self._write_fcr(value)
        elif offset == 3:
            self._lcr = value
        elif offset == 4:
            self._mcr = value & 0x1F
            self._set_modem_status(self._modem_inputs())
            if self._backlog and not value & MCR_LOOP:
                self._refill()
                self._rx_arrived()
            self._update_irq()
        elif offset == 7:
            self._scr = value
        # LSR and MSR writes are ignored (factory test only).

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo_enabled:
            # Changing the FIFO enable bit resets both FIFOs (datasheet 8.6, bit 0).
            self._fifo_enabled = enable
            self._clear_rx()
        if enable:
            if value & FCR_CLEAR_RX:
                self._clear_rx()
            self._trigger = FCR_TRIGGER[value >> 6]
        else:
            self._trigger = 1
        self._refill()
        self._rx_arrived()
        self._update_irq()

    def _read_rbr(self) -> int:
        rx = self._rx
        if not rx:
            return 0
        value = rx.pop(0)
        if not rx and self._backlog:
            self._schedule_refill()
        self._timeout_pending = False
        if rx:
            self._arm_timeout()
        self._update_irq()
        return value

    # -- receive path ---------------------------------------------------------------------------------

    def _capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _refill(self) -> None:
        if self._mcr & MCR_LOOP:
            return  # loopback disconnects the serial input (datasheet 8.8): host input waits
        room = self._capacity() - len(self._rx)
        if room > 0 and self._backlog:
            self._rx += self._backlog[:room]
            del self._backlog[:room]

    def _schedule_refill(self) -> None:
        """The guest emptied the FIFO: more backlog arrives shortly, as if from the line.

        Refilling later rather than at once lets the FIFO run dry between bursts, so the IRQ line drops
        and rises again: an edge-triggered PIC sees every burst, and an interrupt handler that reads until
        LSR.DR clears always finishes.
        """
        scheduler = self._scheduler
        if scheduler is None:
            self._refill()
            self._rx_arrived()
        elif self._refill_timer is None:
            self._refill_timer = scheduler.call_later(0.0, self._on_refill)

    def _on_refill(self) -> None:
        with self._lock:
            self._refill_timer = None
            if self._backlog and len(self._rx) < self._capacity():
                self._refill()
                self._rx_arrived()
                self._update_irq()

    def _receive_byte(self, value: int) -> None:
        if len(self._rx) < self._capacity():
            self._rx.append(value)
        else:
            self._lsr_errors |= LSR_OE  # overrun: the shift register's character is lost

    def _clear_rx(self) -> None:
        self._rx.clear()
        self._timeout_pending = False
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = None

    def _rx_arrived(self) -> None:
        """New data reached the FIFO: restart the character timeout."""
        self._timeout_pending = False
        self._arm_timeout()

    def _char_time(self) -> float:
        divisor = (self._dlm << 8) | self._dll or 1
        bits = 1 + 5 + (self._lcr & 0x03) + (2 if self._lcr & 0x04 else 1) + (1 if self._lcr & 0x08 else 0)
        return bits * divisor / CLOCK_HZ

    def _arm_timeout(self) -> None:
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = None
        rx = self._rx
        if not rx or len(rx) >= self._trigger or not self._ier & IER_ERBFI:
            return
        scheduler = self._scheduler
        if scheduler is None:
            self._timeout_pending = True
            return
        self._timeout_timer = scheduler.call_later(min(4 * self._char_time(), MAX_TIMEOUT), self._on_timeout)

    def _on_timeout(self) -> None:
        with self._lock:
            self._timeout_timer = None
            if self._rx:
                self._timeout_pending = True
                self._update_irq()

    # -- transmit path --------------------------------------------------------------------------------

    def _rearm_thre(self) -> None:
        """A THR write clears the THRE interrupt; it comes back once the (instant) transmission is done."""
        if not self._ier & IER_ETBEI:
            return
        scheduler = self._scheduler
        if scheduler is None:
            self._thre_pending = False
            self._update_irq()
            self._thre_pending = True
            return
        if self._thre_pending:
            self._thre_pending = False
            self._update_irq()
        if self._thre_timer is None:
            self._thre_timer = scheduler.call_later(0.0, self._on_thre)

    def _on_thre(self) -> None:
        with self._lock:
            self._thre_timer = None
            self._thre_pending = True
            self._update_irq()

    # -- modem lines and interrupts ---------------------------------------------------------------------

    def _modem_inputs(self) -> int:
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return MSR_IDLE
        return (((mcr & MCR_RTS) << 3) | ((mcr & MCR_DTR) << 5)
                | ((mcr & MCR_OUT1) << 4) | ((mcr & MCR_OUT2) << 4))

    def _set_modem_status(self, status: int) -> None:
        old = self._msr
        changed = (old ^ status) & 0xF0
        delta = old & 0x0F
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        if old & MSR_RI and not status & MSR_RI:
            delta |= MSR_TERI  # trailing edge of RI only
        self._msr = status | delta

    def _iir(self) -> int:
        """Highest-priority enabled pending interrupt (datasheet table IV)."""
        ier = self._ier
        base = IIR_FIFO if self._fifo_enabled else 0
        if ier & IER_ELSI and self._lsr_errors & (LSR_OE | LSR_PE | LSR_FE | LSR_BI):
            return base | IIR_RLSI
        if ier & IER_ERBFI and self._rx:
            if len(self._rx) >= self._trigger:
                return base | IIR_RDI
            if self._timeout_pending:
                return base | IIR_CTI
        if ier & IER_ETBEI and self._thre_pending:
            return base | IIR_THRI
        if ier & IER_EDSSI and self._msr & 0x0F:
            return base | IIR_MSI
        return base | IIR_NO_INT

    def _update_irq(self) -> None:
        level = not self._iir() & IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)
