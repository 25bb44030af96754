/* Intel MP specification 1.4: find the floating pointer ("_MP_", 16-byte aligned)
 * in the first KiB of the EBDA, the last KiB of base memory, or 0xF0000-0xFFFFF,
 * then walk the configuration table ("PCMP"). */
#include "lib.h"

static int sum8(const uint8_t *p, unsigned n)
{
    uint8_t s = 0;
    while (n--)
        s += *p++;
    return s;
}

static uint32_t search(uint32_t start, uint32_t len)
{
    for (uint32_t a = start; a + 16 <= start + len; a += 16) {
        const uint8_t *p = (const uint8_t *)(uintptr_t)a;
        if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_')
            return a;
    }
    return 0;
}

void mp_scan(struct mp_info *mi)
{
    memset(mi, 0, sizeof(*mi));
    mi->isa_irq0_pin = -1;
    mi->ioapic_id = -1;

    uint32_t ebda = (uint32_t)(*(volatile uint16_t *)(uintptr_t)0x40E) << 4;
    uint32_t basekb = *(volatile uint16_t *)(uintptr_t)0x413;
    uint32_t fp = 0;
    if (ebda >= 0x80000 && ebda < 0xA0000)
        fp = search(ebda, 1024);
    if (!fp && basekb >= 512 && basekb <= 640)
        fp = search(basekb * 1024 - 1024, 1024);
    if (!fp)
        fp = search(0x9FC00, 1024);
    if (!fp)
        fp = search(0xF0000, 0x10000);
    if (!fp)
        return;

    const uint8_t *f = (const uint8_t *)(uintptr_t)fp;
    mi->found = 1;
    mi->fp_addr = fp;
    mi->fp_sum_ok = f[8] >= 1 && sum8(f, 16u * f[8]) == 0;
    uint32_t cfg = *(const uint32_t *)(f + 4);
    mi->table_addr = cfg;
    if (!cfg)                         /* default configuration (feature byte 1) */
        return;
    const uint8_t *t = (const uint8_t *)(uintptr_t)cfg;
    if (memcmp(t, "PCMP", 4))
        return;
    uint16_t len = *(const uint16_t *)(t + 4);
    uint16_t count = *(const uint16_t *)(t + 34);
    mi->table_sum_ok = sum8(t, len) == 0;

    const uint8_t *e = t + 44, *end = t + len;
    int isa_bus = -1;
    /* First pass: buses, so that interrupt entries can be matched to ISA. */
    for (unsigned i = 0; i < count && e < end; i++) {
        switch (e[0]) {
        case 0: e += 20; break;
        case 1:
            if (!memcmp(e + 2, "ISA", 3))
                isa_bus = e[1];
            e += 8;
            break;
        default: e += 8; break;
        }
    }
    e = t + 44;
    for (unsigned i = 0; i < count && e < end; i++) {
        switch (e[0]) {
        case 0:                        /* processor */
            if (mi->cpus < 16)
                mi->cpu_apic_ids[mi->cpus] = e[1];
            mi->cpus++;
            if (e[3] & 1)
                mi->cpus_enabled++;
            e += 20;
            break;
        case 1:
            mi->buses++;
            e += 8;
            break;
        case 2:                        /* I/O APIC */
            if (e[3] & 1) {
                if (!mi->ioapics) {
                    mi->ioapic_id = e[1];
                    mi->ioapic_addr = *(const uint32_t *)(e + 4);
                }
                mi->ioapics++;
            }
            e += 8;
            break;
        case 3:                        /* I/O interrupt assignment */
            mi->ioints++;
            if (e[1] == 0 && e[4] == isa_bus && e[5] == 0 && mi->isa_irq0_pin < 0)
                mi->isa_irq0_pin = e[7];
            e += 8;
            break;
        default:
            mi->lints++;
            e += 8;
            break;
        }
    }
}
