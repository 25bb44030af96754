/* virtio_blk: a multiboot guest that drives a virtio-blk device (virtio 1.2, 5.2).
 * Tests (tests=, default id,rw,qd): id rw read ro discard zeroes qd range;
 * bench=seqread|seqwrite|randread size= count= qd= for throughput.
 * irq=poll|msix|intx|intx-ioapic selects how completions are noticed.
 * See ../README.md ("virtio_blk"). */
#include "../lib/virtio.h"

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline; } __attribute__((packed));

/* feature bits (5.2.3) */
#define BLK_F_SIZE_MAX 1
#define BLK_F_SEG_MAX 2
#define BLK_F_GEOMETRY 4
#define BLK_F_RO 5
#define BLK_F_BLK_SIZE 6
#define BLK_F_FLUSH 9
#define BLK_F_TOPOLOGY 10
#define BLK_F_DISCARD 13
#define BLK_F_WRITE_ZEROES 14

/* request types and status (5.2.6) */
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

struct blk_hdr { uint32_t type, reserved; uint64_t sector; } __attribute__((packed));
struct blk_range { uint64_t sector; uint32_t num_sectors, flags; } __attribute__((packed));

#define SLOTS 16
#define BUFSZ (64 * 1024)

static struct virtio_dev dev;
static struct virtq vq;
static const char *cl;
static uint64_t capacity;
static uint32_t seg_max = 0xFFFF, size_max;
static struct blk_hdr hdrs[SLOTS];
static volatile uint8_t stats[SLOTS];
static struct blk_range ranges[SLOTS];
static uint8_t buf_w[BUFSZ] __attribute__((aligned(4096)));
static uint8_t buf_r[BUFSZ] __attribute__((aligned(4096)));
static uint8_t slot_buf[SLOTS][BUFSZ] __attribute__((aligned(4096)));
static char idbuf[24];

static uint64_t arg_u64(const char *key, uint64_t dflt)
{
    char v[32];
    int good;
    if (!cmdline_get(cl, key, v, sizeof v))
        return dflt;
    uint64_t x = parse_u64(v, 0, &good);
    return good ? x : dflt;
}

static void pattern(uint8_t *p, uint64_t sector, unsigned nsec, uint32_t seed)
{
    for (unsigned s = 0; s < nsec; s++) {
        uint32_t x = (uint32_t)(sector + s) * 0x9E3779B1u ^ seed;
        for (unsigned i = 0; i < 512; i++) {
            x = x * 1103515245u + 12345u;
            p[s * 512 + i] = (uint8_t)(x >> 16);
        }
    }
}

/* Queue one request on slot `slot`: header, data buffers, status byte. */
static int blk_submit(int slot, uint32_t type, uint64_t sector, const struct vbuf *data, unsigned n, int indirect)
{
    struct vbuf b[2 + VQ_MAX_INDIRECT];
    if (n > VQ_MAX_INDIRECT)
        return -1;
    hdrs[slot].type = type;
    hdrs[slot].reserved = 0;
    hdrs[slot].sector = sector;
    stats[slot] = 0xEE;
    b[0] = (struct vbuf){ &hdrs[slot], sizeof hdrs[slot], 0 };
    for (unsigned k = 0; k < n; k++)
        b[1 + k] = data[k];
    b[1 + n] = (struct vbuf){ (void *)&stats[slot], 1, 1 };
    return virtq_add(&vq, b, n + 2, (void *)(uintptr_t)(slot + 1), indirect);
}

/* One request, synchronously. Returns the status byte, or -1 timeout / -2 no interrupt / -3 queue full. */
static int blk_do(uint32_t type, uint64_t sector, const struct vbuf *data, unsigned n, int indirect, uint32_t *used_len)
{
    if (blk_submit(0, type, sector, data, n, indirect) < 0)
        return -3;
    virtq_kick(&vq);
    uint32_t len = 0;
    void *ck;
    int r = virtq_wait(&vq, &len, &ck, 0);
    if (r < 0)
        return r;
    if (used_len)
        *used_len = len;
    return stats[0];
}

static const char *st_name(int st)
{
    switch (st) {
    case S_OK: return "OK";
    case S_IOERR: return "IOERR";
    case S_UNSUPP: return "UNSUPP";
    case -1: return "timeout";
    case -2: return "completed without interrupt";
    case -3: return "queue full";
    case 0xEE: return "status byte not written";
    default: return "bad status";
    }
}

/* Split `bytes` at p into n segments; sizes from `cuts` (fractions in bytes) or equal sector multiples. */
static unsigned split(struct vbuf *v, uint8_t *p, uint32_t bytes, unsigned n, const uint32_t *cuts, int writable)
{
    if (n > seg_max)
        n = seg_max;
    if (n + 2 > vq.size && !virtio_has(&dev, VIRTIO_F_INDIRECT_DESC))
        n = vq.size - 2;
    if (n < 1)
        n = 1;
    uint32_t off = 0;
    for (unsigned k = 0; k < n; k++) {
        uint32_t len;
        if (k == n - 1)
            len = bytes - off;
        else if (cuts)
            len = cuts[k];
        else
            len = (bytes / 512 / n) * 512;
        v[k] = (struct vbuf){ p + off, len, writable };
        off += len;
    }
    return n;
}

/* ---- tests ---- */

static void test_id(void)
{
    memset(idbuf, 0, sizeof idbuf);
    struct vbuf v = { idbuf, 20, 1 };
    int st = blk_do(T_GET_ID, 0, &v, 1, 0, 0);
    if (st != S_OK) {
        fail("id", "GET_ID status %d (%s)", st, st_name(st));
        return;
    }
    note("id %s", idbuf);
    char want[24];
    if (cmdline_get(cl, "expect_id", want, sizeof want) && strcmp(want, idbuf))
        fail("id", "got \"%s\", expected \"%s\"", idbuf, want);
    else
        ok("id");
}

struct rw_case { uint64_t sector; unsigned nsec, wseg, rseg; int indirect; uint32_t cuts[4]; };

static void test_rw(void)
{
    uint64_t b = arg_u64("rw_sector", 0);
    struct rw_case cs[] = {
        { b + 0, 1, 1, 1, 0, {0} },
        { b + 1, 2, 2, 1, 0, {0} },
        { b + 7, 3, 3, 2, 0, {100, 1000} },         /* segments that are not sector multiples */
        { b + 100, 4, 3, 2, 0, {512, 1024} },
        { b + 200, 8, 1, 4, 0, {0} },
        { b + 300, 6, 6, 6, 1, {0} },               /* indirect table, when negotiated */
        { b + 400, 64, 8, 1, 0, {0} },              /* 32 KiB */
        { capacity - 8, 8, 2, 1, 0, {0} },          /* the last sectors of the disk */
    };
    unsigned ncase = sizeof cs / sizeof cs[0];
    if (capacity < b + 464 + 8) {
        fail("rw", "capacity %llu too small (need %llu sectors)", (unsigned long long)capacity,
             (unsigned long long)(b + 472));
        return;
    }
    int bad = 0;
    struct vbuf v[VQ_MAX_INDIRECT];
    uint32_t seed = (uint32_t)rdtsc();
    note("rw seed %x", seed);
    for (unsigned c = 0; c < ncase && !bad; c++) {
        uint32_t bytes = cs[c].nsec * 512;
        pattern(buf_w, cs[c].sector, cs[c].nsec, seed);
        unsigned n = split(v, buf_w, bytes, cs[c].wseg, cs[c].cuts[0] ? cs[c].cuts : 0, 0);
        uint32_t len = 0;
        int st = blk_do(T_OUT, cs[c].sector, v, n, cs[c].indirect, &len);
        if (st != S_OK) {
            fail("rw", "write of %u sectors at %llu (%u segments%s): status %d (%s)", cs[c].nsec,
                 (unsigned long long)cs[c].sector, n, cs[c].indirect ? ", indirect" : "", st, st_name(st));
            bad = 1;
        }
    }
    if (bad)
        return;
    if (virtio_has(&dev, BLK_F_FLUSH)) {
        int st = blk_do(T_FLUSH, 0, 0, 0, 0, 0);
        if (st != S_OK) {
            fail("rw", "FLUSH status %d (%s)", st, st_name(st));
            return;
        }
        note("flush ok");
    } else {
        note("flush not offered");
    }
    for (unsigned c = 0; c < ncase && !bad; c++) {
        uint32_t bytes = cs[c].nsec * 512;
        pattern(buf_w, cs[c].sector, cs[c].nsec, seed);
        memset(buf_r, 0xA5, bytes);
        unsigned n = split(v, buf_r, bytes, cs[c].rseg, 0, 1);
        uint32_t len = 0;
        int st = blk_do(T_IN, cs[c].sector, v, n, cs[c].indirect, &len);
        if (st != S_OK) {
            fail("rw", "read of %u sectors at %llu: status %d (%s)", cs[c].nsec,
                 (unsigned long long)cs[c].sector, st, st_name(st));
            bad = 1;
        } else if (memcmp(buf_r, buf_w, bytes)) {
            unsigned i = 0;
            while (buf_r[i] == buf_w[i])
                i++;
            fail("rw", "data read back from sector %llu differs at byte %u (%02x, wrote %02x)",
                 (unsigned long long)cs[c].sector, i, buf_r[i], buf_w[i]);
            bad = 1;
        } else if (len != bytes + 1) {
            fail("rw", "read of %u bytes: used len %u, expected %u (data + status)", bytes, len, bytes + 1);
            bad = 1;
        }
    }
    if (!bad) {
        note("rw cases %u indirect %s", ncase, virtio_has(&dev, VIRTIO_F_INDIRECT_DESC) ? "yes" : "no");
        ok("rw");
    }
}

