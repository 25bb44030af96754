/* i8254 PIT: channel 0 periodic interrupts, channel 2 (gated by port 0x61)
 * used to calibrate the TSC. */
#include "lib.h"

#define PIT_HZ 1193182u

void pit_periodic(unsigned hz)
{
    unsigned div = PIT_HZ / hz;
    outb(0x43, 0x34);                /* channel 0, lo/hi, mode 2 (rate generator) */
    outb(0x40, (uint8_t)div);
    outb(0x40, (uint8_t)(div >> 8));
}

void pit_stop(void)
{
    outb(0x43, 0x30);                /* channel 0, mode 0, count never reloaded */
    outb(0x40, 0xFF);
    outb(0x40, 0xFF);
}

/* Count down 50 ms on channel 2 (mode 0) and see how far the TSC moved. */
uint64_t tsc_calibrate_pit(void)
{
    const unsigned count = PIT_HZ / 20;
    uint8_t p61 = inb(0x61);
    outb(0x61, (p61 & ~0x02) & ~0x01);  /* gate low, speaker off */
    outb(0x43, 0xB0);                   /* channel 2, lo/hi, mode 0 */
    outb(0x42, (uint8_t)count);
    outb(0x42, (uint8_t)(count >> 8));
    outb(0x61, (p61 & ~0x02) | 0x01);   /* gate high: counting starts */
    uint64_t t0 = rdtsc(), t1 = t0;
    unsigned spins = 0;
    while (!(inb(0x61) & 0x20)) {       /* OUT2 goes high at terminal count */
        t1 = rdtsc();
        if (++spins > 50000000u)
            return 0;
    }
    t1 = rdtsc();
    outb(0x61, p61 & ~0x03);
    return (t1 - t0) * 20;
}

/* The PIT measurement, or, if PIT channel 2 never reaches terminal count, TSC ticks between two RTC
 * second boundaries. */
uint64_t tsc_hz_measure(void)
{
    uint64_t hz = tsc_calibrate_pit();
    if (hz)
        return hz;
    outb(0x70, 0x00);
    uint8_t s0 = inb(0x71), s;
    do { outb(0x70, 0x00); s = inb(0x71); } while (s == s0);
    uint64_t t0 = rdtsc();
    do { outb(0x70, 0x00); s0 = inb(0x71); } while (s0 == s);
    return rdtsc() - t0;
}

/* dt TSC ticks in nanoseconds, without overflowing 64 bits for long runs. */
uint64_t tsc_to_ns(uint64_t dt, uint64_t hz)
{
    return dt / hz * 1000000000ull + (dt % hz) * 1000000000ull / hz;
}
