/* biosboot: runs from the option ROM's Bootstrap Entry Vector in real mode
 * (compiled with -m16, tiny model at 0x0800:0000). Prints on COM1 directly,
 * checks the boot-time environment (entry CS, caller's stack, IVT and BDA),
 * reads the memory map with INT 15h E820 and reports the RAM total, and
 * checks that the firmware's image below 4 GiB is ROM: a write over its
 * reset vector (through INT 15h AH=87h, the BIOS's block move) is lost. */
#include "../lib/lib.h"
#include "../lib/memmap.h"

/* Serial output for the shared printf (lib/serial.c needs interrupts code). */
void serial_raw_putc(char c)
{
    unsigned spins = 0;
    while (!(inb(COM1 + 5) & 0x20) && ++spins < 100000)
        ;
    outb(COM1, (uint8_t)c);
}

void serial_putc(char c)
{
    if (c == '\n')
        serial_raw_putc('\r');
    serial_raw_putc(c);
}

static void uart_init(void)
{
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0x07);
    outb(COM1 + 4, 0x03);
}

/* Read a word at seg:off (outside our own 0x0800 segment) through FS. */
static uint16_t peek16(uint16_t seg, uint16_t off)
{
    uint16_t v;
    __asm__ volatile("mov %1, %%fs\n\tmovw %%fs:(%2), %0" : "=r"(v) : "r"(seg), "b"(off));
    return v;
}

struct e820 { uint64_t base, len; uint32_t type; } __attribute__((packed));

static int e820_next(uint32_t *cont, struct e820 *e)
{
    uint32_t eax = 0xE820, ebx = *cont, ecx = sizeof *e, edx = 0x534D4150;
    uint8_t cf;
    __asm__ volatile("int $0x15\n\tsetc %1"
                     : "+a"(eax), "=qm"(cf), "+b"(ebx), "+c"(ecx), "+d"(edx)
                     : "D"((uint16_t)(uintptr_t)e)
                     : "memory", "cc");
    if (cf || eax != 0x534D4150)
        return -1;
    *cont = ebx;
    return 0;
}

static struct mrange ranges[64];

/* INT 15h AH=87h copies CX words between two 32-bit linear addresses, given as
 * the source and destination data descriptors (entries 2 and 3) of a 6-entry
 * GDT at ES:SI; the BIOS fills in the rest (IBM PC AT BIOS reference, SeaBIOS
 * handle_1587). Our segments all start at 0x8000. */
static uint8_t move_gdt[48];

static void data_descriptor(uint8_t *d, uint32_t base)
{
    d[0] = 0xFF; d[1] = 0xFF;           /* limit 0xFFFF */
    d[2] = base; d[3] = base >> 8; d[4] = base >> 16;
    d[5] = 0x93;                        /* present, data, writable, accessed */
    d[6] = 0;
    d[7] = base >> 24;
}

static uint32_t linear(const void *p)
{
    return 0x8000 + (uint16_t)(uintptr_t)p;
}

static int block_move(uint32_t from, uint32_t to, uint16_t words)
{
    memset(move_gdt, 0, sizeof move_gdt);
    data_descriptor(move_gdt + 16, from);
    data_descriptor(move_gdt + 24, to);
    uint16_t ax = 0x8700;
    uint8_t cf;
    __asm__ volatile("int $0x15\n\tsetc %1"
                     : "+a"(ax), "=qm"(cf)
                     : "c"(words), "S"((uint16_t)(uintptr_t)move_gdt)
                     : "memory", "cc");
    return cf || (ax >> 8) ? -1 : 0;
}

#define RESET_VECTOR 0xFFFFFFF0u

static void check_rom(void)
{
    static uint8_t before[16], over[16], after[16];
    if (block_move(RESET_VECTOR, linear(before), 8)) {
        fail("rom", "INT 15h AH=87h failed reading the reset vector");
        return;
    }
    note("rom reset vector %02x %02x %02x %02x %02x", before[0], before[1], before[2], before[3], before[4]);
    for (unsigned i = 0; i < sizeof over; i++)
        over[i] = (uint8_t)~before[i];
    if (block_move(linear(over), RESET_VECTOR, 8) || block_move(RESET_VECTOR, linear(after), 8)) {
        fail("rom", "INT 15h AH=87h failed writing the reset vector");
        return;
    }
    if (before[0] != 0xEA)
        fail("rom", "the reset vector starts %02x, not a far jump (0xEA): the block move did not reach it", before[0]);
    else if (memcmp(before, after, sizeof after) != 0)
        fail("rom", "the firmware image took a write: its reset vector now starts %02x", after[0]);
    else
        ok("rom");
}

void bev_main(uint32_t caller_ss, uint32_t caller_sp, uint32_t entry_cs)
{
    uart_init();
    kprintf("\nbiosboot guest: BEV entered at %04x:%04x\n", entry_cs, 0);
    note("caller stack %04x:%04x (linear %x)", caller_ss, caller_sp, caller_ss * 16 + caller_sp);

    if (entry_cs >= 0xC000 && entry_cs < 0xF000)
        ok("bev");
    else
        fail("bev", "BEV ran with CS %04x, outside the option-ROM area C000-EFFF", entry_cs);

    uint32_t lin = caller_ss * 16 + caller_sp;
    if (caller_sp >= 0x100 && lin > 0x500 && lin <= 0xA0000)
        ok("stack");
    else
        fail("stack", "caller SS:SP %04x:%04x is not a usable conventional-memory stack", caller_ss, caller_sp);

    static const uint8_t vecs[] = { 0x10, 0x13, 0x15, 0x16, 0x19 };
    int bad = 0;
    for (unsigned i = 0; i < sizeof vecs; i++) {
        uint16_t off = peek16(0, vecs[i] * 4), seg = peek16(0, vecs[i] * 4 + 2);
        note("int %02x -> %04x:%04x", vecs[i], seg, off);
        if ((seg == 0 && off == 0) || seg < 0x9000)  /* BIOS, ROMs and EBDA live above */
            bad++;
    }
    uint16_t com1 = peek16(0x40, 0x00), basekb = peek16(0x40, 0x13);
    note("bda com1=%x basemem=%u KiB ebda=%04x", com1, basekb, peek16(0x40, 0x0E));
    if (bad)
        fail("ivt", "%d BIOS interrupt vectors missing or outside BIOS/ROM/EBDA areas", bad);
    else if (basekb < 512 || basekb > 640)
        fail("ivt", "BDA base memory %u KiB", basekb);
    else
        ok("ivt");

    uint32_t cont = 0;
    int n = 0;
    struct e820 e;
    do {
        memset(&e, 0, sizeof e);
        if (e820_next(&cont, &e))
            break;
        ranges[n].base = e.base;
        ranges[n].len = e.len;
        ranges[n].type = e.type;
        n++;
    } while (cont && n < 64);
    uint64_t ram = 0;
    for (int i = 0; i < n; i++)
        if (ranges[i].type == 1)
            ram += ranges[i].len;
    check_memmap("e820", ranges, n, 0);
    note("ram_total %llu", (unsigned long long)ram);
    note("ram_total_mib %llu", (unsigned long long)(ram >> 20));
    check_rom();
    finish();
}
