"""PCI configuration mechanism #1, the host bridge and PciDevice config-space semantics."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.devices.pci import (
    CAP_ID_VENDOR,
    COMMAND_IO,
    COMMAND_MEMORY,
    PciBus,
    PciDevice,
)


def cfg_addr(dev: int, reg: int, bus: int = 0, func: int = 0) -> int:
    return 0x80000000 | (bus << 16) | (dev << 11) | (func << 8) | (reg & 0xFC)


def cfg_read(pci: PciBus, dev: int, reg: int, size: int = 4, bus: int = 0, func: int = 0) -> int:
    pci.pio_write(0, 4, cfg_addr(dev, reg, bus, func))
    return pci.pio_read(4 + (reg & 3), size)


def cfg_write(pci: PciBus, dev: int, reg: int, size: int, value: int) -> None:
    pci.pio_write(0, 4, cfg_addr(dev, reg))
    pci.pio_write(4 + (reg & 3), size, value)


class TestDevice(PciDevice):
    __test__ = False

    def __init__(self) -> None:
        super().__init__(0x1AF4, 0x1041, 0x020000, revision=1, subsystem_vendor_id=0x1AF4,
                         subsystem_id=1, interrupt_pin=1)
        self.add_bar(0, 0x1000)
        self.add_bar(1, 0x100, io=True)
        self.add_bar(2, 0x4000, mem64=True, prefetchable=True)
        self.moves: list[tuple[int, int | None, int | None]] = []

    def bar_changed(self, index: int, old: int | None, new: int | None) -> None:
        self.moves.append((index, old, new))


def test_host_bridge_identity() -> None:
    pci = PciBus()
    assert cfg_read(pci, 0, 0) == 0x12378086
    assert cfg_read(pci, 0, 0, 2) == 0x8086
    assert cfg_read(pci, 0, 2, 2) == 0x1237
    assert cfg_read(pci, 0, 8) >> 8 == 0x060000
    assert cfg_read(pci, 0, 0x0B, 1) == 0x06
    assert cfg_read(pci, 0, 0x0E, 1) == 0x00


def test_address_register_dword_only() -> None:
    pci = PciBus()
    pci.pio_write(0, 4, 0x80000000)
    assert pci.pio_read(0, 4) == 0x80000000
    pci.pio_write(3, 1, 0x01)  # Linux's pci_check_type1 byte poke at 0xCFB
    assert pci.pio_read(0, 4) == 0x80000000
    pci.pio_write(0, 2, 0x1234)
    assert pci.pio_read(0, 4) == 0x80000000
    assert pci.pio_read(0, 2) == 0xFFFF


def test_missing_and_disabled() -> None:
    pci = PciBus()
    assert cfg_read(pci, 5, 0) == 0xFFFFFFFF
    assert cfg_read(pci, 0, 0, bus=1) == 0xFFFFFFFF
    assert cfg_read(pci, 0, 0, func=1) == 0xFFFFFFFF
    pci.pio_write(0, 4, 0)  # enable bit clear
    assert pci.pio_read(4, 4) == 0xFFFFFFFF
    assert pci.pio_read(6, 2) == 0xFFFF


def test_read_only_header() -> None:
    pci = PciBus()
    cfg_write(pci, 0, 0, 4, 0)
    assert cfg_read(pci, 0, 0) == 0x12378086
    cfg_write(pci, 0, 0x3C, 1, 0x0B)
    assert cfg_read(pci, 0, 0x3C, 1) == 0x0B


def test_add_slots() -> None:
    pci = PciBus()
    a, b = TestDevice(), TestDevice()
    assert pci.add(a) == 1
    assert pci.add(b) == 2
    assert pci.slot_of(b) == 2
    assert cfg_read(pci, 2, 0) == 0x10411AF4
    assert cfg_read(pci, 2, 0x2C) == 0x00011AF4
    assert cfg_read(pci, 2, 0x3D, 1) == 1


def test_bar_sizing() -> None:
    pci = PciBus()
    dev = TestDevice()
    slot = pci.add(dev)
    cfg_write(pci, slot, 0x10, 4, 0xFFFFFFFF)
    assert cfg_read(pci, slot, 0x10) == 0xFFFFF000
    cfg_write(pci, slot, 0x14, 4, 0xFFFFFFFF)
    assert cfg_read(pci, slot, 0x14) == 0xFFFFFF01
    cfg_write(pci, slot, 0x18, 4, 0xFFFFFFFF)
    cfg_write(pci, slot, 0x1C, 4, 0xFFFFFFFF)
    assert cfg_read(pci, slot, 0x18) == 0xFFFFC00C
    assert cfg_read(pci, slot, 0x1C) == 0xFFFFFFFF
    for reg in (0x20, 0x24, 0x30):  # unimplemented BARs and the ROM BAR read 0
        cfg_write(pci, slot, reg, 4, 0xFFFFFFFF)
        assert cfg_read(pci, slot, reg) == 0
    # program and enable decoding
    cfg_write(pci, slot, 0x10, 4, 0xE0001000)
    cfg_write(pci, slot, 0x14, 4, 0xC000)
    cfg_write(pci, slot, 0x18, 4, 0x00000000)
    cfg_write(pci, slot, 0x1C, 4, 0x00000001)
    assert dev.moves == []
    cfg_write(pci, slot, 0x04, 2, COMMAND_IO | COMMAND_MEMORY)
    assert sorted(dev.moves) == [(0, None, 0xE0001000), (1, None, 0xC000), (2, None, 0x100000000)]
    assert dev.bar_address(1) == 0xC000
    cfg_write(pci, slot, 0x04, 2, 0)
    assert dev.bar_mapping(0) is None


def test_status_w1c_and_capabilities() -> None:
    pci = PciBus()
    dev = TestDevice()
    first = dev.add_capability(CAP_ID_VENDOR, bytes([16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    second = dev.add_capability(0x11, bytes(10), writable=bytes([0xC0, 0x00] + [0] * 8))
    slot = pci.add(dev)
    assert cfg_read(pci, slot, 0x06, 2) & 0x10
    assert cfg_read(pci, slot, 0x34, 1) == first == 0x40
    assert cfg_read(pci, slot, first + 1, 1) == second
    assert cfg_read(pci, slot, second + 1, 1) == 0
    assert dev.capabilities() == [(first, CAP_ID_VENDOR), (second, 0x11)]
    cfg_write(pci, slot, second + 2, 2, 0xFFFF)
    assert cfg_read(pci, slot, second + 2, 2) == 0x00C0
    dev.set_u16(0x06, dev.get(0x06, 2) | 0x8000)
    cfg_write(pci, slot, 0x06, 2, 0x8000)
    assert not cfg_read(pci, slot, 0x06, 2) & 0x8000


def test_assign_bars() -> None:
    pci = PciBus()
    a, b = TestDevice(), TestDevice()
    pci.add(a)
    pci.add(b)
    pci.assign_bars(0xE0000000, 0xFEC00000)
    addresses = [d.bar_address(i) for d in (a, b) for i in (0, 2)]
    assert len(set(addresses)) == 4
    for d in (a, b):
        for index, bar in d.bars.items():
            address = d.bar_address(index)
            assert address % bar.size == 0
            if bar.io:
                assert 0x1000 <= address < 0x10000
            else:
                assert 0xE0000000 <= address < 0xFEC00000


def test_reset_control_register() -> None:
    resets: list[None] = []
    pci = PciBus(on_reset=lambda: resets.append(None))
    pci.pio_write(1, 1, 0x02)
    assert not resets
    pci.pio_write(1, 1, 0x06)
    assert resets


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.sampled_from([1, 2, 4]),
                         st.integers(0, 0xFFFFFFFF)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_random_accesses_never_raise(accesses: list[tuple[bool, int, int, int]]) -> None:
    pci = PciBus()
    pci.add(TestDevice())
    for write, offset, size, value in accesses:
        if write:
            pci.pio_write(offset, size, value)
        else:
            assert 0 <= pci.pio_read(offset, size) < (1 << (8 * size))
    assert cfg_read(pci, 0, 0) == 0x12378086
