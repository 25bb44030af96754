/* virtio 1.x over PCI for the test guests: see virtio.h. */
#include "virtio.h"

#define TIMEOUT_DEFAULT (3ull * 1000 * 1000 * 1000)
#define MMIO_WINDOW_LO 0xE0000000u
#define MMIO_WINDOW_HI 0xFEC00000u

/* common configuration structure offsets (virtio 1.2, 4.1.4.3) */
#define CC_DFSELECT   0x00
#define CC_DF         0x04
#define CC_GFSELECT   0x08
#define CC_GF         0x0C
#define CC_MSIX_CFG   0x10
#define CC_NUMQ       0x12
#define CC_STATUS     0x14
#define CC_CFGGEN     0x15
#define CC_Q_SELECT   0x16
#define CC_Q_SIZE     0x18
#define CC_Q_MSIX     0x1A
#define CC_Q_ENABLE   0x1C
#define CC_Q_NOFF     0x1E
#define CC_Q_DESC     0x20
#define CC_Q_DRIVER   0x28
#define CC_Q_DEVICE   0x30
#define NO_VECTOR 0xFFFF

static int irq_mode = VIRTIO_IRQ_POLL;
static int allow_event_idx = 1, allow_indirect = 1, force_assign;
static struct virtio_dev *irq_dev;      /* the device whose interrupts we count */
static volatile unsigned ticks;

/* queue memory: one page of rings and 64 indirect tables per queue */
#define QPOOL 6
static uint8_t ring_pool[QPOOL][4096] __attribute__((aligned(4096)));
static struct vring_desc itable_pool[QPOOL][VQ_MAX_SIZE * VQ_MAX_INDIRECT] __attribute__((aligned(16)));
static unsigned qpool_used;
static int mmio_scanned;

static inline void mb(void) { __asm__ volatile("lock; addl $0,(%%esp)" ::: "memory"); }

static inline uint8_t r8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t r16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t r32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void w8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void w16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void w32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void w64(uintptr_t a, uint64_t v) { w32(a, (uint32_t)v); w32(a + 4, (uint32_t)(v >> 32)); }

uint8_t pci_read8(unsigned slot, unsigned fn, unsigned off)
{
    return (uint8_t)(pci_read32(0, slot, fn, off & ~3u) >> (8 * (off & 3)));
}

uint16_t pci_read16(unsigned slot, unsigned fn, unsigned off)
{
    return (uint16_t)(pci_read32(0, slot, fn, off & ~3u) >> (8 * (off & 2)));
}

void pci_write16(unsigned slot, unsigned fn, unsigned off, uint16_t v)
{
    uint32_t old = pci_read32(0, slot, fn, off & ~3u);
    unsigned sh = 8 * (off & 2);
    old = (old & ~(0xFFFFu << sh)) | ((uint32_t)v << sh);
    /* writing the status half of COMMAND/STATUS with ones would clear RW1C bits: keep it zero */
    if ((off & ~3u) == 4 && sh == 0)
        old &= 0xFFFF;
    pci_write32(0, slot, fn, off & ~3u, old);
}

/* ---- command line ---- */

void virtio_cmdline(const char *cl)
{
    char v[24];
    if (cmdline_get(cl, "irq", v, sizeof v)) {
        if (!strcmp(v, "msix")) irq_mode = VIRTIO_IRQ_MSIX;
        else if (!strcmp(v, "intx")) irq_mode = VIRTIO_IRQ_INTX;
        else if (!strcmp(v, "intx-ioapic")) irq_mode = VIRTIO_IRQ_INTX_IOAPIC;
        else irq_mode = VIRTIO_IRQ_POLL;
    }
    if (cmdline_get(cl, "event_idx", v, sizeof v) && v[0] == '0')
        allow_event_idx = 0;
    if (cmdline_get(cl, "indirect", v, sizeof v) && v[0] == '0')
        allow_indirect = 0;
    if (cmdline_get(cl, "bar_assign", v, sizeof v) && v[0] == '1')
        force_assign = 1;            /* test the path for BARs nobody assigned */
}

int virtio_irq_mode(void) { return irq_mode; }

const char *virtio_irq_mode_name(int mode)
{
    switch (mode) {
    case VIRTIO_IRQ_MSIX: return "msix";
    case VIRTIO_IRQ_INTX: return "intx";
    case VIRTIO_IRQ_INTX_IOAPIC: return "intx-ioapic";
    default: return "poll";
    }
}

