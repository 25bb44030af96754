/* Memory-map checks shared by the boot protocols that hand over an e820-style
 * table: RAM at 0, RAM at 1 MiB, and the memory size.
 *
 * "memtotal" is what the VM was configured with: the end of the highest
 * range (of any type) that starts below the 0xE0000000 PCI hole, plus every
 * RAM range at or above 4 GiB. For vmd's map (RAM, reserved 0xA0000-0xFFFFF,
 * RAM from 1 MiB) and for QEMU/SeaBIOS (which reserves a little at the top of
 * low memory) this equals the -m / mem size. */
#include "lib.h"
#include "memmap.h"

uint64_t memmap_total(const struct mrange *r, int n)
{
    uint64_t low_end = 0, high = 0;
    for (int i = 0; i < n; i++) {
        if (r[i].base < 0xE0000000ull) {
            if (r[i].base + r[i].len > low_end)
                low_end = r[i].base + r[i].len;
        } else if (r[i].base >= 0x100000000ull && r[i].type == 1) {
            high += r[i].len;
        }
    }
    if (low_end > 0xE0000000ull)
        low_end = 0xE0000000ull;
    return low_end + high;
}

int check_memmap(const char *name, const struct mrange *r, int n, const char *expect_mem)
{
    int ram0 = 0, ram1m = 0;
    for (int i = 0; i < n; i++) {
        note("memmap %016llx-%016llx type %u", (unsigned long long)r[i].base,
             (unsigned long long)(r[i].base + r[i].len), r[i].type);
        if (r[i].type == 1 && r[i].base == 0 && r[i].len >= 0x9F000)
            ram0 = 1;
        if (r[i].type == 1 && r[i].base <= 0x100000 && r[i].base + r[i].len > 0x200000)
            ram1m = 1;
    }
    uint64_t total = memmap_total(r, n);
    note("memtotal %llu", (unsigned long long)total);
    if (n == 0) {
        fail(name, "empty memory map");
        return 0;
    }
    if (!ram0) {
        fail(name, "no RAM range starting at 0 of at least 636 KiB");
        return 0;
    }
    if (!ram1m) {
        fail(name, "no RAM range covering 1 MiB-2 MiB");
        return 0;
    }
    if (expect_mem && *expect_mem) {
        int good;
        uint64_t want = parse_u64(expect_mem, 0, &good);
        if (!good) {
            fail(name, "cannot parse mem=%s", expect_mem);
            return 0;
        }
        if (want != total) {
            fail(name, "memory map adds up to %llu bytes, mem= says %llu",
                 (unsigned long long)total, (unsigned long long)want);
            return 0;
        }
    }
    ok(name);
    return 1;
}
