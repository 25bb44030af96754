/* cpuinfo: a multiboot guest that prints what its CPU says about itself, for the CPU-model tests:
 *   leaf1 eax <hex> ecx <hex> edx <hex>   (CPUID.1 as the guest reads it)
 *   vendor <leaf 0 EBX EDX ECX>          ext_vendor <leaf 0x80000000 EBX EDX ECX, or - below that leaf>
 *   family <CPUID.1 EAX[11:8]>           x2apic <CPUID.1 ECX[21]>   hypervisor <CPUID.1 ECX[31]>
 *   mce <CPUID.1 EDX[7]> mca <CPUID.1 EDX[14]>
 *   mcg_cap <IA32_MCG_CAP (MSR 0x179) in hex>, only with MCE and MCA, else "mcg_cap -"
 * then "ok cpuinfo", "ALL OK" and debug exit 0. See ../README.md ("cpuinfo"). */
#include "../lib/lib.h"

#define MSR_IA32_MCG_CAP 0x179

static void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}

/* The twelve bytes of EBX, EDX, ECX, in that order, as leaf 0 spells the vendor. */
static void vendor_string(const uint32_t r[4], char out[13])
{
    memcpy(out, &r[1], 4);
    memcpy(out + 4, &r[3], 4);
    memcpy(out + 8, &r[2], 4);
    out[12] = 0;
}

void mb_main(uint32_t magic, const void *mi)
{
    uint32_t r[4];
    char vendor[13];

    (void)magic;
    (void)mi;
    serial_init();
    idt_init(); /* an exception (rdmsr refused with #GP) is a FAIL line, not a triple fault */
    kprintf("cpuinfo guest\n");
    cpuid(0, 0, r);
    vendor_string(r, vendor);
    note("vendor %s", vendor);
    cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000000u) {
        vendor_string(r, vendor);
        note("ext_vendor %s", vendor);
    } else {
        note("ext_vendor -");
    }
    cpuid(1, 0, r);
    unsigned mce = (r[3] >> 7) & 1, mca = (r[3] >> 14) & 1;
    note("leaf1 eax %x ecx %x edx %x", r[0], r[2], r[3]);
    note("family %u", (r[0] >> 8) & 0xF);
    note("x2apic %u", (r[2] >> 21) & 1);
    note("hypervisor %u", (r[2] >> 31) & 1);
    note("mce %u mca %u", mce, mca);
    if (mce && mca)
        note("mcg_cap %llx", (unsigned long long)rdmsr(MSR_IA32_MCG_CAP));
    else
        note("mcg_cap -");
    ok("cpuinfo");
    finish();
}
