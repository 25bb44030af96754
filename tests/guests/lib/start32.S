/* gdt32_setup: load a flat 32-bit GDT (0x08 code, 0x10 data) and reload every
 * segment register. Callable from 32-bit protected mode, paging on or off. */
    .text
    .code32
    .globl gdt32_setup
gdt32_setup:
    lgdt gdt32_ptr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    ret

    .section .rodata
    .p2align 3
gdt32:
    .quad 0
    .quad 0x00CF9A000000FFFF        /* 0x08: code, base 0, 4 GiB, 32-bit */
    .quad 0x00CF92000000FFFF        /* 0x10: data, base 0, 4 GiB */
gdt32_end:
    .p2align 2
    .word 0
gdt32_ptr:
    .word gdt32_end - gdt32 - 1
    .long gdt32
    .section .note.GNU-stack,"",@progbits
