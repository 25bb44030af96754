/* 16550 UART on COM1: polled transmit, polled or interrupt-driven receive. */
#include "lib.h"

#define RBR 0   /* receive buffer (read) / transmit holding (write) */
#define IER 1
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5

#define LSR_DR   0x01
#define LSR_THRE 0x20

volatile unsigned serial_rx_irqs;
static volatile uint8_t rx_ring[256];
static volatile unsigned rx_head, rx_tail;
static int rx_vector = -1;

void serial_init(void)
{
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80);          /* DLAB on: divisor 1 = 115200 baud */
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + LCR, 0x03);          /* 8N1, DLAB off */
    outb(COM1 + FCR, 0x07);          /* FIFOs on and cleared */
    outb(COM1 + MCR, 0x0B);          /* DTR, RTS, OUT2 (IRQ gate) */
}

void serial_raw_putc(char c)
{
    unsigned spins = 0;
    /* Bounded wait so that a missing UART cannot hang the guest forever. */
    while (!(inb(COM1 + LSR) & LSR_THRE) && ++spins < 1000000)
        cpu_relax();
    outb(COM1, (uint8_t)c);
}

void serial_putc(char c)
{
    if (c == '\n')
        serial_raw_putc('\r');
    serial_raw_putc(c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

int serial_poll_getc(void)
{
    if (inb(COM1 + LSR) & LSR_DR)
        return inb(COM1 + RBR);
    return -1;
}

static void serial_isr(int vector)
{
    (void)vector;
    serial_rx_irqs++;
    while (inb(COM1 + LSR) & LSR_DR) {
        uint8_t c = inb(COM1 + RBR);
        unsigned next = (rx_head + 1) & 255;
        if (next != rx_tail) {
            rx_ring[rx_head] = c;
            rx_head = next;
        }
    }
    pic_eoi(COM1_IRQ);
}

void serial_rx_irq_enable(int vector)
{
    rx_vector = vector;
    irq_set_handler(vector, serial_isr);
    outb(COM1 + MCR, 0x0B);
    outb(COM1 + IER, 0x01);          /* received-data-available interrupt */
    pic_unmask(COM1_IRQ);
}

int serial_rx_pop(void)
{
    int c;
    if (rx_tail == rx_head)
        return -1;
    c = rx_ring[rx_tail];
    rx_tail = (rx_tail + 1) & 255;
    return c;
}
