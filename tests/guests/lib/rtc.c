/* MC146818 RTC through CMOS ports 0x70/0x71: waits out update-in-progress,
 * reads twice until stable, handles BCD and 12-hour formats. */
#include "lib.h"

static uint8_t cmos(uint8_t reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static int read_raw(uint8_t r[7])
{
    unsigned spins = 0;
    while (cmos(0x0A) & 0x80)        /* UIP */
        if (++spins > 1000000)
            return -1;
    r[0] = cmos(0x00); r[1] = cmos(0x02); r[2] = cmos(0x04);
    r[3] = cmos(0x07); r[4] = cmos(0x08); r[5] = cmos(0x09); r[6] = cmos(0x32);
    return 0;
}

static unsigned bcd(uint8_t v) { return (v & 0x0F) + 10 * (v >> 4); }

int rtc_read(struct rtc_time *t)
{
    uint8_t a[7], b[7];
    int tries = 0;
    do {
        if (read_raw(a) || read_raw(b))
            return -1;
    } while (memcmp(a, b, 7) && ++tries < 10);
    uint8_t stb = cmos(0x0B);
    int binary = stb & 0x04, h24 = stb & 0x02;
    uint8_t hour = a[2];
    int pm = hour & 0x80;
    hour &= 0x7F;
    t->sec = binary ? a[0] : bcd(a[0]);
    t->min = binary ? a[1] : bcd(a[1]);
    t->hour = binary ? hour : bcd(hour);
    t->day = binary ? a[3] : bcd(a[3]);
    t->mon = binary ? a[4] : bcd(a[4]);
    unsigned yr = binary ? a[5] : bcd(a[5]);
    unsigned cent = binary ? a[6] : bcd(a[6]);
    if (!h24) {
        if (t->hour == 12)
            t->hour = 0;
        if (pm)
            t->hour += 12;
    }
    if (cent < 19 || cent > 30)      /* century byte missing or odd: assume 20xx */
        cent = 20;
    t->year = cent * 100 + yr;
    return 0;
}

/* Days since 1970-01-01 by the usual civil-calendar arithmetic. */
uint32_t rtc_to_unix(const struct rtc_time *t)
{
    unsigned y = t->year, m = t->mon;
    if (m <= 2) {
        y -= 1;
        m += 12;
    }
    uint32_t days = 365u * y + y / 4 - y / 100 + y / 400 + (153u * (m - 3) + 2) / 5 + t->day - 719469u;
    return days * 86400u + t->hour * 3600u + t->min * 60u + t->sec;
}