static void test_read(void)
{
    uint64_t sector = arg_u64("sector", 0), count = arg_u64("count", 1);
    if (sector + count > capacity) {
        fail("read", "sectors %llu+%llu beyond capacity %llu", (unsigned long long)sector,
             (unsigned long long)count, (unsigned long long)capacity);
        return;
    }
    uint32_t h = 0x811c9dc5u;
    uint64_t done = 0;
    while (done < count) {
        uint32_t n = count - done > BUFSZ / 512 ? BUFSZ / 512 : (uint32_t)(count - done);
        struct vbuf v = { buf_r, n * 512, 1 };
        memset(buf_r, 0xA5, n * 512);
        uint32_t len = 0;
        int st = blk_do(T_IN, sector + done, &v, 1, 0, &len);
        if (st != S_OK) {
            fail("read", "read at %llu: status %d (%s)", (unsigned long long)(sector + done), st, st_name(st));
            return;
        }
        for (uint32_t i = 0; i < n * 512; i++) {
            h ^= buf_r[i];
            h *= 0x01000193u;
        }
        done += n;
    }
    note("fnv1a32 %08x", h);
    char want[16];
    if (cmdline_get(cl, "expect_sum", want, sizeof want)) {
        uint32_t w = (uint32_t)parse_u64(want, 16, 0);
        if (w != h) {
            fail("read", "fnv1a32 %08x, expected %08x", h, w);
            return;
        }
    }
    ok("read");
}

static void test_ro(void)
{
    if (!virtio_has(&dev, BLK_F_RO)) {
        fail("ro", "VIRTIO_BLK_F_RO not offered");
        return;
    }
    uint64_t sector = arg_u64("sector", 0);
    struct vbuf v = { buf_w, 4096, 1 };
    int st = blk_do(T_IN, sector, &v, 1, 0, 0);
    if (st != S_OK) {
        fail("ro", "read status %d (%s)", st, st_name(st));
        return;
    }
    for (unsigned i = 0; i < 4096; i++)
        buf_r[i] = (uint8_t)~buf_w[i];
    v = (struct vbuf){ buf_r, 4096, 0 };
    st = blk_do(T_OUT, sector, &v, 1, 0, 0);
    if (st != S_IOERR) {
        fail("ro", "write to a read-only device: status %d (%s), expected IOERR", st, st_name(st));
        return;
    }
    memset(buf_r, 0, 4096);
    v = (struct vbuf){ buf_r, 4096, 1 };
    st = blk_do(T_IN, sector, &v, 1, 0, 0);
    if (st != S_OK || memcmp(buf_r, buf_w, 4096)) {
        fail("ro", "data changed after the refused write (status %d)", st);
        return;
    }
    note("ro write refused with IOERR");
    ok("ro");
}

