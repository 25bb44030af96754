"""Sizes as OpenBSD writes and reads them: fmt_scaled(3) and scan_scaled(3) (lib/libutil/fmt_scaled.c), and
parse_size(), the memory and disk size rule of vm.conf (parse.y), vmctl (main.c) and, here, `vmd run -m`.

This is the only implementation; vmctl status, vmctl create -s, vmctl start -m, vm.conf `memory` and
`vmd run -m` all use it. Both functions follow the C code digit for digit, including its truncating integer
division and scan_scaled's quirks: the fraction is dropped when no unit follows ("4.5" is 4), only a letter
or digit may not follow the unit ("4G!" is 4G, "4GB" is refused), and an empty string or a bare unit is 0.
fmt_scaled gives one decimal while the number is below 100 of its unit ("15.7M", "1.0G", "100M").
"""

from __future__ import annotations

import errno

from vmd.limits import SIZE_MIN, VMM_MAX_VM_MEM_SIZE

SCALE_CHARS = "BKMGTPE"
SCALE_FACTORS = tuple(1024**i for i in range(len(SCALE_CHARS)))
MAX_DIGITS = len(SCALE_CHARS) * 3  # MAX_DIGITS in fmt_scaled.c
LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
MB = 1 << 20
_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale


class SizeError(ValueError):
    """A size that parse_size() refuses."""


class ScaledError(SizeError):
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


class SizeTooSmall(SizeError):
    """Below SIZE_MIN: "size must be at least 1MB"."""


class SizeTooLarge(SizeError):
    """Above the caller's limit (VMM_MAX_VM_MEM_SIZE for memory)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def parse_size(word: str | int, limit: int | None = VMM_MAX_VM_MEM_SIZE) -> tuple[int, bool]:
    """parse_size() of parse.y and vmctl's main.c: scan_scaled() a word (an int is a value already read,
    as vm.conf's `memory NUMBER`), refuse less than 1MB and more than `limit` (None: no upper limit, as for
    vmctl create -s), and round down to the megabyte. Returns (size, whether it was rounded); raises
    ScaledError (from scan_scaled), SizeTooSmall or SizeTooLarge, for each caller to word its message."""
    value = scan_scaled(word) if isinstance(word, str) else word
    if value < SIZE_MIN:
        raise SizeTooSmall(value)
    if limit is not None and value > limit:
        raise SizeTooLarge(limit)
    size = value // MB * MB
    return size, size != value


__all__ = ["ScaledError", "SizeError", "SizeTooLarge", "SizeTooSmall", "fmt_scaled", "parse_size", "scan_scaled"]
