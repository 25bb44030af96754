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

/* ---- smp: start every application processor of the MP table (MP spec 1.4 B.4, SDM vol. 3 8.4.4) ----
 * The trampoline is copied to SMP_TRAMP_PAGE and runs in real mode at CS = page >> 4, IP = 0. It needs
 * no fix-ups: DS = CS reaches its GDTR, whose base (our GDT above 1 MiB) and the far jump target are
 * absolute. In 32-bit mode each AP takes a slot (lock xadd), a stack, and runs smp_ap_main(slot). */
#define SMP_TRAMP_PAGE 0x8000u
#define SMP_MAX 16
#define SMP_STACK 1024

extern char smp_tramp_start[], smp_tramp_end[];
volatile uint32_t smp_slot_next;                 /* taken by the APs' lock xadd */
static volatile uint32_t smp_started;
static volatile uint32_t smp_ids[SMP_MAX];
static volatile uint64_t smp_tsc[SMP_MAX];
uint8_t smp_stacks[SMP_MAX + 1][SMP_STACK] __attribute__((aligned(16)));

__asm__(
    "    .text\n"
    "    .code16\n"
    "    .globl smp_tramp_start, smp_tramp_end\n"
    "smp_tramp_start:\n"
    "    cli\n"
    "    cld\n"
    "    mov %cs, %ax\n"
    "    mov %ax, %ds\n"
    "    lgdtl smp_tramp_gdtr - smp_tramp_start\n"
    "    mov %cr0, %eax\n"
    "    or $1, %eax\n"
    "    mov %eax, %cr0\n"
    "    ljmpl $0x08, $smp_ap_entry32\n"
    "    .p2align 2\n"
    "smp_tramp_gdtr:\n"
    "    .word smp_gdt_end - smp_gdt - 1\n"
    "    .long smp_gdt\n"
    "smp_tramp_end:\n"
    "    .code32\n"
    "smp_ap_entry32:\n"
    "    mov $0x10, %ax\n"
    "    mov %ax, %ds\n"
    "    mov %ax, %es\n"
    "    mov %ax, %fs\n"
    "    mov %ax, %gs\n"
    "    mov %ax, %ss\n"
    "    mov $1, %eax\n"
    "    lock xadd %eax, smp_slot_next\n"
    "    mov %eax, %ebx\n"
    "    cmp $" "16" ", %ebx\n"          /* SMP_MAX: later APs share the spare stack and only halt */
    "    jb 1f\n"
    "    mov $" "16" ", %ebx\n"
    "1:  lea 1(%ebx), %esp\n"
    "    shl $10, %esp\n"               /* SMP_STACK = 1024 */
    "    add $smp_stacks, %esp\n"
    "    push %eax\n"
    "    call smp_ap_main\n"
    "2:  cli\n"
    "    hlt\n"
    "    jmp 2b\n"
    "    .section .rodata\n"
    "    .p2align 3\n"
    "smp_gdt:\n"
    "    .quad 0\n"
    "    .quad 0x00CF9A000000FFFF\n"    /* 0x08: code, flat, 32-bit */
    "    .quad 0x00CF92000000FFFF\n"    /* 0x10: data, flat */
    "smp_gdt_end:\n"
    "    .text\n");

void smp_ap_main(uint32_t slot);
void smp_ap_main(uint32_t slot)
{
    uint32_t id = mmio_read32(LAPIC_DEFAULT + 0x20) >> 24;
    if (slot < SMP_MAX) {
        smp_ids[slot] = id;
        smp_tsc[slot] = rdtsc();
    }
    __atomic_fetch_add(&smp_started, 1, __ATOMIC_SEQ_CST);   /* after the id: the BSP reads ids[0..started) */
}

static uint64_t tsc_hz;

static void tsc_delay_us(uint64_t us)
{
    uint64_t t0 = rdtsc(), n = tsc_hz / 1000000 * us;
    while (rdtsc() - t0 < n)
        cpu_relax();
}

/* Send one IPI and wait for the ICR's delivery status to clear; 0 if it stayed busy (about 1 ms). */
static int smp_ipi(uint32_t dest, uint32_t low)
{
    lapic_write(0x310, dest << 24);
    lapic_write(0x300, low);
    uint64_t t0 = rdtsc();
    while (lapic_read(0x300) & (1u << 12))
        if (rdtsc() - t0 > tsc_hz / 1000)
            return 0;
    return 1;
}

static void smp_spurious(int v) { (void)v; }

