"""CPU models (vmd.8 "CPU MODELS"): what a guest reads from CPUID and IA32_MCG_CAP under `vmd run --cpu`, the
one-line refusals when the host's KVM cannot give a model, and the model through vm.conf and vmctl to vmd."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmd.cpu import ALWAYS_AVAILABLE, parse_cpu_model, unavailable_features
from vmd.cpu_features import FEATURES
from vmd.kvm import structs as k
from vmd.kvm.api import Kvm

from .conftest import ROOT, Run
from .test_daemon import Vmd

MCG_COUNT = 0xFF  # IA32_MCG_CAP[7:0]
KVM_DEFAULT_BANKS = 32  # what a vCPU has when nobody calls KVM_X86_SETUP_MCE (KVM_MAX_MCE_BANKS)


def _report(result: Run) -> dict[str, str]:
    """The cpuinfo guest's `key value` lines (tests/guests/src/cpuinfo.c), after checking it ran to its end."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "ALL OK" in result.lines, result.stdout
    values = {}
    for line in result.lines:
        key, _, value = line.partition(" ")
        values[key] = value
    return values


def _host_vendor() -> str:
    match = re.search(r"^vendor_id\s*:\s*(\S+)", Path("/proc/cpuinfo").read_text(), re.M)
    assert match
    return match.group(1)


def _kvm_mce_banks() -> int:
    kvm = Kvm()
    try:
        return kvm.check_extension(k.KVM_CAP_MCE)
    finally:
        kvm.close()


@pytest.fixture(scope="module")
def mce_banks() -> int:
    banks = _kvm_mce_banks()
    if banks <= 0:
        pytest.skip("the host's KVM has no KVM_CAP_MCE")
    return banks


def test_the_default_model_is_the_hosts_vendor_with_x2apic_and_ten_mce_banks(
        vmd_run: Callable[..., Run], guests: dict[str, Path], mce_banks: int) -> None:
    seen = _report(vmd_run("-m", "16M", "-b", str(guests["cpuinfo"]), "g"))
    assert seen["vendor"] == _host_vendor()
    assert seen["x2apic"] == "1"
    assert seen["hypervisor"] == "1"
    assert seen["mcg_cap"] != "-", seen  # the template keeps MCE and MCA
    assert int(seen["mcg_cap"], 16) & MCG_COUNT == 10  # QEMU's count, not KVM's 32


def test_a_model_removes_x2apic_sets_the_vendor_and_the_mce_bank_count(
        vmd_run: Callable[..., Run], guests: dict[str, Path], mce_banks: int) -> None:
    seen = _report(vmd_run("-m", "16M", "--cpu", "host,-x2apic,vendor=AuthenticAMD,mce-banks=6",
                           "-b", str(guests["cpuinfo"]), "g"))
    assert seen["vendor"] == "AuthenticAMD"
    assert seen["ext_vendor"] == "AuthenticAMD"  # leaf 0x80000000 too
    assert seen["x2apic"] == "0"
    assert int(seen["mcg_cap"], 16) & MCG_COUNT == 6


def test_without_mca_vmd_leaves_machine_checks_alone(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                     mce_banks: int) -> None:
    """No KVM_X86_SETUP_MCE for a guest without MCA, as QEMU. On a KVM that honours the CPUID table the guest
    sees no MCA and reads no MCG_CAP; this host's kvm_pvm shows the guest the host's CPUID.1:EDX whatever the
    table says, so the guest reads MCG_CAP and finds KVM's own count, which vmd did not change."""
    seen = _report(vmd_run("-m", "16M", "--cpu", "host,-mca,mce-banks=6", "-b", str(guests["cpuinfo"]), "g"))
    if seen["mce"] == "1 mca 0":
        assert seen["mcg_cap"] == "-"
    else:
        assert int(seen["mcg_cap"], 16) & MCG_COUNT == KVM_DEFAULT_BANKS, seen


def _missing_feature() -> str:
    """A feature this host's KVM cannot give a guest (asked for with +, the VM must not start)."""
    kvm = Kvm()
    try:
        supported = kvm.supported_cpuid()
    finally:
        kvm.close()
    every = parse_cpu_model("host," + ",".join(f"+{name}" for name in FEATURES))
    missing = unavailable_features(every, supported, ALWAYS_AVAILABLE | {"tsc-deadline"})
    if not missing:
        pytest.skip("this host's KVM gives every feature vmd names")
    return missing[0]


