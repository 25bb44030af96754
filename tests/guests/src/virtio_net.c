/* virtio_net: a multiboot guest on a virtio-net device (virtio 1.2, 5.1).
 * Reads the MAC, posts receive buffers, gets an address by DHCP (DISCOVER,
 * OFFER, REQUEST, ACK), answers ARP and ICMP echo requests for that address,
 * pings the router, and with serve=<seconds> keeps answering before it exits.
 * tests= (default dhcp,ping); ip=<a.b.c.d> router=<a.b.c.d> instead of dhcp;
 * mrg=0 (no MRG_RXBUF); irq=poll|msix|intx|intx-ioapic.
 * Benchmarks (bench/net.py): bench=tx size=<frame bytes> count=<n> sends count UDP
 * frames to the router's port 9 (ARP-resolved, or dstmac=<mac>), keeping the tx
 * queue full; bench=rx count=<n> [wait=<s>] counts UDP frames to its own port 9
 * on all 64 receive buffers. Both time themselves with the TSC.
 * See ../README.md ("virtio_net"). */
#include "../lib/virtio.h"

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline; } __attribute__((packed));

#define NET_F_MAC 5
#define NET_F_MRG_RXBUF 15
#define NET_F_STATUS 16
#define NET_HDR 12              /* struct virtio_net_hdr with VERSION_1 (num_buffers included) */
#define NRX 16
#define NRX_BENCH 64            /* bench=rx: every receive buffer the queue can take */
#define BUFLEN 2048

static struct virtio_dev dev;
static struct virtq rxq, txq;
static const char *cl;
static uint8_t rxbuf[NRX_BENCH][BUFLEN] __attribute__((aligned(4096)));
static uint8_t txbuf[BUFLEN] __attribute__((aligned(16)));
static uint8_t bench_frame[BUFLEN] __attribute__((aligned(64)));
static uint8_t mac[6];
static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static uint64_t hz;
static uint32_t my_ip, router_ip, dns_ip, mask, server_id, xid;
static char hostname[64];
static unsigned rx_frames, rx_dropped, arp_answered, ping_answered, tx_frames;

/* what the receive path has seen */
static volatile int dhcp_type;          /* message type of the last matching DHCP reply */
static uint32_t dhcp_yiaddr, dhcp_server, dhcp_router, dhcp_dns, dhcp_mask;
static char dhcp_host[64];
static uint32_t arp_want;
static uint8_t arp_mac[6];
static volatile int arp_done, echo_done;
static uint16_t echo_id = 0x7d3d, echo_seq;

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

static const char *ipstr(uint32_t ip, char *buf)
{
    char *p = buf;
    for (int i = 3; i >= 0; i--) {
        unsigned b = (ip >> (8 * i)) & 0xFF;
        if (b >= 100) *p++ = (char)('0' + b / 100);
        if (b >= 10) *p++ = (char)('0' + b / 10 % 10);
        *p++ = (char)('0' + b % 10);
        if (i) *p++ = '.';
    }
    *p = 0;
    return buf;
}

static uint32_t parse_ip(const char *s)
{
    uint32_t ip = 0, part = 0;
    int n = 0;
    for (;; s++) {
        if (*s >= '0' && *s <= '9') {
            part = part * 10 + (uint32_t)(*s - '0');
        } else {
            ip = ip << 8 | (part & 0xFF);
            part = 0;
            n++;
            if (*s != '.')
                break;
        }
    }
    return n == 4 ? ip : 0;
}

static uint16_t csum(const uint8_t *p, unsigned len)
{
    uint32_t s = 0;
    for (unsigned i = 0; i + 1 < len; i += 2)
        s += get16(p + i);
    if (len & 1)
        s += (uint32_t)p[len - 1] << 8;
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)~s;
}

/* ---- transmit ---- */

static uint8_t *eth(const uint8_t *dst, uint16_t type)
{
    uint8_t *f = txbuf + NET_HDR;
    memset(txbuf, 0, NET_HDR);           /* no checksum offload, no GSO */
    memcpy(f, dst, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, type);
    return f + 14;
}

static uint8_t *ip_hdr(uint8_t *p, uint8_t proto, uint32_t src, uint32_t dst, unsigned payload)
{
    static uint16_t ipid = 1;
    p[0] = 0x45;
    p[1] = 0;
    put16(p + 2, (uint16_t)(20 + payload));
    put16(p + 4, ipid++);
    put16(p + 6, 0);
    p[8] = 64;
    p[9] = proto;
    put16(p + 10, 0);
    put32(p + 12, src);
    put32(p + 16, dst);
    put16(p + 10, csum(p, 20));
    return p + 20;
}