static void check_smp(void)
{
    struct mp_info mp;
    mp_scan(&mp);
    if (!mp.found || !mp.table_addr || !mp.table_sum_ok) {
        fail("smp", "no usable MP table");
        return;
    }
    /* the enabled processor entries (mp_info does not keep the per-entry flags) */
    uint32_t apics[SMP_MAX];
    int ncpu = 0;
    const uint8_t *t = (const uint8_t *)(uintptr_t)mp.table_addr;
    const uint8_t *e = t + 44, *end = t + *(const uint16_t *)(t + 4);
    for (unsigned i = 0, count = *(const uint16_t *)(t + 34); i < count && e < end; i++) {
        if (e[0] == 0) {
            if ((e[3] & 1) && ncpu < SMP_MAX)
                apics[ncpu++] = e[1];
            e += 20;
        } else {
            e += 8;
        }
    }
    uint32_t bsp = lapic_id();
    tsc_hz = tsc_calibrate_pit();
    if (tsc_hz < 1000000) {
        note("smp: TSC calibration failed (%llu Hz), assuming 1 GHz", (unsigned long long)tsc_hz);
        tsc_hz = 1000000000ull;
    }
    note("smp bsp %u tsc_hz %llu", bsp, (unsigned long long)tsc_hz);

    uint32_t size = (uint32_t)(smp_tramp_end - smp_tramp_start);
    memcpy((void *)(uintptr_t)SMP_TRAMP_PAGE, smp_tramp_start, size);
    irq_set_handler(0xFF, smp_spurious);
    lapic_enable(0xFF);

    int aps = 0;
    uint32_t vector = SMP_TRAMP_PAGE >> 12;
    uint64_t t0 = rdtsc();
    for (int i = 0; i < ncpu; i++) {
        if (apics[i] == bsp)
            continue;
        aps++;
        /* INIT (level assert), INIT de-assert, 10 ms, STARTUP, 200 us, STARTUP, 200 us */
        int delivered = smp_ipi(apics[i], 0x0000C500);
        delivered &= smp_ipi(apics[i], 0x00008500);
        tsc_delay_us(10000);
        for (int n = 0; n < 2; n++) {
            delivered &= smp_ipi(apics[i], 0x00004600 | vector);
            tsc_delay_us(200);
        }
        if (!delivered)
            note("smp: ICR delivery status stayed busy for APIC %u", apics[i]);
    }
    uint64_t sent = rdtsc();
    while (smp_started < (uint32_t)aps && rdtsc() - sent < 2 * tsc_hz)
        cpu_relax();
    uint64_t t1 = rdtsc();
    uint32_t k = smp_started;

    char list[SMP_MAX * 4 + 2];
    int pos = 0;
    uint64_t last = t0;
    for (uint32_t i = 0; i < k && i < SMP_MAX; i++) {
        uint32_t id = smp_ids[i];
        if (smp_tsc[i] > last)
            last = smp_tsc[i];
        if (i)
            list[pos++] = ',';
        if (id >= 100)
            list[pos++] = (char)('0' + id / 100);
        if (id >= 10)
            list[pos++] = (char)('0' + id / 10 % 10);
        list[pos++] = (char)('0' + id % 10);
    }
    if (!pos)
        list[pos++] = '-';
    list[pos] = 0;
    note("smp cpus %d started %u ids %s", ncpu, k, list);
    note("smp ipis_us %llu last_checkin_us %llu waited_us %llu",
         (unsigned long long)((sent - t0) * 1000000 / tsc_hz),
         (unsigned long long)((last - t0) * 1000000 / tsc_hz),
         (unsigned long long)((t1 - t0) * 1000000 / tsc_hz));
    /* every AP of the table, each once, none the BSP */
    int bad = k != (uint32_t)aps;
    for (uint32_t i = 0; i < k && i < SMP_MAX && !bad; i++) {
        int found = 0;
        for (int j = 0; j < ncpu; j++)
            found |= apics[j] == smp_ids[i] && apics[j] != bsp;
        for (uint32_t j = 0; j < i; j++)
            found &= smp_ids[j] != smp_ids[i];
        bad |= !found;
    }
    if (size > 4096)
        fail("smp", "trampoline is %u bytes", size);
    else if (bad)
        fail("smp", "%u of %d APs checked in (ids %s) within 2 s", k, aps, list);
    else
        ok("smp");
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
    if (list_has(tests, "smp")) check_smp();
    if (list_has(tests, "serial")) check_serial();
    finish();
}