/* discard (type 11) or write zeroes (type 13) of 16 sectors after writing a pattern */
static void test_range_op(const char *name, int feature, uint32_t type)
{
    if (!virtio_has(&dev, (unsigned)feature)) {
        note("%s not offered", name);
        return;
    }
    uint64_t sector = arg_u64("zero_sector", 1100);
    uint32_t nsec = 16;
    uint32_t maxsec = virtio_cfg32(&dev, type == T_DISCARD ? 36 : 48);
    uint32_t align = type == T_DISCARD ? virtio_cfg32(&dev, 44) : 1;
    if (align > 1)
        sector = (sector + align - 1) / align * align;
    if (maxsec && nsec > maxsec)
        nsec = maxsec;
    if (sector + nsec > capacity) {
        fail(name, "capacity too small");
        return;
    }
    note("%s max_sectors %u max_seg %u alignment %u", name, maxsec,
         virtio_cfg32(&dev, type == T_DISCARD ? 40 : 52), align);
    pattern(buf_w, sector, nsec, 77);
    struct vbuf v = { buf_w, nsec * 512, 0 };
    int st = blk_do(T_OUT, sector, &v, 1, 0, 0);
    if (st != S_OK) {
        fail(name, "write status %d (%s)", st, st_name(st));
        return;
    }
    ranges[0] = (struct blk_range){ sector, nsec, 0 };
    v = (struct vbuf){ &ranges[0], sizeof ranges[0], 0 };
    st = blk_do(type, 0, &v, 1, 0, 0);
    if (st != S_OK) {
        fail(name, "status %d (%s)", st, st_name(st));
        return;
    }
    memset(buf_r, 0xA5, nsec * 512);
    v = (struct vbuf){ buf_r, nsec * 512, 1 };
    st = blk_do(T_IN, sector, &v, 1, 0, 0);
    if (st != S_OK) {
        fail(name, "read-back status %d (%s)", st, st_name(st));
        return;
    }
    if (type == T_WRITE_ZEROES) {
        for (unsigned i = 0; i < nsec * 512; i++)
            if (buf_r[i]) {
                fail(name, "byte %u of the range is %02x after WRITE_ZEROES", i, buf_r[i]);
                return;
            }
    }
    ok(name);
}

static void test_qd(void)
{
    uint64_t base = arg_u64("qd_sector", 1000);
    unsigned depth = SLOTS;
    int ind = virtio_has(&dev, VIRTIO_F_INDIRECT_DESC) && arg_u64("qd_indirect", 0);
    if (!ind && depth * 3 > vq.size)
        depth = vq.size / 3;
    if (base + 2 * depth > capacity) {
        fail("qd", "capacity too small");
        return;
    }
    uint32_t seed = (uint32_t)rdtsc();
    for (int pass = 0; pass < 2; pass++) {
        int writing = pass == 0;
        for (unsigned k = 0; k < depth; k++) {
            uint64_t sec = base + 2 * k;
            if (writing)
                pattern(slot_buf[k], sec, 1, seed);
            else
                memset(slot_buf[k], 0xA5, 512);
            struct vbuf v = { slot_buf[k], 512, !writing };
            if (blk_submit((int)k, writing ? T_OUT : T_IN, sec, &v, 1, ind) < 0) {
                fail("qd", "queue full after %u requests", k);
                return;
            }
        }
        unsigned k0 = vq.kicks, n0 = vq.notifies;
        virtq_kick(&vq);
        unsigned seen = 0, bits = 0;
        while (seen < depth) {
            uint32_t len;
            void *ck;
            int r = virtq_wait(&vq, &len, &ck, 0);
            if (r < 0) {
                fail("qd", "%s: %u of %u completed, then %s", writing ? "writes" : "reads", seen, depth,
                     r == -1 ? "timeout" : "completion without interrupt");
                return;
            }
            unsigned slot = (unsigned)(uintptr_t)ck - 1;
            if (slot >= depth || (bits >> slot) & 1) {
                fail("qd", "unexpected completion cookie %u", slot);
                return;
            }
            bits |= 1u << slot;
            if (stats[slot] != S_OK) {
                fail("qd", "request %u status %d (%s)", slot, stats[slot], st_name(stats[slot]));
                return;
            }
            seen++;
        }
        note("qd %s depth %u kicks %u notifies %u", writing ? "write" : "read", depth, vq.kicks - k0,
             vq.notifies - n0);
    }
    uint8_t want[512];
    for (unsigned k = 0; k < depth; k++) {
        pattern(want, base + 2 * k, 1, seed);
        if (memcmp(want, slot_buf[k], 512)) {
            fail("qd", "sector %llu read back wrong", (unsigned long long)(base + 2 * k));
            return;
        }
    }
    ok("qd");
}

