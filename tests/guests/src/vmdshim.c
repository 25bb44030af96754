/* vmdshim: a test-only multiboot loader for checking, under QEMU, boot paths
 * QEMU itself cannot take.
 * 1. OpenBSD (openbsd64/openbsd32): the guest ELF is multiboot module 0; we set
 *    up what vmd would: PT_LOADs at
 * p_paddr & 0x0fffffff, boot args at 0x2000 (MEMMAP from the multiboot map,
 * CONSDEV com0 115200 0x3f8, END), boot stack at 0xFFDC, GDT at 0x10000 and,
 * for ELF64, identity page tables at 0x11000/0x12000/0x13000 (1 GiB, 2 MiB pages).
 *    Command line: "cs64" enters an ELF64 with a 64-bit CS instead of CS 0x08.
 * 2. bzImage 64-bit entry: command line "bz <kernel command line>", module 0
 *    = the bzImage, optional module 1 = initrd. boot_params at 0x7000 (setup
 *    header copied, type_of_loader 0xff, e820 from the multiboot map,
 *    cmd_line_ptr, ramdisk_image/size), protected-mode part at 0x100000,
 *    long mode with the 1 GiB identity map, CS 0x18, RIP 0x100200, RSI 0x7000. */
#include "../lib/lib.h"

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
} __attribute__((packed));
struct mb_mod { uint32_t start, end, string, reserved; } __attribute__((packed));
struct mb_mmap { uint32_t size; uint64_t base, len; uint32_t type; } __attribute__((packed));

void shim_enter(uint32_t entry, int mode, uint32_t esi) __attribute__((noreturn));

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static void identity_1g(void)
{
    uint8_t *pml4 = (uint8_t *)(uintptr_t)0x11000, *pdpt = (uint8_t *)(uintptr_t)0x12000,
            *pd = (uint8_t *)(uintptr_t)0x13000;
    memset(pml4, 0, 3 * 4096);
    put64(pml4, 0x12000 | 3);
    put64(pdpt, 0x13000 | 3);
    for (unsigned i = 0; i < 512; i++)
        put64(pd + 8 * i, (uint64_t)i * 0x200000 | 0x83);
}

