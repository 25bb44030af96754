"""Where the ACPI power-management block of vmd's PC is, as both sides must agree on it: the device that
implements it (devices/acpi_pm.py) and the FADT and DSDT that describe it to the guest (boot/acpi.py).

ACPI 6.4, 4.8: PM1a_EVT_BLK, PM1a_CNT_BLK and PM_TMR_BLK in I/O space; the layout of QEMU's PIIX4 PM function.
"""

PM_BASE = 0x600
PM_LENGTH = 16  # 0x600-0x60F, of which 12 bytes are registers
SCI_IRQ = 9  # ISA IRQ 9, level-triggered, active-high (MADT and MP table)

PM1_EVT_OFFSET = 0  # PM1_STS at +0, PM1_EN at +2
PM1_EVT_LEN = 4
PM1_CNT_OFFSET = 4
PM1_CNT_LEN = 2
PM_TMR_OFFSET = 8
PM_TMR_LEN = 4

SLP_TYP_S5 = 5  # the value the DSDT's \_S5 package gives, and the one PM1_CNT powers the VM off for
