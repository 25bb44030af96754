"""fmt_scaled(3), scan_scaled(3) and strtonum(3) as vmctl uses them."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmd.ctl.scaled import ScaledError, fmt_scaled, scan_scaled, strtonum

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0B"),
        (1, "1B"),
        (100, "100B"),
        (1023, "1023B"),
        (1024, "1.0K"),
        (1536, "1.5K"),
        (64 * K, "64.0K"),
        (99 * K, "99.0K"),
        (100 * K, "100K"),
        (M - 1, "1024K"),  # fraction rounds into the whole number
        (M, "1.0M"),
        (10483892, "10.0M"),  # the example of the fmt_scaled(3) man page
        (512 * M, "512M"),
        (G, "1.0G"),
        (int(4.5 * G), "4.5G"),
        (16 * G, "16.0G"),
        (128 * G, "128G"),
        (T, "1.0T"),
        (-1536, "-1.5K"),
        (150 * M + 600 * K, "151M"),  # >= 100 in the unit: no decimal, fraction >= .5 rounds up
    ],
)
def test_fmt_scaled(n: int, text: str) -> None:
    assert fmt_scaled(n) == text


def test_fmt_scaled_extremes() -> None:
    assert fmt_scaled(2**63 - 1) == "8.0E"
    with pytest.raises(ScaledError) as e:
        fmt_scaled(-(2**63))  # LLONG_MIN has no positive counterpart
    assert e.value.errno == errno.ERANGE


@pytest.mark.parametrize(
    "text, value",
    [
        ("512M", 512 * M),
        ("4.5G", int(4.5 * G)),
        ("1.5K", 1536),
        ("1g", G),
        ("1024", 1024),
        ("4.5", 4),  # no unit: the fraction is dropped
        (" 12K", 12 * K),
        ("+2M", 2 * M),
        ("-1K", -K),
        ("0.1K", 102),
        ("4G!", 4 * G),  # only an alphanumeric may not follow the unit
        ("", 0),
        ("1B", 1),
        ("2T", 2 * T),
    ],
)
def test_scan_scaled(text: str, value: int) -> None:
    assert scan_scaled(text) == value


@pytest.mark.parametrize(
    "text, err",
    [
        ("abc", errno.EINVAL),
        ("4Gx", errno.EINVAL),
        ("1.2.3", errno.EINVAL),
        ("+-1", errno.EINVAL),
        ("1X", errno.EINVAL),
        ("12345678901234567890123", errno.ERANGE),
        ("9E", errno.ERANGE),
    ],
)
def test_scan_scaled_errors(text: str, err: int) -> None:
    with pytest.raises(ScaledError) as e:
        scan_scaled(text)
    assert e.value.errno == err


@given(st.integers(min_value=0, max_value=2**50))
def test_scan_reads_plain_numbers(n: int) -> None:
    assert scan_scaled(str(n)) == n


@given(st.integers(min_value=1, max_value=1000), st.sampled_from("KMGT"))
def test_scan_whole_units(n: int, unit: str) -> None:
    assert scan_scaled(f"{n}{unit}") == n * 1024 ** ("BKMGT".index(unit))


@pytest.mark.parametrize(
    "text, lo, hi, result",
    [
        ("5", 1, 10, (5, None)),
        (" +5", 1, 10, (5, None)),
        ("0", 1, 10, (0, "too small")),
        ("11", 1, 10, (0, "too large")),
        ("5x", 1, 10, (0, "invalid")),
        ("", 1, 10, (0, "invalid")),
        ("4294967296", 0, 2**32 - 1, (0, "too large")),
    ],
)
def test_strtonum(text: str, lo: int, hi: int, result: tuple[int, str | None]) -> None:
    assert strtonum(text, lo, hi) == result
