/* acpi: a Multiboot v1 guest that finds the ACPI tables the way an OS does, checks them, and then
 * waits for the fixed-feature power button and powers off through PM1a_CNT (SLP_TYP of \_S5 | SLP_EN).
 * Works under vmd (its own tables) and under QEMU/SeaBIOS (QEMU's tables). See ../README.md.
 *
 * References: ACPI 6.4, 5.2.5 (RSDP and how to find it), 5.2.7/5.2.8 (RSDT/XSDT), 5.2.9 (FADT),
 * 5.2.10 (FACS), 5.2.12 (MADT), 4.8.3 (PM1 registers), 7.4.2 (\_Sx packages), 20.2 (AML encoding). */
#include "../lib/lib.h"

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
} __attribute__((packed));

struct rsdp {
    char sig[8];
    uint8_t sum;
    char oem[6];
    uint8_t rev;
    uint32_t rsdt;
    uint32_t len;
    uint64_t xsdt;
    uint8_t xsum, res[3];
} __attribute__((packed));

struct sdt {
    char sig[4];
    uint32_t len;
    uint8_t rev, sum;
    char oem[6], oemtab[8];
    uint32_t oemrev;
    char creator[4];
    uint32_t crev;
} __attribute__((packed));

#define PWRBTN 0x0100u            /* PM1_STS.PWRBTN_STS, PM1_EN.PWRBTN_EN */
#define SCI_EN 0x0001u
#define SLP_TYP_SHIFT 10
#define SLP_EN 0x2000u
#define FADT_F_PWR_BUTTON (1u << 4)
#define FADT_F_HW_REDUCED (1u << 20)

static char tests[64];
static const struct sdt *root;    /* XSDT or RSDT */
static int root_is_xsdt;
static const struct sdt *fadt, *dsdt, *madt;
static uint16_t sci_irq, pm1a_evt, pm1a_cnt;
static uint8_t pm1_evt_len, acpi_enable_val;
static uint32_t smi_cmd;
static int slp_typ_s5 = -1;
static volatile unsigned sci_count, button;

static uint8_t sum8(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint8_t s = 0;
    while (n--)
        s += *b++;
    return s;
}

static uint32_t rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* 5.2.5.1: the first KiB of the EBDA, then 0xE0000-0xFFFFF, on 16-byte boundaries. */
static const struct rsdp *scan(uintptr_t start, uintptr_t end)
{
    for (uintptr_t a = start; a + 20 <= end; a += 16)
        if (!memcmp((const void *)a, "RSD PTR ", 8) && sum8((const void *)a, 20) == 0)
            return (const struct rsdp *)a;
    return 0;
}

static const struct rsdp *find_rsdp(void)
{
    uintptr_t ebda = (uintptr_t)(*(volatile uint16_t *)0x40E) << 4;
    const struct rsdp *r = 0;
    if (ebda >= 0x80000 && ebda < 0xA0000)
        r = scan(ebda, ebda + 1024);
    return r ? r : scan(0xE0000, 0x100000);
}

static int check_table(const char *name, const struct sdt *t, const char *sig)
{
    if (!t) {
        fail(name, "no %s table", sig);
        return 0;
    }
    if (memcmp(t->sig, sig, 4)) {
        fail(name, "table at %x has signature %c%c%c%c, want %s", (uint32_t)(uintptr_t)t,
             t->sig[0], t->sig[1], t->sig[2], t->sig[3], sig);
        return 0;
    }
    if (t->len < sizeof(struct sdt) || t->len > 0x100000) {
        fail(name, "%s length %u", sig, t->len);
        return 0;
    }
    if (sum8(t, t->len)) {
        fail(name, "%s checksum is off by %u", sig, sum8(t, t->len));
        return 0;
    }
    note("table %s at %x length %u revision %u", sig, (uint32_t)(uintptr_t)t, t->len, t->rev);
    return 1;
}

static const struct sdt *find_table(const char *sig)
{
    if (!root)
        return 0;
    unsigned width = root_is_xsdt ? 8 : 4;
    unsigned n = (root->len - sizeof(struct sdt)) / width;
    const uint8_t *e = (const uint8_t *)(root + 1);
    for (unsigned i = 0; i < n; i++) {
        uint64_t a = width == 8 ? rd64(e + 8 * i) : rd32(e + 4 * i);
        if (a >> 32)
            continue;
        const struct sdt *t = (const struct sdt *)(uintptr_t)a;
        if (!memcmp(t->sig, sig, 4))
            return t;
    }
    return 0;
}

