/* biosboot: an ISA (non-PCI) option ROM with a PnP header whose Bootstrap
 * Entry Vector makes it a boot device (what SeaBIOS does with fw_cfg files
 * "genroms/*", e.g. QEMU's -option-rom). Offsets as SeaBIOS reads them:
 *   0x00 0x55 0xAA, 0x02 size in 512-byte blocks, 0x03 init entry (far call),
 *   0x1A offset of the "$PnP" header; PnP +0x1A = BEV offset.
 * build.py fills the size byte, the PnP checksum and the image checksum. */
    .code16
    .section .rom.header, "ax"
    .globl _start
_start:
    .byte 0x55, 0xAA
    .byte 0                         /* size, patched */
    jmp rom_init                    /* 0x03: init vector (3 bytes) */
    .org 0x1A
    .word pnp_header

    .p2align 4
pnp_header:
    .ascii "$PnP"
    .byte 1                         /* structure revision */
    .byte 2                         /* length in 16-byte units */
    .word 0                         /* next header */
    .byte 0                         /* reserved */
    .byte 0                         /* checksum, patched */
    .long 0                         /* device id */
    .word str_manufacturer
    .word str_product
    .byte 0, 0, 0                   /* device type code */
    .byte 0x04                      /* indicators: IPL device */
    .word 0                         /* BCV */
    .word 0                         /* DV */
    .word bev_entry                 /* BEV */
    .word 0
    .word 0                         /* static resource information */

str_manufacturer: .asciz "vmd tests"
str_product:      .asciz "vmd biosboot test ROM"

    .text
    /* Init (POST): nothing to set up; boot happens through the BEV. */
rom_init:
    lret

    /* BEV: far-called by the BIOS when it boots us. Keep the caller's
     * SS:SP and CS for the checks, copy the image to 0x8000 and continue
     * there with our own stack (the ROM shadow is read-only by now). */
bev_entry:
    cli
    cld
    mov %ss, %bx
    mov %sp, %dx
    mov %cs, %bp
    mov %cs, %ax
    mov %ax, %ds
    mov $0x0800, %ax
    mov %ax, %es
    xor %si, %si
    xor %di, %di
    mov $_rom_end, %cx
    shr $1, %cx
    rep movsw
    ljmp $0x0800, $1f
1:  mov $0x0800, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0xFFF0, %esp
    /* zero .bss */
    mov $_bss_start, %di
    mov $_bss_end, %cx
    sub %di, %cx
    xor %al, %al
    rep stosb
    movzwl %bp, %ebp
    movzwl %dx, %edx
    movzwl %bx, %ebx
    pushl %ebp                      /* entry CS */
    pushl %edx                      /* caller SP */
    pushl %ebx                      /* caller SS */
    calll bev_main
2:  cli
    hlt
    jmp 2b
    .section .note.GNU-stack,"",@progbits
