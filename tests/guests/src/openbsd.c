/* openbsd64 / openbsd32: check what a vmd-style direct boot of an OpenBSD kernel
 * hands over (see docs/platform.md and the vmd reference, section 3.13):
 *   - the boot stack at the entry ESP, 32-bit words, as /boot's call
 *       (*entry)(howto, bootdev, BOOTARG_APIVER, end, extmem, cnvmem, argsize, argaddr)
 *     leaves it: [0] return address, [1] howto, [2] bootdev, [3] API version,
 *     [4] kernel end, [5] extmem, [6] cnvmem, [7] boot-args size, [8] boot-args address
 *   - the boot-args page at 0x2000: {type, size, next, data...} records ended
 *     by type 0xFFFFFFFF; MEMMAP (0) = bios_memmap_t {u64 addr, u64 size, u32 type}
 *     packed, ended by type 0; CONSDEV (5) = {dev_t, speed, addr, ...}.
 * Then the platform: PCI, MP table, RTC and the PIT through the PIC. */
#include "../lib/lib.h"
#include "../lib/memmap.h"

#define BOOTARGS_PAGE   0x2000u
#define BOOTARG_MEMMAP  0
#define BOOTARG_CONSDEV 5
#define BOOTARG_END     0xFFFFFFFFu
#define BOOTDEV_SD0A    0xA0000004u     /* MAKEBOOTDEV(4,0,0,0,0) with B_DEVMAGIC */
#define COM0_DEV        0x0800u         /* makedev(8, 0) */

extern char _end[];
static struct mrange ranges[64];

static void check_stack(uint32_t sp, uint32_t *argsz, uint32_t *argaddr)
{
    const volatile uint32_t *w = (const volatile uint32_t *)(uintptr_t)sp;
    note("boot stack at %x: ret=%x howto=%x bootdev=%x apiver=%x end=%x extmem=%x cnvmem=%x argsize=%x args=%x",
         sp, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]);
    *argsz = w[7];
    *argaddr = w[8];
    if (sp != 0xFFDC)
        fail("stack", "entry ESP %x, vmd leaves 0xFFDC (stack page 0xF000, 36 bytes pushed)", sp);
    else if (w[1] != 0)
        fail("stack", "howto %x, want 0", w[1]);
    else
        ok("stack");
    if (w[2] == BOOTDEV_SD0A)
        ok("bootdev");
    else
        fail("bootdev", "%x, want %x (sd0a)", w[2], BOOTDEV_SD0A);
    if (w[3] == 0x0E)
        ok("apiver");
    else
        fail("apiver", "%x, want 0x0e", w[3]);
    uint32_t kend = (uint32_t)(uintptr_t)_end;
    if (w[4] >= kend && w[4] < kend + 0x1000000)
        ok("end");
    else
        fail("end", "kernel end %x, our image ends at %x", w[4], kend);
    if (w[8] == BOOTARGS_PAGE && w[7] > 12 && w[7] <= 4096)
        ok("argptr");
    else
        fail("argptr", "boot args at %x size %u, want 0x2000 and 13..4096 bytes", w[8], w[7]);
}

static void check_bootargs(uint32_t argsz)
{
    const uint8_t *p = (const uint8_t *)(uintptr_t)BOOTARGS_PAGE;
    uint32_t off = 0;
    int seen_memmap = 0, seen_cons = 0, seen_end = 0;
    if (argsz > 4096 || argsz < 4)
        argsz = 4096;
    while (off + 4 <= 4096) {
        uint32_t type = *(const uint32_t *)(p + off);
        if (type == BOOTARG_END) {
            seen_end = 1;
            note("bootarg END at +%u", off);
            break;
        }
        uint32_t size = *(const uint32_t *)(p + off + 4);
        note("bootarg type %u size %u at +%u", type, size, off);
        if (size < 12 || off + size > 4096) {
            fail("bootargs", "record at +%u has bad size %u", off, size);
            return;
        }
        const uint8_t *d = p + off + 12;
        if (type == BOOTARG_MEMMAP) {
            int n = 0;
            seen_memmap = 1;
            for (uint32_t o = 0; o + 20 <= size - 12 && n < 64; o += 20) {
                uint64_t a = *(const uint64_t *)(d + o), s = *(const uint64_t *)(d + o + 8);
                uint32_t t = *(const uint32_t *)(d + o + 16);
                if (t == 0)           /* BIOS_MAP_END */
                    break;
                ranges[n].base = a;
                ranges[n].len = s;
                ranges[n].type = t;
                n++;
            }
            check_memmap("memmap", ranges, n, 0);
        } else if (type == BOOTARG_CONSDEV) {
            uint32_t dev = *(const uint32_t *)d, speed = *(const uint32_t *)(d + 4);
            uint32_t addr = *(const uint32_t *)(d + 8);
            seen_cons = 1;
            note("consdev dev=%x speed=%u addr=%x", dev, speed, addr);
            if (dev == COM0_DEV && speed == 115200 && addr == 0x3F8)
                ok("consdev");
            else
                fail("consdev", "dev %x speed %u addr %x, want 800 115200 3f8", dev, speed, addr);
        }
        off += size;
    }
    if (!seen_memmap)
        fail("memmap", "no BOOTARG_MEMMAP record");
    if (!seen_cons)
        fail("consdev", "no BOOTARG_CONSDEV record");
    if (seen_end && off + 4 <= argsz)
        ok("bootargs");
    else if (seen_end)
        fail("bootargs", "END marker at +%u lies beyond the size on the stack (%u)", off, argsz);
    else
        fail("bootargs", "no END marker (0xffffffff)");
}

static void check_cpu_mode(int mode)
{
    unsigned long cr0 = read_cr0(), cr4 = read_cr4();
    uint64_t efer = rdmsr(0xC0000080);
#ifdef __x86_64__
    const char *how = mode == 64 ? "long64" : "compat32";
#else
    const char *how = "prot32";
#endif
    note("cpu entry=%s cr0=%lx cr4=%lx efer=%llx", how,
         cr0, cr4, (unsigned long long)efer);
#ifdef __x86_64__
    if ((efer & 0x500) == 0x500 && (cr0 & 0x80000001) == 0x80000001 && (cr4 & 0x20))
        ok("longmode");
    else
        fail("longmode", "EFER.LME|LMA, CR0.PG|PE and CR4.PAE expected");
#else
    (void)mode;
    if ((cr0 & 1) && !(efer & 0x400))
        ok("protmode");
    else
        fail("protmode", "CR0.PE expected and EFER.LMA clear");
#endif
}

void obsd_main(uint32_t sp, int mode)
{
    uint32_t argsz, argaddr;
    serial_init();
    idt_init();
    pic_init(0x20, 0x28);
#ifdef __x86_64__
    kprintf("openbsd64 guest\n");
#else
    kprintf("openbsd32 guest\n");
#endif
    check_cpu_mode(mode);
    check_stack(sp, &argsz, &argaddr);
    check_bootargs(argsz);
    run_platform_checks("pci,mptable,rtc,pit");
    finish();
}
