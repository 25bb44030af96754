/* bzimage: checks the Linux boot_params ("zero page") a bzImage loader passes:
 * the copied setup header, the e820 table, the command line (cmd_line_ptr)
 * and the initrd (ramdisk_image/ramdisk_size), then the platform. */
#include "../lib/lib.h"
#include "../lib/memmap.h"

#define BP_EXT_RAMDISK_IMAGE 0x0C0
#define BP_EXT_RAMDISK_SIZE  0x0C4
#define BP_EXT_CMD_LINE_PTR  0x0C8
#define BP_E820_ENTRIES      0x1E8
#define BP_SETUP_SECTS       0x1F1
#define BP_BOOT_FLAG         0x1FE
#define BP_HEADER            0x202
#define BP_VERSION           0x206
#define BP_TYPE_OF_LOADER    0x210
#define BP_LOADFLAGS         0x211
#define BP_RAMDISK_IMAGE     0x218
#define BP_RAMDISK_SIZE      0x21C
#define BP_CMD_LINE_PTR      0x228
#define BP_E820_TABLE        0x2D0

#define DEFAULT_TESTS "hdr,mem,cmdline,pci,mptable,rtc,pit"

static char tests[256];
static struct mrange ranges[128];

static uint32_t u32(const uint8_t *bp, unsigned off) { uint32_t v; memcpy(&v, bp + off, 4); return v; }
static uint16_t u16(const uint8_t *bp, unsigned off) { uint16_t v; memcpy(&v, bp + off, 2); return v; }

static void check_initrd(const uint8_t *bp, const char *cl)
{
    char v[32];
    uint64_t image = u32(bp, BP_RAMDISK_IMAGE) | (uint64_t)u32(bp, BP_EXT_RAMDISK_IMAGE) << 32;
    uint64_t size = u32(bp, BP_RAMDISK_SIZE) | (uint64_t)u32(bp, BP_EXT_RAMDISK_SIZE) << 32;
    if (!image || !size) {
        fail("initrd", "no ramdisk (image %llx size %llu)", (unsigned long long)image, (unsigned long long)size);
        return;
    }
    if (image + size > 0x100000000ull) {
        fail("initrd", "ramdisk at %llx above our 4 GiB map", (unsigned long long)image);
        return;
    }
    uint32_t sum = fnv1a32((const void *)(uintptr_t)image, (size_t)size);
    note("initrd image=%llx size=%llu fnv1a32=%08x", (unsigned long long)image, (unsigned long long)size, sum);
    if (cmdline_get(cl, "initrd_size", v, sizeof v) && parse_u64(v, 0, 0) != size) {
        fail("initrd", "size %llu, initrd_size says %s", (unsigned long long)size, v);
        return;
    }
    if (!cmdline_get(cl, "initrd_sum", v, sizeof v)) {
        fail("initrd", "no initrd_sum= token on the command line");
        return;
    }
    if ((uint32_t)parse_u64(v, 16, 0) != sum) {
        fail("initrd", "fnv1a32 %08x, initrd_sum says %s", sum, v);
        return;
    }
    ok("initrd");
}

void bz_main(const uint8_t *bp, int entry)
{
    serial_init();
    idt_init();
    pic_init(0x20, 0x28);
    kprintf("bzimage guest\n");
    note("entry %d (%s), boot_params at %p", entry,
         entry == 64 ? "64-bit entry at +0x200" : entry == 32 ? "32-bit entry at +0" :
         "real-mode setup, then 32-bit entry", bp);
    uint64_t clp = u32(bp, BP_CMD_LINE_PTR) | (uint64_t)u32(bp, BP_EXT_CMD_LINE_PTR) << 32;
    const char *cl = clp && clp < 0x100000000ull ? (const char *)(uintptr_t)clp : 0;
    note("cmdline %s", cl ? cl : "(none)");
    if (!cmdline_get(cl, "tests", tests, sizeof tests)) {
        memcpy(tests, DEFAULT_TESTS, sizeof DEFAULT_TESTS);
        if (u32(bp, BP_RAMDISK_SIZE))
            memcpy(tests + strlen(tests), ",initrd", 8);
    }
    note("tests %s", tests);
    if (list_has(tests, "hdr")) {
        note("setup header: setup_sects=%u boot_flag=%x version=%x type_of_loader=%x loadflags=%x",
             bp[BP_SETUP_SECTS], u16(bp, BP_BOOT_FLAG), u16(bp, BP_VERSION), bp[BP_TYPE_OF_LOADER],
             bp[BP_LOADFLAGS]);
        if (u32(bp, BP_HEADER) != 0x53726448)
            fail("hdr", "no \"HdrS\" at boot_params+0x202 (setup header not copied)");
        else if (u16(bp, BP_VERSION) != 0x020F || u16(bp, BP_BOOT_FLAG) != 0xAA55)
            fail("hdr", "version %x boot_flag %x, want 20f aa55", u16(bp, BP_VERSION), u16(bp, BP_BOOT_FLAG));
        else
            ok("hdr");
    }
    if (list_has(tests, "mem")) {
        unsigned n = bp[BP_E820_ENTRIES];
        if (n > 128)
            n = 128;
        for (unsigned i = 0; i < n; i++) {
            const uint8_t *e = bp + BP_E820_TABLE + 20 * i;
            memcpy(&ranges[i].base, e, 8);
            memcpy(&ranges[i].len, e + 8, 8);
            memcpy(&ranges[i].type, e + 16, 4);
        }
        char want[32];
        int have = cmdline_get(cl, "mem", want, sizeof want);
        check_memmap("mem", ranges, (int)n, have ? want : 0);
    }
    if (list_has(tests, "cmdline")) {
        char v[128];
        if (!cl)
            fail("cmdline", "cmd_line_ptr is 0");
        else if (!cmdline_get(cl, "expect", v, sizeof v))
            fail("cmdline", "no expect= token in \"%s\"", cl);
        else {
            note("expect %s", v);
            ok("cmdline");
        }
    }
    if (list_has(tests, "initrd"))
        check_initrd(bp, cl);
    run_platform_checks(tests);
    finish();
}
