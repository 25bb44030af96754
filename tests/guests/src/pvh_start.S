/* PVH entry (Xen "HVM direct boot" ABI, as QEMU and firecracker use it):
 * the loader finds the 32-bit physical entry point in an ELF note of type
 * XEN_ELFNOTE_PHYS32_ENTRY (18), owner "Xen", and starts it in 32-bit protected
 * mode, paging off, flat CS/DS, with EBX = physical address of hvm_start_info.
 * The stack pointer is undefined: set our own first. */
    .section .note.Xen, "a"
    .p2align 2
    .long 4                         /* namesz */
    .long 4                         /* descsz */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start                    /* desc: 32-bit entry */

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    cli
    mov $boot_stack_top, %esp
    mov %ebx, %esi
    call gdt32_setup
    push %esi
    call pvh_main
1:  cli
    hlt
    jmp 1b

    .bss
    .p2align 4
boot_stack:
    .skip 16384
boot_stack_top:
    .section .note.GNU-stack,"",@progbits
