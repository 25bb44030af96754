"""Firmware files vmd takes from the host: the BIOS a VM boots when it is given no kernel."""

from __future__ import annotations

import os

SEABIOS_PATHS = ("/usr/share/seabios/bios-256k.bin", "/usr/share/seabios/bios.bin")  # Debian's seabios


def find_bios() -> str | None:
    """The first SeaBIOS image present, or None."""
    for path in SEABIOS_PATHS:
        if os.path.isfile(path):
            return path
    return None
