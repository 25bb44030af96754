/* bzimage real-mode part ("setup"): 512-byte boot sector + 8 setup sectors,
 * linked at 0 and loaded by a 16-bit boot loader at some segment S with
 * CS = S + 0x20, IP = 0 (so offset 0x200 is the entry) and DS = ES = SS = S.
 * It holds the Linux setup header (boot protocol 2.15) that every loader
 * reads at 0x1F1 and, for loaders that run the real-mode code (QEMU's
 * linuxboot option ROM does), a small routine that does what the kernel's
 * real-mode setup would (from offset 0x1000, clear of the boot_params fields
 * that this same memory holds, e.g. e820_table at 0x2D0): fill boot_params.e820_table from INT 15h E820,
 * enter 32-bit protected mode and jump to code32_start with
 * ESI = boot_params (= S * 16) and EBP = 0x364D5252 ("RRM6", marks this path).
 * syssize (0x1F4) and init_size (0x260) are patched by build.py. */
    .code16
    .section .text, "ax"
    .globl _start
_start:
    /* 0x000: boot sector. Booting it directly from a disk is not supported. */
    .org 0x1F1
setup_sects:    .byte 8
root_flags:     .word 0
syssize:        .long 0                 /* patched */
ram_size:       .word 0
vid_mode:       .word 0xFFFF
root_dev:       .word 0
boot_flag:      .word 0xAA55
    /* 0x200: second sector, the real-mode entry point */
jump:           .byte 0xEB, rm_start - 0x202   /* must stay below 0x80 */
header:         .ascii "HdrS"
version:        .word 0x020F
realmode_swtch: .long 0
start_sys_seg:  .word 0x1000
kernel_version: .word kver - 0x200
type_of_loader: .byte 0
loadflags:      .byte 0x01              /* LOADED_HIGH: protected-mode part at 1 MiB */
setup_move_size: .word 0x8000
code32_start:   .long 0x100000
ramdisk_image:  .long 0
ramdisk_size:   .long 0
bootsect_kludge: .long 0
heap_end_ptr:   .word 0
ext_loader_ver: .byte 0
ext_loader_type: .byte 0
cmd_line_ptr:   .long 0
initrd_addr_max: .long 0x7FFFFFFF
kernel_alignment: .long 0x200000
relocatable_kernel: .byte 0
min_alignment:  .byte 0
xloadflags:     .word 0x0001            /* XLF_KERNEL_64: 64-bit entry at +0x200 */
cmdline_size:   .long 2047
hardware_subarch: .long 0
hardware_subarch_data: .quad 0
payload_offset: .long 0
payload_length: .long 0
setup_data:     .quad 0
pref_address:   .quad 0x100000
init_size:      .long 0                 /* patched */
handover_offset: .long 0
kernel_info_offset: .long 0

rm_start:
    jmp rm_main

    .org 0x1000
rm_main:
    cli
    cld
    mov %cs, %ax
    sub $0x20, %ax
    mov %ax, %ds
    mov %ax, %es
    /* E820 into boot_params.e820_table (0x2D0, 20-byte entries), count at 0x1E8 */
    xor %ebx, %ebx
    mov $0x2D0, %di
    xor %bp, %bp
1:  mov $0xE820, %eax
    mov $0x534D4150, %edx
    mov $20, %ecx
    int $0x15
    jc 2f
    cmp $0x534D4150, %eax
    jne 2f
    inc %bp
    add $20, %di
    test %ebx, %ebx
    jz 2f
    cmp $128, %bp
    jb 1b
2:  mov %bp, %ax
    movb %al, 0x1E8
    cli
    /* linear address of boot_params */
    xor %esi, %esi
    mov %ds, %si
    shl $4, %esi
    /* fix up the GDT base and the far pointer, both need linear addresses */
    mov %esi, %eax
    add $rm_gdt, %eax
    mov %eax, rm_gdtr + 2
    mov %esi, %eax
    add $pm_stub, %eax
    mov %eax, rm_far
    movl code32_start, %edi
    lgdtl rm_gdtr
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *rm_far

    .code32
pm_stub:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %fs
    mov %eax, %gs
    mov %eax, %ss
    mov $0x364D5252, %ebp
    jmp *%edi

    .p2align 3
rm_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF            /* 0x08: code32 flat */
    .quad 0x00CF92000000FFFF            /* 0x10: data flat */
rm_gdtr:
    .word 23
    .long 0
rm_far:
    .long 0
    .word 0x08

kver:   .asciz "vmd test guest (bzImage)"

    .org 0x1200                         /* 1 + setup_sects sectors */
    .section .note.GNU-stack,"",@progbits
