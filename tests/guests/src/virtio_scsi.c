/* virtio_scsi: a multiboot guest that drives a virtio-scsi host (virtio 1.2, 5.6)
 * with a CD-ROM at target 0 lun 0: INQUIRY, TEST UNIT READY, READ CAPACITY(10),
 * READ(10), and a READ beyond the end for CHECK CONDITION / sense data.
 * tests= (default inquiry,tur,capacity,read,sense; also badtarget),
 * target= lun= lba= count= expect_sum= expect_type= expect_block_size=,
 * irq=poll|msix|intx|intx-ioapic. See ../README.md ("virtio_scsi"). */
#include "../lib/virtio.h"

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline; } __attribute__((packed));

/* device configuration (5.6.4) */
#define CFG_NUM_QUEUES 0
#define CFG_SEG_MAX 4
#define CFG_MAX_SECTORS 8
#define CFG_SENSE_SIZE 20
#define CFG_CDB_SIZE 24
#define CFG_MAX_TARGET 30
#define CFG_MAX_LUN 32

#define MAX_CDB 64
#define MAX_SENSE 128
#define REQ_HDR 19              /* lun[8], id, task_attr, prio, crn */
#define RESP_HDR 12             /* sense_len, residual, status_qualifier, status, response */

/* response codes (5.6.6.1) */
static const char *const resp_names[] = { "OK", "OVERRUN", "ABORTED", "BAD_TARGET", "RESET", "BUSY",
                                           "TRANSPORT_FAILURE", "TARGET_FAILURE", "NEXUS_FAILURE", "FAILURE" };

static struct virtio_dev dev;
static struct virtq ctrlq, eventq, reqq;
static const char *cl;
static uint32_t cdb_size = 32, sense_size = 96;
static unsigned target, lun;
static uint8_t req[REQ_HDR + MAX_CDB] __attribute__((aligned(16)));
static uint8_t resp[RESP_HDR + MAX_SENSE] __attribute__((aligned(16)));
static uint8_t data[64 * 1024] __attribute__((aligned(4096)));
static uint64_t tag = 1;
static uint32_t blocks, block_size;

struct result {
    int err;                    /* <0: transport/queue problem (-1 timeout, -2 no interrupt) */
    uint8_t response, status;
    uint32_t sense_len, residual, used_len;
    uint8_t sense[MAX_SENSE];
};