/* durable: for i = 0.. rounds-1, write a 4 KiB block at sector base + 8 i filled with the 32-bit words
 * (0xD0D0 << 16 | i), FLUSH, then print "flushed <i>". The host kills the VM at a random moment and checks
 * that every block reported flushed is on the disk. */
static void test_durable(void)
{
    uint64_t base = arg_u64("durable_sector", 4096), rounds = arg_u64("rounds", 200);
    if (base + 8 * rounds > capacity) {
        fail("durable", "disk too small for %llu rounds", (unsigned long long)rounds);
        return;
    }
    for (uint64_t i = 0; i < rounds; i++) {
        uint32_t *words = (uint32_t *)buf_w;
        for (unsigned w = 0; w < 1024; w++)
            words[w] = 0xD0D00000u | (uint32_t)(i & 0xFFFF);
        struct vbuf v = { buf_w, 4096, 0 };
        int st = blk_do(T_OUT, base + 8 * i, &v, 1, 0, 0);
        if (st == S_OK)
            st = blk_do(T_FLUSH, 0, 0, 0, 0, 0);
        if (st != S_OK) {
            fail("durable", "round %llu: status %d (%s)", (unsigned long long)i, st, st_name(st));
            return;
        }
        note("flushed %llu", (unsigned long long)i);
    }
    ok("durable");
}

static void test_outofrange(void)
{
    struct vbuf v = { buf_r, 512, 1 };
    int st = blk_do(T_IN, capacity, &v, 1, 0, 0);
    note("read at capacity: status %d (%s)", st, st_name(st));
    if (st == S_IOERR)
        ok("range");
    else
        fail("range", "read of sector %llu (= capacity): status %d (%s), expected IOERR",
             (unsigned long long)capacity, st, st_name(st));
}

/* ---- bench ---- */

