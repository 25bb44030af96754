/* 8259A PIC pair: initialise with vector bases, mask/unmask, EOI. */
#include "lib.h"

static uint16_t cur_mask = 0xFFFF;

void pic_init(uint8_t base1, uint8_t base2)
{
    outb(0x20, 0x11);                /* ICW1: edge, cascade, ICW4 follows */
    outb(0xA0, 0x11);
    outb(0x21, base1);               /* ICW2: vector bases */
    outb(0xA1, base2);
    outb(0x21, 0x04);                /* ICW3: slave on IRQ2 */
    outb(0xA1, 0x02);
    outb(0x21, 0x01);                /* ICW4: 8086 mode */
    outb(0xA1, 0x01);
    pic_set_mask(0xFFFB);            /* everything masked except the cascade */
}

void pic_set_mask(uint16_t mask)
{
    cur_mask = mask;
    outb(0x21, (uint8_t)mask);
    outb(0xA1, (uint8_t)(mask >> 8));
}

uint16_t pic_get_mask(void)
{
    return (uint16_t)(inb(0x21) | (inb(0xA1) << 8));
}

void pic_unmask(int irq)
{
    pic_set_mask(cur_mask & ~(1u << irq) & ~(irq >= 8 ? 4u : 0u));
}

void pic_mask(int irq)
{
    pic_set_mask(cur_mask | (1u << irq));
}

void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(0xA0, 0x20);
    outb(0x20, 0x20);
}
