"""Every bad input to `vmd run` gets one line on stderr naming the thing and the reason, and exit status 1."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Run


def assert_one_line_error(result: Run, *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmd: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_kernel(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kernel"
    assert_one_line_error(vmd_run("-b", str(missing), "vm1"), str(missing), "No such file")


def test_directory_as_kernel(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(tmp_path), "vm1"), str(tmp_path))


def test_empty_file(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(empty), "vm1"), str(empty))


def test_garbage_file(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(4096).replace(b"\xea", b"\x00").replace(b"\xe9", b"\x00"))
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(garbage), "vm1"), str(garbage))


def test_too_large_for_a_bios(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"\x90" * (5 << 20))
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(big), "vm1"), str(big), "too large")


def test_corrupt_gzip(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    corrupt = tmp_path / "kernel.gz"
    corrupt.write_bytes(gzip.compress(b"\x7fELF" + b"\x00" * 4000)[:40])
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(corrupt), "vm1"), str(corrupt))


def test_truncated_elf(vmd_run: Callable[..., Run], guests: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.elf"
    truncated.write_bytes(guests["openbsd64"].read_bytes()[:100])
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(truncated), "vm1"), str(truncated))


def _elf64(paddr: int, size: int) -> bytes:
    """A minimal ELF64 x86-64 executable with one PT_LOAD segment of size bytes at paddr (ELF spec, gABI)."""
    import struct

    header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 0x3E, 1, paddr, 64, 0, 0,
                         64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, paddr, paddr, size, size, 0x1000)
    return (header + phdr).ljust(0x1000, b"\0") + b"\xf4" * size


def test_elf_segment_outside_memory(vmd_run: Callable[..., Run], tmp_path: Path) -> None:
    kernel = tmp_path / "high.elf"
    kernel.write_bytes(_elf64(64 << 20, 4096))  # linked at 64 MiB, booted with 16 MiB
    assert_one_line_error(vmd_run("-m", "16M", "-b", str(kernel), "vm1"), str(kernel))


def test_missing_initrd(vmd_run: Callable[..., Run], guests: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "initrd"
    assert_one_line_error(vmd_run("-b", str(guests["multiboot"]), "--initrd", str(missing), "vm1"), str(missing))


# -m is read as vmctl start -m reads it (vmd.sizes.parse_size): "" scans as 0 and "64" as 64 bytes
@pytest.mark.parametrize("size,reason", [("512K", "too small"), ("200G", "too large"), ("lots", "invalid memory size"),
                                         ("4GB", "invalid memory size"), ("", "too small"), ("64", "too small")])
def test_bad_memory_size(vmd_run: Callable[..., Run], size: str, reason: str) -> None:
    assert_one_line_error(vmd_run("-m", size, "vm1"), reason)


def test_unknown_cpu_template(vmd_run: Callable[..., Run]) -> None:
    assert_one_line_error(vmd_run("--cpu", "fastest", "vm1"), "fastest", "unknown CPU template")


@pytest.mark.parametrize("name", ["bad name", "-x", "a/b", "x" * 64, "é"])
def test_bad_vm_name(vmd_run: Callable[..., Run], name: str) -> None:
    assert_one_line_error(vmd_run(name))


@pytest.mark.parametrize("count", ["0", "65", "two"])
def test_bad_vcpu_count(vmd_run: Callable[..., Run], count: str) -> None:
    assert_one_line_error(vmd_run("-p", count, "vm1"))


def test_unknown_option(vmd_run: Callable[..., Run]) -> None:
    assert_one_line_error(vmd_run("--frobnicate", "vm1"), "frobnicate")


def test_unknown_console(vmd_run: Callable[..., Run]) -> None:
    assert_one_line_error(vmd_run("--console", "serial", "vm1"), "serial")
