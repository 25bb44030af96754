/* PCI configuration mechanism #1 (0xCF8 address, 0xCFC data). */
#include "lib.h"

static uint32_t addr(unsigned bus, unsigned slot, unsigned fn, unsigned off)
{
    return 0x80000000u | (bus << 16) | (slot << 11) | (fn << 8) | (off & 0xFC);
}

uint32_t pci_read32(unsigned bus, unsigned slot, unsigned fn, unsigned off)
{
    outl(0xCF8, addr(bus, slot, fn, off));
    return inl(0xCFC);
}

void pci_write32(unsigned bus, unsigned slot, unsigned fn, unsigned off, uint32_t v)
{
    outl(0xCF8, addr(bus, slot, fn, off));
    outl(0xCFC, v);
}
