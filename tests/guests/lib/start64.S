/* setup64: called in 64-bit mode on any identity-mapped stack. Loads our GDT
 * (0x08 64-bit code, 0x10 data, 0x18 32-bit code), reloads CS with a far return
 * and the data segments, then builds and loads identity page tables for the
 * first 4 GiB in 2 MiB pages, so that the LAPIC (0xFEE00000) and I/O APIC
 * (0xFEC00000) are reachable whatever map the loader gave us. */
    .text
    .code64
    .globl setup64
setup64:
    lgdt gdt64_ptr(%rip)
    pop %rax                        /* our return address */
    pushq $0x08
    push %rax
    lretq                           /* "return" to the caller with CS = 0x08 */

    .globl setup64_paging
setup64_paging:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %fs
    mov %eax, %gs
    mov %eax, %ss
    /* PD entries: 2048 x 2 MiB, present | writable | large page */
    lea pd64(%rip), %rdi
    mov $0x83, %eax
    mov $2048, %ecx
1:  mov %rax, (%rdi)
    add $0x200000, %rax
    add $8, %rdi
    dec %ecx
    jnz 1b
    /* PDPT[0..3] -> the four PD pages */
    lea pdpt64(%rip), %rdi
    lea pd64(%rip), %rax
    or $0x3, %rax
    mov $4, %ecx
2:  mov %rax, (%rdi)
    add $0x1000, %rax
    add $8, %rdi
    dec %ecx
    jnz 2b
    lea pml4_64(%rip), %rdi
    lea pdpt64(%rip), %rax
    or $0x3, %rax
    mov %rax, (%rdi)
    mov %rdi, %cr3
    ret

    .section .rodata
    .p2align 3
gdt64:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: data */
    .quad 0x00CF9A000000FFFF        /* 0x18: 32-bit code */
gdt64_end:
    .p2align 2
    .word 0
    .globl gdt64_ptr
gdt64_ptr:
    .word gdt64_end - gdt64 - 1
    .quad gdt64

    .bss
    .p2align 12
    .globl pml4_64, pdpt64, pd64
pml4_64: .skip 4096
pdpt64:  .skip 4096
pd64:    .skip 4 * 4096
    .section .note.GNU-stack,"",@progbits