static int tx(unsigned frame_len)
{
    if (frame_len < 60) {
        memset(txbuf + NET_HDR + frame_len, 0, 60 - frame_len);
        frame_len = 60;
    }
    struct vbuf v = { txbuf, NET_HDR + frame_len, 0 };
    long r = virtq_run(&txq, &v, 1, 0);
    if (r < 0) {
        note("tx failed: %s", r == -1 ? "timeout" : "completion without interrupt");
        return -1;
    }
    tx_frames++;
    return 0;
}

static void arp_send(uint16_t op, const uint8_t *tha, uint32_t tpa, const uint8_t *dst)
{
    uint8_t *a = eth(dst, 0x0806);
    put16(a, 1);
    put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, mac, 6);
    put32(a + 14, my_ip);
    memcpy(a + 18, tha, 6);
    put32(a + 24, tpa);
    tx(14 + 28);
}

static void dhcp_send(int type)
{
    uint8_t *ip = eth(bcast, 0x0800);
    uint8_t *udp = ip + 20, *b = udp + 8;
    memset(b, 0, 240);
    b[0] = 1;                            /* BOOTREQUEST */
    b[1] = 1;
    b[2] = 6;
    put32(b + 4, xid);
    put16(b + 10, 0x8000);               /* broadcast replies */
    memcpy(b + 28, mac, 6);
    put32(b + 236, 0x63825363);          /* magic cookie */
    uint8_t *o = b + 240;
    *o++ = 53; *o++ = 1; *o++ = (uint8_t)type;
    *o++ = 61; *o++ = 7; *o++ = 1; memcpy(o, mac, 6); o += 6;
    if (type == 3) {
        *o++ = 50; *o++ = 4; put32(o, dhcp_yiaddr); o += 4;
        *o++ = 54; *o++ = 4; put32(o, dhcp_server); o += 4;
    }
    *o++ = 55; *o++ = 4; *o++ = 1; *o++ = 3; *o++ = 6; *o++ = 12;
    *o++ = 255;
    unsigned blen = (unsigned)(o - b);
    if (blen < 300) {
        memset(o, 0, 300 - blen);
        blen = 300;
    }
    put16(udp, 68);
    put16(udp + 2, 67);
    put16(udp + 4, (uint16_t)(8 + blen));
    put16(udp + 6, 0);                   /* no UDP checksum (allowed over IPv4) */
    ip_hdr(ip, 17, 0, 0xFFFFFFFFu, 8 + blen);
    tx(14 + 20 + 8 + blen);
}

static void echo_send(const uint8_t *dmac, uint32_t dst)
{
    uint8_t *ip = eth(dmac, 0x0800);
    uint8_t *ic = ip + 20;
    unsigned n = 8 + 32;
    ic[0] = 8;
    ic[1] = 0;
    put16(ic + 2, 0);
    put16(ic + 4, echo_id);
    put16(ic + 6, ++echo_seq);
    for (unsigned i = 8; i < n; i++)
        ic[i] = (uint8_t)('a' + i % 26);
    put16(ic + 2, csum(ic, n));
    ip_hdr(ip, 1, my_ip, dst, n);
    tx(14 + 20 + n);
}

/* ---- receive ---- */

static void dhcp_in(const uint8_t *b, unsigned len)
{
    if (len < 240 || b[0] != 2 || get32(b + 4) != xid || memcmp(b + 28, mac, 6) || get32(b + 236) != 0x63825363)
        return;
    int type = 0;
    uint32_t server = 0, router = 0, dnss = 0, msk = 0;
    char host[64] = "";
    for (unsigned i = 240; i < len;) {
        uint8_t code = b[i];
        if (code == 255)
            break;
        if (code == 0) {
            i++;
            continue;
        }
        if (i + 2 > len || i + 2 + b[i + 1] > len)
            break;
        const uint8_t *v = b + i + 2;
        unsigned l = b[i + 1];
        if (code == 53 && l >= 1) type = v[0];
        if (code == 54 && l >= 4) server = get32(v);
        if (code == 3 && l >= 4) router = get32(v);
        if (code == 6 && l >= 4) dnss = get32(v);
        if (code == 1 && l >= 4) msk = get32(v);
        if (code == 12) {
            unsigned n = l < sizeof host - 1 ? l : sizeof host - 1;
            memcpy(host, v, n);
            host[n] = 0;
        }
        i += 2 + l;
    }
    dhcp_yiaddr = get32(b + 16);
    dhcp_server = server ? server : get32(b + 20);
    dhcp_router = router;
    dhcp_dns = dnss;
    dhcp_mask = msk;
    memcpy(dhcp_host, host, sizeof host);
    dhcp_type = type;
}

