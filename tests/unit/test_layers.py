"""The import graph of src/vmd: every module in a layer, imports that go only downward, and no cycle.

Every import counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Each layer, lowest first, and the packages or modules in it.
LAYERS: dict[str, tuple[str, ...]] = {
    # plain data, rules and the KVM binding: what every other layer may use
    "foundation": ("vmd", "vmd.kvm", "vmd.memory", "vmd.acpi_layout", "vmd.firmware", "vmd.vmchannel",
                   "vmd.eventloop", "vmd.cpu", "vmd.console", "vmd.gdbstub", "vmd.gdb_x86", "vmd.config",
                   "vmd.limits", "vmd.boundedjson", "vmd.sizes", "vmd.imageformat", "vmd.ether"),
    # the host's resources: disk images, taps, bridges, DHCP
    "host": ("vmd.disk", "vmd.net"),
    "devices": ("vmd.devices",),
    # kernel loaders and the firmware tables, which describe the board without importing its devices
    "boot": ("vmd.boot",),
    "machine": ("vmd.machine", "vmd.platform", "vmd.vcpu_loop", "vmd.guest_debug", "vmd.guest_virt"),
    "vm process": ("vmd.vmproc", "vmd.sandbox"),
    # the daemon parent: it opens files and taps and spawns VM processes, never builds a machine
    "daemon": ("vmd.daemon",),
    "vmctl": ("vmd.ctl",),
    "commands": ("vmd.cli",),
}

MAY_IMPORT: dict[str, set[str]] = {
    "foundation": {"foundation"},
    "host": {"foundation", "host"},
    "devices": {"foundation", "host", "devices"},
    "boot": {"foundation", "boot"},
    "machine": {"foundation", "host", "devices", "boot", "machine"},
    "vm process": {"foundation", "host", "devices", "boot", "machine", "vm process"},
    "daemon": {"foundation", "host", "daemon"},
    "vmctl": {"foundation", "host", "vmctl"},
    "commands": set(LAYERS),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "vmd").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vmd modules that module `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from vmd.x import y` imports the module vmd.x.y when there is one, else names from vmd.x
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import vmd.kvm.api` as a name reaches vmd.kvm.api
                target = target.rpartition(".")[0]
            if target.startswith("vmd") and target != name:
                found.add(target)
    return found


def _layer(module: str) -> str | None:
    best, length = None, -1
    for layer, members in LAYERS.items():
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > length:
                best, length = layer, len(member)
    return best


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_graph_is_read_from_the_source() -> None:
    graph = _graph()
    assert "vmd.machine.board" in graph and "vmd.devices.virtio.blk" in graph["vmd.machine.board"]
    assert "vmd.vmchannel" in graph["vmd.daemon.supervisor"]


def test_every_module_is_in_a_layer() -> None:
    assert [name for name in _graph() if _layer(name) is None] == []


def test_imports_go_only_downward() -> None:
    upward = []
    for name, targets in sorted(_graph().items()):
        layer = _layer(name)
        assert layer is not None
        for target in sorted(targets):
            target_layer = _layer(target)
            if target_layer not in MAY_IMPORT[layer]:
                upward.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert upward == []


def test_the_foundation_s_kvm_binding_stands_alone() -> None:
    graph = _graph()
    outside = {f"{name} -> {t}" for name in graph if name.startswith("vmd.kvm")
               for t in graph[name] if not t.startswith("vmd.kvm")}
    assert outside == set()


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []
