/* virtio_rng: a multiboot guest that reads entropy from a virtio-rng device
 * (virtio 1.2, 5.4) into buffers of 1, 16 and 4096 bytes and checks the bytes
 * look random (not all equal, not all zero). irq=poll|msix|intx|intx-ioapic.
 * Prints "rng ok <n> bytes". See ../README.md ("virtio_rng"). */
#include "../lib/virtio.h"

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline; } __attribute__((packed));

static struct virtio_dev dev;
static struct virtq vq;
static uint8_t buf[4096] __attribute__((aligned(4096)));

/* Fill p[0..n) (the device may return fewer bytes per request). Returns bytes or <0. */
static long fill(uint8_t *p, uint32_t n, unsigned *reqs)
{
    uint32_t got = 0;
    while (got < n) {
        struct vbuf v = { p + got, n - got, 1 };
        long r = virtq_run(&vq, &v, 1, 0);
        (*reqs)++;
        if (r < 0)
            return r;
        if (r == 0 || (uint32_t)r > n - got)
            return -3;
        got += (uint32_t)r;
        if (*reqs > 10000)
            return -4;
    }
    return got;
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    const char *cl = magic == 0x2BADB002 && (mi->flags & 4) ? (const char *)(uintptr_t)mi->cmdline : 0;
    serial_init();
    kprintf("virtio_rng guest\n");
    virtio_cmdline(cl);
    if (virtio_find(VIRTIO_TYPE_RNG, &dev)) {
        fail("find", "no virtio-rng device");
        finish();
    }
    if (virtio_start(&dev, 0) || virtq_setup(&dev, 0, &vq, 0)) {
        fail("init", "device setup failed (status %x)", virtio_status(&dev));
        finish();
    }
    virtio_driver_ok(&dev);
    ok("init");
    static const uint32_t sizes[] = { 1, 16, 4096, 4096 };
    unsigned total = 0, reqs = 0, nonzero = 0;
    int bad = 0;
    for (unsigned k = 0; k < sizeof sizes / sizeof sizes[0] && !bad; k++) {
        uint32_t n = sizes[k];
        memset(buf, 0, sizeof buf);
        long r = fill(buf, n, &reqs);
        if (r < 0) {
            fail("rng", "%u-byte read: %s", n, r == -1 ? "timeout" : r == -2 ? "completion without interrupt" :
                 r == -3 ? "bad used length" : "too many short reads");
            bad = 1;
            break;
        }
        total += (unsigned)r;
        unsigned same = 1, zero = buf[0] == 0;
        for (uint32_t i = 1; i < n; i++) {
            if (buf[i] != buf[0]) same = 0;
            if (buf[i]) zero = 0;
        }
        nonzero += !zero;
        if (n >= 16 && same) {
            fail("rng", "all %u bytes are %02x", n, buf[0]);
            bad = 1;
        }
        /* 4096 random bytes: every byte value should be roughly uniform; catch gross patterns */
        if (n == 4096) {
            unsigned hist[16] = {0};
            for (uint32_t i = 0; i < n; i++)
                hist[buf[i] >> 4]++;
            for (unsigned h = 0; h < 16; h++)
                if (hist[h] < 128 || hist[h] > 384) {
                    fail("rng", "byte distribution looks wrong (%u bytes with high nibble %x)", hist[h], h);
                    bad = 1;
                    break;
                }
        }
        note("rng read %u bytes, first %02x %02x %02x %02x", n, buf[0], buf[1], buf[2], buf[3]);
    }
    if (!bad && nonzero < 3)
        fail("rng", "the buffers were all zero");
    else if (!bad) {
        note("rng ok %u bytes in %u requests", total, reqs);
        ok("rng");
    }
    virtio_report_irqs(&dev);
    uint8_t st = virtio_status(&dev);
    if (st & (VIRTIO_STAT_NEEDS_RESET | VIRTIO_STAT_FAILED))
        fail("status", "device status %x", st);
    virtio_reset(&dev);
    finish();
}