/* ---- BARs ---- */

/* Memory BARs already decoding inside the MMIO window (ours included), so new ones avoid them. */
static struct { uint32_t base, size; } busy[64];
static unsigned nbusy;

static void scan_busy(void)
{
    nbusy = 0;
    for (unsigned slot = 0; slot < 32; slot++)
        for (unsigned fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read32(0, slot, fn, 0);
            if ((id & 0xFFFF) == 0xFFFF) {
                if (fn == 0)
                    break;
                continue;
            }
            unsigned nbar = (pci_read8(slot, fn, 0x0E) & 0x7F) == 0 ? 6 : 2;
            for (unsigned b = 0; b < nbar; b++) {
                uint32_t lo = pci_read32(0, slot, fn, 0x10 + 4 * b);
                if (lo & 1)
                    continue;
                int is64 = ((lo >> 1) & 3) == 2;
                uint32_t hi = is64 && b + 1 < nbar ? pci_read32(0, slot, fn, 0x14 + 4 * b) : 0;
                uint32_t base = lo & ~0xFu;
                if (!hi && base >= MMIO_WINDOW_LO && base < MMIO_WINDOW_HI && nbusy < 64) {
                    uint16_t cmd = pci_read16(slot, fn, 4);
                    pci_write16(slot, fn, 4, cmd & ~2u);
                    pci_write32(0, slot, fn, 0x10 + 4 * b, 0xFFFFFFFFu);
                    uint32_t sz = ~(pci_read32(0, slot, fn, 0x10 + 4 * b) & ~0xFu) + 1;
                    pci_write32(0, slot, fn, 0x10 + 4 * b, lo);
                    pci_write16(slot, fn, 4, cmd);
                    busy[nbusy].base = base;
                    busy[nbusy].size = sz;
                    nbusy++;
                }
                if (is64)
                    b++;
            }
            if (fn == 0 && !(pci_read8(slot, 0, 0x0E) & 0x80))
                break;
        }
}

/* First naturally aligned hole of sz bytes in the window. */
static uint32_t mmio_alloc(uint32_t sz)
{
    uint32_t a = MMIO_WINDOW_LO;
    for (int again = 1; again;) {
        again = 0;
        a = (a + sz - 1) & ~(sz - 1);
        for (unsigned i = 0; i < nbusy; i++)
            if (a < busy[i].base + busy[i].size && busy[i].base < a + sz) {
                a = busy[i].base + busy[i].size;
                again = 1;
            }
    }
    if (a + sz > MMIO_WINDOW_HI || a < MMIO_WINDOW_LO)
        return 0;
    if (nbusy < 64) {
        busy[nbusy].base = a;
        busy[nbusy].size = sz;
        nbusy++;
    }
    return a;
}

/* Address of a memory BAR (assigning one in 0xE0000000+ if it has none or is above 4 GiB). */
static uint32_t bar_address(struct virtio_dev *d, unsigned bar)
{
    if (bar > 5)
        return 0;
    if (d->bar_addr[bar])
        return (uint32_t)d->bar_addr[bar];
    unsigned off = 0x10 + 4 * bar;
    uint32_t lo = pci_read32(0, d->slot, d->fn, off);
    if (lo & 1) {
        note("virtio: BAR%u is an I/O BAR (%x), not supported", bar, lo);
        return 0;
    }
    int is64 = ((lo >> 1) & 3) == 2;
    uint32_t hi = is64 ? pci_read32(0, d->slot, d->fn, off + 4) : 0;
    uint32_t base = lo & ~0xFu;
    if (base == 0 || hi != 0 || force_assign) {
        uint16_t cmd = pci_read16(d->slot, d->fn, 4);
        pci_write16(d->slot, d->fn, 4, cmd & ~2u);
        pci_write32(0, d->slot, d->fn, off, 0xFFFFFFFFu);
        uint32_t sz = ~(pci_read32(0, d->slot, d->fn, off) & ~0xFu) + 1;
        if (!mmio_scanned) {
            scan_busy();
            mmio_scanned = 1;
        }
        if (sz < 4096)
            sz = 4096;
        base = mmio_alloc(sz);
        if (!base) {
            note("virtio: no room for BAR%u (size %x) in the MMIO window", bar, sz);
            pci_write32(0, d->slot, d->fn, off, lo);
            pci_write16(d->slot, d->fn, 4, cmd);
            return 0;
        }
        pci_write32(0, d->slot, d->fn, off, base);
        if (is64)
            pci_write32(0, d->slot, d->fn, off + 4, 0);
        pci_write16(d->slot, d->fn, 4, cmd);
        note("virtio: assigned BAR%u = %x (size %x; was %x%08x)", bar, base, sz, hi, lo & ~0xFu);
    }
    d->bar_addr[bar] = base;
    return base;
}

