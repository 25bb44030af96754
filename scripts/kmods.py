"""Copy kernel modules and everything they need, in load order, out of an unpacked Debian kernel package.

Debian's linux-image packages ship no modules.dep (depmod runs at install time), so the order comes from each
module's own .modinfo: `depends=` (hard dependencies) and `softdep=pre:` (modules to load first, often
named by an alias such as crypto-crc32c, resolved through the other modules' `alias=` fields).

Usage: kmods.py MODULES_DIR TARGET MODULE...
  MODULES_DIR  lib/modules/<version> of the unpacked package
  TARGET       directory that receives the .ko files and `order` (one file name a line, load order)
A MODULE that is neither a module nor built into the kernel (modules.builtin) is an error.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path


def canonical(name: str) -> str:
    return name.replace("-", "_")


class ModuleTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {canonical(p.name.split(".ko")[0]): p for p in root.glob("kernel/**/*.ko*")}
        builtin = root / "modules.builtin"
        self.builtin = {canonical(Path(line).name.split(".ko")[0])
                        for line in (builtin.read_text().split() if builtin.exists() else [])}
        self._aliases: dict[str, list[str]] | None = None

    def modinfo(self, name: str, key: str) -> list[str]:
        data = self.files[name].read_bytes()
        return [m.decode() for m in re.findall(rb"(?<=\0)" + key.encode() + rb"=([^\0]*)", data)]

    def providers(self, alias: str) -> list[str]:
        """Modules named alias, or that declare it as an alias (crypto-crc32c -> crc32c_generic, ...)."""
        if canonical(alias) in self.files:
            return [canonical(alias)]
        if self._aliases is None:
            self._aliases = {}
            for name in self.files:
                for value in self.modinfo(name, "alias"):
                    self._aliases.setdefault(value, []).append(name)
        return sorted(self._aliases.get(alias, []))

    def load_order(self, wanted: list[str]) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen or name not in self.files:
                return
            seen.add(name)
            for softdep in self.modinfo(name, "softdep"):
                words = softdep.split()
                if words[:1] == ["pre:"]:
                    for alias in words[1:]:
                        for provider in self.providers(alias):
                            visit(provider)
            for field in self.modinfo(name, "depends"):
                for dep in filter(None, field.split(",")):
                    visit(canonical(dep))
            order.append(name)

        for name in wanted:
            name = canonical(name)
            if name not in self.files and name not in self.builtin:
                raise SystemExit(f"kmods.py: no module {name} in {self.root}")
            visit(name)
        return order


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: kmods.py MODULES_DIR TARGET MODULE...", file=sys.stderr)
        return 2
    tree, target = ModuleTree(Path(argv[0])), Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    order = tree.load_order(argv[2:])
    for name in order:
        shutil.copy(tree.files[name], target / tree.files[name].name)
    (target / "order").write_text("".join(tree.files[name].name + "\n" for name in order))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
