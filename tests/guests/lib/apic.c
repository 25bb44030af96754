/* Local APIC and I/O APIC helpers (xAPIC MMIO; identity-mapped or paging off). */
#include "lib.h"

#define IA32_APIC_BASE 0x1B

uintptr_t lapic_base(void)
{
    uint64_t v = rdmsr(IA32_APIC_BASE);
    uintptr_t b = (uintptr_t)(v & 0xFFFFF000u);
    return b ? b : LAPIC_DEFAULT;
}

uint32_t lapic_read(uint32_t reg) { return mmio_read32(lapic_base() + reg); }
void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(lapic_base() + reg, v); }

void lapic_enable(uint8_t spurious_vector)
{
    uint64_t v = rdmsr(IA32_APIC_BASE);
    if (!(v & (1u << 11)))
        wrmsr(IA32_APIC_BASE, v | (1u << 11));
    lapic_write(0xF0, 0x100u | spurious_vector);   /* SVR: software enable */
    lapic_write(0x80, 0);                           /* TPR: accept everything */
}

void lapic_eoi(void) { lapic_write(0xB0, 0); }
uint32_t lapic_id(void) { return lapic_read(0x20) >> 24; }

void lapic_virtual_wire(void)
{
    /* LVT mask bits stay set while the APIC is software-disabled (SDM vol. 3, 11.4.7.2): enable it first. */
    lapic_write(0xF0, 0x1FF);        /* SVR: APIC software-enabled, spurious vector 0xFF */
    lapic_write(0x350, 0x700);       /* LVT LINT0: ExtINT, unmasked */
    lapic_write(0x360, 0x400);       /* LVT LINT1: NMI */
}

uint32_t ioapic_read(uint32_t reg)
{
    mmio_write32(IOAPIC_DEFAULT, reg);
    return mmio_read32(IOAPIC_DEFAULT + 0x10);
}

void ioapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(IOAPIC_DEFAULT, reg);
    mmio_write32(IOAPIC_DEFAULT + 0x10, v);
}

/* Edge-triggered, active-high, fixed delivery, physical destination. */
void ioapic_route(int pin, uint8_t vector, uint8_t dest_apic, int masked)
{
    ioapic_write(0x10 + 2 * pin + 1, (uint32_t)dest_apic << 24);
    ioapic_write(0x10 + 2 * pin, vector | (masked ? 0x10000u : 0));
}

void ioapic_mask_pin(int pin)
{
    ioapic_write(0x10 + 2 * pin, 0x10000u);
}
