"""The vCPU run loop: KVM_RUN, then one bus lookup and one device call per exit.

Two implementations share one contract: the C extension `vmd._runloop` (built by pip when a compiler is
present) and the pure-Python loop below. Both return when an exit needs the machine's attention
(shutdown, errors, a stop request) and handle port and MMIO I/O themselves by calling the bus.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from typing import Any

from vmd.devices.base import Bus
from vmd.kvm import structs as k

RunLoop = Callable[[int, Any, Bus, Bus], int]

_IO = k.RUN_IO
_MMIO = k.RUN_MMIO
_REASON = k.RUN_EXIT_REASON
_UNION = k.RUN_UNION_OFFSET


def python_run_loop(fd: int, run: Any, pio: Bus, mmio: Bus) -> int:
    """Run the vCPU until an exit other than I/O; return the KVM exit reason (KVM_EXIT_INTR on a kick).

    A stop request sets kvm_run.immediate_exit and signals the thread, so KVM_RUN fails with EINTR.
    """
    ioctl = fcntl.ioctl
    request = k.KVM_RUN
    exit_io, exit_mmio, exit_intr = k.KVM_EXIT_IO, k.KVM_EXIT_MMIO, k.KVM_EXIT_INTR
    pio_find, mmio_find = pio.find, mmio.find
    unpack_reason = _REASON.unpack_from
    unpack_io = _IO.unpack_from
    unpack_mmio = _MMIO.unpack_from
    while True:
        try:
            ioctl(fd, request, 0)
        except InterruptedError:
            return exit_intr
        reason = unpack_reason(run, 8)[0]
        if reason == exit_io:
            direction, size, port, count, offset = unpack_io(run, _UNION)
            entry = pio_find(port)
            if direction:  # KVM_EXIT_IO_OUT
                if entry is not None:
                    write = entry[3]
                    base = entry[0]
                    for i in range(count):
                        at = offset + i * size
                        write(port - base, size, int.from_bytes(run[at : at + size], "little"))
            else:
                for i in range(count):
                    at = offset + i * size
                    value = entry[2](port - entry[0], size) if entry is not None else (1 << (8 * size)) - 1
                    run[at : at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif reason == exit_mmio:
            address, data, length, is_write = unpack_mmio(run, _UNION)
            if not 0 < length <= 8:
                return reason
            entry = mmio_find(address)
            if is_write:
                if entry is not None:
                    entry[3](address - entry[0], length, int.from_bytes(data[:length], "little"))
            else:
                value = entry[2](address - entry[0], length) if entry is not None else (1 << (8 * length)) - 1
                at = _UNION + 8
                run[at : at + length] = (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
        else:
            return reason


def best_run_loop() -> tuple[str, RunLoop]:
    """The C loop when it was built, else the Python one."""
    try:
        from vmd import _runloop  # type: ignore[attr-defined]
    except ImportError:
        return "python", python_run_loop
    return "c", _runloop.run
