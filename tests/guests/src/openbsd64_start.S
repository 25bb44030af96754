/* openbsd64 entry. vmd (like OpenBSD's) starts an amd64 kernel with long mode
 * active and paging on (identity map of the first GiB), and OpenBSD's own vmd
 * uses a 32-bit code segment (CS 0x08, compatibility mode) since the real
 * kernel's entry is 32-bit code. A vmm may also use a 64-bit CS (0x18 in the
 * GDT it builds). The first bytes below decode differently in both modes and
 * tell them apart; either way we end up in 64-bit mode on our own GDT, stack
 * and page tables, and call obsd_main(entry ESP, entry mode).
 * The boot stack (ESP, 32-bit words) is left untouched for the C code to read. */
    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    xor %eax, %eax                  /* 31 c0 in both modes */
    .byte 0x48                      /* 32-bit: dec %eax; 64-bit: REX.W prefix ... */
    nop                             /* ... of this nop */
    test %eax, %eax
    jz from_long64                  /* EAX still 0: we are in 64-bit mode */

    /* compatibility mode (32-bit code, long mode active) */
    mov %esp, %ebp
    mov $32, %ebx
    lgdt gdt64_ptr
    ljmp $0x08, $from_compat

    .code64
from_long64:
    mov %esp, %ebp
    mov $64, %ebx
from_compat:
    mov %ebp, %ebp                  /* zero-extend: upper halves are undefined after compat mode */
    mov %ebx, %ebx
    lea boot_stack_top(%rip), %rsp
    call setup64
    call setup64_paging
    mov %ebp, %edi
    mov %ebx, %esi
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
