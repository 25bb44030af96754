/* shim_enter(entry, mode, esi): leave the multiboot world the way vmd enters an
 * OpenBSD kernel. mode 32: paging off, 32-bit flat (i386). mode 64: long mode
 * with the page tables at 0x11000 and CS 0x08 (32-bit, compatibility mode) as
 * OpenBSD's vmd does; mode 65: same but CS 0x18 (64-bit code). ESI is passed
 * through (boot_params for a bzImage).
 * The GDT at 0x10000, the boot stack at 0xFFDC and the args at 0x2000 are
 * prepared by the C part. */
    .text
    .code32
    .globl shim_enter
shim_enter:
    mov 4(%esp), %esi               /* entry */
    mov 8(%esp), %edi               /* mode */
    mov 12(%esp), %eax
    mov %eax, pass_esi
    mov %esi, far_target
    lgdt gdt_at_10000
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov $0xFFDC, %esp
    cmp $32, %edi
    je 3f
    mov $0x30, %eax                 /* CR4 = PAE | PSE */
    mov %eax, %cr4
    mov $0x11000, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax                 /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0                  /* long mode active, still CS 0x08: compatibility mode */
    cmp $65, %edi
    jne 3f
    xor %eax, %eax
    xor %ecx, %ecx
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ebp, %ebp
    xor %edi, %edi
    mov pass_esi, %esi
    ljmp *far_target
3:  xor %eax, %eax
    xor %ecx, %ecx
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ebp, %ebp
    xor %edi, %edi
    jmp *%esi

    .data
    .p2align 2
pass_esi:
    .long 0
far_target:
    .long 0
    .word 0x18
    .p2align 2
    .word 0
gdt_at_10000:
    .word 31
    .long 0x10000
    .section .note.GNU-stack,"",@progbits
