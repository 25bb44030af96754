/* Shared declarations of the guest support library (tests/guests/lib). */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H
#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include "io.h"

/* ---- serial (16550 at COM1) ---- */
#define COM1 0x3F8
#define COM1_IRQ 4
void serial_init(void);
void serial_putc(char c);           /* polled: waits for THRE; '\n' becomes "\r\n" */
void serial_raw_putc(char c);       /* polled, no newline translation */
void serial_puts(const char *s);
int serial_poll_getc(void);         /* -1 when nothing is waiting */
void serial_rx_irq_enable(int vector);  /* IER.RDA + MCR.OUT2 + PIC IRQ4 at vector */
int serial_rx_pop(void);            /* from the interrupt-filled ring, -1 if empty */
extern volatile unsigned serial_rx_irqs;

/* ---- formatted output ---- */
void kprintf(const char *fmt, ...);
void kvprintf(const char *fmt, va_list ap);

/* ---- strings and command lines ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
/* Find "key=value" among space-separated tokens; copy value, return 1 if found. */
int cmdline_get(const char *cmdline, const char *key, char *out, size_t outlen);
/* Is word present in a comma-separated list? */
int list_has(const char *list, const char *word);
uint64_t parse_u64(const char *s, int base, int *okp);
uint32_t fnv1a32(const void *p, size_t n);

/* ---- result protocol ---- */
void ok(const char *name);
void fail(const char *name, const char *fmt, ...);
void note(const char *fmt, ...);    /* informational line, not a check */
int failures(void);
void finish(void) __attribute__((noreturn));
void debug_exit(uint8_t code) __attribute__((noreturn));

/* ---- interrupts ---- */
struct irq_frame;
typedef void (*irq_handler_t)(int vector);
void idt_init(void);
void irq_set_handler(int vector, irq_handler_t h);
int wait_count(volatile unsigned *ctr, unsigned target, uint64_t timeout_cycles);

/* ---- 8259 PIC ---- */
#define PIC_BASE 0x20
void pic_init(uint8_t base1, uint8_t base2);
void pic_set_mask(uint16_t mask);   /* bit n masks IRQ n */
uint16_t pic_get_mask(void);
void pic_unmask(int irq);
void pic_mask(int irq);
void pic_eoi(int irq);

/* ---- LAPIC / IOAPIC ---- */
#define LAPIC_DEFAULT 0xFEE00000u
#define IOAPIC_DEFAULT 0xFEC00000u
uintptr_t lapic_base(void);
uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t v);
void lapic_enable(uint8_t spurious_vector);
void lapic_eoi(void);
uint32_t lapic_id(void);
void lapic_virtual_wire(void);      /* LVT0 = ExtINT, LVT1 = NMI, as a BIOS leaves it */
uint32_t ioapic_read(uint32_t reg);
void ioapic_write(uint32_t reg, uint32_t v);
void ioapic_route(int pin, uint8_t vector, uint8_t dest_apic, int masked);
void ioapic_mask_pin(int pin);

/* ---- PIT / TSC ---- */
void pit_periodic(unsigned hz);
void pit_stop(void);
uint64_t tsc_calibrate_pit(void);   /* TSC ticks per second, measured with PIT channel 2 */
uint64_t tsc_hz_measure(void);      /* the same, falling back to the RTC's seconds */
uint64_t tsc_to_ns(uint64_t dt, uint64_t hz);

/* ---- RTC ---- */
struct rtc_time { unsigned year, mon, day, hour, min, sec; };
int rtc_read(struct rtc_time *t);   /* 0 on success */
uint32_t rtc_to_unix(const struct rtc_time *t);

/* ---- PCI ---- */
uint32_t pci_read32(unsigned bus, unsigned slot, unsigned fn, unsigned off);
void pci_write32(unsigned bus, unsigned slot, unsigned fn, unsigned off, uint32_t v);

/* ---- MP table ---- */
struct mp_info {
    int found;
    uint32_t fp_addr, table_addr;
    int fp_sum_ok, table_sum_ok;
    int cpus, cpus_enabled, ioapics, buses, ioints, lints;
    uint32_t ioapic_addr;
    int ioapic_id;
    int isa_irq0_pin;               /* IOAPIC pin of ISA IRQ 0, -1 if no entry */
    uint8_t cpu_apic_ids[16];
};
void mp_scan(struct mp_info *mi);

/* ---- shared platform checks (pci, mptable, rtc, pit, ioapic, lapic) ---- */
void run_platform_checks(const char *tests);

#endif