/* ---- discovery ---- */

static int type_of(uint16_t did, unsigned slot, unsigned fn)
{
    if (did >= 0x1040 && did <= 0x107F)
        return did - 0x1040;
    if (did >= 0x1000 && did <= 0x103F)
        return pci_read16(slot, fn, 0x2E);   /* transitional: subsystem id = type */
    return -1;
}

int virtio_find(int type, struct virtio_dev *d)
{
    memset(d, 0, sizeof *d);
    for (unsigned slot = 0; slot < 32; slot++)
        for (unsigned fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read32(0, slot, fn, 0);
            if ((id & 0xFFFF) == 0xFFFF) {
                if (fn == 0)
                    break;
                continue;
            }
            if ((id & 0xFFFF) == 0x1AF4 && type_of((uint16_t)(id >> 16), slot, fn) == type) {
                d->slot = slot;
                d->fn = fn;
                d->device_id = (uint16_t)(id >> 16);
                d->type = type;
                goto found;
            }
            if (fn == 0 && !(pci_read8(slot, 0, 0x0E) & 0x80))
                break;
        }
    note("virtio: no device of type %d on bus 0", type);
    return -1;
found:;
    unsigned s = d->slot, f = d->fn;
    /* memory decoding and bus mastering on, INTx not disabled */
    uint16_t cmd = pci_read16(s, f, 4);
    pci_write16(s, f, 4, (cmd | 0x6) & ~0x400u);
    if (!(pci_read16(s, f, 6) & 0x10)) {
        note("virtio: 00:%02x.%x has no capability list", s, f);
        return -1;
    }
    unsigned ptr = pci_read8(s, f, 0x34) & 0xFC;
    int guard = 0;
    while (ptr && guard++ < 48) {
        uint8_t cid = pci_read8(s, f, ptr);
        if (cid == 0x11 && !d->msix_cap) {
            d->msix_cap = ptr;
        } else if (cid == 0x09) {
            uint8_t ctype = pci_read8(s, f, ptr + 3);
            uint8_t bar = pci_read8(s, f, ptr + 4);
            uint32_t off = pci_read32(0, s, f, ptr + 8);
            uint32_t len = pci_read32(0, s, f, ptr + 12);
            uintptr_t *slotp = ctype == 1 ? &d->common : ctype == 2 ? &d->notify :
                               ctype == 3 ? &d->isr : ctype == 4 ? &d->devcfg : 0;
            if (slotp && !*slotp && bar <= 5) {
                uint32_t base = bar_address(d, bar);
                if (base) {
                    *slotp = base + off;
                    if (ctype == 2)
                        d->notify_mult = pci_read32(0, s, f, ptr + 16);
                    if (ctype == 4)
                        d->devcfg_len = len;
                }
            }
        }
        ptr = pci_read8(s, f, ptr + 1) & 0xFC;
    }
    d->intx_line = pci_read8(s, f, 0x3C);
    d->intx_pin = pci_read8(s, f, 0x3D);
    note("virtio type %d at 00:%02x.%x id 1af4:%04x common=%lx notify=%lx (mult %u) isr=%lx devcfg=%lx msix=%x line=%u pin=%u",
         type, s, f, d->device_id, (unsigned long)d->common, (unsigned long)d->notify, d->notify_mult,
         (unsigned long)d->isr, (unsigned long)d->devcfg, d->msix_cap, d->intx_line, d->intx_pin);
    if (!d->common || !d->notify || !d->isr) {
        note("virtio: missing common/notify/ISR capability");
        return -1;
    }
    return 0;
}

/* ---- interrupts ---- */

static void tick_isr(int v) { (void)v; ticks++; lapic_eoi(); }
static void spurious_isr(int v) { (void)v; }

