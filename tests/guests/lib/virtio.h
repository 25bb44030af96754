/* A minimal virtio 1.x driver over PCI for the test guests (32-bit, paging off
 * or identity-mapped): device discovery through the modern capabilities,
 * feature negotiation, split virtqueues in static memory, and completion by
 * polling, MSI-X or legacy INTx. See ../README.md ("virtio guests"). */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H
#include "lib.h"

/* device types (virtio 1.2, 5) */
#define VIRTIO_TYPE_NET  1
#define VIRTIO_TYPE_BLK  2
#define VIRTIO_TYPE_RNG  4
#define VIRTIO_TYPE_SCSI 8

/* device status bits */
#define VIRTIO_STAT_ACK         1
#define VIRTIO_STAT_DRIVER      2
#define VIRTIO_STAT_DRIVER_OK   4
#define VIRTIO_STAT_FEATURES_OK 8
#define VIRTIO_STAT_NEEDS_RESET 0x40
#define VIRTIO_STAT_FAILED      0x80

/* transport feature bits */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX     29
#define VIRTIO_F_VERSION_1     32
#define FEAT(b) (1ull << (b))

/* descriptor flags */
#define VRING_DESC_F_NEXT     1
#define VRING_DESC_F_WRITE    2
#define VRING_DESC_F_INDIRECT 4

#define VQ_MAX_SIZE   64    /* we never use more than 64 entries of a queue */
#define VQ_MAX_INDIRECT 16  /* descriptors in one indirect table */
#define VIRTIO_MAX_QUEUES 4

/* interrupt modes (cmdline irq=poll|msix|intx|intx-ioapic) */
enum { VIRTIO_IRQ_POLL, VIRTIO_IRQ_MSIX, VIRTIO_IRQ_INTX, VIRTIO_IRQ_INTX_IOAPIC };

#define VIRTIO_VEC_BASE  0x50   /* MSI-X entry i -> vector 0x50 + i */
#define VIRTIO_VEC_INTX  0x60   /* INTx through the I/O APIC */
#define VIRTIO_VEC_TICK  0x4F   /* LAPIC timer: wakes hlt so waits can time out */
#define VIRTIO_VEC_SPUR  0xFF

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
} __attribute__((packed));

struct vbuf {                   /* one buffer of a request */
    void *addr;
    uint32_t len;
    int writable;               /* device writes it (device-to-driver) */
};

struct virtio_dev;

struct virtq {
    struct virtio_dev *dev;
    unsigned index, size;
    struct vring_desc *desc;
    volatile uint16_t *avail;   /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;     /* u16 flags, u16 idx, {u32 id, u32 len}[size], u16 avail_event */
    uint16_t avail_idx;         /* our shadow of avail->idx */
    uint16_t kicked_idx;        /* avail idx at the last notification decision */
    uint16_t last_used;
    uint16_t free_head, nfree;
    uint16_t chain_len[VQ_MAX_SIZE];
    void *cookie[VQ_MAX_SIZE];
    struct vring_desc *itable;  /* VQ_MAX_SIZE indirect tables of VQ_MAX_INDIRECT entries */
    uintptr_t notify_addr;
    int msix_entry;             /* -1: none */
    volatile unsigned irqs;     /* interrupts that were for this queue */
    unsigned irqs_when_empty;  /* q->irqs when the used ring was last seen empty */
    unsigned kicks, notifies;
};

struct virtio_dev {
    unsigned slot, fn;
    uint16_t device_id;
    int type;
    uintptr_t common, notify, isr, devcfg;
    uint32_t notify_mult, devcfg_len;
    uint64_t bar_addr[6];
    uint64_t dev_features, features;
    int irq_mode;
    unsigned msix_cap, msix_size;
    uintptr_t msix_table;
    unsigned intx_line, intx_pin;
    volatile unsigned irqs;     /* every device interrupt (MSI-X or INTx with ISR bit 0) */
    volatile unsigned isr_cfg_irqs, isr_empty;
    unsigned no_irq_completions;    /* completions found without an interrupt (irq modes) */
    struct virtq *queues[VIRTIO_MAX_QUEUES];
    unsigned nqueues;
};

/* Parse irq=, event_idx=0, indirect=0 from the command line (call first). */
void virtio_cmdline(const char *cmdline);
int virtio_irq_mode(void);
const char *virtio_irq_mode_name(int mode);

/* Find the first virtio device of this type on bus 0 and map its structures.
 * Prints "virtio <type> at 00:ss.f id vvvv:dddd ..." and returns 0, or -1 (with a reason printed). */
int virtio_find(int type, struct virtio_dev *d);
/* Reset, ACKNOWLEDGE, DRIVER, negotiate VERSION_1 + (want & offered) (+ EVENT_IDX,
 * INDIRECT_DESC unless disabled), FEATURES_OK. Also sets up the interrupt mode. 0 or -1. */
int virtio_start(struct virtio_dev *d, uint64_t want);
static inline int virtio_has(const struct virtio_dev *d, unsigned bit) { return (d->features >> bit) & 1; }
/* Set up queue index with min(device max, 64) entries (or fewer if max_size is smaller). */
int virtq_setup(struct virtio_dev *d, unsigned index, struct virtq *q, unsigned max_size);
void virtio_driver_ok(struct virtio_dev *d);
uint8_t virtio_status(struct virtio_dev *d);
void virtio_reset(struct virtio_dev *d);

/* Device configuration space accessors (with config_generation retry for the 64-bit read). */
uint8_t virtio_cfg8(struct virtio_dev *d, unsigned off);
uint16_t virtio_cfg16(struct virtio_dev *d, unsigned off);
uint32_t virtio_cfg32(struct virtio_dev *d, unsigned off);
uint64_t virtio_cfg64(struct virtio_dev *d, unsigned off);
void virtio_cfg_write8(struct virtio_dev *d, unsigned off, uint8_t v);

/* Put one request (n buffers, readable ones first) on the avail ring without
 * notifying. indirect: use an indirect table (only if negotiated). Returns the
 * head index or -1 when the ring is full. */
int virtq_add(struct virtq *q, const struct vbuf *bufs, unsigned n, void *cookie, int indirect);
/* Notify the device if it wants it (EVENT_IDX / NO_NOTIFY respected). */
void virtq_kick(struct virtq *q);
/* Take one used entry if there is one: returns its head, -1 if none. */
int virtq_get(struct virtq *q, uint32_t *len, void **cookie);
/* Wait for one used entry by the selected mechanism (spin in poll mode, sti;hlt
 * in the interrupt modes, where an entry only counts once an interrupt came
 * after the used ring was last seen empty). Returns the head, -1 on timeout (about 3e9 TSC cycles,
 * or timeout_cycles if nonzero), -2 if the entry came but no interrupt. */
int virtq_wait(struct virtq *q, uint32_t *len, void **cookie, uint64_t timeout_cycles);
/* Convenience: add + kick + wait. Returns used len, or -1 (timeout/full) / -2 (no irq). */
long virtq_run(struct virtq *q, const struct vbuf *bufs, unsigned n, int indirect);
unsigned virtq_free(const struct virtq *q);

/* Prints "irqs <n>" and, in the interrupt modes, the check "irq" (interrupts
 * arrived and no completion was found without one). */
void virtio_report_irqs(struct virtio_dev *d);

/* PCI helpers */
uint8_t pci_read8(unsigned slot, unsigned fn, unsigned off);
uint16_t pci_read16(unsigned slot, unsigned fn, unsigned off);
void pci_write16(unsigned slot, unsigned fn, unsigned off, uint16_t v);

#endif