def _one_line(result: Run) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_feature_the_host_cannot_give_stops_the_start_naming_it(vmd_run: Callable[..., Run],
                                                                  guests: dict[str, Path]) -> None:
    feature = _missing_feature()
    model = f"host,-x2apic,+{feature}"
    line = _one_line(vmd_run("-m", "16M", "--cpu", model, "-b", str(guests["cpuinfo"]), "g"))
    assert line == f"vmd: g: cpu {model}: the host's KVM cannot give the guest {feature}"


def test_more_mce_banks_than_kvm_has_stop_the_start(vmd_run: Callable[..., Run], guests: dict[str, Path],
                                                    mce_banks: int) -> None:
    model = f"baseline,mce-banks={mce_banks + 1}"
    line = _one_line(vmd_run("-m", "16M", "--cpu", model, "-b", str(guests["cpuinfo"]), "g"))
    assert line == f"vmd: g: cpu {model}: the host's KVM has at most {mce_banks} MCE banks, not {mce_banks + 1}"


@pytest.mark.parametrize("model, message", [
    ("host,+frob", "unknown CPU feature frob"),
    ("fast,-x2apic", "unknown CPU template fast (choose host or baseline)"),
    ("host,vendor=AMD", "vendor=AMD: the vendor must be 12 ASCII characters"),
    ("host,mce-banks=0", "mce-banks=0: the MCE bank count must be 1 to 255"),
])
def test_a_bad_model_is_a_usage_error_of_vmd_run(vmd_run: Callable[..., Run], model: str, message: str) -> None:
    assert _one_line(vmd_run("--cpu", model, "g")) == f"vmd: cpu {model}: {message}"


# -- through vm.conf, vmctl and the daemon ---------------------------------------------------------------------

def _vmd_n(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmd.cli", "-n", "-f", str(config)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=60)


def test_vm_conf_takes_a_quoted_model_and_names_a_bad_one_with_its_line(tmp_path: Path,
                                                                        guests: dict[str, Path]) -> None:
    config = tmp_path / "vm.conf"
    config.write_text(f'vm "a" {{\n boot "{guests["cpuinfo"]}"\n cpu "host,-x2apic"\n}}\n')
    good = _vmd_n(config)
    assert (good.returncode, good.stderr) == (0, "configuration OK\n"), good
    config.write_text(f'vm "a" {{\n boot "{guests["cpuinfo"]}"\n cpu "host,+frob"\n}}\n')
    bad = _vmd_n(config)
    assert bad.returncode == 1, bad
    assert bad.stderr.splitlines() == [f"vmd: {config}:3: cpu host,+frob: unknown CPU feature frob"], bad


@pytest.fixture
def daemon(tmp_path: Path, guests: dict[str, Path]) -> Iterator[Vmd]:
    if os.geteuid() != 0:
        pytest.skip("the daemon runs as root")
    daemon = Vmd(tmp_path, f'vm "amd" {{\n disable\n memory 16M\n boot "{guests["cpuinfo"]}"\n'
                           f' cpu "host,-x2apic,vendor=AuthenticAMD,mce-banks=6"\n}}\n')
    daemon.start()
    yield daemon
    daemon.stop()


def test_vmctl_start_refuses_a_bad_model_before_asking_vmd(daemon: Vmd, guests: dict[str, Path]) -> None:
    result = daemon.vmctl("start", "--cpu", "host,+frob", "-b", str(guests["cpuinfo"]), "adhoc")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "vmctl: cpu host,+frob: unknown CPU feature frob\n")
    assert "adhoc" not in daemon.status()
    assert daemon.alive()


def test_vmd_fails_the_start_of_a_model_the_host_cannot_give(daemon: Vmd, guests: dict[str, Path]) -> None:
    feature = _missing_feature()
    model = f"host,+{feature}"
    result = daemon.vmctl("start", "--cpu", model, "-m", "16M", "-b", str(guests["cpuinfo"]), "adhoc")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"vmctl: start vm command failed: adhoc: cpu {model}: the host's KVM cannot give the guest {feature}\n")
    assert "adhoc" not in daemon.status()
    assert daemon.alive()


def test_a_configured_model_reaches_the_guest_through_vmd(daemon: Vmd) -> None:
    """vmctl start -c: the console shows what the cpuinfo guest read under vm.conf's `cpu` line."""
    result = daemon.vmctl("start", "-c", "amd", timeout=60)
    assert "vendor AuthenticAMD" in result.stdout, result
    assert "x2apic 0" in result.stdout, result
    match = re.search(r"^mcg_cap ([0-9a-f]+)", result.stdout, re.M)
    assert match and int(match.group(1), 16) & MCG_COUNT == 6, result
