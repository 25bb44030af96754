/* The serial result protocol: "ok <name>", "FAIL <name>: detail", then
 * "ALL OK" + debug exit 0 or "FAILED n" + debug exit 1. */
#include "lib.h"

static int nfail;

void ok(const char *name)
{
    kprintf("ok %s\n", name);
}

void fail(const char *name, const char *fmt, ...)
{
    va_list ap;
    nfail++;
    kprintf("FAIL %s: ", name);
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
}

void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
}

int failures(void)
{
    return nfail;
}

void debug_exit(uint8_t code)
{
    outb(0xF4, code);
    /* Not under a VMM with the debug-exit device: park the CPU. */
    for (;;) {
        cli();
        hlt();
    }
}

void finish(void)
{
    if (nfail == 0) {
        kprintf("ALL OK\n");
        debug_exit(0);
    }
    kprintf("FAILED %d\n", nfail);
    debug_exit(1);
}
