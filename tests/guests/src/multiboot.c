/* multiboot: a 32-bit Multiboot v1 guest that checks everything its loader gave
 * it (magic, memory info and map, command line, the initrd module) and the
 * platform (PCI, MP table, RTC, timers, serial input). See ../README.md. */
#include "../lib/lib.h"
#include "../lib/memmap.h"

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
} __attribute__((packed));

struct mb_mod { uint32_t start, end, string, reserved; } __attribute__((packed));
struct mb_mmap { uint32_t size; uint64_t base, len; uint32_t type; } __attribute__((packed));

#define DEFAULT_TESTS "mem,cmdline,pci,mptable,rtc,pit,ioapic,lapic"

static char tests[256];
static struct mrange ranges[64];

static void check_mem(const struct mb_info *mi, const char *cl)
{
    if (!(mi->flags & 1)) {
        fail("mem", "flags bit 0 (mem_lower/mem_upper) not set");
        return;
    }
    note("mem_lower %u KiB, mem_upper %u KiB", mi->mem_lower, mi->mem_upper);
    if (mi->mem_lower < 512 || mi->mem_lower > 640) {
        fail("mem", "mem_lower %u KiB out of range 512-640", mi->mem_lower);
        return;
    }
    if (!(mi->flags & (1u << 6))) {
        fail("mem", "flags bit 6 (mmap) not set");
        return;
    }
    int n = 0;
    uint32_t a = mi->mmap_addr, end = mi->mmap_addr + mi->mmap_length;
    while (a < end && n < 64) {
        const struct mb_mmap *m = (const struct mb_mmap *)(uintptr_t)a;
        ranges[n].base = m->base;
        ranges[n].len = m->len;
        ranges[n].type = m->type;
        n++;
        a += m->size + 4;
    }
    /* mem_upper must describe the RAM that starts at 1 MiB (up to the first hole). */
    uint64_t upper_end = 0;
    for (int i = 0; i < n; i++)
        if (ranges[i].type == 1 && ranges[i].base <= 0x100000 && ranges[i].base + ranges[i].len > 0x100000)
            upper_end = ranges[i].base + ranges[i].len;
    uint64_t claimed = 0x100000ull + (uint64_t)mi->mem_upper * 1024;
    if (upper_end && (claimed > upper_end || claimed + 0x100000 < upper_end && upper_end <= 0xFFFFFFFFull)) {
        fail("mem", "mem_upper %u KiB disagrees with the map (RAM at 1 MiB ends at %llx)",
             mi->mem_upper, (unsigned long long)upper_end);
        return;
    }
    char want[32];
    int have = cmdline_get(cl, "mem", want, sizeof want);
    check_memmap("mem", ranges, n, have ? want : 0);
}

static void check_cmdline(const char *cl)
{
    char v[128];
    if (!cl) {
        fail("cmdline", "flags bit 2 (cmdline) not set");
        return;
    }
    if (!cmdline_get(cl, "expect", v, sizeof v)) {
        fail("cmdline", "no expect= token in \"%s\"", cl);
        return;
    }
    note("expect %s", v);
    ok("cmdline");
}

static void check_initrd(const struct mb_info *mi, const char *cl)
{
    char v[32];
    if (!(mi->flags & (1u << 3)) || mi->mods_count == 0) {
        fail("initrd", "no modules (flags %x, mods_count %u)", mi->flags, mi->mods_count);
        return;
    }
    const struct mb_mod *m = (const struct mb_mod *)(uintptr_t)mi->mods_addr;
    uint32_t size = m->end - m->start;
    uint32_t sum = fnv1a32((const void *)(uintptr_t)m->start, size);
    note("initrd start=%x end=%x size=%u fnv1a32=%08x string=\"%s\" count=%u", m->start, m->end, size,
         sum, m->string ? (const char *)(uintptr_t)m->string : "", mi->mods_count);
    if (mi->mods_count != 1) {
        fail("initrd", "%u modules, want 1", mi->mods_count);
        return;
    }
    if (m->start & 0xFFF) {
        fail("initrd", "module at %x is not page aligned (flags bit 0 asked for it)", m->start);
        return;
    }
    if (cmdline_get(cl, "initrd_size", v, sizeof v)) {
        uint64_t want = parse_u64(v, 0, 0);
        if (want != size) {
            fail("initrd", "size %u, initrd_size says %llu", size, (unsigned long long)want);
            return;
        }
    }
    if (cmdline_get(cl, "initrd_sum", v, sizeof v)) {
        uint32_t want = (uint32_t)parse_u64(v, 16, 0);
        if (want != sum) {
            fail("initrd", "fnv1a32 %08x, initrd_sum says %08x", sum, want);
            return;
        }
    } else {
        fail("initrd", "no initrd_sum= token on the command line");
        return;
    }
    ok("initrd");
}

static void check_serial(void)
{
    char line[128];
    unsigned n = 0;
    serial_rx_irq_enable(0x20 + COM1_IRQ);
    kprintf("ready>\n");
    for (;;) {
        int c;
        cli();
        while ((c = serial_rx_pop()) < 0) {
            /* sti; hlt: interrupts are taken only after hlt starts, so no wakeup is lost */
            __asm__ volatile("sti; hlt; cli" ::: "memory");
        }
        sti();
        if (c == '\r' || c == '\n') {
            if (n == 0)
                continue;
            break;
        }
        if (n < sizeof line - 1)
            line[n++] = (char)c;
    }
    line[n] = 0;
    pic_mask(COM1_IRQ);
    outb(COM1 + 1, 0);
    kprintf("got %s\n", line);
    note("serial rx irqs %u", serial_rx_irqs);
    if (serial_rx_irqs)
        ok("serial");
    else
        fail("serial", "line received without any IRQ 4");
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    serial_init();
    idt_init();
    pic_init(0x20, 0x28);
    kprintf("multiboot guest\n");
    if (magic != 0x2BADB002) {
        fail("magic", "EAX = %x, want 2badb002", magic);
        finish();
    }
    ok("magic");
    const char *cl = (mi->flags & (1u << 2)) ? (const char *)(uintptr_t)mi->cmdline : 0;
    note("cmdline %s", cl ? cl : "(none)");
    if (!cmdline_get(cl, "tests", tests, sizeof tests)) {
        memcpy(tests, DEFAULT_TESTS, sizeof DEFAULT_TESTS);
        if ((mi->flags & (1u << 3)) && mi->mods_count)
            memcpy(tests + strlen(tests), ",initrd", 8);
    }
    note("tests %s", tests);
    if (list_has(tests, "mem")) check_mem(mi, cl);
    if (list_has(tests, "cmdline")) check_cmdline(cl);
    if (list_has(tests, "initrd")) check_initrd(mi, cl);
    run_platform_checks(tests);
    if (list_has(tests, "serial")) check_serial();
    finish();
}
