"""Human-readable sizes as OpenBSD's scan_scaled(3)/fmt_scaled(3) read and write them (powers of 1024)."""

from __future__ import annotations

import re

_UNITS = "BKMGTPE"
_SCALED = re.compile(r"\s*([+-]?)(\d*)(?:\.(\d*))?([BKMGTPEbkmgtpe]?)")
LLONG_MAX = (1 << 63) - 1


def scan_scaled(text: str) -> int:
    """'512M' -> 536870912; '1.5G', '64k', '100' (bytes). ValueError if malformed or out of range."""
    m = _SCALED.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)):
        raise ValueError(f"invalid size: {text}")
    sign, whole, frac, unit = m.groups()
    scale = 1024 ** _UNITS.index(unit.upper()) if unit else 1
    value = int(whole or "0") * scale
    if frac:
        value += int(frac) * scale // 10 ** len(frac)
    if value > LLONG_MAX:
        raise ValueError(f"size out of range: {text}")
    return -value if sign == "-" else value


def fmt_scaled(value: int) -> str:
    """536870912 -> '512M', 1610612736 -> '1.5G', 1000 -> '1000B' (fmt_scaled(3) style)."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    power = 0
    while power + 1 < len(_UNITS) and value >= 1024 ** (power + 1):
        power += 1
    if power == 0:
        return f"{sign}{value}B"
    scale = 1024**power
    whole, rest = divmod(value, scale)
    if rest == 0:
        return f"{sign}{whole}{_UNITS[power]}"
    if whole < 10:
        tenths = (rest * 10 + scale // 2) // scale
        if tenths == 10:
            return f"{sign}{whole + 1}{_UNITS[power]}"
        return f"{sign}{whole}.{tenths}{_UNITS[power]}"
    return f"{sign}{(value + scale // 2) // scale}{_UNITS[power]}"
