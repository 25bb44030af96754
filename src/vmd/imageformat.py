"""Which format a disk image is in: the one qcow2 detection, shared by the vm.conf parser, vmctl and the
disk layer (vmd's parse_disk, vmctl's parse_disktype): an image is qcow2 when it starts with the
VM_MAGIC_QCOW bytes, and raw otherwise. Reading four bytes needs no image code, so this stays in the
foundation layer."""

from __future__ import annotations

import os

from vmd.limits import VM_MAGIC_QCOW

RAW = "raw"
QCOW2 = "qcow2"
FORMATS = (RAW, QCOW2)


def format_of(head: bytes) -> str:
    """qcow2 if head starts with the qcow2 magic, else raw."""
    return QCOW2 if head[: len(VM_MAGIC_QCOW)] == VM_MAGIC_QCOW else RAW


def detect_format(fd: int) -> str:
    """The format of the open file fd."""
    return format_of(os.pread(fd, len(VM_MAGIC_QCOW), 0))


def file_format(path: str) -> str:
    """The format of the file at path; raw when it cannot be read (opening it later says why)."""
    try:
        with open(path, "rb") as f:
            return format_of(f.read(len(VM_MAGIC_QCOW)))
    except OSError:
        return RAW
