"""`vmd run` argument checks that need no VM: -m is read by vmd.sizes.parse_size, as vmctl start -m."""

from __future__ import annotations

import pytest

from vmd.cli import UsageError, _run_parser, _spec_from_args

M, G = 1 << 20, 1 << 30


def spec_memory(*argv: str) -> int:
    return _spec_from_args(_run_parser().parse_args([*argv, "vm1"])).memory


@pytest.mark.parametrize("size, memory", [("512M", 512 * M), ("1.5G", 3 * G // 2), ("4G!", 4 * G)])
def test_memory_sizes(size: str, memory: int) -> None:
    assert spec_memory("-m", size) == memory


def test_default_memory_is_vm_default_memory() -> None:
    assert spec_memory() == 512 * M


def test_memory_is_rounded_down_to_a_megabyte_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert spec_memory("-m", "16445440") == 15 * M
    assert capsys.readouterr().err == "vmd: 16445440: memory size rounded to 15.0M\n"


@pytest.mark.parametrize("size, message", [
    ("64", "64: memory size too small (minimum 1M)"),  # no unit: bytes
    ("", ": memory size too small (minimum 1M)"),
    ("129G", "129G: memory size too large (maximum 128G)"),
    ("4GB", "4GB: invalid memory size"),
])
def test_bad_memory_sizes(size: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        spec_memory("-m", size)
    assert str(e.value) == message


@pytest.mark.parametrize("name, message", [
    ("x" * 64, "vm name too long"),
    ("x" * 300, "vm name too long"),
    ("_x", "invalid VM name"),
    ("a b", "invalid VM name"),
    ("a\nb", "invalid VM name"),  # was echoed: a second line on stderr
    ("a\0b", "invalid VM name"),
])
def test_bad_names(name: str, message: str) -> None:
    """vmd run takes vm.conf's rule and messages (vmd.limits.check_vm_name), without echoing the name."""
    with pytest.raises(UsageError) as e:
        _spec_from_args(_run_parser().parse_args([name]))
    assert str(e.value) == message
