/* Multiboot (v1, spec 0.6.96) header and 32-bit entry shared by the multiboot
 * guests. Built twice: as a plain ELF (flags: page-align modules + memory info)
 * and, with -DAOUT_KLUDGE, with flag bit 16 and the address fields filled in, so
 * the flat binary made by objcopy loads without an ELF parser. With -DMB_HEADER_IN_TEXT the header opens
 * .text, for guests linked by a plain `ld -Ttext=...` (no linker script) as people link small kernels.
 * Entry state (spec 3.2): EAX = 0x2BADB002, EBX = info, flat segments, paging off;
 * GDTR/IDTR unspecified, so we load our own and switch to our own stack. */
#define MB_MAGIC 0x1BADB002
#ifdef AOUT_KLUDGE
#define MB_FLAGS 0x00010003
#else
#define MB_FLAGS 0x00000003
#endif

#ifdef MB_HEADER_IN_TEXT
    .text               /* first in .text: found in the first 8 KiB when linked without our script */
#else
    .section .multiboot, "a"
#endif
    .p2align 2
    .globl mb_header
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
#ifdef AOUT_KLUDGE
    .long mb_header                 /* header_addr */
    .long mb_header                 /* load_addr: the flat image starts here */
    .long _edata                    /* load_end_addr */
    .long _end                      /* bss_end_addr */
    .long _start                    /* entry_addr */
#endif

    .text
    .code32
    .globl _start
_start:
    cli
    mov $boot_stack_top, %esp
    mov %eax, %edi
    mov %ebx, %esi
    call gdt32_setup
    push %esi
    push %edi
    call mb_main
1:  cli
    hlt
    jmp 1b

    .bss
    .p2align 4
boot_stack:
    .skip 16384
boot_stack_top:
    .section .note.GNU-stack,"",@progbits
