/* 256 interrupt entry stubs, 16 bytes apart, for 32-bit and 64-bit guests.
 * Each stub pushes a dummy error code (unless the CPU pushed one) and its
 * vector number, then joins a common path that calls isr_dispatch(frame). */
    .text
    .globl isr_stubs
    .p2align 4
isr_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push $0
    .endif
    push $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
#ifdef __x86_64__
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    call isr_dispatch
    mov %rbx, %rsp
    /* No iretq: this host's KVM emulates every instruction and cannot emulate
     * a protected-mode IRET. Return with popfq + ret instead: put RFLAGS and
     * RIP just below the interrupted RSP (no red zone in these guests), keep
     * that address in the vector slot, restore the registers, switch stacks. */
    mov 160(%rsp), %rax             /* interrupted RSP */
    mov 136(%rsp), %rcx             /* RIP */
    mov %rcx, -8(%rax)
    mov 152(%rsp), %rcx             /* RFLAGS */
    mov %rcx, -16(%rax)
    sub $16, %rax
    mov %rax, 120(%rsp)             /* vector slot := new stack pointer */
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    mov (%rsp), %rsp
    popfq
    ret
#else
    pushal
    cld
    push %esp
    call isr_dispatch
    add $4, %esp
    /* No iretl (not emulated by this host's KVM in protected mode): same
     * privilege level and the same flat CS, so swap the saved EIP/EFLAGS into
     * [EFLAGS][EIP] order and return with popfl + ret $4 (dropping CS). */
    mov 40(%esp), %eax              /* EIP */
    mov 48(%esp), %ecx              /* EFLAGS */
    mov %eax, 44(%esp)
    mov %ecx, 40(%esp)
    popal
    add $8, %esp
    popfl
    ret $4
#endif
    .section .note.GNU-stack,"",@progbits
