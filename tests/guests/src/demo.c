/* demo: the interactive guest of the README: a tiny shell on COM1.
 * Multiboot v1 (boots under vmd and under QEMU -kernel). Start-up is kept to a
 * few thousand instructions: UART, IDT, PIC, then the prompt. Input is
 * interrupt-driven (IRQ 4) and the CPU halts between keystrokes. */
#include "../lib/lib.h"

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
} __attribute__((packed));
struct mb_mmap { uint32_t size; uint64_t base, len; uint32_t type; } __attribute__((packed));

static const struct mb_info *info;
static int rx_polled;

static int getch(void)
{
    int c;
    if (rx_polled) {
        while ((c = serial_poll_getc()) < 0)
            cpu_relax();
        return c;
    }
    cli();
    while ((c = serial_rx_pop()) < 0)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    sti();
    return c;
}

static void cmd_help(void)
{
    kprintf("commands:\n"
            "  help          this list\n"
            "  mem           memory map from the boot loader\n"
            "  pci           PCI devices on bus 0\n"
            "  date          RTC time (UTC, ISO 8601)\n"
            "  echo <text>   print text\n"
            "  cpus          processors listed in the MP table\n"
            "  poweroff      power off (debug exit 0)\n"
            "  reboot        reset through the i8042\n");
}

static const char *type_name(uint32_t t)
{
    switch (t) {
    case 1: return "ram";
    case 2: return "reserved";
    case 3: return "acpi";
    case 4: return "nvs";
    default: return "other";
    }
}

static void cmd_mem(void)
{
    if (!info || !(info->flags & (1u << 6))) {
        kprintf("no memory map from the boot loader\n");
        return;
    }
    uint64_t ram = 0;
    uint32_t a = info->mmap_addr, end = a + info->mmap_length;
    while (a < end) {
        const struct mb_mmap *m = (const struct mb_mmap *)(uintptr_t)a;
        kprintf("  %016llx-%016llx %s\n", (unsigned long long)m->base,
                (unsigned long long)(m->base + m->len - 1), type_name(m->type));
        if (m->type == 1)
            ram += m->len;
        a += m->size + 4;
    }
    kprintf("usable RAM: %llu KiB (%llu MiB)\n", (unsigned long long)(ram >> 10),
            (unsigned long long)(ram >> 20));
}

static void cmd_pci(void)
{
    for (unsigned slot = 0; slot < 32; slot++) {
        for (unsigned fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read32(0, slot, fn, 0);
            if ((id & 0xFFFF) == 0xFFFF) {
                if (fn == 0)
                    break;
                continue;
            }
            uint32_t cls = pci_read32(0, slot, fn, 8);
            kprintf("  00:%02x.%u %04x:%04x class %06x rev %02x\n", slot, fn, id & 0xFFFF,
                    id >> 16, cls >> 8, cls & 0xFF);
            if (fn == 0 && !(pci_read32(0, slot, 0, 0x0C) & 0x800000))
                break;                  /* not multi-function */
        }
    }
}

static void cmd_date(void)
{
    struct rtc_time t;
    if (rtc_read(&t)) {
        kprintf("RTC not answering\n");
        return;
    }
    kprintf("%04u-%02u-%02uT%02u:%02u:%02uZ\n", t.year, t.mon, t.day, t.hour, t.min, t.sec);
}

static void cmd_cpus(void)
{
    struct mp_info mp;
    mp_scan(&mp);
    if (!mp.found || !mp.table_addr) {
        kprintf("no MP table\n");
        return;
    }
    kprintf("%d cpu(s):", mp.cpus);
    for (int i = 0; i < mp.cpus && i < 16; i++)
        kprintf(" apic%u", mp.cpu_apic_ids[i]);
    kprintf("\nI/O APIC id %d at %x\n", mp.ioapic_id, mp.ioapic_addr);
}

static void run(char *line)
{
    while (*line == ' ')
        line++;
    char *arg = line;
    while (*arg && *arg != ' ')
        arg++;
    if (*arg)
        *arg++ = 0;
    while (*arg == ' ')
        arg++;
    if (!*line)
        return;
    if (!strcmp(line, "help")) cmd_help();
    else if (!strcmp(line, "mem")) cmd_mem();
    else if (!strcmp(line, "pci")) cmd_pci();
    else if (!strcmp(line, "date")) cmd_date();
    else if (!strcmp(line, "echo")) kprintf("%s\n", arg);
    else if (!strcmp(line, "cpus")) cmd_cpus();
    else if (!strcmp(line, "poweroff")) {
        kprintf("powering off\n");
        debug_exit(0);
    } else if (!strcmp(line, "reboot")) {
        kprintf("rebooting\n");
        outb(0x64, 0xFE);
        for (;;)
            hlt();
    } else
        kprintf("%s: unknown command (try help)\n", line);
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    char line[128];
    unsigned n = 0;
    int last = 0;
    serial_init();
    info = magic == 0x2BADB002 ? mi : 0;
    const char *cl = info && (info->flags & 4) ? (const char *)(uintptr_t)info->cmdline : 0;
    char v[16];
    rx_polled = cmdline_get(cl, "rx", v, sizeof v) && !strcmp(v, "poll");
    if (!rx_polled) {
        idt_init();
        pic_init(0x20, 0x28);
        lapic_virtual_wire();          /* PIC output reaches the CPU, as after a BIOS */
        serial_rx_irq_enable(0x20 + COM1_IRQ);
        sti();
    }
    kprintf("\nvmd demo guest. Type 'help' for commands.\n");
    for (;;) {
        kprintf("vmd-demo# ");
        n = 0;
        for (;;) {
            int c = getch();
            if (c == '\n' && last == '\r') {   /* CR LF: the LF is part of the same Enter */
                last = c;
                continue;
            }
            last = c;
            if (c == '\r' || c == '\n') {
                kprintf("\n");
                break;
            }
            if (c == 0x08 || c == 0x7F) {
                if (n) {
                    n--;
                    kprintf("\b \b");
                }
                continue;
            }
            if (c == 0x03) {                   /* ^C: drop the line */
                kprintf("^C\n");
                n = 0;
                break;
            }
            if (c == 0x15) {                   /* ^U: erase the line */
                while (n) {
                    n--;
                    kprintf("\b \b");
                }
                continue;
            }
            if (c < 0x20 || c > 0x7E || n >= sizeof line - 1)
                continue;
            line[n++] = (char)c;
            serial_putc((char)c);
        }
        line[n] = 0;
        run(line);
    }
}