static void frame_in(uint8_t *f, unsigned len)
{
    if (len < 14 || (memcmp(f, mac, 6) && memcmp(f, bcast, 6)))
        return;
    uint16_t type = get16(f + 12);
    uint8_t *p = f + 14;
    len -= 14;
    if (type == 0x0806 && len >= 28 && get16(p) == 1 && get16(p + 2) == 0x0800) {
        uint16_t op = get16(p + 6);
        uint32_t spa = get32(p + 14), tpa = get32(p + 24);
        if (op == 1 && my_ip && tpa == my_ip) {
            uint8_t sha[6];
            memcpy(sha, p + 8, 6);
            arp_send(2, sha, spa, sha);
            arp_answered++;
        } else if (op == 2 && arp_want && spa == arp_want) {
            memcpy(arp_mac, p + 8, 6);
            arp_done = 1;
        }
        return;
    }
    if (type != 0x0800 || len < 20 || (p[0] >> 4) != 4)
        return;
    unsigned ihl = (p[0] & 0xF) * 4u, tot = get16(p + 2);
    if (ihl < 20 || tot > len || tot < ihl || csum(p, ihl) != 0)
        return;
    uint32_t src = get32(p + 12), dst = get32(p + 16);
    uint8_t *l4 = p + ihl;
    unsigned l4len = tot - ihl;
    if (p[9] == 17 && l4len >= 8 && get16(l4 + 2) == 68) {
        dhcp_in(l4 + 8, l4len - 8);
    } else if (p[9] == 1 && l4len >= 8 && my_ip && dst == my_ip && csum(l4, l4len) == 0) {
        if (l4[0] == 8) {                /* echo request: answer */
            uint8_t smac[6];
            memcpy(smac, f + 6, 6);
            if (l4len > BUFLEN - NET_HDR - 34)
                return;
            uint8_t *ip = eth(smac, 0x0800);
            uint8_t *ic = ip + 20;
            memcpy(ic, l4, l4len);
            ic[0] = 0;
            put16(ic + 2, 0);
            put16(ic + 2, csum(ic, l4len));
            ip_hdr(ip, 1, my_ip, src, l4len);
            tx(14 + 20 + l4len);
            ping_answered++;
        } else if (l4[0] == 0 && get16(l4 + 4) == echo_id && get16(l4 + 6) == echo_seq) {
            echo_done = 1;
        }
    }
}

static void rx_post(unsigned i)
{
    struct vbuf v = { rxbuf[i], BUFLEN, 1 };
    virtq_add(&rxq, &v, 1, (void *)(uintptr_t)(i + 1), 0);
}

/* Handle received frames for up to `cycles` TSC cycles or until *flag is set. */
static void rx_run(uint64_t cycles, volatile int *flag)
{
    uint64_t t0 = rdtsc();
    while (!(flag && *flag)) {
        uint64_t el = rdtsc() - t0;
        if (el >= cycles)
            return;
        uint32_t len;
        void *ck;
        int r = virtq_wait(&rxq, &len, &ck, cycles - el);
        if (r == -1)
            return;
        if (r < 0)
            continue;                    /* -2: counted as a completion without interrupt */
        unsigned i = (unsigned)(uintptr_t)ck - 1;
        unsigned nbuf = rxbuf[i][10] | rxbuf[i][11] << 8;
        rx_frames++;
        if (len > NET_HDR && len <= BUFLEN && (nbuf <= 1 || !virtio_has(&dev, NET_F_MRG_RXBUF)))
            frame_in(rxbuf[i] + NET_HDR, len - NET_HDR);
        else
            rx_dropped++;
        rx_post(i);
        /* a frame merged over several buffers (not expected with 2 KiB buffers): drop the rest */
        for (unsigned k = 1; k < nbuf && virtio_has(&dev, NET_F_MRG_RXBUF); k++) {
            if (virtq_wait(&rxq, &len, &ck, hz) < 0)
                break;
            rx_post((unsigned)(uintptr_t)ck - 1);
        }
        virtq_kick(&rxq);
    }
}

