/* openbsd32 entry: 32-bit protected mode, flat segments, paging off (vmd on this
 * host) or on with an identity map (OpenBSD's vmd). Keep the entry ESP (the
 * boot stack built by the loader), switch to our GDT and stack, call
 * obsd_main(entry ESP, 32). */
    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    cli
    mov %esp, %ebp
    mov $boot_stack_top, %esp
    call gdt32_setup
    push $32
    push %ebp
    call obsd_main
1:  cli
    hlt
    jmp 1b

    .bss
    .p2align 4
boot_stack:
    .skip 16384
boot_stack_top:
    .section .note.GNU-stack,"",@progbits
