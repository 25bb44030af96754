"""vmd.sizes against OpenBSD's lib/libutil/fmt_scaled.c and parse_size() (parse.y, vmctl main.c).

Each expected value is worked out from the C code in the comment beside it. fmt_scaled picks the first unit
with abval/1024 < scale_factors[unit], keeps number = n / factor (C division), takes the remainder in units of
the next smaller factor and makes one decimal of it with (10 * fract + 512) / 1024; fract 10 carries into the
number; numbers of 100 and more (and bytes) print without the decimal, rounded up when it was 5 or more.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmd.limits import SIZE_MIN, VMM_MAX_VM_MEM_SIZE
from vmd.sizes import ScaledError, SizeTooLarge, SizeTooSmall, fmt_scaled, parse_size, scan_scaled

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    "n, text",
    [
        # 16445440/1024 = 16060 < M: unit M, number 15, fract 716800/1024 = 700, (7000+512)/1024 = 7
        (16445440, "15.7M"),
        (-16445440, "-15.7M"),  # abval for the unit and fract, C division keeps number at -15
        (0, "0B"),  # number 0 is always "0B"
        (1, "1B"),
        (1023, "1023B"),  # 1023/1024 = 0 < 1: bytes, never a decimal
        (1024, "1.0K"),  # 1/1 < 1024: unit K, number 1, fract 0
        (1536, "1.5K"),  # fract 512: (5120+512)/1024 = 5
        (-1536, "-1.5K"),
        (1075, "1.0K"),  # fract 51: (510+512)/1024 = 0 (the +512 rounds to nearest)
        (1076, "1.1K"),  # fract 52: (520+512)/1024 = 1
        (64 * K, "64.0K"),
        (100 * K, "100K"),
        (M - 1, "1024K"),  # number 1023, fract 1023 gives 10: carried, number 1024 >= 100 prints bare
        (M, "1.0M"),
        (10 * M, "10.0M"),  # below 100: one decimal, even when it is 0
        (10483892, "10.0M"),  # the example in fmt_scaled.c's MAIN
        (99 * M + 1007616, "100M"),  # fract 984: (9840+512)/1024 = 10, carried into 100
        (100 * M, "100M"),
        (150 * M + 600 * K, "151M"),  # fract 600 gives 6; 150 >= 100 prints bare, rounded up
        (512 * M, "512M"),
        (1023 * M, "1023M"),  # 1023*M/1024 < M: still unit M
        (G, "1.0G"),
        (int(4.5 * G), "4.5G"),
        (128 * G, "128G"),
        (2**40, "1.0T"),
        (2**63 - 1, "8.0E"),  # LLONG_MAX: number 7, fract 1023 gives 10, carried
    ],
)
def test_fmt_scaled(n: int, text: str) -> None:
    assert fmt_scaled(n) == text


def test_fmt_scaled_refuses_llong_min() -> None:
    with pytest.raises(ScaledError) as e:
        fmt_scaled(-(2**63))  # llabs(LLONG_MIN) has no value: ERANGE
    assert e.value.errno == errno.ERANGE


@pytest.mark.parametrize(
    "text, value",
    [
        ("4G!", 4 * G),  # after the unit only isalnum() is refused; '!' ends the number
        ("4G ", 4 * G),
        ("1.5G", 3 * G // 2),  # fpart 5, fract_digits 2: 5 * G / 10
        ("12", 12),  # no unit: bytes
        ("1k", K),  # units in either case
        ("", 0),  # nothing to read: *p is the NUL, result is whole = 0
        ("G", 0),  # a unit with no digits scales whole = 0
        (" 4G", 4 * G),  # leading isspace() is skipped
        ("4.5", 4),  # no unit: the fraction is dropped
        ("0.1K", 102),  # 1 * 1024 / 10, truncated
        ("512M", 512 * M),
        ("+2M", 2 * M),
        ("-1K", -K),
        ("1B", 1),
        ("2T", 2 * T),
        ("1.7E", 2**60),  # fpart 7 >= LLONG_MAX / 2**60: divided by 10 until it fits, the .7 is lost
    ],
)
def test_scan_scaled(text: str, value: int) -> None:
    assert scan_scaled(text) == value


@pytest.mark.parametrize(
    "text, err",
    [
        ("4GB", errno.EINVAL),  # an alphanumeric after the unit
        ("4Gx", errno.EINVAL),
        ("abc", errno.EINVAL),  # 'a' is no unit
        ("1X", errno.EINVAL),
        ("12Q", errno.EINVAL),
        ("1.2.3", errno.EINVAL),  # a second '.'
        ("+-1", errno.EINVAL),  # a second sign
        ("12345678901234567890123", errno.ERANGE),  # whole * 10 passes LLONG_MAX
        ("9E", errno.ERANGE),  # 9 > LLONG_MAX / 2**60 = 7
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


@given(st.integers(min_value=1, max_value=2**60 - 1))
def test_fmt_scaled_reads_back_within_its_precision(n: int) -> None:
    """scan_scaled reads what fmt_scaled prints back to within its rounding: a tenth is rounded to nearest
    from a remainder already truncated to the next smaller unit (0.05 unit + unit/1024); a bare number of 100
    or more is rounded up from a tenth of 5 or more (0.55 unit). Not for exabytes: scan_scaled divides the
    fraction by 10 while it is at least LLONG_MAX / 2**60 = 7, so "1.7E" reads as 1E."""
    text = fmt_scaled(n)
    unit = 1024 ** "BKMGTPE".index(text[-1])
    slack = unit // 20 + unit // 1024 + 1 if "." in text else unit * 11 // 20 + 1
    assert abs(scan_scaled(text) - n) <= slack


# -- parse_size: vm.conf memory, vmctl start -m and create -s, vmd run -m ------------------------------------


@pytest.mark.parametrize(
    "word, limit, result",
    [
        ("512M", VMM_MAX_VM_MEM_SIZE, (512 * M, False)),
        ("1.5M", VMM_MAX_VM_MEM_SIZE, (M, True)),  # rounded down to the megabyte
        ("4G!", VMM_MAX_VM_MEM_SIZE, (4 * G, False)),
        ("128G", VMM_MAX_VM_MEM_SIZE, (128 * G, False)),
        ("129G", None, (129 * G, False)),  # vmctl create -s has no upper limit
        (16445440, VMM_MAX_VM_MEM_SIZE, (15 * M, True)),  # vm.conf's `memory NUMBER` passes a value
        (SIZE_MIN, VMM_MAX_VM_MEM_SIZE, (M, False)),
    ],
)
def test_parse_size(word: str | int, limit: int | None, result: tuple[int, bool]) -> None:
    assert parse_size(word, limit) == result


@pytest.mark.parametrize("word", ["", "G", "1023K", "4.5", "-1G", 0, M - 1])
def test_parse_size_too_small(word: str | int) -> None:
    with pytest.raises(SizeTooSmall):
        parse_size(word)


def test_parse_size_too_large_names_the_limit() -> None:
    with pytest.raises(SizeTooLarge) as e:
        parse_size("129G")
    assert e.value.limit == VMM_MAX_VM_MEM_SIZE and fmt_scaled(e.value.limit) == "128G"


@pytest.mark.parametrize("word", ["lots", "4GB", "1.2.3"])
def test_parse_size_invalid(word: str) -> None:
    with pytest.raises(ScaledError):
        parse_size(word)