static uint64_t arg_u64(const char *key, uint64_t dflt)
{
    char v[32];
    int good;
    if (!cmdline_get(cl, key, v, sizeof v))
        return dflt;
    uint64_t x = parse_u64(v, 0, &good);
    return good ? x : dflt;
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static const char *resp_name(unsigned r) { return r < 10 ? resp_names[r] : "?"; }

/* Send one command with an optional data-in buffer. */
static void scsi_cmd(unsigned tgt, unsigned ln, const uint8_t *cdb, unsigned cdblen, void *din, uint32_t inlen,
                     struct result *r)
{
    memset(r, 0, sizeof *r);
    memset(req, 0, sizeof req);
    req[0] = 1;                              /* lun addressing: 1, target, single-level lun */
    req[1] = (uint8_t)tgt;
    req[2] = (uint8_t)(0x40 | (ln >> 8));
    req[3] = (uint8_t)ln;
    memcpy(req + 8, &tag, 8);
    tag++;
    req[16] = 0;                             /* SIMPLE task attribute */
    memcpy(req + REQ_HDR, cdb, cdblen);
    memset(resp, 0xEE, sizeof resp);
    struct vbuf v[3] = {
        { req, REQ_HDR + cdb_size, 0 },
        { resp, RESP_HDR + sense_size, 1 },
        { din, inlen, 1 },
    };
    long n = virtq_run(&reqq, v, din && inlen ? 3 : 2, 0);
    if (n < 0) {
        r->err = (int)n;
        return;
    }
    r->used_len = (uint32_t)n;
    r->sense_len = le32(resp);
    r->residual = le32(resp + 4);
    r->status = resp[10];
    r->response = resp[11];
    uint32_t sl = r->sense_len < sense_size ? r->sense_len : sense_size;
    memcpy(r->sense, resp + RESP_HDR, sl);
}

/* sense key / ASC / ASCQ from fixed or descriptor format sense data */
static int sense_parse(const uint8_t *s, uint32_t len, unsigned *key, unsigned *asc, unsigned *ascq)
{
    if (len < 4)
        return -1;
    unsigned code = s[0] & 0x7F;
    if (code == 0x70 || code == 0x71) {
        *key = s[2] & 0xF;
        *asc = len > 12 ? s[12] : 0;
        *ascq = len > 13 ? s[13] : 0;
        return 0;
    }
    if (code == 0x72 || code == 0x73) {
        *key = s[1] & 0xF;
        *asc = s[2];
        *ascq = s[3];
        return 0;
    }
    return -1;
}

static int transport_ok(const char *name, const struct result *r)
{
    if (r->err) {
        fail(name, "%s", r->err == -1 ? "timeout" : r->err == -2 ? "completion without interrupt" : "queue full");
        return 0;
    }
    if (r->response != 0) {
        fail(name, "virtio-scsi response %u (%s)", r->response, resp_name(r->response));
        return 0;
    }
    return 1;
}

static void copy_str(char *out, const uint8_t *in, unsigned n)
{
    memcpy(out, in, n);
    out[n] = 0;
    while (n && out[n - 1] == ' ')
        out[--n] = 0;
}

static void test_inquiry(void)
{
    uint8_t cdb[6] = { 0x12, 0, 0, 0, 96, 0 };
    struct result r;
    memset(data, 0, 96);
    scsi_cmd(target, lun, cdb, 6, data, 96, &r);
    if (!transport_ok("inquiry", &r))
        return;
    if (r.status != 0) {
        fail("inquiry", "SCSI status %02x", r.status);
        return;
    }
    char vendor[9], product[17], rev[5];
    copy_str(vendor, data + 8, 8);
    copy_str(product, data + 16, 16);
    copy_str(rev, data + 32, 4);
    unsigned type = data[0] & 0x1F, qual = data[0] >> 5;
    note("inquiry type %u qualifier %u removable %u vendor %s product %s rev %s residual %u", type, qual,
         data[1] >> 7, vendor, product, rev, r.residual);
    note("vendor %s", vendor);
    note("product %s", product);
    unsigned want = (unsigned)arg_u64("expect_type", 5);
    if (qual != 0 || type != want)
        fail("inquiry", "peripheral qualifier %u type %u, expected 0 and %u", qual, type, want);
    else
        ok("inquiry");
}

static void test_tur(void)
{
    uint8_t cdb[6] = { 0 };
    struct result r;
    unsigned ua = 0;
    for (int i = 0; i < 8; i++) {
        scsi_cmd(target, lun, cdb, 6, 0, 0, &r);
        if (!transport_ok("tur", &r))
            return;
        if (r.status == 0) {
            note("tur ready unit_attentions %u", ua);
            ok("tur");
            return;
        }
        unsigned key = 0, asc = 0, ascq = 0;
        if (r.status == 2 && !sense_parse(r.sense, r.sense_len, &key, &asc, &ascq) && key == 6) {
            ua++;                            /* UNIT ATTENTION (power on, medium changed): retry */
            continue;
        }
        fail("tur", "status %02x sense key %x asc %02x ascq %02x", r.status, key, asc, ascq);
        return;
    }
    fail("tur", "still not ready after %u unit attentions", ua);
}

static void test_capacity(void)
{
    uint8_t cdb[10] = { 0x25 };
    struct result r;
    for (int i = 0; i < 4; i++) {
        memset(data, 0, 8);
        scsi_cmd(target, lun, cdb, 10, data, 8, &r);
        if (!transport_ok("capacity", &r))
            return;
        unsigned key = 0, asc, ascq;
        if (r.status == 2 && !sense_parse(r.sense, r.sense_len, &key, &asc, &ascq) && key == 6)
            continue;
        break;
    }
    if (r.status != 0) {
        fail("capacity", "SCSI status %02x", r.status);
        return;
    }
    blocks = be32(data) + 1;
    block_size = be32(data + 4);
    note("blocks %u", blocks);
    note("block_size %u", block_size);
    unsigned want = (unsigned)arg_u64("expect_block_size", 2048);
    if (block_size != want)
        fail("capacity", "block size %u, expected %u", block_size, want);
    else
        ok("capacity");
}

static void read10(uint32_t lba, uint16_t n, void *buf, uint32_t len, struct result *r)
{
    uint8_t cdb[10] = { 0x28, 0, (uint8_t)(lba >> 24), (uint8_t)(lba >> 16), (uint8_t)(lba >> 8), (uint8_t)lba,
                        0, (uint8_t)(n >> 8), (uint8_t)n, 0 };
    scsi_cmd(target, lun, cdb, 10, buf, len, r);
}

static void test_read(void)
{
    uint32_t lba = (uint32_t)arg_u64("lba", 0), count = (uint32_t)arg_u64("count", 1);
    uint32_t bs = block_size ? block_size : 2048;
    uint32_t per = sizeof data / bs;
    uint32_t h = 0x811c9dc5u, done = 0;
    struct result r;
    while (done < count) {
        uint32_t n = count - done < per ? count - done : per;
        memset(data, 0xA5, n * bs);
        read10(lba + done, (uint16_t)n, data, n * bs, &r);
        if (!transport_ok("read", &r))
            return;
        if (r.status != 0 || r.residual != 0) {
            unsigned key = 0, asc = 0, ascq = 0;
            sense_parse(r.sense, r.sense_len, &key, &asc, &ascq);
            fail("read", "READ(10) of %u blocks at %u: status %02x residual %u sense %x/%02x/%02x", n, lba + done,
                 r.status, r.residual, key, asc, ascq);
            return;
        }
        for (uint32_t i = 0; i < n * bs; i++) {
            h ^= data[i];
            h *= 0x01000193u;
        }
        done += n;
    }
    note("fnv1a32 %08x", h);
    char want[16];
    if (cmdline_get(cl, "expect_sum", want, sizeof want) && (uint32_t)parse_u64(want, 16, 0) != h)
        fail("read", "fnv1a32 %08x, expected %s", h, want);
    else
        ok("read");
}

static void test_sense(void)
{
    uint32_t end = blocks ? blocks : 0x7FFFFFF0u;
    uint32_t bs = block_size ? block_size : 2048;
    struct result r;
    read10(end, 1, data, bs, &r);
    if (!transport_ok("sense", &r))
        return;
    unsigned key = 0, asc = 0, ascq = 0;
    int have = r.sense_len && !sense_parse(r.sense, r.sense_len, &key, &asc, &ascq);
    note("read beyond end (lba %u): status %02x sense_len %u", end, r.status, r.sense_len);
    if (r.status != 2) {
        fail("sense", "READ(10) beyond the last block: status %02x, expected 02 (CHECK CONDITION)", r.status);
        return;
    }
    if (have)
        note("sense key %x asc %02x ascq %02x (autosense)", key, asc, ascq);
    /* REQUEST SENSE: sense data of the failed command if it was not returned with it */
    uint8_t cdb[6] = { 0x03, 0, 0, 0, 96, 0 };
    struct result rs;
    memset(data, 0, 96);
    scsi_cmd(target, lun, cdb, 6, data, 96, &rs);
    if (!transport_ok("sense", &rs))
        return;
    unsigned k2 = 0, a2 = 0, q2 = 0;
    if (rs.status == 0 && !sense_parse(data, 96 - rs.residual, &k2, &a2, &q2))
        note("request_sense key %x asc %02x ascq %02x", k2, a2, q2);
    else
        note("request_sense status %02x", rs.status);
    if (!have) {
        key = k2;
        asc = a2;
        ascq = q2;
        note("sense key %x asc %02x ascq %02x (request sense)", key, asc, ascq);
    }
    if (key != 5)
        fail("sense", "sense key %x, expected 5 (ILLEGAL REQUEST)", key);
    else {
        note("sense ILLEGAL REQUEST");
        ok("sense");
    }
}

static void test_badtarget(void)
{
    uint8_t cdb[6] = { 0x12, 0, 0, 0, 36, 0 };
    struct result r;
    unsigned t = (unsigned)arg_u64("bad_target", 9);
    scsi_cmd(t, 0, cdb, 6, data, 36, &r);
    if (r.err) {
        fail("badtarget", "%s", r.err == -1 ? "timeout" : "completion without interrupt");
        return;
    }
    note("inquiry to target %u: response %u (%s)", t, r.response, resp_name(r.response));
    if (r.response == 3)
        ok("badtarget");
    else
        fail("badtarget", "response %u (%s), expected 3 (BAD_TARGET)", r.response, resp_name(r.response));
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    cl = magic == 0x2BADB002 && (mi->flags & 4) ? (const char *)(uintptr_t)mi->cmdline : 0;
    serial_init();
    kprintf("virtio_scsi guest\n");
    virtio_cmdline(cl);
    char tests[128];
    if (!cmdline_get(cl, "tests", tests, sizeof tests))
        memcpy(tests, "inquiry,tur,capacity,read,sense", 32);
    target = (unsigned)arg_u64("target", 0);
    lun = (unsigned)arg_u64("lun", 0);
    if (virtio_find(VIRTIO_TYPE_SCSI, &dev)) {
        fail("find", "no virtio-scsi device");
        finish();
    }
    if (virtio_start(&dev, 0) || virtq_setup(&dev, 0, &ctrlq, 0) || virtq_setup(&dev, 1, &eventq, 0) ||
        virtq_setup(&dev, 2, &reqq, 0)) {
        fail("init", "device setup failed (status %x)", virtio_status(&dev));
        finish();
    }
    virtio_driver_ok(&dev);
    ok("init");
    cdb_size = virtio_cfg32(&dev, CFG_CDB_SIZE);
    sense_size = virtio_cfg32(&dev, CFG_SENSE_SIZE);
    note("scsi num_queues %u seg_max %u max_sectors %u cdb_size %u sense_size %u max_target %u max_lun %u",
         virtio_cfg32(&dev, CFG_NUM_QUEUES), virtio_cfg32(&dev, CFG_SEG_MAX), virtio_cfg32(&dev, CFG_MAX_SECTORS),
         cdb_size, sense_size, virtio_cfg16(&dev, CFG_MAX_TARGET), virtio_cfg32(&dev, CFG_MAX_LUN));
    if (cdb_size < 16 || cdb_size > MAX_CDB || sense_size < 18 || sense_size > MAX_SENSE) {
        fail("init", "cdb_size %u / sense_size %u unusable", cdb_size, sense_size);
        finish();
    }
    if (list_has(tests, "inquiry")) test_inquiry();
    if (list_has(tests, "tur")) test_tur();
    if (list_has(tests, "capacity")) test_capacity();
    if (list_has(tests, "read")) test_read();
    if (list_has(tests, "sense")) test_sense();
    if (list_has(tests, "badtarget")) test_badtarget();
    virtio_report_irqs(&dev);
    uint8_t st = virtio_status(&dev);
    if (st & (VIRTIO_STAT_NEEDS_RESET | VIRTIO_STAT_FAILED))
        fail("status", "device status %x", st);
    virtio_reset(&dev);
    finish();
}
