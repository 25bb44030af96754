"""Fixtures for booting real guests through `vmd run`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "tests" / "guests"


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _kvm_usable():
        return
    skip = pytest.mark.skip(reason="/dev/kvm is not available on this host")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Every test guest, compiled once per session into tests/guests/out/."""
    spec = importlib.util.spec_from_file_location("guest_build", GUESTS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build_all(str(GUESTS / "out"))
    return {name: Path(path) for name, path in built.items()}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def vmd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmd.cli", *args]


@pytest.fixture
def vmd_run() -> Callable[..., Run]:
    """Run `vmd run ARGS...` to completion and return what it printed."""

    def run(*args: str, input: str | None = None, timeout: float = 120.0) -> Run:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        result = subprocess.run(vmd_command("run", *args), input=input, capture_output=True, text=True,
                                timeout=timeout, env=env, errors="replace")
        return Run(result.returncode, result.stdout, result.stderr)

    return run