static void msix_isr(int v)
{
    struct virtio_dev *d = irq_dev;
    int entry = v - VIRTIO_VEC_BASE;
    if (d) {
        d->irqs++;
        for (unsigned i = 0; i < d->nqueues; i++)
            if (d->queues[i] && d->queues[i]->msix_entry == entry)
                d->queues[i]->irqs++;
    }
    lapic_eoi();
}

static void intx_isr(int v)
{
    struct virtio_dev *d = irq_dev;
    if (d) {
        uint8_t isr = r8(d->isr);        /* reading acknowledges and deasserts the line */
        if (isr & 1) {
            d->irqs++;
            for (unsigned i = 0; i < d->nqueues; i++)
                if (d->queues[i])
                    d->queues[i]->irqs++;
        }
        if (isr & 2)
            d->isr_cfg_irqs++;
        if (!isr)
            d->isr_empty++;
    }
    if (v == VIRTIO_VEC_INTX)
        lapic_eoi();
    else
        pic_eoi((int)d->intx_line);
}

static int irq_setup(struct virtio_dev *d)
{
    static int idt_done;
    if (!idt_done) {
        idt_init();
        pic_init(0x20, 0x28);
        pic_set_mask(0xFFFF);
        idt_done = 1;
    }
    irq_dev = d;
    if (irq_mode == VIRTIO_IRQ_POLL)
        return 0;
    lapic_virtual_wire();                /* LVT0 ExtINT for PIC-routed INTx */
    lapic_enable(VIRTIO_VEC_SPUR);
    irq_set_handler(VIRTIO_VEC_SPUR, spurious_isr);
    irq_set_handler(VIRTIO_VEC_TICK, tick_isr);
    /* a periodic LAPIC tick, only so that hlt wakes up and waits can time out */
    lapic_write(0x3E0, 0x3);
    lapic_write(0x320, VIRTIO_VEC_TICK | (1u << 17));
    lapic_write(0x380, 1000000);
    if (irq_mode == VIRTIO_IRQ_MSIX) {
        if (!d->msix_cap) {
            note("virtio: irq=msix but the device has no MSI-X capability");
            return -1;
        }
        unsigned s = d->slot, f = d->fn, c = d->msix_cap;
        uint16_t mc = pci_read16(s, f, c + 2);
        d->msix_size = (mc & 0x7FF) + 1;
        uint32_t tbl = pci_read32(0, s, f, c + 4);
        uint32_t base = bar_address(d, tbl & 7);
        if (!base)
            return -1;
        d->msix_table = base + (tbl & ~7u);
        /* enabled with the function masked while we program the table */
        pci_write16(s, f, c + 2, (uint16_t)(mc | 0x8000 | 0x4000));
        uint32_t apic = lapic_id();
        unsigned n = d->msix_size < 16 ? d->msix_size : 16;
        for (unsigned i = 0; i < n; i++) {
            uintptr_t e = d->msix_table + 16 * i;
            w32(e + 0, 0xFEE00000u | (apic << 12));
            w32(e + 4, 0);
            w32(e + 8, VIRTIO_VEC_BASE + i);     /* fixed delivery, edge */
            w32(e + 12, 0);                      /* unmasked */
            irq_set_handler(VIRTIO_VEC_BASE + (int)i, msix_isr);
        }
        pci_write16(s, f, c + 2, (uint16_t)((mc | 0x8000) & ~0x4000));
        note("virtio: MSI-X enabled, table %lx, %u entries, dest apic %u", (unsigned long)d->msix_table,
             d->msix_size, apic);
        return 0;
    }
    /* INTx */
    if (d->msix_cap) {
        uint16_t mc = pci_read16(d->slot, d->fn, d->msix_cap + 2);
        pci_write16(d->slot, d->fn, d->msix_cap + 2, mc & ~0xC000u);
    }
    if (d->intx_pin == 0 || d->intx_line == 0 || d->intx_line >= 16) {
        note("virtio: no usable INTx (pin %u, line %u)", d->intx_pin, d->intx_line);
        return -1;
    }
    if (irq_mode == VIRTIO_IRQ_INTX) {
        irq_set_handler(0x20 + (int)d->intx_line, intx_isr);
        pic_unmask((int)d->intx_line);
    } else {
        /* GSI = ISA IRQ number; level-triggered, active high, fixed, physical dest */
        irq_set_handler(VIRTIO_VEC_INTX, intx_isr);
        int pin = (int)d->intx_line;
        ioapic_write(0x10 + 2 * pin + 1, lapic_id() << 24);
        ioapic_write(0x10 + 2 * pin, VIRTIO_VEC_INTX | (1u << 15));
    }
    note("virtio: INTx line %u pin %u via %s", d->intx_line, d->intx_pin,
         irq_mode == VIRTIO_IRQ_INTX ? "PIC" : "I/O APIC");
    return 0;
}

