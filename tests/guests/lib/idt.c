/* IDT for 32-bit and 64-bit guests, with a C dispatcher and per-vector handlers. */
#include "lib.h"

extern char isr_stubs[];

#ifdef __x86_64__
struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
} __attribute__((packed));
struct irq_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    uint64_t vector, error, ip, cs, flags, sp, ss;
};
#else
struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));
struct irq_frame {
    uint32_t edi, esi, ebp, esp0, ebx, edx, ecx, eax;
    uint32_t vector, error, ip, cs, flags;
};
#endif

static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];

struct __attribute__((packed)) desc_ptr {
    uint16_t limit;
    uintptr_t base;
};

void isr_dispatch(struct irq_frame *f)
{
    int v = (int)f->vector;
    if (handlers[v]) {
        handlers[v](v);
        return;
    }
    if (v < 32) {
        kprintf("FAIL exception: vector %d error %lx at ip %lx cs %lx\n", v,
                (unsigned long)f->error, (unsigned long)f->ip, (unsigned long)f->cs);
        kprintf("FAILED 1\n");
        debug_exit(1);
    }
    /* Unexpected (e.g. spurious) vector: ignore. */
}

void irq_set_handler(int vector, irq_handler_t h)
{
    handlers[vector & 255] = h;
}

void idt_init(void)
{
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (int i = 0; i < 256; i++) {
        uintptr_t a = (uintptr_t)isr_stubs + 16 * (uintptr_t)i;
        idt[i].off_lo = (uint16_t)a;
        idt[i].sel = cs;
        idt[i].type = 0x8E;          /* present, DPL 0, interrupt gate */
#ifdef __x86_64__
        idt[i].ist = 0;
        idt[i].off_mid = (uint16_t)(a >> 16);
        idt[i].off_hi = (uint32_t)(a >> 32);
        idt[i].zero = 0;
#else
        idt[i].zero = 0;
        idt[i].off_hi = (uint16_t)(a >> 16);
#endif
    }
    struct desc_ptr p = { sizeof(idt) - 1, (uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(p));
}

/* Spin (with interrupts enabled) until *ctr reaches target or the TSC timeout
 * expires. Returns the final count. */
int wait_count(volatile unsigned *ctr, unsigned target, uint64_t timeout_cycles)
{
    uint64_t start = rdtsc();
    sti();
    while (*ctr < target) {
        if (rdtsc() - start > timeout_cycles)
            break;
        cpu_relax();
    }
    cli();
    return (int)*ctr;
}
