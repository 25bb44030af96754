/* bench: a multiboot guest for timing the VMM (runs under vmd and QEMU).
 *   mode=firstbyte         write one byte ('!') to COM1 at entry, debug-exit 0
 *   mode=pio n=<count>     time <count> OUTs to port 0x3FF (the UART scratch
 *                          register: always handled in userspace), print
 *                          "tsc_hz <hz>", "pio_ns <ns per OUT>"
 *   mode=serial bytes=<count>  print "serial_start\n", then exactly <count>
 *                          bytes (a-z, '\n' as every 64th), each after polling
 *                          LSR.THRE, then "\nserial_done\n" and "serial_ns <total>"
 * The TSC is calibrated with PIT channel 2 (gate on port 0x61), falling back
 * to one RTC second. Everything ends with debug exit 0 ("ALL OK") or 1. */
#include "../lib/lib.h"

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline; } __attribute__((packed));

static uint64_t arg_u64(const char *cl, const char *key, uint64_t dflt)
{
    char v[32];
    int good;
    if (!cmdline_get(cl, key, v, sizeof v))
        return dflt;
    uint64_t x = parse_u64(v, 0, &good);
    return good ? x : dflt;
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    const char *cl = magic == 0x2BADB002 && (mi->flags & 4) ? (const char *)(uintptr_t)mi->cmdline : 0;
    char mode[16];
    if (!cmdline_get(cl, "mode", mode, sizeof mode))
        mode[0] = 0;
    if (!strcmp(mode, "firstbyte")) {
        outb(COM1, '!');
        debug_exit(0);
    }
    serial_init();
    kprintf("bench guest, mode %s\n", mode[0] ? mode : "(none)");
    if (!strcmp(mode, "pio")) {
        uint64_t n = arg_u64(cl, "n", 10000);
        uint64_t hz = tsc_hz_measure();
        if (!hz) {
            fail("pio", "TSC calibration failed");
            finish();
        }
        note("tsc_hz %llu", (unsigned long long)hz);
        uint64_t t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            outb(COM1 + 7, (uint8_t)i);
        uint64_t dt = rdtsc() - t0;
        uint64_t ns = tsc_to_ns(dt, hz);
        note("pio_count %llu", (unsigned long long)n);
        note("pio_total_ns %llu", (unsigned long long)ns);
        note("pio_ns %llu", (unsigned long long)(n ? ns / n : 0));
        ok("pio");
    } else if (!strcmp(mode, "serial")) {
        uint64_t count = arg_u64(cl, "bytes", 100000);
        uint64_t hz = tsc_hz_measure();
        kprintf("serial_start\n");
        uint64_t t0 = rdtsc();
        for (uint64_t i = 0; i < count; i++)
            serial_raw_putc((i & 63) == 63 ? '\n' : (char)('a' + i % 26));
        uint64_t dt = rdtsc() - t0;
        kprintf("\nserial_done\n");
        note("serial_bytes %llu", (unsigned long long)count);
        if (hz)
            note("serial_ns %llu", (unsigned long long)tsc_to_ns(dt, hz));
        ok("serial");
    } else {
        fail("mode", "unknown mode \"%s\" (firstbyte, pio, serial)", mode);
    }
    finish();
}