static void check_rsdp_and_root(void)
{
    const struct rsdp *r = find_rsdp();
    if (!r) {
        fail("rsdp", "no \"RSD PTR \" with a valid checksum in the EBDA or 0xE0000-0xFFFFF");
        return;
    }
    note("rsdp at %x revision %u oem %c%c%c%c%c%c rsdt %x xsdt %llx", (uint32_t)(uintptr_t)r, r->rev,
         r->oem[0], r->oem[1], r->oem[2], r->oem[3], r->oem[4], r->oem[5], r->rsdt,
         (unsigned long long)(r->rev >= 2 ? r->xsdt : 0));
    if (r->rev >= 2 && (r->len < 36 || sum8(r, r->len))) {
        fail("rsdp", "revision %u: length %u or extended checksum wrong", r->rev, r->len);
        return;
    }
    ok("rsdp");
    if (r->rsdt) {
        if (!check_table("rsdt", (const struct sdt *)(uintptr_t)r->rsdt, "RSDT"))
            return;
        root = (const struct sdt *)(uintptr_t)r->rsdt;
        ok("rsdt");
    }
    if (r->rev >= 2 && r->xsdt && !(r->xsdt >> 32)) {
        if (!check_table("xsdt", (const struct sdt *)(uintptr_t)r->xsdt, "XSDT"))
            return;
        root = (const struct sdt *)(uintptr_t)r->xsdt;
        root_is_xsdt = 1;
        ok("xsdt");
    }
    if (!root)
        fail("rsdt", "neither an RSDT nor an XSDT");
}

/* The SLP_TYP value of \_S5: Name(_S5_, Package(n){a, ...}) somewhere in the DSDT's AML. */
static int find_s5(const struct sdt *t)
{
    const uint8_t *p = (const uint8_t *)(t + 1), *end = (const uint8_t *)t + t->len;
    for (; p + 8 < end; p++) {
        if (memcmp(p, "_S5_", 4) || !(p[-1] == 0x08 || (p[-1] == '\\' && p[-2] == 0x08)))
            continue;
        p += 4;
        if (*p++ != 0x12)           /* PackageOp */
            return -1;
        p += 1 + (*p >> 6);         /* PkgLength: lead byte + (bits 7:6) more bytes */
        p++;                        /* NumElements */
        if (*p == 0x00) return 0;   /* ZeroOp */
        if (*p == 0x01) return 1;   /* OneOp */
        if (*p == 0x0A) return p[1]; /* BytePrefix */
        return -1;
    }
    return -1;
}

static void check_fadt(void)
{
    fadt = find_table("FACP");
    if (!check_table("fadt", fadt, "FACP"))
        return;
    const uint8_t *f = (const uint8_t *)fadt;
    uint32_t flags = fadt->len >= 116 ? rd32(f + 112) : 0;
    sci_irq = (uint16_t)(f[46] | f[47] << 8);
    smi_cmd = rd32(f + 48);
    acpi_enable_val = f[52];
    pm1a_evt = (uint16_t)rd32(f + 56);
    pm1a_cnt = (uint16_t)rd32(f + 64);
    pm1_evt_len = f[88];
    uint32_t pm_tmr = rd32(f + 76), facs = rd32(f + 36);
    if (fadt->len >= 244) {          /* the X_ blocks win when set (5.2.9) */
        if (!pm1a_evt && rd64(f + 148 + 4)) pm1a_evt = (uint16_t)rd64(f + 148 + 4);
        if (!pm1a_cnt && rd64(f + 172 + 4)) pm1a_cnt = (uint16_t)rd64(f + 172 + 4);
    }
    uint64_t dsdt_addr = rd32(f + 40);
    if (fadt->len >= 148 && rd64(f + 140))
        dsdt_addr = rd64(f + 140);
    note("fadt sci %u smi_cmd %x acpi_enable %x pm1a_evt %x/%u pm1a_cnt %x pm_tmr %x flags %x facs %x dsdt %llx",
         sci_irq, smi_cmd, acpi_enable_val, pm1a_evt, pm1_evt_len, pm1a_cnt, pm_tmr, flags, facs,
         (unsigned long long)dsdt_addr);
    if (flags & FADT_F_HW_REDUCED) {
        fail("fadt", "HW_REDUCED_ACPI set: no fixed PM registers");
        return;
    }
    if (flags & FADT_F_PWR_BUTTON) {
        fail("fadt", "PWR_BUTTON set: no fixed-feature power button");
        return;
    }
    if (!pm1a_evt || !pm1a_cnt || pm1_evt_len < 4 || sci_irq >= 16) {
        fail("fadt", "PM1a blocks or SCI missing");
        return;
    }
    if (facs && memcmp((const void *)(uintptr_t)facs, "FACS", 4)) {
        fail("fadt", "FIRMWARE_CTRL %x does not point at a FACS", facs);
        return;
    }
    ok("fadt");
    dsdt = (dsdt_addr >> 32) ? 0 : (const struct sdt *)(uintptr_t)dsdt_addr;
    if (!check_table("dsdt", dsdt, "DSDT"))
        return;
    ok("dsdt");
    slp_typ_s5 = find_s5(dsdt);
    if (slp_typ_s5 < 0 || slp_typ_s5 > 7) {
        fail("s5", "no usable \\_S5 package in the DSDT");
        return;
    }
    note("s5 slp_typ %d", slp_typ_s5);
    ok("s5");
}