void virtio_report_irqs(struct virtio_dev *d)
{
    note("irqs %u", d->irqs);
    if (irq_mode == VIRTIO_IRQ_POLL)
        return;
    if (d->isr_empty || d->isr_cfg_irqs)
        note("irq_isr_empty %u irq_isr_config %u", d->isr_empty, d->isr_cfg_irqs);
    if (d->irqs == 0)
        fail("irq", "no %s interrupts", virtio_irq_mode_name(irq_mode));
    else if (d->no_irq_completions)
        fail("irq", "%u completions arrived without an interrupt", d->no_irq_completions);
    else
        ok("irq");
}

/* ---- device setup ---- */

uint8_t virtio_status(struct virtio_dev *d) { return r8(d->common + CC_STATUS); }

void virtio_reset(struct virtio_dev *d)
{
    w8(d->common + CC_STATUS, 0);
    for (int i = 0; i < 1000000 && r8(d->common + CC_STATUS) != 0; i++)
        cpu_relax();
}

int virtio_start(struct virtio_dev *d, uint64_t want)
{
    virtio_reset(d);
    w8(d->common + CC_STATUS, VIRTIO_STAT_ACK);
    w8(d->common + CC_STATUS, VIRTIO_STAT_ACK | VIRTIO_STAT_DRIVER);
    w32(d->common + CC_DFSELECT, 0);
    uint64_t f = r32(d->common + CC_DF);
    w32(d->common + CC_DFSELECT, 1);
    f |= (uint64_t)r32(d->common + CC_DF) << 32;
    d->dev_features = f;
    want |= FEAT(VIRTIO_F_VERSION_1);
    if (allow_event_idx)
        want |= FEAT(VIRTIO_F_EVENT_IDX);
    if (allow_indirect)
        want |= FEAT(VIRTIO_F_INDIRECT_DESC);
    d->features = f & want;
    note("features device=%llx driver=%llx", (unsigned long long)f, (unsigned long long)d->features);
    if (!(f & FEAT(VIRTIO_F_VERSION_1))) {
        note("virtio: device does not offer VERSION_1");
        w8(d->common + CC_STATUS, VIRTIO_STAT_FAILED);
        return -1;
    }
    w32(d->common + CC_GFSELECT, 0);
    w32(d->common + CC_GF, (uint32_t)d->features);
    w32(d->common + CC_GFSELECT, 1);
    w32(d->common + CC_GF, (uint32_t)(d->features >> 32));
    w8(d->common + CC_STATUS, VIRTIO_STAT_ACK | VIRTIO_STAT_DRIVER | VIRTIO_STAT_FEATURES_OK);
    if (!(r8(d->common + CC_STATUS) & VIRTIO_STAT_FEATURES_OK)) {
        note("virtio: FEATURES_OK not accepted (status %x)", r8(d->common + CC_STATUS));
        w8(d->common + CC_STATUS, VIRTIO_STAT_FAILED);
        return -1;
    }
    note("virtio: num_queues %u, irq mode %s", r16(d->common + CC_NUMQ), virtio_irq_mode_name(irq_mode));
    if (irq_setup(d))
        return -1;
    w16(d->common + CC_MSIX_CFG, NO_VECTOR);
    return 0;
}

void virtio_driver_ok(struct virtio_dev *d)
{
    w8(d->common + CC_STATUS, VIRTIO_STAT_ACK | VIRTIO_STAT_DRIVER | VIRTIO_STAT_FEATURES_OK |
       VIRTIO_STAT_DRIVER_OK);
}

