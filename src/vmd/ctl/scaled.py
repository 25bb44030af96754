"""fmt_scaled(3) and scan_scaled(3) from OpenBSD libutil (fmt_scaled.c), and strtonum(3).

vmctl prints memory sizes with fmt_scaled() and reads `-m`/`-s` sizes with scan_scaled(), so both are
reproduced digit for digit, including C's truncating integer division and scan_scaled's quirks
(the fraction is dropped when no unit follows: "4.5" is 4; a unit may be followed by punctuation: "4G!").
"""

from __future__ import annotations

import errno

SCALE_CHARS = "BKMGTPE"
SCALE_FACTORS = tuple(1024**i for i in range(len(SCALE_CHARS)))
MAX_DIGITS = len(SCALE_CHARS) * 3  # MAX_DIGITS in fmt_scaled.c
LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale


class ScaledError(ValueError):
    """A scan/format failure; `errno` is what the C function would leave in errno."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _isalnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def scan_scaled(text: str) -> int:
    """Parse "4.5G", "512M", "1024" like scan_scaled(3); raise ScaledError(EINVAL/ERANGE)."""
    p, n = 0, len(text)
    sign = 0
    ndigits = 0
    fract_digits = 0
    whole = 0
    fpart = 0
    while p < n and text[p] in _C_SPACE:
        p += 1
    while p < n and text[p] in "+-":  # at most one sign
        if sign:
            raise ScaledError(errno.EINVAL)
        sign = -1 if text[p] == "-" else 1
        p += 1
    while p < n and (text[p].isascii() and (text[p].isdigit() or text[p] == ".")):
        c = text[p]
        p += 1
        if c == ".":
            if fract_digits > 0:  # a second '.'
                raise ScaledError(errno.EINVAL)
            fract_digits = 1
            continue
        d = ord(c) - ord("0")
        if fract_digits > 0:
            if fract_digits >= MAX_DIGITS - 1:
                continue  # extra fractional digits are ignored
            fract_digits += 1
            if fpart > LLONG_MAX // 10 or d > LLONG_MAX - fpart * 10:
                raise ScaledError(errno.ERANGE)
            fpart = fpart * 10 + d
        else:
            ndigits += 1
            if ndigits >= MAX_DIGITS:
                raise ScaledError(errno.ERANGE)
            if whole > LLONG_MAX // 10 or d > LLONG_MAX - whole * 10:
                raise ScaledError(errno.ERANGE)
            whole = whole * 10 + d
    if sign:
        whole *= sign
    if p == n:  # no unit: the fraction is discarded
        return whole
    unit = text[p]
    for i, ch in enumerate(SCALE_CHARS):
        if unit == ch or unit == ch.lower():
            if p + 1 < n and _isalnum(text[p + 1]):
                raise ScaledError(errno.EINVAL)
            fact = SCALE_FACTORS[i]
            if whole > _cdiv(LLONG_MAX, fact) or whole < _cdiv(LLONG_MIN, fact):
                raise ScaledError(errno.ERANGE)
            whole *= fact
            while fpart >= _cdiv(LLONG_MAX, fact):  # truncate so the scaled fraction fits
                fpart = _cdiv(fpart, 10)
                fract_digits -= 1
            fpart *= fact
            if fract_digits > 0:
                for _ in range(fract_digits - 1):
                    fpart = _cdiv(fpart, 10)
            return whole - fpart if sign == -1 else whole + fpart
    raise ScaledError(errno.EINVAL)  # invalid unit or character


def fmt_scaled(number: int) -> str:
    """Format like fmt_scaled(3): "0B", "100B", "64.0K", "1.0G", "4.5G", "512M"; ScaledError(ERANGE)."""
    if number == LLONG_MIN or number > LLONG_MAX or number < LLONG_MIN:
        raise ScaledError(errno.ERANGE)
    abval = abs(number)
    if abval // 1024 >= SCALE_FACTORS[-1]:
        raise ScaledError(errno.ERANGE)
    unit = 0
    fract = 0
    for i, factor in enumerate(SCALE_FACTORS):
        if abval // 1024 < factor:
            unit = i
            fract = 0 if i == 0 else abval % factor
            number = _cdiv(number, factor)
            if i > 0:
                fract //= SCALE_FACTORS[i - 1]
            break
    fract = (10 * fract + 512) // 1024  # one decimal digit, rounded
    if fract >= 10:  # rounds up into the whole number
        number = number + 1 if number >= 0 else number - 1
        fract = 0
    if number == 0:
        return "0B"
    if unit == 0 or number >= 100 or number <= -100:
        if fract >= 5:
            number = number + 1 if number >= 0 else number - 1
        return f"{number}{SCALE_CHARS[unit]}"
    return f"{number}.{fract}{SCALE_CHARS[unit]}"


def strtonum(text: str, minval: int, maxval: int) -> tuple[int, str | None]:
    """strtonum(3): (value, None) or (0, "invalid" | "too small" | "too large")."""
    s = text.lstrip(_C_SPACE)  # strtoll skips leading space and takes one sign
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or not (body.isascii() and body.isdigit()) or minval > maxval:
        return 0, "invalid"
    value = int(s)
    if value < minval:
        return 0, "too small"
    if value > maxval:
        return 0, "too large"
    return value, None


__all__ = ["ScaledError", "fmt_scaled", "scan_scaled", "strtonum"]