static int dhcp(void)
{
    char a[16], b[16], c[16];
    xid = (uint32_t)rdtsc() ^ 0x5a5a1234u;
    for (int phase = 0; phase < 2; phase++) {
        int want = phase == 0 ? 2 : 5;
        int tries;
        for (tries = 0; tries < 4; tries++) {
            dhcp_type = 0;
            dhcp_send(phase == 0 ? 1 : 3);
            uint64_t t0 = rdtsc();
            for (;;) {
                uint64_t el = rdtsc() - t0;
                if (el >= hz || dhcp_type == want || dhcp_type == 6)
                    break;
                rx_run(hz - el, &dhcp_type);
            }
            if (dhcp_type == want || dhcp_type == 6)
                break;
        }
        if (dhcp_type == 6) {
            fail("dhcp", "DHCPNAK from %s", ipstr(dhcp_server, a));
            return -1;
        }
        if (dhcp_type != want) {
            fail("dhcp", "no DHCP%s after %d tries", phase == 0 ? "OFFER" : "ACK", tries);
            return -1;
        }
        note("dhcp %s %s from %s", phase == 0 ? "offer" : "ack", ipstr(dhcp_yiaddr, a), ipstr(dhcp_server, b));
    }
    my_ip = dhcp_yiaddr;
    router_ip = dhcp_router;
    dns_ip = dhcp_dns;
    mask = dhcp_mask;
    server_id = dhcp_server;
    memcpy(hostname, dhcp_host, sizeof hostname);
    note("lease %s router %s dns %s hostname %s", ipstr(my_ip, a), ipstr(router_ip, b), ipstr(dns_ip, c),
         hostname[0] ? hostname : "-");
    note("netmask %s", ipstr(mask, a));
    ok("dhcp");
    return 0;
}

/* ARP for the router: 0 with arp_mac set, or -1 with a FAIL for check `name`. */
static int arp_router(const char *name)
{
    char a[16];
    if (!router_ip) {
        fail(name, "no router address");
        return -1;
    }
    arp_want = router_ip;
    arp_done = 0;
    for (int i = 0; i < 4 && !arp_done; i++) {
        arp_send(1, (const uint8_t[6]){ 0 }, router_ip, bcast);
        rx_run(hz, &arp_done);
    }
    if (!arp_done) {
        fail(name, "no ARP reply from %s", ipstr(router_ip, a));
        return -1;
    }
    note("arp %s is %02x:%02x:%02x:%02x:%02x:%02x", ipstr(router_ip, a), arp_mac[0], arp_mac[1], arp_mac[2],
         arp_mac[3], arp_mac[4], arp_mac[5]);
    return 0;
}

static void ping(void)
{
    char a[16];
    if (arp_router("ping"))
        return;
    echo_done = 0;
    for (int i = 0; i < 3 && !echo_done; i++) {
        echo_send(arp_mac, router_ip);
        rx_run(hz, &echo_done);
    }
    if (!echo_done) {
        fail("ping", "no echo reply from %s", ipstr(router_ip, a));
        return;
    }
    note("ping reply from %s", ipstr(router_ip, a));
    ok("ping");
}

/* ---- benchmarks ---- */

/* Nothing to do until the device uses a buffer of q: spin (irq=poll) or halt until an interrupt
 * (the LAPIC tick bounds the wait) unless an entry is already there. */
static void idle_wait(struct virtq *q)
{
    if (virtio_irq_mode() == VIRTIO_IRQ_POLL) {
        cpu_relax();
        return;
    }
    cli();
    if (*(volatile uint16_t *)(q->used + 2) == q->last_used)
        __asm__ volatile("sti; hlt" ::: "memory");
    else
        sti();
}

static int parse_mac(const char *s, uint8_t *out)
{
    for (int i = 0; i < 6; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++, s++) {
            char c = *s;
            unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                       : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
            if (d > 15)
                return -1;
            v = v << 4 | d;
        }
        out[i] = (uint8_t)v;
        if (i < 5 && *s++ != ':')
            return -1;
    }
    return 0;
}

/* bench=tx: count frames of `size` bytes (Ethernet header to the end of the UDP payload) to the
 * router's port 9. Every descriptor points at the same read-only frame; the loop fills the tx queue,
 * kicks (the device's avail_event decides whether that exits), and reclaims used entries; with nothing
 * to reclaim it spins (irq=poll) or halts until the next interrupt. */
