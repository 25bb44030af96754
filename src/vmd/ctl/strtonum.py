"""strtonum(3), as vmctl's main.c reads counts and ids with it."""

from __future__ import annotations

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale


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
