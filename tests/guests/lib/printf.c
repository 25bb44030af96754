/* A small printf for the serial console: %s %d %u %x %X %p %c %%, with 'l'/'ll'
 * length modifiers, a field width and the '0' and '-' flags. */
#include "lib.h"

static void emit_padded(const char *s, int len, int width, int left, char pad)
{
    if (!left)
        for (int i = len; i < width; i++)
            serial_putc(pad);
    for (int i = 0; i < len; i++)
        serial_putc(s[i]);
    if (left)
        for (int i = len; i < width; i++)
            serial_putc(' ');
}

static int utoa(uint64_t v, unsigned base, int upper, char *buf)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0, i = 0;
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    while (n)
        buf[i++] = tmp[--n];
    return i;
}

void kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        fmt++;
        int left = 0, width = 0, lng = 0;
        char pad = ' ';
        if (*fmt == '-') { left = 1; fmt++; }
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { lng++; fmt++; }
        if (*fmt == 'z') { lng = sizeof(size_t) == 8 ? 2 : 0; fmt++; }
        char buf[24];
        int len;
        uint64_t u;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            emit_padded(s, (int)strlen(s), width, left, ' ');
            break;
        }
        case 'c':
            buf[0] = (char)va_arg(ap, int);
            emit_padded(buf, 1, width, left, ' ');
            break;
        case 'd': {
            int64_t v = lng >= 2 ? va_arg(ap, long long) : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
            int neg = v < 0;
            u = neg ? (uint64_t)(-v) : (uint64_t)v;
            len = 0;
            if (neg)
                buf[len++] = '-';
            len += utoa(u, 10, 0, buf + len);
            emit_padded(buf, len, width, left, pad);
            break;
        }
        case 'u':
        case 'x':
        case 'X':
            u = lng >= 2 ? va_arg(ap, unsigned long long) : lng == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
            len = utoa(u, *fmt == 'u' ? 10 : 16, *fmt == 'X', buf);
            emit_padded(buf, len, width, left, pad);
            break;
        case 'p':
            u = (uintptr_t)va_arg(ap, void *);
            buf[0] = '0';
            buf[1] = 'x';
            len = 2 + utoa(u, 16, 0, buf + 2);
            emit_padded(buf, len, width, left, ' ');
            break;
        case '%':
            serial_putc('%');
            break;
        case 0:
            return;
        default:
            serial_putc('%');
            serial_putc(*fmt);
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}
