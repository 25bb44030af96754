"""ns16550A UART model, driven as the Linux 8250 and OpenBSD com drivers drive it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.devices.base import ManualScheduler, RecordingIrq
from vmd.devices.uart import Uart16550

RBR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 1, 2, 2, 3, 4, 5, 6, 7


def make(scheduler: ManualScheduler | None = None) -> tuple[Uart16550, RecordingIrq, list[bytes]]:
    irq = RecordingIrq()
    out: list[bytes] = []
    uart = Uart16550(irq, out.append, scheduler if scheduler is not None else ManualScheduler())
    return uart, irq, out


def rd(uart: Uart16550, reg: int) -> int:
    return uart.pio_read(reg, 1)


def wr(uart: Uart16550, reg: int, value: int) -> None:
    uart.pio_write(reg, 1, value)


def test_linux_probe_scratch_loopback_fifo() -> None:
    uart, irq, out = make()
    # scratch register
    for value in (0x55, 0xAA, 0x00):
        wr(uart, SCR, value)
        assert rd(uart, SCR) == value
    # IER test (8250_port.c autoconfig)
    wr(uart, IER, 0)
    assert rd(uart, IER) & 0x0F == 0
    wr(uart, IER, 0x0F)
    assert rd(uart, IER) & 0x0F == 0x0F
    wr(uart, IER, 0x40)  # XScale UUE bit must not stick
    assert rd(uart, IER) == 0
    # loopback test: MCR = LOOP|OUT2|RTS -> MSR high nibble DCD|CTS
    wr(uart, MCR, 0x10 | 0x0A)
    assert rd(uart, MSR) & 0xF0 == 0x90
    wr(uart, MCR, 0)
    assert rd(uart, MSR) & 0xF0 == 0xB0
    # FIFO detection: IIR bits 6-7 both set once FCR enables the FIFO
    assert rd(uart, IIR) & 0xC0 == 0
    wr(uart, FCR, 0x01)
    assert rd(uart, IIR) & 0xC0 == 0xC0
    # LCR 0xBF: "EFR" at offset 2 reads as IIR, nonzero -> not a 16650
    wr(uart, LCR, 0xBF)
    assert rd(uart, 2) != 0
    wr(uart, LCR, 0x03)
    assert out == []
    assert not irq.level


def test_divisor_latch() -> None:
    uart, _, out = make()
    wr(uart, LCR, 0x83)
    wr(uart, 0, 0x0C)
    wr(uart, 1, 0x00)
    assert rd(uart, 0) == 0x0C and rd(uart, 1) == 0
    wr(uart, LCR, 0x03)
    assert rd(uart, LCR) == 0x03
    assert out == []
    wr(uart, 0, ord("x"))
    assert out == [b"x"]


def test_transmit_and_lsr() -> None:
    uart, irq, out = make()
    assert rd(uart, LSR) == 0x60
    for ch in b"hello":
        wr(uart, 0, ch)
    assert b"".join(out) == b"hello"
    assert rd(uart, LSR) & 0x60 == 0x60
    assert irq.history == []


def test_loopback_data_and_overrun() -> None:
    uart, irq, out = make()
    wr(uart, MCR, 0x10)
    wr(uart, 0, 0x41)
    assert out == []
    assert rd(uart, LSR) & 0x01
    assert rd(uart, RBR) == 0x41
    assert not rd(uart, LSR) & 0x01
    # 16450 mode holds one byte: the second write overruns
    wr(uart, 0, 1)
    wr(uart, 0, 2)
    lsr = rd(uart, LSR)
    assert lsr & 0x02 and lsr & 0x01
    assert not rd(uart, LSR) & 0x02  # OE cleared by the read
    assert rd(uart, RBR) == 1
    # loopback MSR deltas
    rd(uart, MSR)
    wr(uart, MCR, 0x10 | 0x01)  # DTR -> DSR
    msr = rd(uart, MSR)
    assert msr & 0x20 and msr & 0x02
    assert not rd(uart, MSR) & 0x0F


def test_thre_interrupt() -> None:
    sched = ManualScheduler()
    uart, irq, out = make(sched)
    wr(uart, IER, 0x02)
    assert irq.level
    assert rd(uart, IIR) == 0x02
    assert not irq.level  # IIR read reporting THRE clears it
    assert rd(uart, IIR) == 0x01
    for ch in b"abc":
        wr(uart, 0, ch)
    assert not irq.level
    sched.advance(0)
    assert irq.level
    assert rd(uart, IIR) & 0x0F == 0x02
    # THRE bug probe: disable then re-enable ETBEI -> pending again
    wr(uart, IER, 0)
    assert not irq.level
    wr(uart, IER, 0x02)
    assert rd(uart, IIR) & 0x01 == 0
    wr(uart, IER, 0)
    assert b"".join(out) == b"abc"


def test_rx_interrupt_and_fifo_trigger() -> None:
    sched = ManualScheduler()
    uart, irq, _ = make(sched)
    wr(uart, FCR, 0x81)  # FIFO on, trigger 8
    wr(uart, IER, 0x01)
    uart.feed(b"abc")
    assert not irq.level  # below trigger: waits for the character timeout
    assert rd(uart, IIR) == 0xC1
    sched.advance(0.001)
    assert irq.level
    assert rd(uart, IIR) == 0xCC
    assert rd(uart, RBR) == ord("a")
    assert rd(uart, IIR) == 0xC1  # timeout cleared by the read, re-armed
    sched.advance(0.001)
    assert rd(uart, IIR) == 0xCC
    assert rd(uart, RBR) == ord("b")
    assert rd(uart, RBR) == ord("c")
    assert not irq.level
    uart.feed(bytes(range(10)))
    assert irq.level
    assert rd(uart, IIR) == 0xC4
    got = bytearray()
    while rd(uart, LSR) & 1:
        got.append(rd(uart, RBR))
    assert bytes(got) == bytes(range(10))
    assert not irq.level


def test_backlog_never_drops() -> None:
    sched = ManualScheduler()
    uart, irq, _ = make(sched)
    wr(uart, FCR, 0x07)
    wr(uart, IER, 0x01)
    data = bytes(i & 0xFF for i in range(1000))
    uart.feed(data)
    got = bytearray()
    bursts = 0
    while len(got) < len(data) and bursts <= len(data):
        assert irq.level  # one edge per burst
        while rd(uart, LSR) & 1:
            got.append(rd(uart, RBR))
        assert not irq.level
        bursts += 1
        sched.advance(0)
    assert bytes(got) == data
    assert bursts == (1000 + 15) // 16
    assert not rd(uart, LSR) & 0x02


def test_16450_mode_rx() -> None:
    sched = ManualScheduler()
    uart, irq, _ = make(sched)
    wr(uart, IER, 0x01)
    uart.feed(b"xy")
    assert irq.level
    assert rd(uart, IIR) == 0x04
    assert rd(uart, RBR) == ord("x")
    assert not irq.level
    sched.advance(0)  # the next byte arrives
    assert irq.level
    assert rd(uart, RBR) == ord("y")
    assert not irq.level
    assert rd(uart, RBR) == 0


def test_break_and_line_status_priority() -> None:
    uart, irq, _ = make()
    wr(uart, IER, 0x0F)
    rd(uart, IIR)  # acknowledge THRE
    uart.send_break()
    assert irq.level
    assert rd(uart, IIR) == 0x06  # line status beats RX data
    lsr = rd(uart, LSR)
    assert lsr & 0x10 and lsr & 0x01
    assert rd(uart, IIR) == 0x04
    assert rd(uart, RBR) == 0
    assert not irq.level


def test_modem_status_interrupt() -> None:
    uart, irq, _ = make()
    wr(uart, IER, 0x08)
    wr(uart, MCR, 0x10)  # loopback: all inputs drop -> deltas
    assert irq.level
    assert rd(uart, IIR) == 0x00
    assert rd(uart, MSR) & 0x0F
    assert not irq.level


def test_loopback_holds_host_input() -> None:
    uart, _, _ = make()
    wr(uart, MCR, 0x10)
    uart.feed(b"k")
    assert not rd(uart, LSR) & 1
    wr(uart, MCR, 0x0B)
    assert rd(uart, LSR) & 1
    assert rd(uart, RBR) == ord("k")


def test_fifo_clear() -> None:
    uart, _, _ = make()
    wr(uart, FCR, 0x01)
    wr(uart, MCR, 0x10)
    for i in range(5):
        wr(uart, 0, i)
    wr(uart, FCR, 0x03)
    assert not rd(uart, LSR) & 1


def test_no_scheduler() -> None:
    irq = RecordingIrq()
    uart = Uart16550(irq, lambda b: None, None)
    wr(uart, FCR, 0xC1)
    wr(uart, IER, 0x03)
    assert rd(uart, IIR) == 0xC2
    uart.feed(b"a")
    assert rd(uart, IIR) == 0xCC
    wr(uart, 0, 0x41)
    assert irq.level


accesses = st.lists(
    st.tuples(st.sampled_from(["r", "w", "feed", "brk", "tick"]), st.integers(0, 7),
              st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF)),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(accesses)
def test_random_accesses_never_raise(ops: list[tuple[str, int, int, int]]) -> None:
    sched = ManualScheduler()
    uart, irq, _ = make(sched)
    for kind, offset, size, value in ops:
        if kind == "r":
            assert 0 <= uart.pio_read(offset, size) <= 0xFF
        elif kind == "w":
            uart.pio_write(offset, size, value)
        elif kind == "feed":
            uart.feed(value.to_bytes(4, "little")[: size])
        elif kind == "brk":
            uart.send_break()
        else:
            sched.advance(value / 1e9)
        # the line level always matches IIR
        assert irq.level == (not uart._iir() & 1)


def test_console_input_stops_at_the_pty_while_the_guest_does_not_read() -> None:
    # A guest that never reads (a paused VM) and a user pasting without end: the UART holds at most
    # INPUT_BACKLOG bytes, the rest stays in the pty until the writer blocks; nothing is lost once the
    # guest reads again. (200 MiB typed into a paused VM used to take its process from 20 to 225 MB.)
    import os
    import time

    from vmd.console import Console
    from vmd.devices.uart import FIFO_SIZE, INPUT_BACKLOG

    sched = ManualScheduler()
    uart, _irq, _ = make(sched)
    wr(uart, FCR, 0x07)
    console = Console("pty")
    console.attach(uart.feed, uart.input_room)
    slave = os.open(console.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)  # the user's terminal
    try:
        typed = bytearray()
        deadline = time.monotonic() + 20
        stalls = 0
        while stalls < 20 and time.monotonic() < deadline:  # until the pty refuses more, for a while
            chunk = bytes((len(typed) + i) & 0x7F for i in range(4096))
            try:
                typed += chunk[: os.write(slave, chunk)]
                stalls = 0
            except BlockingIOError:
                stalls += 1
                time.sleep(0.05)
        assert stalls >= 20, "the pty never pushed back"
        held = len(uart._backlog) + len(uart._rx)
        assert held <= INPUT_BACKLOG + FIFO_SIZE, held
        assert len(typed) > held  # the rest is in the pty, not in our memory
        got = bytearray()
        deadline = time.monotonic() + 30
        while len(got) < len(typed) and time.monotonic() < deadline:  # the guest reads it all, in order
            while rd(uart, LSR) & 1:
                got.append(rd(uart, RBR))
            sched.advance(0)
            if not rd(uart, LSR) & 1:
                time.sleep(0.01)
        assert bytes(got) == bytes(typed)
    finally:
        os.close(slave)
        console.close()