int virtq_setup(struct virtio_dev *d, unsigned index, struct virtq *q, unsigned max_size)
{
    memset(q, 0, sizeof *q);
    if (qpool_used >= QPOOL || d->nqueues >= VIRTIO_MAX_QUEUES) {
        note("virtio: out of queue memory");
        return -1;
    }
    w16(d->common + CC_Q_SELECT, (uint16_t)index);
    unsigned dev_max = r16(d->common + CC_Q_SIZE);
    if (dev_max == 0) {
        note("virtio: queue %u not available", index);
        return -1;
    }
    unsigned size = dev_max < VQ_MAX_SIZE ? dev_max : VQ_MAX_SIZE;
    if (max_size && size > max_size)
        size = max_size;
    uint8_t *mem = ring_pool[qpool_used];
    q->itable = itable_pool[qpool_used];
    qpool_used++;
    memset(mem, 0, 4096);
    q->dev = d;
    q->index = index;
    q->size = size;
    q->desc = (struct vring_desc *)mem;
    q->avail = (volatile uint16_t *)(mem + 1024);
    q->used = mem + 2048;
    for (unsigned i = 0; i < size; i++)
        q->desc[i].next = (uint16_t)(i + 1);
    q->free_head = 0;
    q->nfree = (uint16_t)size;
    q->msix_entry = -1;
    if (irq_mode == VIRTIO_IRQ_POLL && !virtio_has(d, VIRTIO_F_EVENT_IDX))
        q->avail[0] = 1;                 /* VIRTQ_AVAIL_F_NO_INTERRUPT */
    w16(d->common + CC_Q_SIZE, (uint16_t)size);
    w64(d->common + CC_Q_DESC, (uintptr_t)q->desc);
    w64(d->common + CC_Q_DRIVER, (uintptr_t)q->avail);
    w64(d->common + CC_Q_DEVICE, (uintptr_t)q->used);
    if (irq_mode == VIRTIO_IRQ_MSIX) {
        unsigned entry = index < d->msix_size ? index : d->msix_size - 1;
        w16(d->common + CC_Q_MSIX, (uint16_t)entry);
        uint16_t got = r16(d->common + CC_Q_MSIX);
        if (got != entry) {
            note("virtio: queue %u: MSI-X vector %u refused (reads %x)", index, entry, got);
            return -1;
        }
        q->msix_entry = (int)entry;
    } else {
        w16(d->common + CC_Q_MSIX, NO_VECTOR);
    }
    unsigned noff = r16(d->common + CC_Q_NOFF);
    q->notify_addr = d->notify + (uintptr_t)noff * d->notify_mult;
    w16(d->common + CC_Q_ENABLE, 1);
    d->queues[d->nqueues++] = q;
    note("virtio: queue %u size %u (device max %u) notify %lx", index, size, dev_max,
         (unsigned long)q->notify_addr);
    return 0;
}

/* ---- device configuration ---- */

uint8_t virtio_cfg8(struct virtio_dev *d, unsigned off) { return r8(d->devcfg + off); }
uint16_t virtio_cfg16(struct virtio_dev *d, unsigned off) { return r16(d->devcfg + off); }
uint32_t virtio_cfg32(struct virtio_dev *d, unsigned off) { return r32(d->devcfg + off); }
void virtio_cfg_write8(struct virtio_dev *d, unsigned off, uint8_t v) { w8(d->devcfg + off, v); }

uint64_t virtio_cfg64(struct virtio_dev *d, unsigned off)
{
    uint8_t g0, g1;
    uint64_t v;
    do {
        g0 = r8(d->common + CC_CFGGEN);
        v = r32(d->devcfg + off) | (uint64_t)r32(d->devcfg + off + 4) << 32;
        g1 = r8(d->common + CC_CFGGEN);
    } while (g0 != g1);
    return v;
}

/* ---- virtqueues ---- */

unsigned virtq_free(const struct virtq *q) { return q->nfree; }

