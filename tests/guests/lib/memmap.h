#ifndef GUEST_MEMMAP_H
#define GUEST_MEMMAP_H
#include <stdint.h>
struct mrange { uint64_t base, len; uint32_t type; };
uint64_t memmap_total(const struct mrange *r, int n);
/* Prints the map and "memtotal <bytes>", checks it, prints ok/FAIL <name>. */
int check_memmap(const char *name, const struct mrange *r, int n, const char *expect_mem);
#endif