static void boot_bzimage(const struct mb_info *mi, const char *kcl)
{
    const struct mb_mod *mod = (const struct mb_mod *)(uintptr_t)mi->mods_addr;
    const uint8_t *img = (const uint8_t *)(uintptr_t)mod[0].start;
    uint32_t len = mod[0].end - mod[0].start;
    if (get32(img + 0x202) != 0x53726448) {
        kprintf("vmdshim: module 0 is not a bzImage\n");
        debug_exit(2);
    }
    unsigned sects = img[0x1F1] ? img[0x1F1] : 4;
    uint32_t pm_off = (sects + 1) * 512;
    memcpy((void *)(uintptr_t)0x100000, img + pm_off, len - pm_off);
    uint8_t *bp = (uint8_t *)(uintptr_t)0x7000;
    memset(bp, 0, 4096);
    unsigned hdr_end = 0x202 + img[0x201];     /* the jump at 0x200 gives the header size */
    memcpy(bp + 0x1F1, img + 0x1F1, hdr_end - 0x1F1);
    bp[0x210] = 0xFF;                          /* type_of_loader: undefined */
    char *cl = (char *)(uintptr_t)0x6000;
    memcpy(cl, kcl, strlen(kcl) + 1);
    put32(bp + 0x228, 0x6000);
    if (mi->mods_count > 1) {
        put32(bp + 0x218, mod[1].start);
        put32(bp + 0x21C, mod[1].end - mod[1].start);
    }
    unsigned n = 0;
    for (uint32_t a = mi->mmap_addr; a < mi->mmap_addr + mi->mmap_length && n < 128;) {
        const struct mb_mmap *m = (const struct mb_mmap *)(uintptr_t)a;
        uint8_t *e = bp + 0x2D0 + 20 * n;
        put64(e, m->base);
        put64(e + 8, m->len);
        put32(e + 16, m->type);
        n++;
        a += m->size + 4;
    }
    bp[0x1E8] = (uint8_t)n;
    uint64_t gdt[4] = { 0, 0x00CF9A000000FFFFull, 0x00CF92000000FFFFull, 0x00AF9A000000FFFFull };
    memcpy((void *)(uintptr_t)0x10000, gdt, sizeof gdt);
    identity_1g();
    kprintf("vmdshim: bzImage, %u setup sectors, entering 64-bit at 0x100200, boot_params 0x7000\n", sects);
    shim_enter(0x100200, 65, 0x7000);
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    serial_init();
    if (magic != 0x2BADB002 || !(mi->flags & 8) || mi->mods_count < 1) {
        kprintf("vmdshim: need a multiboot module (the guest ELF)\n");
        debug_exit(2);
    }
    const char *cl = (mi->flags & 4) ? (const char *)(uintptr_t)mi->cmdline : "";
    int cs64 = 0;
    for (const char *c = cl; *c; c++) {
        if (!strncmp(c, "cs64", 4))
            cs64 = 1;
        if ((c == cl || c[-1] == ' ') && !strncmp(c, "bz", 2) && (c[2] == ' ' || !c[2]))
            boot_bzimage(mi, c[2] ? c + 3 : c + 2);
    }
    const struct mb_mod *mod = (const struct mb_mod *)(uintptr_t)mi->mods_addr;
    const uint8_t *elf = (const uint8_t *)(uintptr_t)mod->start;
    if (memcmp(elf, "\177ELF", 4)) {
        kprintf("vmdshim: module is not ELF\n");
        debug_exit(2);
    }
    int is64 = elf[4] == 2;
    uint32_t entry, kend = 0;
    uint64_t phoff;
    unsigned phnum, phentsz;
    if (is64) {
        entry = (uint32_t)get64(elf + 24);
        phoff = get64(elf + 32);
        phentsz = get16(elf + 54);
        phnum = get16(elf + 56);
    } else {
        entry = get32(elf + 24);
        phoff = get32(elf + 28);
        phentsz = get16(elf + 42);
        phnum = get16(elf + 44);
    }
    for (unsigned i = 0; i < phnum; i++) {
        const uint8_t *ph = elf + phoff + i * phentsz;
        uint64_t off, paddr, filesz, memsz;
        if (get32(ph) != 1)
            continue;
        if (is64) {
            off = get64(ph + 8); paddr = get64(ph + 24); filesz = get64(ph + 32); memsz = get64(ph + 40);
        } else {
            off = get32(ph + 4); paddr = get32(ph + 12); filesz = get32(ph + 16); memsz = get32(ph + 20);
        }
        uint8_t *dst = (uint8_t *)(uintptr_t)(paddr & 0x0FFFFFFF);
        memcpy(dst, elf + off, (size_t)filesz);
        memset(dst + filesz, 0, (size_t)(memsz - filesz));
        if ((paddr & 0x0FFFFFFF) + memsz > kend)
            kend = (uint32_t)((paddr & 0x0FFFFFFF) + memsz);
    }

    /* boot args */
    uint8_t *ba = (uint8_t *)(uintptr_t)0x2000;
    memset(ba, 0, 4096);
    uint32_t o = 12, n = 0;
    for (uint32_t a = mi->mmap_addr; a < mi->mmap_addr + mi->mmap_length;) {
        const struct mb_mmap *m = (const struct mb_mmap *)(uintptr_t)a;
        put64(ba + o, m->base);
        put64(ba + o + 8, m->len);
        put32(ba + o + 16, m->type);
        o += 20;
        n++;
        a += m->size + 4;
    }
    o += 20;                            /* BIOS_MAP_END: all zero */
    put32(ba, 0);
    put32(ba + 4, o);
    put32(ba + 8, o);
    uint32_t c = o;
    put32(ba + c, 5);                   /* CONSDEV */
    put32(ba + c + 4, 12 + 32);
    put32(ba + c + 8, 12 + 32);
    put32(ba + c + 12, 0x800);
    put32(ba + c + 16, 115200);
    put64(ba + c + 20, 0x3F8);
    o = c + 44;
    put32(ba + o, 0xFFFFFFFF);
    uint32_t argsz = o + 4;

    /* boot stack: the 9 words from 0xFFDC */
    uint32_t *st = (uint32_t *)(uintptr_t)0xFFDC;
    uint32_t words[9] = { 0, 0, 0xA0000004, 0x0E, kend, 0, 0, argsz, 0x2000 };
    memcpy(st, words, sizeof words);

    /* GDT at 0x10000 */
    uint64_t gdt[4] = { 0, 0x00CF9A000000FFFFull, 0x00CF92000000FFFFull, 0x00AF9A000000FFFFull };
    memcpy((void *)(uintptr_t)0x10000, gdt, sizeof gdt);
    if (is64)
        identity_1g();
    kprintf("vmdshim: ELF%d entry %x end %x, %u map entries, entering %s\n", is64 ? 64 : 32,
            entry, kend, n, is64 ? (cs64 ? "long mode, CS 0x18" : "long mode, CS 0x08 (compat)") : "32-bit flat");
    shim_enter(entry, is64 ? (cs64 ? 65 : 64) : 32, 0);
}