static void check_madt(void)
{
    madt = find_table("APIC");
    if (!check_table("madt", madt, "APIC"))
        return;
    const uint8_t *m = (const uint8_t *)madt;
    note("madt lapic_addr %x flags %x", rd32(m + 36), rd32(m + 40));
    int lapics = 0, ioapics = 0, sci_iso = -1;
    for (uint32_t off = 44; off + 2 <= madt->len;) {
        const uint8_t *e = m + off;
        if (e[1] < 2 || off + e[1] > madt->len) {
            fail("madt", "bad entry length %u at offset %u", e[1], off);
            return;
        }
        switch (e[0]) {
        case 0:
            note("madt lapic uid=%u id=%u flags=%x", e[2], e[3], rd32(e + 4));
            if (rd32(e + 4) & 1)
                lapics++;
            break;
        case 1:
            note("madt ioapic id=%u addr=%x gsi=%u", e[2], rd32(e + 4), rd32(e + 8));
            ioapics++;
            break;
        case 2:
            note("madt iso bus=%u irq=%u gsi=%u flags=%x", e[2], e[3], rd32(e + 4), e[8] | e[9] << 8);
            if (e[3] == sci_irq)
                sci_iso = e[8] | e[9] << 8;
            break;
        case 4:
            note("madt nmi uid=%x flags=%x lint=%u", e[2], e[3] | e[4] << 8, e[5]);
            break;
        default:
            note("madt type=%u len=%u", e[0], e[1]);
        }
        off += e[1];
    }
    if (!lapics || !ioapics) {
        fail("madt", "%d enabled local APICs, %d I/O APICs", lapics, ioapics);
        return;
    }
    /* The SCI is level-triggered, active high (5.2.9 SCI_INT; 5.2.12.5) */
    if (sci_iso != 0x0D) {
        fail("madt", "SCI IRQ %u: interrupt source override flags %x, want d (level, active high)",
             sci_irq, sci_iso);
        return;
    }
    ok("madt");
}

static void sci_handler(int vector)
{
    (void)vector;
    sci_count++;
    uint16_t sts = inw(pm1a_evt);
    if (sts & PWRBTN) {
        outw(pm1a_evt, PWRBTN);     /* write 1 to clear, before the EOI: the SCI is a level */
        button = 1;
    }
    pic_eoi(sci_irq);
}

static void power_button(void)
{
    /* ACPI mode: with SMI_CMD = 0 the platform is always in it; else ask the firmware (4.8.2.1.1). */
    if (!(inw(pm1a_cnt) & SCI_EN) && smi_cmd) {
        outb((uint16_t)smi_cmd, acpi_enable_val);
        uint64_t start = rdtsc();
        while (!(inw(pm1a_cnt) & SCI_EN) && rdtsc() - start < 3000000000ull)
            cpu_relax();
    }
    if (!(inw(pm1a_cnt) & SCI_EN)) {
        fail("acpimode", "SCI_EN stays clear (smi_cmd %x)", smi_cmd);
        return;
    }
    ok("acpimode");
    uint16_t pm1_en = (uint16_t)(pm1a_evt + pm1_evt_len / 2);
    lapic_virtual_wire();
    irq_set_handler(0x20 + sci_irq, sci_handler);
    if (sci_irq >= 8)               /* ELCR: the SCI is level-triggered */
        outb(0x4D1, (uint8_t)(inb(0x4D1) | 1u << (sci_irq - 8)));
    else
        outb(0x4D0, (uint8_t)(inb(0x4D0) | 1u << sci_irq));
    outw(pm1a_evt, PWRBTN);         /* forget an old press */
    outw(pm1_en, (uint16_t)(inw(pm1_en) | PWRBTN));
    pic_unmask(sci_irq);
    kprintf("acpi ready\n");
    cli();
    while (!button)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    kprintf("power button\n");
    note("sci interrupts %u", sci_count);
    ok("powerbutton");
    /* 16.1.7: SLP_TYP first, then SLP_EN with it */
    uint16_t cnt = (uint16_t)(inw(pm1a_cnt) & ~(7u << SLP_TYP_SHIFT | SLP_EN));
    cnt |= (uint16_t)(slp_typ_s5 << SLP_TYP_SHIFT);
    outw(pm1a_cnt, cnt);
    outw(pm1a_cnt, (uint16_t)(cnt | SLP_EN));
    uint64_t start = rdtsc();
    while (rdtsc() - start < 3000000000ull)
        cpu_relax();
    fail("poweroff", "still running after SLP_TYP %d | SLP_EN", slp_typ_s5);
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    serial_init();
    idt_init();
    pic_init(0x20, 0x28);
    kprintf("acpi guest\n");
    const char *cl = (magic == 0x2BADB002 && (mi->flags & (1u << 2))) ? (const char *)(uintptr_t)mi->cmdline : 0;
    if (!cl || !cmdline_get(cl, "tests", tests, sizeof tests))
        memcpy(tests, "tables,powerbutton", 19);
    note("tests %s", tests);
    check_rsdp_and_root();
    if (root) {
        check_fadt();
        check_madt();
    }
    if (list_has(tests, "powerbutton") && failures() == 0)
        power_button();
    finish();
}