static void bench_tx(unsigned size, uint64_t count)
{
    char v[32];
    if (size < 42 || size > BUFLEN - NET_HDR) {
        fail("bench", "size must be 42..%u", BUFLEN - NET_HDR);
        return;
    }
    if (cmdline_get(cl, "dstmac", v, sizeof v)) {
        if (parse_mac(v, arp_mac)) {
            fail("bench", "bad dstmac %s", v);
            return;
        }
    } else if (arp_router("bench")) {
        return;
    }
    uint8_t *f = bench_frame + NET_HDR;
    memset(bench_frame, 0, NET_HDR);
    memcpy(f, arp_mac, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, 0x0800);
    unsigned payload = size - 14 - 20 - 8;
    uint8_t *udp = ip_hdr(f + 14, 17, my_ip, router_ip, 8 + payload);
    put16(udp, 9);
    put16(udp + 2, 9);
    put16(udp + 4, (uint16_t)(8 + payload));
    put16(udp + 6, 0);                   /* no UDP checksum */
    for (unsigned i = 0; i < payload; i++)
        udp[8 + i] = (uint8_t)i;
    struct vbuf b = { bench_frame, NET_HDR + size, 0 };
    note("bench_tx start");
    uint64_t sent = 0, done = 0, t0 = rdtsc(), progress = t0;
    unsigned k0 = txq.kicks, n0 = txq.notifies;
    while (done < count) {
        int added = 0;
        while (sent < count && virtq_free(&txq)) {
            virtq_add(&txq, &b, 1, 0, 0);
            sent++;
            added = 1;
        }
        if (added)
            virtq_kick(&txq);
        int got = 0;
        while (virtq_get(&txq, 0, 0) >= 0) {
            done++;
            got = 1;
        }
        uint64_t now = rdtsc();
        if (got) {
            progress = now;
        } else if (now - progress > 3 * hz) {
            fail("bench", "tx stalled after %llu of %llu frames", (unsigned long long)done, (unsigned long long)count);
            return;
        } else {
            idle_wait(&txq);
        }
    }
    uint64_t dt = rdtsc() - t0;
    note("bench_tx_frames %llu bench_ns %llu", (unsigned long long)done, (unsigned long long)tsc_to_ns(dt, hz));
    note("bench_size %u bench_kicks %u notifies %u", size, txq.kicks - k0, txq.notifies - n0);
    ok("bench");
}

/* bench=rx: count UDP frames to our address, port 9, until `count` came, or none came for a second
 * (wait=<s> before the first, default 30). Timed from the first to the last. Other frames go to the
 * usual receive path (ARP is answered). Each buffer goes back on the ring as soon as it is read; the
 * device is kicked once the used ring is drained, and then the guest spins or halts as in bench_tx. */
static void bench_rx(uint64_t count)
{
    char v[32];
    uint64_t wait = 30;
    if (cmdline_get(cl, "wait", v, sizeof v))
        wait = parse_u64(v, 10, 0);
    uint64_t n = 0, bytes = 0, t_first = 0, t_last = 0, idle = rdtsc();
    unsigned k0 = rxq.kicks, n0 = rxq.notifies;
    note("bench_rx ready");
    while (n < count) {
        uint32_t len;
        void *ck;
        if (virtq_get(&rxq, &len, &ck) < 0) {
            virtq_kick(&rxq);
            if (rdtsc() - idle > (n ? hz : wait * hz))
                break;
            idle_wait(&rxq);
            continue;
        }
        unsigned i = (unsigned)(uintptr_t)ck - 1;
        uint8_t *f = rxbuf[i] + NET_HDR;
        if (len >= NET_HDR + 42 && len <= BUFLEN && f[12] == 8 && f[13] == 0 && f[23] == 17 && f[14] == 0x45 &&
            get32(f + 30) == my_ip && f[36] == 0 && f[37] == 9) {
            idle = rdtsc();
            if (!n)
                t_first = idle;
            t_last = idle;
            n++;
            bytes += len - NET_HDR;
            rx_frames++;
        } else {
            rx_frames++;
            if (len > NET_HDR && len <= BUFLEN)
                frame_in(f, len - NET_HDR);
        }
        rx_post(i);
    }
    virtq_kick(&rxq);
    note("bench_rx_frames %llu bench_rx_bytes %llu bench_ns %llu", (unsigned long long)n, (unsigned long long)bytes,
         (unsigned long long)tsc_to_ns(t_last - t_first, hz));
    note("bench_rx_kicks %u notifies %u", rxq.kicks - k0, rxq.notifies - n0);
    if (n)
        ok("bench");
    else
        fail("bench", "no frame to port 9 arrived");
}

