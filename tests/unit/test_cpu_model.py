"""CPU models (vmd.cpu): the one parser `vmd run`, vmctl and vm.conf share, the CPUID table a model makes from
a hand-made KVM_GET_SUPPORTED_CPUID, and the IA32_MCG_CAP handed to KVM_X86_SETUP_MCE."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmd.daemon.core as core
import vmd.daemon.vmstart as vmstart
from vmd.config import parse_string
from vmd.cpu import (
    ALWAYS_AVAILABLE,
    CpuModel,
    CpuModelError,
    guest_cpuid,
    machine_check_capabilities,
    parse_cpu_model,
)
from vmd.cpu_features import FEATURES, FeatureBit, canonical_name
from vmd.ctl.main import main as vmctl_main
from vmd.daemon.control import RequestError
from vmd.daemon.core import Daemon
from vmd.daemon.permissions import Peer
from vmd.kvm.structs import kvm_cpuid_entry2

# -- the parser -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, template, enable, disable", [
    ("host", "host", set(), set()),
    ("baseline", "baseline", set(), set()),
    ("host,-x2apic,+tsc-deadline", "host", {"tsc-deadline"}, {"x2apic"}),
    ("host,+sse4_1,-sse4-2,+sse3,+tsc_deadline", "host", {"sse4.1", "pni", "tsc-deadline"}, {"sse4.2"}),
    ("baseline,x2apic=off,avx=on,pcid,lahf_lm=off", "baseline", {"avx", "pcid"}, {"x2apic", "lahf-lm"}),
    ("host,+x2apic,+x2apic", "host", {"x2apic"}, set()),
    ("host,+xd,-i64,+ffxsr,-pclmuldq", "host", {"nx", "fxsr-opt"}, {"lm", "pclmulqdq"}),
])
def test_templates_and_features(text: str, template: str, enable: set[str], disable: set[str]) -> None:
    model = parse_cpu_model(text)
    assert (model.text, model.template, model.enable, model.disable) == (text, template, enable, disable)
    assert (model.vendor, model.mce_banks) == (None, None)


def test_vendor_and_mce_banks() -> None:
    model = parse_cpu_model("baseline,vendor=AuthenticAMD,mce-banks=6")
    assert (model.template, model.vendor, model.mce_banks) == ("baseline", "AuthenticAMD", 6)
    assert parse_cpu_model("host,vendor=  Shanghai  ").vendor == "  Shanghai  "  # spaces are ASCII too
    assert parse_cpu_model("host,mce-banks=255").mce_banks == 255
    assert parse_cpu_model("host,mce-banks=1").mce_banks == 1


@pytest.mark.parametrize("text, message", [
    ("", 'cpu "": no CPU template (choose host or baseline)'),
    ("fast", "cpu fast: unknown CPU template fast (choose host or baseline)"),
    ("+x2apic", "cpu +x2apic: unknown CPU template +x2apic (choose host or baseline)"),
    ("Host", "cpu Host: unknown CPU template Host (choose host or baseline)"),
    ("host,baseline", "cpu host,baseline: baseline: the template comes first, and only once"),
    ("host,,+x2apic", "cpu host,,+x2apic: empty item between commas"),
    ("host,", "cpu host,: empty item between commas"),
    ("host,+", "cpu host,+: no feature name after +"),
    ("host,-", "cpu host,-: no feature name after -"),
    ("host,+frob", "cpu host,+frob: unknown CPU feature frob"),
    ("host,-frob", "cpu host,-frob: unknown CPU feature frob"),
    ("host,frob", "cpu host,frob: unknown CPU feature frob"),
    ("host, +x2apic", "cpu host, +x2apic: unknown CPU feature  +x2apic"),
    ("host,frob=on", "cpu host,frob=on: unknown CPU option frob"),
    ("host,x2apic=maybe", "cpu host,x2apic=maybe: x2apic=maybe: a feature is on or off"),
    ("host,+x2apic,-x2apic", "cpu host,+x2apic,-x2apic: x2apic both added and removed"),
    ("host,x2apic=off,+x2apic", "cpu host,x2apic=off,+x2apic: x2apic both added and removed"),
    ("host,+sse4.1,-sse4_1", "cpu host,+sse4.1,-sse4_1: sse4_1 both added and removed"),
    ("host,vendor=AMD", "cpu host,vendor=AMD: vendor=AMD: the vendor must be 12 ASCII characters"),
    ("host,vendor=AuthenticAMD1", "cpu host,vendor=AuthenticAMD1: vendor=AuthenticAMD1: the vendor must be 12"
                                  " ASCII characters"),
    ("host,vendor=Genuineİntel", "cpu host,vendor=Genuineİntel: vendor=Genuineİntel: the vendor must be 12 ASCII"
                                 " characters"),
    ("host,vendor=Genuine\tIntel", "cpu host,vendor=Genuine\tIntel: vendor=Genuine\tIntel: the vendor must be 12"
                                   " ASCII characters"),
    ("host,vendor=", "cpu host,vendor=: vendor=: the vendor must be 12 ASCII characters"),
    ("host,vendor=AuthenticAMD,vendor=GenuineIntel",
     "cpu host,vendor=AuthenticAMD,vendor=GenuineIntel: vendor given more than once"),
    ("host,mce-banks=0", "cpu host,mce-banks=0: mce-banks=0: the MCE bank count must be 1 to 255"),
    ("host,mce-banks=256", "cpu host,mce-banks=256: mce-banks=256: the MCE bank count must be 1 to 255"),
    ("host,mce-banks=-1", "cpu host,mce-banks=-1: mce-banks=-1: the MCE bank count must be 1 to 255"),
    ("host,mce-banks=six", "cpu host,mce-banks=six: mce-banks=six: the MCE bank count must be 1 to 255"),
    ("host,mce-banks=", "cpu host,mce-banks=: mce-banks=: the MCE bank count must be 1 to 255"),
    ("host,mce-banks=６", "cpu host,mce-banks=６: mce-banks=６: the MCE bank count must be 1 to 255"),
    ("host,mce-banks=6,mce-banks=6", "cpu host,mce-banks=6,mce-banks=6: mce-banks given more than once"),
])
def test_bad_models_are_one_line_naming_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(CpuModelError) as error:
        parse_cpu_model(text)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


# -- the feature table ----------------------------------------------------------------------------------------

def test_the_table_places_features_where_the_sdm_and_apm_do() -> None:
    assert FEATURES["x2apic"] == FeatureBit(1, None, "ecx", 21)
    assert FEATURES["tsc-deadline"] == FeatureBit(1, None, "ecx", 24)
    assert FEATURES["hypervisor"] == FeatureBit(1, None, "ecx", 31)
    assert FEATURES["mce"] == FeatureBit(1, None, "edx", 7)
    assert FEATURES["mca"] == FeatureBit(1, None, "edx", 14)
    assert FEATURES["avx512f"] == FeatureBit(7, 0, "ebx", 16)
    assert FEATURES["la57"] == FeatureBit(7, 0, "ecx", 16)
    assert FEATURES["md-clear"] == FeatureBit(7, 0, "edx", 10)
    assert FEATURES["lahf-lm"] == FeatureBit(0x8000_0001, None, "ecx", 0)
    assert FEATURES["lm"] == FeatureBit(0x8000_0001, None, "edx", 29)
    places = [(f.leaf, f.subleaf, f.register, f.bit) for f in FEATURES.values()]
    assert len(places) == len(set(places))  # no bit has two names
    words = {(f.leaf, f.subleaf, f.register) for f in FEATURES.values()}
    assert {(1, None, "ecx"), (1, None, "edx"), (7, 0, "ebx"), (7, 0, "ecx"), (7, 0, "edx"),
            (0x8000_0001, None, "ecx"), (0x8000_0001, None, "edx")} <= words


def test_spellings() -> None:
    assert canonical_name("sse4_1") == canonical_name("sse4-1") == canonical_name("sse4.1") == "sse4.1"
    assert canonical_name("tsc_deadline") == "tsc-deadline"
    assert canonical_name("sse3") == "pni"
    assert canonical_name("osxsave") is None  # the OS's bit: not a feature a guest asks for
    assert canonical_name("X2APIC") is None  # QEMU's names are lower case


# -- the CPUID table a model makes ----------------------------------------------------------------------------

def _entry(function: int, index: int = 0, **registers: int) -> kvm_cpuid_entry2:
    entry = kvm_cpuid_entry2(function=function, index=index)
    for name, value in registers.items():
        setattr(entry, name, value)
    return entry


LEAF1_ECX = (1 << 21) | (1 << 26) | (1 << 28) | 1  # x2APIC, XSAVE, AVX, SSE3; no TSC-deadline, no hypervisor
LEAF1_EDX = (1 << 7) | (1 << 14) | (1 << 9)  # MCE, MCA, APIC


def _supported() -> list[kvm_cpuid_entry2]:
    return [
        _entry(0, eax=0xD, ebx=0x756E_6547, edx=0x4965_6E69, ecx=0x6C65_746E),  # GenuineIntel
        _entry(1, eax=0x000A_0678, ebx=0x0001_0800, ecx=LEAF1_ECX, edx=LEAF1_EDX),
        _entry(7, 0, ebx=(1 << 3) | (1 << 16)),  # BMI1, AVX512F
        _entry(7, 1, eax=1 << 4),  # AVX-VNNI
        _entry(0xD, 0, eax=7, ebx=0x340, ecx=0x340),
        _entry(0x8000_0000, eax=0x8000_0008),
        _entry(0x8000_0001, ecx=1, edx=(1 << 29) | (1 << 20)),  # LAHF_LM; LM, NX
    ]


def _find(entries: list[kvm_cpuid_entry2], function: int, index: int = 0) -> kvm_cpuid_entry2:
    return next(e for e in entries if e.function == function and e.index == index)


def _table(text: str, vcpus: int = 1, available: frozenset[str] = ALWAYS_AVAILABLE) -> list[kvm_cpuid_entry2]:
    return guest_cpuid(_supported(), parse_cpu_model(text), 0, vcpus, available)


def test_minus_clears_and_plus_sets_what_kvm_can_give() -> None:
    leaf1 = _find(_table("host,-x2apic,-mce"), 1)
    assert not leaf1.ecx & (1 << 21)
    assert not leaf1.edx & (1 << 7)
    assert leaf1.edx & (1 << 14) and leaf1.ecx & 1  # the rest stays
    assert _find(_table("host"), 1).ecx & (1 << 21)
    baseline = _find(_table("baseline,+avx"), 1)  # baseline hides AVX; the host's KVM has it
    assert baseline.ecx & (1 << 28)
    assert not baseline.ecx & (1 << 26)  # XSAVE still hidden


def test_tsc_deadline_needs_the_capability() -> None:
    with pytest.raises(CpuModelError) as error:
        _table("host,+tsc-deadline")
    assert str(error.value) == "cpu host,+tsc-deadline: the host's KVM cannot give the guest tsc-deadline"
    leaf1 = _find(_table("host,+tsc-deadline", available=ALWAYS_AVAILABLE | {"tsc-deadline"}), 1)
    assert leaf1.ecx & (1 << 24)


def test_x2apic_and_hypervisor_are_always_there_to_add() -> None:
    supported = _supported()
    _find(supported, 1).ecx &= ~(1 << 21)
    leaf1 = _find(guest_cpuid(supported, parse_cpu_model("baseline,+x2apic"), 0, 1), 1)
    assert leaf1.ecx & (1 << 21) and leaf1.ecx & (1 << 31)
    assert not _find(_table("host,-hypervisor"), 1).ecx & (1 << 31)


def test_a_feature_kvm_cannot_give_is_refused_by_name() -> None:
    with pytest.raises(CpuModelError) as error:
        _table("host,+avx2,+x2apic,+pcid")
    assert str(error.value) == "cpu host,+avx2,+x2apic,+pcid: the host's KVM cannot give the guest avx2, pcid"


def test_subleaves_and_extended_leaves() -> None:
    entries = _table("baseline,+avx512f,-avx-vnni,-lahf_lm,-nx,+bmi1")
    assert _find(entries, 7, 0).ebx == (1 << 3) | (1 << 16)
    assert _find(entries, 7, 1).eax == 0
    ext = _find(entries, 0x8000_0001)
    assert (ext.ecx, ext.edx) == (0, 1 << 29)
    with pytest.raises(CpuModelError, match="cannot give the guest avx512vl"):
        _table("host,+avx512vl")  # 7.0 EBX bit 31: not in the table


def test_the_xsave_leaf_follows_the_xsave_bit() -> None:
    assert _find(_table("baseline"), 0xD).eax == 0
    assert _find(_table("baseline,+xsave"), 0xD).eax == 7
    assert _find(_table("host"), 0xD).eax == 7
    assert _find(_table("host,-xsave"), 0xD).ebx == 0


def test_vendor_goes_to_leaf_0_and_0x80000000() -> None:
    entries = _table("host,vendor=AuthenticAMD")
    for leaf in (0, 0x8000_0000):
        entry = _find(entries, leaf)
        raw = b"".join(value.to_bytes(4, "little") for value in (entry.ebx, entry.edx, entry.ecx))
        assert raw == b"AuthenticAMD"
    assert (_find(entries, 0).eax, _find(entries, 0x8000_0000).eax) == (0xD, 0x8000_0008)  # max leaves kept
    assert _find(_table("host"), 0).ebx == 0x756E_6547  # no vendor=: the host's


def test_ht_follows_the_vcpu_count_and_the_model() -> None:
    assert _find(_table("host", vcpus=2), 1).edx & (1 << 28)
    assert not _find(_table("host,-ht", vcpus=2), 1).edx & (1 << 28)


def test_the_supported_table_is_not_changed() -> None:
    supported = _supported()
    guest_cpuid(supported, parse_cpu_model("host,-x2apic,vendor=AuthenticAMD"), 0, 1)
    assert _find(supported, 1).ecx == LEAF1_ECX and _find(supported, 0).ebx == 0x756E_6547


# -- IA32_MCG_CAP ---------------------------------------------------------------------------------------------

MCG_CTL_P, MCG_SER_P, MCG_LMCE_P = 1 << 8, 1 << 24, 1 << 27
KVM_CAP = MCG_CTL_P | MCG_SER_P | MCG_LMCE_P


def _mcg(text: str, kvm_banks: int = 32, kvm_cap: int = KVM_CAP) -> int | None:
    model = parse_cpu_model(text)
    return machine_check_capabilities(model, guest_cpuid(_supported(), model, 0, 1), kvm_banks, kvm_cap)


def test_ten_banks_by_default_with_the_flags_qemu_asks_for() -> None:
    assert _mcg("host") == 10 | MCG_CTL_P | MCG_SER_P  # not LMCE
    assert _mcg("host", kvm_cap=MCG_CTL_P) == 10 | MCG_CTL_P
    assert _mcg("host,mce-banks=6") == 6 | MCG_CTL_P | MCG_SER_P
    assert _mcg("host", kvm_banks=4) == 4 | MCG_CTL_P | MCG_SER_P


def test_no_set_up_without_mce_and_mca_or_kvm_cap_mce() -> None:
    assert _mcg("host,-mca") is None
    assert _mcg("host,-mce,mce-banks=6") is None
    assert _mcg("host", kvm_banks=0) is None
    model = CpuModel("old")
    assert machine_check_capabilities(model, [_entry(1, eax=0x0543, edx=LEAF1_EDX)], 32, KVM_CAP) is None  # family 5


def test_a_bank_count_kvm_cannot_give_is_refused() -> None:
    with pytest.raises(CpuModelError) as error:
        _mcg("host,mce-banks=33")
    assert str(error.value) == "cpu host,mce-banks=33: the host's KVM has at most 32 MCE banks, not 33"
    with pytest.raises(CpuModelError) as error:
        _mcg("host,mce-banks=6", kvm_banks=0)
    assert str(error.value) == "cpu host,mce-banks=6: the host's KVM has no machine-check emulation (KVM_CAP_MCE)"


# -- where users type a model ---------------------------------------------------------------------------------

def test_vm_conf_cpu_takes_a_model_and_reports_a_bad_one_at_its_line() -> None:
    result = parse_string('vm "a" {\n boot "/k"\n cpu "host,-x2apic,vendor=AuthenticAMD"\n}\n', check_paths=False)
    assert result.errors == [] and result.config is not None
    assert result.config.vms[0].cpu == "host,-x2apic,vendor=AuthenticAMD"
    result = parse_string('vm "a" {\n boot "/k"\n\n cpu "host,+frob"\n}\n', filename="/etc/vm.conf",
                          check_paths=False)
    assert result.errors == ["/etc/vm.conf:4: cpu host,+frob: unknown CPU feature frob"]


def test_vmctl_start_refuses_a_bad_model_without_connecting(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMD_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert vmctl_main(["start", "--cpu", "host,+frob", "x"]) == 1
    assert capsys.readouterr() == ("", "vmctl: cpu host,+frob: unknown CPU feature frob\n")
    assert vmctl_main(["start", "--cpu", "host", "--cpu", "baseline", "x"]) == 1
    assert capsys.readouterr() == ("", "vmctl: cpu model specified multiple times\n")


class _Client:
    peer = Peer(0, 0, 0, frozenset({0}))

    def respond(self, payload: dict[str, Any]) -> None:
        pass


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("the control socket is chowned to root")
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\0" * 512)
    spawned: list[dict[str, Any]] = []

    def spawn(name: str, spec: dict[str, Any], *args: Any) -> Any:
        spawned.append(spec)
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(vmstart, "spawn", spawn)
    daemon = Daemon(str(tmp_path / "vmd.sock"), str(tmp_path / "vm.conf"), lambda path: ([], core.Settings()))
    daemon.kernel = str(kernel)  # type: ignore[attr-defined]
    daemon.spawned = spawned  # type: ignore[attr-defined]
    yield daemon
    daemon.control.shutdown()


def test_vmd_refuses_a_bad_model_from_a_client_that_did_not_check(daemon: Daemon) -> None:
    request = {"command": "start", "target": "x", "kernel": daemon.kernel, "memory": 16 << 20,  # type: ignore
               "cpu": "host,vendor=AMD"}
    with pytest.raises(RequestError) as error:
        daemon.handle_request(_Client(), request)  # type: ignore[arg-type]
    assert (error.value.errno_name, error.value.message) == (
        "EINVAL", "cpu host,vendor=AMD: vendor=AMD: the vendor must be 12 ASCII characters")
    assert daemon.spawned == [] and daemon.registry.find("x") is None  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        daemon.handle_request(_Client(), {**request, "cpu": "host,-x2apic"})  # type: ignore[arg-type]
    assert [spec.get("cpu") for spec in daemon.spawned] == ["host,-x2apic"]  # type: ignore[attr-defined]
