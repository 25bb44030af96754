/* bzimage protected-mode entries (the part loaded at 1 MiB).
 *  +0x000 startup_32: 32-bit flat protected mode, paging off, ESI = boot_params
 *         (code32_start; reached by QEMU through our real-mode setup, or by a
 *         32-bit boot-protocol loader). Builds a 1 GiB identity map, enables
 *         long mode itself and continues at the common 64-bit path.
 *  +0x200 startup_64: 64-bit mode, identity-mapped paging by the loader,
 *         RSI = boot_params (how vmd starts a bzImage).
 * Both end in bz_main(boot_params, entry) with entry = 16 (real-mode setup ran
 * first), 32 or 64, on our own GDT, stack and 4 GiB identity page tables. */
    .section .text.entry32, "ax"
    .code32
    .globl startup_32
startup_32:
    cli
    cld
    mov $32, %ebx
    cmp $0x364D5252, %ebp
    jne 1f
    mov $16, %ebx
1:  lgdt gdt64_ptr
    ljmp $0x18, $2f                     /* our 32-bit code segment */
2:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $boot_stack_top, %esp
    /* PD: 512 x 2 MiB; PDPT[0] -> PD; PML4[0] -> PDPT */
    mov $pd64, %edi
    mov $0x83, %eax
    mov $512, %ecx
3:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    dec %ecx
    jnz 3b
    mov $pd64 + 3, %eax
    mov %eax, pdpt64
    movl $0, pdpt64 + 4
    mov $pdpt64 + 3, %eax
    mov %eax, pml4_64
    movl $0, pml4_64 + 4
    mov %cr4, %eax
    or $0x20, %eax                      /* PAE */
    mov %eax, %cr4
    mov $pml4_64, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax                     /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmp $0x08, $from32

    .section .text.entry64, "ax"
    .code64
    .globl startup_64
startup_64:
    cli
    cld
    mov $64, %ebx
    mov %rsi, %rbp
    jmp common64
from32:
    mov %esi, %ebp                      /* zero-extended */
    mov %ebx, %ebx
common64:
    lea boot_stack_top(%rip), %rsp
    call setup64
    call setup64_paging
    mov %rbp, %rdi
    mov %ebx, %esi
    call bz_main
1:  cli
    hlt
    jmp 1b

    .bss
    .p2align 4
boot_stack:
    .skip 16384
boot_stack_top:
    .section .note.GNU-stack,"",@progbits