static void bench(const char *mode)
{
    uint32_t size = (uint32_t)arg_u64("size", 4096);
    uint64_t count = arg_u64("count", 1000);
    unsigned qd = (unsigned)arg_u64("qd", 1);
    uint64_t start = arg_u64("sector", 0);
    int writing = !strcmp(mode, "seqwrite"), rnd = !strcmp(mode, "randread");
    if (!writing && !rnd && strcmp(mode, "seqread")) {
        fail("bench", "unknown bench mode \"%s\" (seqread, seqwrite, randread)", mode);
        return;
    }
    if (size < 512 || size % 512 || size > BUFSZ) {
        fail("bench", "size must be a multiple of 512 up to %u", BUFSZ);
        return;
    }
    if (qd < 1) qd = 1;
    if (qd > SLOTS) qd = SLOTS;
    if (qd * 3 > vq.size) qd = vq.size / 3;
    uint32_t spr = size / 512;
    if (start + spr > capacity) {
        fail("bench", "disk too small");
        return;
    }
    uint64_t blocks = (capacity - start) / spr;
    if (writing)
        for (unsigned k = 0; k < qd; k++)
            pattern(slot_buf[k], k, spr, 5);
    uint64_t hz = tsc_hz_measure();
    if (!hz) {
        fail("bench", "TSC calibration failed");
        return;
    }
    note("tsc_hz %llu", (unsigned long long)hz);
    uint32_t lcg = 12345;
    uint64_t issued = 0, done = 0, seq = 0;
    unsigned k0 = vq.kicks, n0 = vq.notifies;
    uint64_t t0 = rdtsc();
    for (unsigned k = 0; k < qd && issued < count; k++, issued++) {
        uint64_t blk = rnd ? (lcg = lcg * 1103515245u + 12345u, (lcg >> 4) % blocks) : seq++ % blocks;
        struct vbuf v = { slot_buf[k], size, !writing };
        blk_submit((int)k, writing ? T_OUT : T_IN, start + blk * spr, &v, 1, 0);
    }
    virtq_kick(&vq);
    while (done < count) {
        void *ck;
        uint32_t len;
        int r = virtq_wait(&vq, &len, &ck, 0);
        if (r < 0) {
            fail("bench", "request %llu: %s", (unsigned long long)done, r == -1 ? "timeout" : "no interrupt");
            return;
        }
        unsigned slot = (unsigned)(uintptr_t)ck - 1;
        if (stats[slot] != S_OK) {
            fail("bench", "request status %d (%s)", stats[slot], st_name(stats[slot]));
            return;
        }
        done++;
        if (issued < count) {
            uint64_t blk = rnd ? (lcg = lcg * 1103515245u + 12345u, (lcg >> 4) % blocks) : seq++ % blocks;
            struct vbuf v = { slot_buf[slot], size, !writing };
            blk_submit((int)slot, writing ? T_OUT : T_IN, start + blk * spr, &v, 1, 0);
            issued++;
            virtq_kick(&vq);
        }
    }
    uint64_t dt = rdtsc() - t0;
    note("bench_mode %s", mode);
    note("bench_size %u", size);
    note("bench_qd %u", qd);
    note("bench_reqs %llu", (unsigned long long)count);
    note("bench_bytes %llu", (unsigned long long)(count * size));
    note("bench_ns %llu", (unsigned long long)tsc_to_ns(dt, hz));
    note("bench_kicks %u notifies %u", vq.kicks - k0, vq.notifies - n0);
    ok("bench");
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    cl = magic == 0x2BADB002 && (mi->flags & 4) ? (const char *)(uintptr_t)mi->cmdline : 0;
    serial_init();
    kprintf("virtio_blk guest\n");
    virtio_cmdline(cl);
    char tests[128], bmode[24];
    int have_bench = cmdline_get(cl, "bench", bmode, sizeof bmode);
    if (!cmdline_get(cl, "tests", tests, sizeof tests))
        memcpy(tests, have_bench ? "" : "id,rw,qd", have_bench ? 1 : 9);
    if (virtio_find(VIRTIO_TYPE_BLK, &dev)) {
        fail("find", "no virtio-blk device");
        finish();
    }
    uint64_t want = FEAT(BLK_F_SIZE_MAX) | FEAT(BLK_F_SEG_MAX) | FEAT(BLK_F_RO) | FEAT(BLK_F_BLK_SIZE) |
                    FEAT(BLK_F_FLUSH) | FEAT(BLK_F_TOPOLOGY) | FEAT(BLK_F_GEOMETRY) | FEAT(BLK_F_DISCARD) |
                    FEAT(BLK_F_WRITE_ZEROES);
    if (virtio_start(&dev, want) || virtq_setup(&dev, 0, &vq, 0)) {
        fail("init", "device setup failed (status %x)", virtio_status(&dev));
        finish();
    }
    virtio_driver_ok(&dev);
    ok("init");
    capacity = virtio_cfg64(&dev, 0);
    note("capacity %llu", (unsigned long long)capacity);
    if (virtio_has(&dev, BLK_F_BLK_SIZE))
        note("blk_size %u", virtio_cfg32(&dev, 20));
    if (virtio_has(&dev, BLK_F_SEG_MAX)) {
        seg_max = virtio_cfg32(&dev, 12);
        note("seg_max %u", seg_max);
        if (!seg_max)
            seg_max = 1;
    }
    if (virtio_has(&dev, BLK_F_SIZE_MAX)) {
        size_max = virtio_cfg32(&dev, 8);
        note("size_max %u", size_max);
    }
    note("ro %d flush %d discard %d write_zeroes %d", virtio_has(&dev, BLK_F_RO), virtio_has(&dev, BLK_F_FLUSH),
         virtio_has(&dev, BLK_F_DISCARD), virtio_has(&dev, BLK_F_WRITE_ZEROES));
    if (list_has(tests, "id")) test_id();
    if (list_has(tests, "rw")) test_rw();
    if (list_has(tests, "read")) test_read();
    if (list_has(tests, "ro")) test_ro();
    if (list_has(tests, "discard")) test_range_op("discard", BLK_F_DISCARD, T_DISCARD);
    if (list_has(tests, "zeroes")) test_range_op("zeroes", BLK_F_WRITE_ZEROES, T_WRITE_ZEROES);
    if (list_has(tests, "qd")) test_qd();
    if (list_has(tests, "range")) test_outofrange();
    if (list_has(tests, "durable")) test_durable();
    if (have_bench) bench(bmode);
    virtio_report_irqs(&dev);
    uint8_t st = virtio_status(&dev);
    if (st & (VIRTIO_STAT_NEEDS_RESET | VIRTIO_STAT_FAILED))
        fail("status", "device status %x", st);
    virtio_reset(&dev);
    finish();
}
