/* Freestanding string helpers, command-line token parsing and the FNV-1a checksum. */
#include "lib.h"

void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (uint8_t)*a - (uint8_t)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

int cmdline_get(const char *cl, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    if (!cl)
        return 0;
    while (*cl) {
        while (*cl == ' ' || *cl == '\t')
            cl++;
        const char *tok = cl;
        while (*cl && *cl != ' ' && *cl != '\t')
            cl++;
        if ((size_t)(cl - tok) >= klen + 1 && !strncmp(tok, key, klen) && tok[klen] == '=') {
            size_t vlen = (size_t)(cl - tok) - klen - 1;
            if (out && outlen) {
                if (vlen >= outlen)
                    vlen = outlen - 1;
                memcpy(out, tok + klen + 1, vlen);
                out[vlen] = 0;
            }
            return 1;
        }
    }
    return 0;
}

int list_has(const char *list, const char *word)
{
    size_t wlen = strlen(word);
    if (!list)
        return 0;
    while (*list) {
        const char *item = list;
        while (*list && *list != ',')
            list++;
        if ((size_t)(list - item) == wlen && !strncmp(item, word, wlen))
            return 1;
        if (*list == ',')
            list++;
    }
    return 0;
}

uint64_t parse_u64(const char *s, int base, int *okp)
{
    uint64_t v = 0;
    int any = 0;
    if (base == 16 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    if (base == 0) {
        base = 10;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
            base = 16;
            s += 2;
        }
    }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        if (d >= base)
            break;
        v = v * (unsigned)base + (unsigned)d;
        any = 1;
    }
    if (okp)
        *okp = any && *s == 0;
    return v;
}

/* 32-bit FNV-1a: h = 0x811c9dc5; for each byte: h ^= b; h *= 0x01000193 */
uint32_t fnv1a32(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t h = 0x811c9dc5u;
    while (n--) {
        h ^= *b++;
        h *= 0x01000193u;
    }
    return h;
}
