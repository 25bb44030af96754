/* Platform checks shared by every protected/long-mode guest: PCI host bridge,
 * MP table, RTC, PIT through the PIC, PIT through the I/O APIC, LAPIC timer. */
#include "lib.h"

#define VEC_PIT_PIC   0x20
#define VEC_IOAPIC    0x30
#define VEC_IOAPIC_ALT 0x31
#define VEC_LAPIC_TMR 0x40
#define VEC_SPURIOUS  0xFF

#define TIMEOUT (3ull * 1000 * 1000 * 1000)   /* TSC cycles: about 1-3 s */

static volatile unsigned ticks, ticks_alt, spurious;
static struct mp_info mp;
static int mp_done;

static void pit_pic_isr(int v) { (void)v; ticks++; pic_eoi(0); }
static void apic_isr(int v) { (void)v; ticks++; lapic_eoi(); }
static void apic_alt_isr(int v) { (void)v; ticks_alt++; lapic_eoi(); }
static void spurious_isr(int v) { (void)v; spurious++; }

static void check_pci(void)
{
    uint32_t id = pci_read32(0, 0, 0, 0);
    uint32_t cls = pci_read32(0, 0, 0, 8) >> 8;
    for (unsigned slot = 0; slot < 32; slot++) {
        uint32_t v = pci_read32(0, slot, 0, 0);
        if ((v & 0xFFFF) != 0xFFFF)
            note("pci 00:%02x.0 %04x:%04x class %06x", slot, v & 0xFFFF, v >> 16,
                 pci_read32(0, slot, 0, 8) >> 8);
    }
    if (id == 0x12378086 && cls == 0x060000)
        ok("pci");
    else
        fail("pci", "00:00.0 is %04x:%04x class %06x, want 8086:1237 class 060000",
             id & 0xFFFF, id >> 16, cls);
}

static void scan_mp(void)
{
    if (!mp_done) {
        mp_scan(&mp);
        mp_done = 1;
    }
}

static void check_mptable(void)
{
    scan_mp();
    if (!mp.found) {
        fail("mptable", "no _MP_ floating pointer found");
        return;
    }
    note("mptable fp=%x table=%x cpus=%d enabled=%d ioapics=%d ioapic_id=%d ioapic_addr=%x buses=%d ioints=%d lints=%d irq0_pin=%d",
         mp.fp_addr, mp.table_addr, mp.cpus, mp.cpus_enabled, mp.ioapics, mp.ioapic_id,
         mp.ioapic_addr, mp.buses, mp.ioints, mp.lints, mp.isa_irq0_pin);
    if (!mp.fp_sum_ok)
        fail("mptable", "floating pointer checksum bad");
    else if (!mp.table_addr)
        fail("mptable", "no configuration table (default configuration)");
    else if (!mp.table_sum_ok)
        fail("mptable", "configuration table missing or checksum bad");
    else if (mp.cpus_enabled < 1)
        fail("mptable", "no enabled processor entry");
    else if (mp.ioapics < 1)
        fail("mptable", "no I/O APIC entry");
    else
        ok("mptable");
}

static void check_rtc(void)
{
    struct rtc_time t;
    if (rtc_read(&t)) {
        fail("rtc", "update-in-progress never cleared");
        return;
    }
    note("rtc %u", rtc_to_unix(&t));
    note("rtc_date %04u-%02u-%02uT%02u:%02u:%02uZ", t.year, t.mon, t.day, t.hour, t.min, t.sec);
    if (t.year >= 2020 && t.year < 2100 && t.mon >= 1 && t.mon <= 12 && t.day >= 1 && t.day <= 31 &&
        t.hour < 24 && t.min < 60 && t.sec < 60)
        ok("rtc");
    else
        fail("rtc", "implausible date");
}

static void check_pit_pic(void)
{
    irq_set_handler(VEC_PIT_PIC, pit_pic_isr);
    ticks = 0;
    pic_unmask(0);
    pit_periodic(1000);
    int n = wait_count(&ticks, 5, TIMEOUT);
    pit_stop();
    pic_mask(0);
    if (n >= 5)
        ok("pit");
    else
        fail("pit", "%d PIT ticks through the PIC (want 5); lapic LVT0=%x SVR=%x",
             n, lapic_read(0x350), lapic_read(0xF0));
}

