"""The manual pages in docs/: mandoc finds nothing to warn about, vmctl.8 documents every command of vmctl's
command table, vm.conf.5 every keyword of the lexer, and the vm.conf examples parse."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmd.config.lexer import KEYWORDS
from vmd.config.parser import MappingResolver, parse_string
from vmd.ctl.main import COMMANDS

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("vmd.8", "vmctl.8", "vm.conf.5")

# mdoc macros that may follow the arguments of an Ic or Cm on the same line
_MACRO = re.compile(r"^(?:[A-Z][a-z]{1,2}|Brq|Bro|Brc|Ox)$")


def _read(page: str) -> str:
    return (DOCS / page).read_text()


def _marked_words(text: str, macros: tuple[str, ...]) -> set[str]:
    """The arguments of the given mdoc macros (`.It Ic boot device Cm cdrom` gives boot, device, cdrom)."""
    words: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("."):
            continue
        tokens = line[1:].split()
        taking = False
        for token in tokens:
            if token in macros:
                taking = True
            elif _MACRO.match(token):
                taking = False
            elif taking:
                words.add(token)
    return words


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint(page: str) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.skip("mandoc is not installed")
    result = subprocess.run([mandoc, "-T", "lint", "-W", "warning", str(DOCS / page)],
                            capture_output=True, text=True, timeout=60)
    messages = [line for line in (result.stdout + result.stderr).splitlines()
                if re.search(r": (WARNING|ERROR|UNSUPP|BADARG|SYSERR):", line)]
    assert messages == [], "\n".join(messages)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vmctl_commands_documented() -> None:
    documented = _marked_words(_read("vmctl.8"), ("Cm",))
    missing = [c.name for c in COMMANDS if c.name not in documented]
    assert COMMANDS and missing == []
    items = set(re.findall(r"^\.It Cm (\w+)", _read("vmctl.8"), re.M))
    items |= set(re.findall(r"^\.Cm (\w+)\n(?:\.O[pc].*\n)*", _read("vmctl.8"), re.M))
    assert [c.name for c in COMMANDS if c.name not in items] == []


def test_vm_conf_keywords_documented() -> None:
    documented = _marked_words(_read("vm.conf.5"), ("Ic", "Cm"))
    missing = sorted(word for word in KEYWORDS if word not in documented)
    assert KEYWORDS and missing == []


def test_vm_conf_extensions_documented() -> None:
    documented = _marked_words(_read("vm.conf.5"), ("Ic", "Cm"))
    assert {"vcpus", "cpu", "initrd", "append"} <= documented


def _example_blocks(page: str, section: str) -> list[str]:
    text = _read(page)
    start = text.index(f"\n.Sh {section}\n")
    end = text.find("\n.Sh ", start + 1)
    body = text[start:end if end >= 0 else len(text)]
    blocks = re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", body, re.S | re.M)
    return [b.replace("\\e", "\\").replace("\\&", "") for b in blocks]


def test_vm_conf_examples_parse() -> None:
    blocks = _example_blocks("vm.conf.5", "EXAMPLES") + _example_blocks("vm.conf.5", "DESCRIPTION")
    assert len(blocks) >= 4
    resolver = MappingResolver(users={"joe": 1000}, groups={"staff": 50})
    for block in blocks:
        result = parse_string(block, "/etc/vm.conf", check_paths=False, resolver=resolver)
        assert result.errors == [], block
