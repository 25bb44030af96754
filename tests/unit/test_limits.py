"""vmd.limits: the VM name rule (vmd.c vm_register) and the limits' single home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vmd.limits import valid_vm_name


@pytest.mark.parametrize("name", ["vm1", "1vm", "a.b-c_d", "A", "x" * 200])
def test_valid_vm_names(name: str) -> None:
    assert valid_vm_name(name)  # the length is the callers' check (VM_NAME_MAX), with their own messages


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", "a\n", "a\0"])
def test_invalid_vm_names(name: str) -> None:
    assert not valid_vm_name(name)


# -- one home for each rule: a second definition anywhere in src/vmd fails here -------------------------------

SRC = Path(__file__).resolve().parents[2] / "src" / "vmd"
LIMITS = SRC / "limits.py"
HOMES = {  # module -> the functions only it may define
    SRC / "sizes.py": {"fmt_scaled", "scan_scaled", "parse_size"},
    SRC / "ether.py": {"parse_mac", "format_mac"},
    SRC / "ctl" / "strtonum.py": {"strtonum"},
    SRC / "boundedjson.py": {"loads", "nesting_depth", "JsonLimitError"},
}
# the names the limits had before they moved here, which must not come back as second copies
OLD_NAMES = {
    "MAX_DISKS", "MAX_NICS", "MAX_VCPUS", "NAME_MAX", "NAME_PATTERN", "VM_NAME_PATTERN", "VMM_MAX_NAME_LEN",
    "MIN_MEMORY", "MAX_MEMORY", "MEMORY_MIN", "MEMORY_MAX", "DEFAULT_MEMORY", "QCOW2_MAGIC", "MAGIC",
    "IFNAMSIZ", "GROUP_MAX", "MAX_LINE", "MAX_MESSAGE", "MAX_PENDING_OUTPUT",
}
QCOW_MAGIC = b"QFI\xfb"
NAME_REGEX = "[A-Za-z0-9][A-Za-z0-9._-]*"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _bound_names(tree: ast.AST) -> list[tuple[str, int]]:
    """Every name a module binds: assignments, definitions and import aliases (`import x as NAME`)."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            out += [(t.id, node.lineno) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            out.append((node.target.id, node.lineno))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.name, node.lineno))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out += [(a.asname, node.lineno) for a in node.names if a.asname]
    return out


def _limit_names() -> set[str]:
    rules = ("valid_vm_name", "check_vm_name")
    names = {name for name, _ in _bound_names(_tree(LIMITS)) if name.isupper() or name in rules}
    assert {"VM_MAX_DISKS_PER_VM", "VMM_MAX_VCPUS_PER_VM", "VM_MAGIC_QCOW", "valid_vm_name", "check_vm_name",
            "CONTROL_LINE_MAX", "JSON_DEPTH_MAX"} <= names
    return names


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_each_limit_and_rule_is_defined_once() -> None:
    guarded = {LIMITS: _limit_names() | OLD_NAMES, **HOMES}
    everything = set().union(*guarded.values())
    seconds = []
    for path in _sources():
        allowed = guarded.get(path, set())
        for name, line in _bound_names(_tree(path)):
            if name in everything and name not in allowed:
                seconds.append(f"{path.relative_to(SRC)}:{line}: {name}")
    assert seconds == []


def test_no_second_copy_of_the_qcow_magic_or_the_name_pattern() -> None:
    copies = []
    for path in _sources():
        if path == LIMITS:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and (node.value == QCOW_MAGIC or node.value == NAME_REGEX):
                copies.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert copies == []


def test_one_qcow2_detection() -> None:
    """Only vmd.imageformat and the qcow2 code read VM_MAGIC_QCOW: vm.conf, vmctl and the disk layer ask
    vmd.imageformat."""
    users = set()
    for path in _sources():
        for node in ast.walk(_tree(path)):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if (isinstance(node, ast.Name) and node.id == "VM_MAGIC_QCOW") or "VM_MAGIC_QCOW" in names:
                users.add(path.relative_to(SRC).as_posix())
    assert users == {"limits.py", "imageformat.py", "disk/qcow2.py"}


@pytest.mark.parametrize("module, allowed", [
    (LIMITS, set()),
    (SRC / "ether.py", set()),
    (SRC / "sizes.py", {"vmd.limits"}),
    (SRC / "imageformat.py", {"vmd.limits"}),
])
def test_bottom_modules_import_nothing_above_them(module: Path, allowed: set[str]) -> None:
    imported = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert {m for m in imported if m == "vmd" or m.startswith("vmd.")} == allowed


def test_every_json_read_goes_through_the_bounded_decoder() -> None:
    """json.loads on another process's text raised RecursionError out of vmd's loop (issue 9): only
    vmd.boundedjson may call it."""
    calls = []
    for path in _sources():
        if path == SRC / "boundedjson.py":
            continue
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Attribute) and node.attr in ("loads", "load") and isinstance(node.value, ast.Name)
                    and node.value.id == "json"):
                calls.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "json" and \
                    {a.name for a in node.names} & {"loads", "load", "JSONDecoder"}:
                calls.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert calls == []
