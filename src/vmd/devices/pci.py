"""PCI configuration mechanism #1, a host bridge, and the base class for PCI functions.

PCI Local Bus Specification 3.0, section 3.2.2.3.2 (configuration mechanism #1) and chapter 6
(configuration space).  One bus (bus 0), function 0 only, 32 slots; the host bridge is 00:00.0 and
identifies as an Intel 440FX (8086:1237, class 06:00:00), as QEMU's default machine does.

Ports (register ``PciBus`` at base 0xCF8, length 8):

    0xCF8  CONFIG_ADDRESS: dword accesses only (bit 31 enable, 23:16 bus, 15:11 device, 10:8 function,
           7:2 register).  Byte and word accesses do not reach it, as on real chipsets; a byte write to
           0xCF9 is the PIIX reset control register (bit 2 with bit 1: hard reset -> ``on_reset``).
    0xCFC-0xCFF  CONFIG_DATA: 1, 2 or 4 bytes at the byte offset given by the port.

Missing devices, bus > 0, function > 0 and a clear enable bit read as all ones; writes are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vmd.devices.base import Bus, BusError

log = logging.getLogger("vmd.pci")

# Configuration header offsets (PCI 3.0, 6.1)
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITIES_POINTER = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

COMMAND_IO = 0x0001
COMMAND_MEMORY = 0x0002
COMMAND_MASTER = 0x0004
COMMAND_PARITY = 0x0040
COMMAND_SERR = 0x0100
COMMAND_INTX_DISABLE = 0x0400
STATUS_INTERRUPT = 0x0008
STATUS_CAP_LIST = 0x0010
STATUS_W1C = 0xF900  # parity/abort/SERR bits: write one to clear (PCI 3.0, 6.2.3)

BAR_IO = 0x01
BAR_MEM64 = 0x04
BAR_PREFETCH = 0x08

CAP_ID_MSI = 0x05
CAP_ID_VENDOR = 0x09
CAP_ID_MSIX = 0x11

CONFIG_SIZE = 256
CAP_START = 0x40
MAX_SLOTS = 32


class PciError(Exception):
    pass


class Bar:
    """One base address register as declared by a device."""

    def __init__(self, index: int, size: int, io: bool, mem64: bool, prefetchable: bool) -> None:
        self.index = index
        self.size = size
        self.io = io
        self.mem64 = mem64
        self.prefetchable = prefetchable


class PciDevice:
    """A PCI function with a 256-byte type 0 configuration header.

    ``config`` holds the register values, ``wmask`` the bits a guest may write and ``w1cmask`` the bits a
    guest clears by writing ones.  Subclasses declare BARs with ``add_bar`` and capabilities with
    ``add_capability``, and override ``config_read``/``config_write`` (calling the base) for registers with
    side effects, and ``bar_changed`` to move their I/O or MMIO ranges on the buses.
    """

    def __init__(self, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0, interrupt_pin: int = 0,
                 header_type: int = 0) -> None:
        """class_code is the 24-bit class/subclass/prog-if value (0x060000 for a host bridge)."""
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self.bars: dict[int, Bar] = {}
        self._next_cap = CAP_START
        self._last_cap = 0
        self._mapped: dict[int, int | None] = {}
        self._placed: dict[int, int] = {}  # BAR index -> where place_bar put its handlers
        self.set_u16(VENDOR_ID, vendor_id)
        self.set_u16(DEVICE_ID, device_id)
        self.config[REVISION_ID] = revision & 0xFF
        self.set_u32(REVISION_ID, (self.config[REVISION_ID]) | ((class_code & 0xFFFFFF) << 8))
        self.config[HEADER_TYPE] = header_type & 0xFF
        self.set_u16(SUBSYSTEM_VENDOR_ID, subsystem_vendor_id)
        self.set_u16(SUBSYSTEM_ID, subsystem_id)
        self.config[INTERRUPT_PIN] = interrupt_pin & 0xFF
        self._set_mask(COMMAND, 2, COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY
                       | COMMAND_SERR | COMMAND_INTX_DISABLE)
        self._set_mask(STATUS, 2, STATUS_W1C, self.w1cmask)
        self.wmask[CACHE_LINE_SIZE] = 0xFF
        self.wmask[LATENCY_TIMER] = 0xFF
        self.wmask[INTERRUPT_LINE] = 0xFF

    # -- raw helpers (device side; no masks) --------------------------------------------------------------

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        self.config[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_u8(self, offset: int, value: int) -> None:
        self.set(offset, 1, value)

    def set_u16(self, offset: int, value: int) -> None:
        self.set(offset, 2, value)

    def set_u32(self, offset: int, value: int) -> None:
        self.set(offset, 4, value)

    def _set_mask(self, offset: int, size: int, mask: int, table: bytearray | None = None) -> None:
        target = self.wmask if table is None else table
        target[offset:offset + size] = mask.to_bytes(size, "little")

    # -- BARs (PCI 3.0, 6.2.5.1) ---------------------------------------------------------------------------

    def add_bar(self, index: int, size: int, io: bool = False, mem64: bool = False,
                prefetchable: bool = False) -> Bar:
        """Declare BAR index: size a power of two (I/O >= 4, memory >= 16); a 64-bit BAR uses index+1 too."""
        if not 0 <= index < 6 or (mem64 and index == 5):
            raise PciError(f"bad BAR index {index}")
        if size & (size - 1) or size < (4 if io else 16):
            raise PciError(f"bad BAR size {size:#x}")
        if io and (mem64 or prefetchable):
            raise PciError("an I/O BAR is neither 64-bit nor prefetchable")
        offset = BAR0 + 4 * index
        flags = BAR_IO if io else (BAR_MEM64 if mem64 else 0) | (BAR_PREFETCH if prefetchable else 0)
        low_mask = ~(size - 1) & (0xFFFFFFFC if io else 0xFFFFFFF0) & 0xFFFFFFFF
        self.set_u32(offset, flags)
        self._set_mask(offset, 4, low_mask)
        if mem64:
            self.set_u32(offset + 4, 0)
            self._set_mask(offset + 4, 4, (~(size - 1) >> 32) & 0xFFFFFFFF)
        bar = Bar(index, size, io, mem64, prefetchable)
        self.bars[index] = bar
        self._mapped[index] = None
        return bar

    def bar_address(self, index: int) -> int:
        """The address programmed into BAR index (flag bits stripped), whether decoding is on or not."""
        bar = self.bars[index]
        offset = BAR0 + 4 * index
        low = self.get(offset, 4)
        if bar.io:
            return low & 0xFFFFFFFC
        address = low & 0xFFFFFFF0
        if bar.mem64:
            address |= self.get(offset + 4, 4) << 32
        return address

    def set_bar_address(self, index: int, address: int) -> None:
        """Program BAR index as firmware would (direct boot: vmd assigns BARs itself)."""
        bar = self.bars[index]
        offset = BAR0 + 4 * index
        flags = self.get(offset, 4) & (0x3 if bar.io else 0xF)
        self.set_u32(offset, (address & 0xFFFFFFFF & ~(bar.size - 1)) | flags)
        if bar.mem64:
            self.set_u32(offset + 4, address >> 32)
        self._check_bars()

    def bar_mapping(self, index: int) -> int | None:
        """Where BAR index currently decodes, or None (decode disabled in COMMAND, or unassigned)."""
        bar = self.bars[index]
        command = self.get(COMMAND, 2)
        if not command & (COMMAND_IO if bar.io else COMMAND_MEMORY):
            return None
        address = self.bar_address(index)
        width = 0xFFFFFFFC if bar.io else (0xFFFFFFFFFFFFFFF0 if bar.mem64 else 0xFFFFFFF0)
        if address == 0 or address == ~(bar.size - 1) & width:
            return None  # unassigned, or left holding a sizing pattern
        if bar.io and address + bar.size > 0x10000:
            return None
        return address

    def bar_changed(self, index: int, old: int | None, new: int | None) -> None:
        """Called when BAR index starts, stops or moves decoding (old/new from bar_mapping). Override."""

    def place_bar(self, bus: Bus, index: int, new: int | None, read: Callable[[int, int], int],
                  write: Callable[[int, int, int], None]) -> bool:
        """Move BAR index's handlers on bus to new (None: off). A guest may program a BAR over another
        device's: that BAR then decodes nothing (as on a real bus, where the result is undefined) rather than
        failing the VM. Returns whether the BAR is now mapped."""
        placed = self._placed.pop(index, None)
        if placed is not None:
            bus.remove(placed)
        if new is None:
            return False
        try:
            bus.add(new, self.bars[index].size, read, write)
        except BusError:
            log.warning("PCI %04x:%04x BAR %d at %#x overlaps another device: left unmapped",
                        self.get(VENDOR_ID, 2), self.get(DEVICE_ID, 2), index, new)
            return False
        self._placed[index] = new
        return True

    def _check_bars(self) -> None:
        for index in self.bars:
            new = self.bar_mapping(index)
            old = self._mapped[index]
            if new != old:
                self._mapped[index] = new
                self.bar_changed(index, old, new)

    # -- capabilities (PCI 3.0, 6.7) -------------------------------------------------------------------

    def add_capability(self, cap_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability: [cap_id, next, *body]; writable masks body bytes. Returns its offset."""
        length = 2 + len(body)
        offset = self._next_cap
        if offset + length > CONFIG_SIZE:
            raise PciError("no room for another capability")
        self.config[offset] = cap_id & 0xFF
        self.config[offset + 1] = 0
        self.config[offset + 2:offset + length] = body
        if writable is not None:
            if len(writable) != len(body):
                raise PciError("capability writable mask must match its body")
            self.wmask[offset + 2:offset + length] = writable
        if self._last_cap:
            self.config[self._last_cap + 1] = offset
        else:
            self.config[CAPABILITIES_POINTER] = offset
            self.set_u16(STATUS, self.get(STATUS, 2) | STATUS_CAP_LIST)
        self._last_cap = offset
        self._next_cap = (offset + length + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(offset, id) of each capability, walking the list as a guest would."""
        found: list[tuple[int, int]] = []
        offset = self.config[CAPABILITIES_POINTER] if self.get(STATUS, 2) & STATUS_CAP_LIST else 0
        while offset and len(found) < 48:
            found.append((offset, self.config[offset]))
            offset = self.config[offset + 1]
        return found

    # -- guest side ----------------------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """A guest read of size bytes at offset (the caller keeps it inside the 256 bytes)."""
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A guest write: only wmask bits change, w1cmask bits written as one clear."""
        config, wmask, w1c = self.config, self.wmask, self.w1cmask
        for i in range(size):
            pos = offset + i
            byte = (value >> (8 * i)) & 0xFF
            mask = wmask[pos]
            current = (config[pos] & ~mask) | (byte & mask)
            config[pos] = current & ~(byte & w1c[pos]) & 0xFF
        if offset < 0x28 and offset + size > COMMAND and self.bars:
            self._check_bars()


class PciHostBridge(PciDevice):
    """00:00.0: Intel 82441FX (440FX) host bridge, as QEMU's pc machine (revision 2)."""

    def __init__(self) -> None:
        super().__init__(0x8086, 0x1237, 0x060000, revision=0x02)


class PciBus:
    """Bus 0 behind configuration mechanism #1; register at I/O base 0xCF8, length 8."""

    def __init__(self, host_bridge: PciDevice | None = None,
                 on_reset: Callable[[], None] | None = None) -> None:
        self.devices: list[PciDevice | None] = [None] * MAX_SLOTS
        self._address = 0
        self._rcr = 0
        self._on_reset = on_reset
        self.add(host_bridge if host_bridge is not None else PciHostBridge(), 0)

    def add(self, device: PciDevice, slot: int | None = None) -> int:
        """Plug device in slot (default: the lowest free one); returns the slot."""
        if slot is None:
            for candidate in range(MAX_SLOTS):
                if self.devices[candidate] is None:
                    slot = candidate
                    break
            else:
                raise PciError("no free PCI slot")
        if not 0 <= slot < MAX_SLOTS or self.devices[slot] is not None:
            raise PciError(f"PCI slot {slot} is not free")
        self.devices[slot] = device
        return slot

    def slot_of(self, device: PciDevice) -> int:
        for slot, candidate in enumerate(self.devices):
            if candidate is device:
                return slot
        raise PciError("device is not on this bus")

    def assign_bars(self, mmio_start: int, mmio_end: int, io_start: int = 0x1000,
                    io_end: int = 0x10000) -> None:
        """Give every BAR an address, naturally aligned, as firmware would (largest first).

        Decode stays off until the guest sets COMMAND; SeaBIOS reassigns BARs its own way anyway.
        """
        bars = [(bar.size, slot, bar) for slot, dev in enumerate(self.devices) if dev is not None
                for bar in dev.bars.values()]
        bars.sort(key=lambda item: (-item[0], item[1], item[2].index))
        next_io, next_mem = io_start, mmio_start
        for size, slot, bar in bars:
            device = self.devices[slot]
            assert device is not None
            if bar.io:
                address = (next_io + size - 1) & ~(size - 1)
                if address + size > io_end:
                    raise PciError("PCI I/O space exhausted")
                next_io = address + size
            else:
                address = (next_mem + size - 1) & ~(size - 1)
                if address + size > mmio_end:
                    raise PciError("PCI MMIO window exhausted")
                next_mem = address + size
            device.set_bar_address(bar.index, address)

    # -- ports -----------------------------------------------------------------------------------------

    def _target(self, offset: int, size: int) -> tuple[PciDevice, int] | None:
        address = self._address
        if not address & 0x80000000 or address & 0x00FF0700:  # disabled, bus > 0 or function > 0
            return None
        device = self.devices[(address >> 11) & 0x1F]
        if device is None:
            return None
        register = (address & 0xFC) + (offset - 4)
        if register + size > CONFIG_SIZE:
            return None
        return device, register

    def pio_read(self, offset: int, size: int) -> int:
        if offset >= 4:
            target = self._target(offset, size)
            if target is None:
                return (1 << (8 * size)) - 1
            return target[0].config_read(target[1], size)
        if offset == 0 and size == 4:
            return self._address
        if offset == 1 and size == 1:
            return self._rcr
        return (1 << (8 * size)) - 1

    def pio_write(self, offset: int, size: int, value: int) -> None:
        if offset >= 4:
            target = self._target(offset, size)
            if target is not None:
                target[0].config_write(target[1], size, value & ((1 << (8 * size)) - 1))
        elif offset == 0 and size == 4:
            self._address = value & 0xFFFFFFFC
        elif offset == 1 and size == 1:
            # PIIX reset control register at 0xCF9: RST_CPU (bit 2) with SYS_RST (bit 1) resets.
            self._rcr = value & 0x0A
            if value & 0x04 and self._on_reset is not None:
                self._on_reset()