void mb_main(uint32_t magic, const struct mb_info *mi)
{
    cl = magic == 0x2BADB002 && (mi->flags & 4) ? (const char *)(uintptr_t)mi->cmdline : 0;
    serial_init();
    kprintf("virtio_net guest\n");
    virtio_cmdline(cl);
    char tests[64], v[32], bmode[8];
    int have_bench = cmdline_get(cl, "bench", bmode, sizeof bmode);
    if (!cmdline_get(cl, "tests", tests, sizeof tests))
        memcpy(tests, "dhcp,ping", 10);
    hz = tsc_calibrate_pit();
    if (!hz)
        hz = 2000000000ull;
    if (virtio_find(VIRTIO_TYPE_NET, &dev)) {
        fail("find", "no virtio-net device");
        finish();
    }
    uint64_t want = FEAT(NET_F_MAC) | FEAT(NET_F_STATUS);
    if (!(cmdline_get(cl, "mrg", v, sizeof v) && v[0] == '0'))
        want |= FEAT(NET_F_MRG_RXBUF);
    if (virtio_start(&dev, want) || virtq_setup(&dev, 0, &rxq, have_bench && !strcmp(bmode, "rx") ? NRX_BENCH : NRX) || virtq_setup(&dev, 1, &txq, 0)) {
        fail("init", "device setup failed (status %x)", virtio_status(&dev));
        finish();
    }
    if (virtio_has(&dev, NET_F_MAC)) {
        for (int i = 0; i < 6; i++)
            mac[i] = virtio_cfg8(&dev, (unsigned)i);
    } else {
        static const uint8_t local[6] = { 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01 };
        memcpy(mac, local, 6);
    }
    for (unsigned i = 0; i < rxq.size && i < NRX_BENCH; i++)
        rx_post(i);
    virtio_driver_ok(&dev);
    virtq_kick(&rxq);
    ok("init");
    note("mac %02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    if (virtio_has(&dev, NET_F_STATUS))
        note("link %s", virtio_cfg16(&dev, 6) & 1 ? "up" : "down");
    note("tsc_hz %llu", (unsigned long long)hz);
    int have_ip = 0;
    if (list_has(tests, "dhcp")) {
        have_ip = dhcp() == 0;
    } else if (cmdline_get(cl, "ip", v, sizeof v)) {
        my_ip = parse_ip(v);
        if (cmdline_get(cl, "router", v, sizeof v))
            router_ip = parse_ip(v);
        have_ip = my_ip != 0;
    }
    if (have_ip && list_has(tests, "ping"))
        ping();
    if (have_bench) {
        uint64_t count = 1000;
        if (cmdline_get(cl, "count", v, sizeof v))
            count = parse_u64(v, 10, 0);
        if (!have_ip)
            fail("bench", "no address (dhcp or ip=)");
        else if (!strcmp(bmode, "tx"))
            bench_tx(cmdline_get(cl, "size", v, sizeof v) ? (unsigned)parse_u64(v, 10, 0) : 1500, count);
        else if (!strcmp(bmode, "rx"))
            bench_rx(count);
        else
            fail("bench", "unknown bench mode \"%s\" (tx, rx)", bmode);
    }
    uint64_t serve = 0;
    if (cmdline_get(cl, "serve", v, sizeof v))
        serve = parse_u64(v, 10, 0);
    if (serve && have_ip) {
        char a[16];
        note("serving %s for %llu s", ipstr(my_ip, a), (unsigned long long)serve);
        rx_run(serve * hz, 0);
        note("served arp %u ping %u", arp_answered, ping_answered);
    }
    note("rx_frames %u rx_dropped %u tx_frames %u", rx_frames, rx_dropped, tx_frames);
    virtio_report_irqs(&dev);
    uint8_t st = virtio_status(&dev);
    if (st & (VIRTIO_STAT_NEEDS_RESET | VIRTIO_STAT_FAILED))
        fail("status", "device status %x", st);
    virtio_reset(&dev);
    finish();
}