int virtq_add(struct virtq *q, const struct vbuf *bufs, unsigned n, void *cookie, int indirect)
{
    if (n == 0)
        return -1;
    if (indirect && (!virtio_has(q->dev, VIRTIO_F_INDIRECT_DESC) || n > VQ_MAX_INDIRECT))
        indirect = 0;
    unsigned need = indirect ? 1 : n;
    if (q->nfree < need)
        return -1;
    uint16_t head = q->free_head, i = head, last = head;
    if (indirect) {
        struct vring_desc *t = q->itable + (unsigned)head * VQ_MAX_INDIRECT;
        for (unsigned k = 0; k < n; k++) {
            t[k].addr = (uintptr_t)bufs[k].addr;
            t[k].len = bufs[k].len;
            t[k].flags = (uint16_t)((bufs[k].writable ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
            t[k].next = (uint16_t)(k + 1 < n ? k + 1 : 0);
        }
        q->desc[head].addr = (uintptr_t)t;
        q->desc[head].len = n * sizeof(struct vring_desc);
        q->desc[head].flags = VRING_DESC_F_INDIRECT;
        last = head;
        i = q->desc[head].next;
    } else {
        for (unsigned k = 0; k < n; k++) {
            q->desc[i].addr = (uintptr_t)bufs[k].addr;
            q->desc[i].len = bufs[k].len;
            q->desc[i].flags = (uint16_t)((bufs[k].writable ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
            last = i;
            i = q->desc[i].next;
        }
    }
    (void)last;
    q->free_head = i;
    q->nfree = (uint16_t)(q->nfree - need);
    q->chain_len[head] = (uint16_t)need;
    q->cookie[head] = cookie;
    q->avail[2 + q->avail_idx % q->size] = head;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    return head;
}

void virtq_kick(struct virtq *q)
{
    mb();
    uint16_t newi = q->avail_idx, old = q->kicked_idx;
    q->kicked_idx = newi;
    q->kicks++;
    int need;
    if (virtio_has(q->dev, VIRTIO_F_EVENT_IDX)) {
        uint16_t ev = *(volatile uint16_t *)(q->used + 4 + 8 * q->size);
        need = (uint16_t)(newi - ev - 1) < (uint16_t)(newi - old);
    } else {
        need = !(*(volatile uint16_t *)q->used & 1);
    }
    if (need) {
        q->notifies++;
        w16(q->notify_addr, (uint16_t)q->index);
    }
}

int virtq_get(struct virtq *q, uint32_t *len, void **cookie)
{
    uint16_t uidx = *(volatile uint16_t *)(q->used + 2);
    if (uidx == q->last_used)
        return -1;
    barrier();
    volatile uint8_t *e = q->used + 4 + 8 * (q->last_used % q->size);
    uint32_t id = *(volatile uint32_t *)e, l = *(volatile uint32_t *)(e + 4);
    q->last_used++;
    if (virtio_has(q->dev, VIRTIO_F_EVENT_IDX)) {
        q->avail[2 + q->size] = q->last_used;    /* used_event: interrupt on the next one */
        mb();
    }
    if (id >= q->size || q->chain_len[id] == 0) {
        note("virtio: queue %u: bad used id %u", q->index, id);
        return -1;
    }
    /* return the chain to the free list */
    unsigned n = q->chain_len[id];
    uint16_t tail = (uint16_t)id;
    for (unsigned k = 1; k < n; k++)
        tail = q->desc[tail].next;
    q->desc[tail].next = q->free_head;
    q->free_head = (uint16_t)id;
    q->nfree = (uint16_t)(q->nfree + n);
    q->chain_len[id] = 0;
    if (len)
        *len = l;
    if (cookie)
        *cookie = q->cookie[id];
    return (int)id;
}

int virtq_wait(struct virtq *q, uint32_t *len, void **cookie, uint64_t timeout)
{
    if (!timeout)
        timeout = TIMEOUT_DEFAULT;
    uint64_t t0 = rdtsc();
    int polled = irq_mode == VIRTIO_IRQ_POLL;
    for (;;) {
        cli();
        int have = *(volatile uint16_t *)(q->used + 2) != q->last_used;
        if (!have)
            q->irqs_when_empty = q->irqs;
        /* in the interrupt modes, an entry counts once an interrupt came after
         * we last saw the used ring empty */
        else if (polled || q->irqs != q->irqs_when_empty) {
            int r = virtq_get(q, len, cookie);
            if (*(volatile uint16_t *)(q->used + 2) == q->last_used)
                q->irqs_when_empty = q->irqs;
            return r;
        }
        if (rdtsc() - t0 > timeout) {
            if (have) {
                q->dev->no_irq_completions++;
                virtq_get(q, len, cookie);
                return -2;
            }
            return -1;
        }
        if (polled) {
            cpu_relax();
        } else {
            __asm__ volatile("sti; hlt" ::: "memory");   /* no wake-up lost between them */
        }
    }
}

long virtq_run(struct virtq *q, const struct vbuf *bufs, unsigned n, int indirect)
{
    if (virtq_add(q, bufs, n, 0, indirect) < 0)
        return -1;
    virtq_kick(q);
    uint32_t len = 0;
    int r = virtq_wait(q, &len, 0, 0);
    if (r < 0)
        return r;
    return (long)len;
}
