/* pvh: checks the hvm_start_info a PVH loader passes in EBX: magic, version,
 * command line, memory map (version >= 1) and the initrd module. */
#include "../lib/lib.h"
#include "../lib/memmap.h"

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
} __attribute__((packed));
struct hvm_modlist_entry { uint64_t paddr, size, cmdline_paddr, reserved; } __attribute__((packed));
struct hvm_memmap_entry { uint64_t addr, size; uint32_t type, reserved; } __attribute__((packed));

#define HVM_START_MAGIC 0x336EC578u
#define DEFAULT_TESTS "mem,cmdline,pci,mptable,rtc,pit"

static char tests[256];
static struct mrange ranges[64];

static void check_initrd(const struct hvm_start_info *si, const char *cl)
{
    char v[32];
    if (si->nr_modules != 1 || !si->modlist_paddr) {
        fail("initrd", "%u modules (list at %llx), want 1", si->nr_modules,
             (unsigned long long)si->modlist_paddr);
        return;
    }
    const struct hvm_modlist_entry *m = (const void *)(uintptr_t)si->modlist_paddr;
    uint32_t size = (uint32_t)m->size;
    uint32_t sum = fnv1a32((const void *)(uintptr_t)m->paddr, size);
    note("initrd paddr=%llx size=%u fnv1a32=%08x", (unsigned long long)m->paddr, size, sum);
    if (cmdline_get(cl, "initrd_size", v, sizeof v) && parse_u64(v, 0, 0) != size) {
        fail("initrd", "size %u, initrd_size says %s", size, v);
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

void pvh_main(const struct hvm_start_info *si)
{
    serial_init();
    idt_init();
    pic_init(0x20, 0x28);
    kprintf("pvh guest\n");
    note("start_info at %p", si);
    if (si->magic != HVM_START_MAGIC) {
        fail("magic", "start_info magic %x, want 336ec578", si->magic);
        finish();
    }
    ok("magic");
    note("start_info version=%u flags=%x nr_modules=%u cmdline=%llx rsdp=%llx memmap=%llx entries=%u",
         si->version, si->flags, si->nr_modules, (unsigned long long)si->cmdline_paddr,
         (unsigned long long)si->rsdp_paddr, (unsigned long long)si->memmap_paddr, si->memmap_entries);
    const char *cl = si->cmdline_paddr ? (const char *)(uintptr_t)si->cmdline_paddr : 0;
    note("cmdline %s", cl ? cl : "(none)");
    if (!cmdline_get(cl, "tests", tests, sizeof tests)) {
        memcpy(tests, DEFAULT_TESTS, sizeof DEFAULT_TESTS);
        if (si->nr_modules)
            memcpy(tests + strlen(tests), ",initrd", 8);
    }
    note("tests %s", tests);
    if (list_has(tests, "mem")) {
        if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries) {
            fail("mem", "no memory map (version %u)", si->version);
        } else {
            const struct hvm_memmap_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
            unsigned n = si->memmap_entries < 64 ? si->memmap_entries : 64;
            for (unsigned i = 0; i < n; i++) {
                ranges[i].base = e[i].addr;
                ranges[i].len = e[i].size;
                ranges[i].type = e[i].type;
            }
            char want[32];
            int have = cmdline_get(cl, "mem", want, sizeof want);
            check_memmap("mem", ranges, (int)n, have ? want : 0);
        }
    }
    if (list_has(tests, "cmdline")) {
        char v[128];
        if (!cl)
            fail("cmdline", "no command line");
        else if (!cmdline_get(cl, "expect", v, sizeof v))
            fail("cmdline", "no expect= token in \"%s\"", cl);
        else {
            note("expect %s", v);
            ok("cmdline");
        }
    }
    if (list_has(tests, "initrd"))
        check_initrd(si, cl);
    run_platform_checks(tests);
    finish();
}
