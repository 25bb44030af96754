/* bootsector: a master boot record the BIOS (SeaBIOS) starts from a disk. It prints one line on COM1,
 * polling the UART's LSR.THRE as a driver does (no BIOS calls, so it shows the BIOS found and booted the
 * disk, nothing more), and ends the VM through the debug-exit port with status 0.
 * Checks the host makes: the line appears, and vmd run exits 0. */
    .code16
    .section .text
    .global _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    movw $banner, %si
next:
    lodsb
    testb %al, %al
    jz done
    movb %al, %ah
    movw $0x3fd, %dx          /* LSR */
wait:
    inb %dx, %al
    testb $0x20, %al          /* THRE */
    jz wait
    movb %ah, %al
    movw $0x3f8, %dx          /* THR */
    outb %al, %dx
    jmp next
done:
    xorb %al, %al
    outb %al, $0xf4           /* debug exit: success */
halt:
    hlt
    jmp halt
banner:
    .asciz "vmd test boot sector: started by the BIOS from the disk\r\n"
    .org 510
    .byte 0x55, 0xaa          /* the boot signature */
