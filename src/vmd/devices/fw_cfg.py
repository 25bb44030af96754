"""QEMU firmware configuration device (fw_cfg), the way SeaBIOS finds its memory map and boot order.

Interface after QEMU's docs/specs/fw_cfg.rst ("Guest-side Hardware Interface", "Guest-side DMA Interface").
Register at I/O base 0x510, length 12:

    offset 0 (0x510)    selector, 16-bit write (bit 14, the legacy write flag, is ignored)
    offset 1 (0x511)    data, reads return the next bytes of the selected item (0x00 past its end) and
                        advance the offset; a 1-byte read at offset 0 also reads data, as in QEMU.
                        Data port writes are ignored (as QEMU since 2.4).
    offset 4 (0x514)    DMA address, high 32 bits, big-endian (the guest writes cpu_to_be32(high))
    offset 8 (0x518)    DMA address, low 32 bits, big-endian; writing it starts the transfer

Reading offsets 4-11 returns the bytes of "QEMU CFG" (the register value 0x51454d5520434647, big-endian).

Items: 0x0000 signature "QEMU", 0x0001 feature bits (traditional | DMA), 0x0019 the file directory
(big-endian), files from 0x0020 in name order (as QEMU numbers them), and numeric items the machine adds.
DMA reads, skips and selects are served; DMA writes are refused with the error bit.  Every guest address
and length is checked through GuestMemory: a bad one sets the error bit and never raises.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable

from vmd.memory import E820Entry, GuestMemory, GuestMemoryError

# Selector keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h)
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_KERNEL_ADDR = 0x07
FW_CFG_KERNEL_SIZE = 0x08
FW_CFG_KERNEL_CMDLINE = 0x09
FW_CFG_INITRD_ADDR = 0x0A
FW_CFG_INITRD_SIZE = 0x0B
FW_CFG_BOOT_DEVICE = 0x0C
FW_CFG_NUMA = 0x0D
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_MAX_FILES = 0x1000

FW_CFG_VERSION = 0x01
FW_CFG_VERSION_DMA = 0x02

DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10

DMA_SIGNATURE = b"QEMU CFG"
FILE_NAME_SIZE = 56

# struct FWCfgDmaAccess { be32 control; be32 length; be64 address; } (fw_cfg.rst, DMA interface)
DMA_ACCESS = struct.Struct(">IIQ")
# struct FWCfgFile { be32 size; be16 select; u16 reserved; char name[56]; } (fw_cfg.rst, file directory)
FILE_ENTRY = struct.Struct(">IHH56s")
# struct e820_entry { le64 address; le64 length; le32 type; } packed (QEMU hw/i386/e820_memory_layout.h)
E820_ENTRY = struct.Struct("<QQI")

_ZEROS = bytes(65536)


class FwCfgError(Exception):
    pass


class FwCfg:
    """QEMU fw_cfg over I/O ports; base 0x510, length 12."""

    def __init__(self, memory: GuestMemory) -> None:
        self._memory = memory
        self._lock = threading.Lock()
        self._items: dict[int, bytes] = {}
        self._files: dict[str, bytes] = {}
        self._selector = 0
        self._offset = 0
        self._current = b""
        self._dma = bytearray(8)  # the DMA address register, big-endian byte order
        self.add_item(FW_CFG_SIGNATURE, b"QEMU")
        self.add_item(FW_CFG_ID, (FW_CFG_VERSION | FW_CFG_VERSION_DMA).to_bytes(4, "little"))
        self._rebuild_directory()

    # -- host side --------------------------------------------------------------------------------------

    def add_item(self, key: int, data: bytes) -> None:
        """Set item key (a selector value below 0x20, or arch-local 0x8000+) to data."""
        key &= ~FW_CFG_WRITE_CHANNEL & 0xFFFF
        if FW_CFG_FILE_FIRST <= key < FW_CFG_FILE_FIRST + FW_CFG_MAX_FILES or key == FW_CFG_FILE_DIR:
            raise FwCfgError(f"fw_cfg key {key:#x} is reserved for files; use add_file")
        with self._lock:
            self._items[key] = bytes(data)
            self._refresh_current()

    def add_u16(self, key: int, value: int) -> None:
        self.add_item(key, (value & 0xFFFF).to_bytes(2, "little"))

    def add_u32(self, key: int, value: int) -> None:
        self.add_item(key, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def add_u64(self, key: int, value: int) -> None:
        self.add_item(key, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))

    def add_file(self, name: str, data: bytes) -> int:
        """Add (or replace) a named file; returns its current selector key.

        Keys follow name order, so adding a file can renumber the ones after it: add every file before
        the guest starts, and look keys up with file_key().
        """
        encoded = name.encode("ascii")
        if not encoded or len(encoded) >= FILE_NAME_SIZE:
            raise FwCfgError(f"fw_cfg file name {name!r} is empty or longer than {FILE_NAME_SIZE - 1} bytes")
        with self._lock:
            if name not in self._files and len(self._files) >= FW_CFG_MAX_FILES:
                raise FwCfgError("too many fw_cfg files")
            self._files[name] = bytes(data)
            self._rebuild_directory()
            return self._file_key_locked(name)

    def file_key(self, name: str) -> int:
        with self._lock:
            return self._file_key_locked(name)

    def _file_key_locked(self, name: str) -> int:
        if name not in self._files:
            raise FwCfgError(f"no fw_cfg file {name!r}")
        return FW_CFG_FILE_FIRST + sorted(self._files).index(name)

    def _rebuild_directory(self) -> None:
        names = sorted(self._files)
        directory = bytearray(len(names).to_bytes(4, "big"))
        for index, name in enumerate(names):
            key = FW_CFG_FILE_FIRST + index
            data = self._files[name]
            self._items[key] = data
            directory += FILE_ENTRY.pack(len(data), key, 0, name.encode("ascii"))
        self._items[FW_CFG_FILE_DIR] = bytes(directory)
        self._refresh_current()

    def _refresh_current(self) -> None:
        self._current = self._items.get(self._selector, b"")

    # -- guest side -------------------------------------------------------------------------------------

    def _select(self, key: int) -> None:
        self._selector = key & ~FW_CFG_WRITE_CHANNEL & 0xFFFF
        self._offset = 0
        self._current = self._items.get(self._selector, b"")

    def pio_read(self, offset: int, size: int) -> int:
        if offset <= 1:
            with self._lock:
                start = self._offset
                chunk = self._current[start:start + size]
                self._offset = min(start + size, len(self._current))
            return int.from_bytes(chunk, "little")  # bytes in increasing order; zeros past the end
        if 4 <= offset < 12:
            return int.from_bytes(DMA_SIGNATURE[offset - 4:offset - 4 + size].ljust(size, b"\xff"), "little")
        return (1 << (8 * size)) - 1

    def pio_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 2:
            with self._lock:
                self._select(value)
        elif offset in (4, 8) and size == 4:
            with self._lock:
                index = offset - 4
                self._dma[index:index + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
                if offset == 8:
                    address = int.from_bytes(self._dma, "big")
                    self._dma[:] = bytes(8)
                    self._dma_transfer(address)
        # Data port writes and other widths are ignored.

    # -- DMA (fw_cfg.rst, "Guest-side DMA Interface") ----------------------------------------------------

    def _dma_transfer(self, access_address: int) -> None:
        memory = self._memory
        try:
            control, length, address = DMA_ACCESS.unpack(memory.read(access_address, DMA_ACCESS.size))
        except GuestMemoryError:
            return  # nowhere to report the error
        error = False
        if control & DMA_CTL_SELECT:
            self._select(control >> 16)
        try:
            if control & DMA_CTL_READ:
                self._dma_read(address, length)
            elif control & DMA_CTL_WRITE:
                error = True  # every item is read-only
            elif control & DMA_CTL_SKIP:
                self._offset = min(self._offset + length, len(self._current))
        except GuestMemoryError:
            error = True
        try:
            memory.write(access_address, (DMA_CTL_ERROR if error else 0).to_bytes(4, "big"))
        except GuestMemoryError:
            pass

    def _dma_read(self, address: int, length: int) -> None:
        if length == 0:
            return
        view = self._memory.view(address, length)  # checks the whole range first
        start = self._offset
        chunk = self._current[start:start + length]
        view[:len(chunk)] = chunk
        position = len(chunk)
        while position < length:  # zeros past the item's end, a bounded buffer at a time
            step = min(length - position, len(_ZEROS))
            view[position:position + step] = _ZEROS[:step]
            position += step
        self._offset = min(start + length, len(self._current))


def e820_table(entries: Iterable[E820Entry]) -> bytes:
    """The "etc/e820" file: packed little-endian {u64 address, u64 length, u32 type} per entry."""
    return b"".join(E820_ENTRY.pack(e.address, e.size, e.type) for e in entries)


def seabios_files(e820: Iterable[E820Entry], bootorder: str | None = None,
                  screen_and_debug: bool = False) -> dict[str, bytes]:
    """The files vmd gives SeaBIOS (vmd fw_cfg.c): the memory map, the debug-output flag, the boot order."""
    files = {
        "etc/e820": e820_table(e820),
        # 0: SeaBIOS does not copy screen output to its debug port (no doubled characters on serial).
        "etc/screen-and-debug": (1 if screen_and_debug else 0).to_bytes(8, "little"),
    }
    if bootorder is not None:
        files["bootorder"] = bootorder.encode("ascii") + b"\x00"
    return files