static void check_ioapic(void)
{
    scan_mp();
    int pin = mp.isa_irq0_pin >= 0 ? mp.isa_irq0_pin : 2;
    int alt = pin == 2 ? 0 : 2;
    uint32_t ver = ioapic_read(1);
    uint8_t me = (uint8_t)lapic_id();
    lapic_enable(VEC_SPURIOUS);
    irq_set_handler(VEC_SPURIOUS, spurious_isr);
    irq_set_handler(VEC_IOAPIC, apic_isr);
    irq_set_handler(VEC_IOAPIC_ALT, apic_alt_isr);
    uint16_t oldmask = pic_get_mask();
    pic_set_mask(0xFFFF);
    ticks = ticks_alt = 0;
    ioapic_route(pin, VEC_IOAPIC, me, 0);
    ioapic_route(alt, VEC_IOAPIC_ALT, me, 0);
    pit_periodic(1000);
    int n = wait_count(&ticks, 5, TIMEOUT);
    pit_stop();
    ioapic_mask_pin(pin);
    ioapic_mask_pin(alt);
    pic_set_mask(oldmask);
    note("ioapic version=%x max_pin=%u irq0_pin=%d lapic_id=%u", ver & 0xFF, (ver >> 16) & 0xFF, pin, me);
    if (n >= 5)
        ok("ioapic");
    else if (ticks_alt)
        fail("ioapic", "PIT ticks arrived on pin %d, expected pin %d", alt, pin);
    else
        fail("ioapic", "%d PIT ticks through I/O APIC pin %d (want 5)", n, pin);
}

static void check_lapic(void)
{
    uintptr_t base = lapic_base();
    lapic_enable(VEC_SPURIOUS);
    irq_set_handler(VEC_SPURIOUS, spurious_isr);
    irq_set_handler(VEC_LAPIC_TMR, apic_isr);
    ticks = 0;
    lapic_write(0x3E0, 0x3);                     /* divide by 16 */
    lapic_write(0x320, VEC_LAPIC_TMR | (1u << 17)); /* periodic */
    lapic_write(0x380, 100000);
    int n = wait_count(&ticks, 5, TIMEOUT);
    lapic_write(0x320, 0x10000);
    lapic_write(0x380, 0);
    note("lapic base=%lx id=%u version=%x", (unsigned long)base, lapic_id(), lapic_read(0x30));
    if (base != LAPIC_DEFAULT)
        fail("lapic", "APIC base MSR says %lx", (unsigned long)base);
    else if (n >= 5)
        ok("lapic");
    else
        fail("lapic", "%d LAPIC timer interrupts (want 5)", n);
}

/* Counter 0 runs before the guest programs it, as after a BIOS (and OpenBSD's vmd): kernels such as
 * OpenBSD/i386 delay by reading it before they set the timer up. Must run before any other PIT use. */
static void check_pit0_running(void)
{
    unsigned first, now = 0;
    outb(0x43, 0x00);                            /* latch counter 0 */
    first = inb(0x40);
    first |= (unsigned)inb(0x40) << 8;
    uint64_t t0 = rdtsc();
    do {
        outb(0x43, 0x00);
        now = inb(0x40);
        now |= (unsigned)inb(0x40) << 8;
    } while (now == first && rdtsc() - t0 < TIMEOUT);
    if (now != first)
        ok("pit0");
    else
        fail("pit0", "counter 0 stays at %04x before the guest programs it", first);
}

void run_platform_checks(const char *tests)
{
    if (list_has(tests, "pit0")) check_pit0_running();
    if (list_has(tests, "pci")) check_pci();
    if (list_has(tests, "mptable")) check_mptable();
    if (list_has(tests, "rtc")) check_rtc();
    if (list_has(tests, "pit")) check_pit_pic();
    if (list_has(tests, "ioapic")) check_ioapic();
    if (list_has(tests, "lapic")) check_lapic();
}
