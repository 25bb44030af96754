"""The vm.conf(5) parser: OpenBSD's grammar (usr.sbin/vmd/parse.y 1.72) by recursive descent.

Public API: `parse_config(path, macros, check_paths)` and `parse_string(text, filename, ...)` return a
ParseResult(config, errors, warnings). Errors read `<file>:<line>: <message>` with vmd's wording; all of them
are collected, and any error makes `config` None (vmd's parse_config fails the whole file too).

Where we differ from OpenBSD, and why
-------------------------------------
Linux:
* `switch { interface name }` takes any valid Linux interface name (1-15 characters, none of `/`, `:`,
  whitespace; not `.` or `..`), e.g. `bridge0`, `veb0`, `br-lan`: the switch is a Linux bridge. OpenBSD
  wants a bridge(4) or veb(4), i.e. `bridgeN`/`vebN`. Whether it exists is checked when the switch is set up.
* `interface name` takes `tap` (the next free tap) or any valid Linux interface name for the tap device;
  OpenBSD wants an existing tap(4). The network layer must refuse a name that is an existing non-tap device.
* `rdomain N` (0..255) is kept for the network layer, which maps it to a VRF; `group` keeps OpenBSD's rule
  (< 16 characters, not ending in a digit).
* `sev` / `seves` (AMD SEV through OpenBSD's psp(4)) are errors: "sev is not supported on Linux KVM". Running
  the guest without the encryption it asked for would be worse than refusing it.
* `agentx` is parsed and checked, then ignored with a warning: vmd on Linux has no AgentX subagent. Its
  Linux equivalent is our `metrics` statement (below).
* Paths: relative paths in `include`, `boot`, `disk`, `cdrom`, `initrd` are taken relative to the directory
  of the file that names them (vmd opens them relative to its working directory, `/` once it is a daemon).
  A missing included file is "failed to include file %s"; an include loop is an error instead of running out
  of file descriptors. Path limits are Linux's PATH_MAX (4096) instead of OpenBSD's 1024.
* `disk` and `boot` paths must exist when `check_paths` is true (vmd realpath()s them while parsing); with
  check_paths false they are kept as written (made absolute as above). `cdrom` is not checked (nor in vmd).
* `owner` names are looked up with getpwnam/getgrnam (through an injectable AccountResolver).
* VM names: letters, digits, '.', '-', '_', not starting with '.', '-' or '_' (vmd.c vm_register; the man page
  says "must start with a letter", the code takes a digit too); at most 63 bytes (VMM_MAX_NAME_LEN is 64
  with the NUL). A bad name is `vm "NAME" failed: invalid VM name`.
* Memory: at least 1M and at most 128G (VMM_MAX_VM_MEM_SIZE, also our guest memory limit), rounded down to
  a whole megabyte with a warning: vmd.sizes.parse_size, the rule vmctl start -m and vmd run -m share.

Friendlier than parse.y (the config files that vmd accepts mean the same here):
* Error recovery skips the rest of the bad line (or the rest of a bad `{ ... }` block) and goes on in the
  block it was in, so one mistake gives one message instead of yacc's cascade.
* Empty blocks (`vm "x" instance "y" { }`, `interface { }`, `allow instance { }`) are accepted; parse.y
  requires one option.
* A macro may be set to a number (`cpus = 2`); parse.y only takes a string.
* `memory` given twice is always "memory specified more than once" (parse.y says "argument specified more
  than once" when the second one is a scaled string).
* Interface options written inline may be separated by commas anywhere (parse.y's comma rule is lopsided).
* Messages that parse.y splits over a log line and a parse error are one line: `failed to parse disks: PATH:
  REASON`, `failed to parse size: WORD: REASON`, `kernel path not found: PATH: REASON` (vmd prints only the
  reason there).
* A second `vm` of the same name is skipped with a warning (vmd skips it silently); a second switch of the
  same name gives a warning.
* `vm ... instance` blocks are resolved here with instance.make_instance() as root would create them, so the
  Config holds complete VMs; the parent must come first in the file.
* Staggered start: `parallel` must be at least 1 and `delay` not negative.
* A VM with nothing to boot (no boot image, disk or cdrom) is an error here, as vmd's vm_register refuses it.

Our global extension (a word, not a keyword, so a macro named `metrics` still works):
  `metrics socket "path"` or `metrics listen address port N`: the Prometheus text endpoint vmd serves (off
  without it); the address is an IPv4 or IPv6 literal, the port 1 to 65535, the path absolute and at most
  UNIX_PATH_MAX bytes; given at most once.

Our extensions, inside a `vm { }` block (words, not keywords, so macros of these names still work):
  `vcpus N` (1..64), `cpu host|baseline` (the CPU template), `initrd path`, `append "kernel command line"`,
  `gdb [wait]` (a GDB stub on a Unix socket; wait: the guest waits for the debugger at its first instruction);
  and `allow instance vcpus` (lets an instance change `vcpus` and `cpu`).
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import pwd
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from vmd.config import lexer as lx
from vmd.config.instance import InstanceError, make_instance
from vmd.config.lexer import Lexer, Macro, Token
from vmd.config.spec import (
    BOOT_DEVICES,
    RDOMAIN_MAX,
    AllowInstance,
    Config,
    DiskSpec,
    InterfaceSpec,
    MetricsSpec,
    OwnerSpec,
    ParseResult,
    SwitchSpec,
    VmSpec,
)
from vmd.cpu import CpuModelError, parse_cpu_model
from vmd.ether import format_mac, parse_mac
from vmd.imageformat import file_format
from vmd.limits import (
    IFNAME_MAX,
    UNIX_PATH_MAX,
    VM_MAX_DISKS_PER_VM,
    VM_MAX_NICS_PER_VM,
    VM_NAME_MAX,
    VMM_MAX_VCPUS_PER_VM,
    check_vm_name,
)
from vmd.sizes import ScaledError, SizeTooLarge, SizeTooSmall, fmt_scaled, parse_size

PATH_MAX = 4095  # Linux PATH_MAX (4096) without the NUL
MAX_INCLUDE_DEPTH = 32
UID_MAX = 0xFFFFFFFE  # (uid_t)-1 is "no user"
INSTANCE_FLAGS = frozenset({"boot", "memory", "interface", "disk", "cdrom", "instance"})
IFACE_OPTIONS = frozenset({"switch", "group", "locked", "lladdr", "rdomain", "up", "down"})


class AccountResolver(Protocol):
    """Looks up users and groups for `owner`; None if unknown."""

    def user(self, name: str) -> int | None: ...

    def group(self, name: str) -> int | None: ...


class SystemResolver:
    """The system's users and groups (getpwnam(3), getgrnam(3))."""

    def user(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except (KeyError, ValueError):
            return None

    def group(self, name: str) -> int | None:
        try:
            return grp.getgrnam(name).gr_gid
        except (KeyError, ValueError):
            return None


@dataclass
class MappingResolver:
    """Users and groups from dictionaries, for tests and for checking a file for another host."""

    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    def user(self, name: str) -> int | None:
        return self.users.get(name)

    def group(self, name: str) -> int | None:
        return self.groups.get(name)


class _Syntax(Exception):
    def __init__(self, token: Token) -> None:
        super().__init__("syntax error")
        self.token = token


def valid_ifname(name: str) -> bool:
    """Linux's dev_valid_name() without the length check: not empty, not '.'/'..', no '/', ':' or space."""
    if name in ("", ".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in name)


def valid_group(name: str) -> bool:
    """priv.c priv_validgroup(): shorter than IF_NAMESIZE and not ending in a digit."""
    return 0 < len(name) <= IFNAME_MAX and not name[-1].isdigit()


def parse_prefix4(text: str) -> tuple[ipaddress.IPv4Network | None, str]:
    """parse.y parse_prefix4(): address[/len], len 1..16 (default 16); (network, "") or (None, reason)."""
    addr, sep, length = text.rpartition("/")
    if not sep:
        addr, length = text, "16"
    if not re.fullmatch(r"-?\d+", length):
        return None, "invalid"
    mask = int(length)
    if mask < 1:
        return None, "too small"
    if mask > 16:
        return None, "too large"
    try:
        address = ipaddress.IPv4Address(addr)
    except ValueError:
        parts = addr.split(".")  # inet_net_pton(3) style: "10", "10.1"
        if not 1 <= len(parts) <= 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
            return None, "invalid format"
        address = ipaddress.IPv4Address(".".join(parts + ["0"] * (4 - len(parts))))
    try:
        return ipaddress.IPv4Network((address, mask)), ""
    except ValueError:
        return None, "bad mask"


def parse_prefix6(text: str) -> tuple[ipaddress.IPv6Network | None, str]:
    """parse.y parse_prefix6(): address[/len], len 0..64 (default 64)."""
    addr, sep, length = text.rpartition("/")
    if not sep:
        addr, length = text, "64"
    if not re.fullmatch(r"-?\d+", length):
        return None, "invalid"
    mask = int(length)
    if mask < 0:
        return None, "too small"
    if mask > 64:
        return None, "too large"
    try:
        address = ipaddress.IPv6Address(addr)
    except ValueError:
        return None, "invalid format"
    try:
        return ipaddress.IPv6Network((address, mask)), ""
    except ValueError:
        return None, "bad mask"


class Parser:
    """One parse of one vm.conf and the files it includes."""

    def __init__(self, macros: dict[str, str] | None, check_paths: bool, resolver: AccountResolver) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.check_paths = check_paths
        self.resolver = resolver
        self.macros: dict[str, Macro] = {k: Macro(v, persist=True) for k, v in (macros or {}).items()}
        self.lexer = Lexer(self._lexer_error, self.macros)
        self.config = Config()
        self._la: Token | None = None
        self._last_syntax: Token | None = None
        self._open_files: list[str] = []

    # -- messages --------------------------------------------------------------------------------------------

    def _lexer_error(self, file: str, line: int, message: str) -> None:
        self.errors.append(f"{file}:{line}: {message}")

    def error(self, tok: Token, message: str) -> None:
        self.errors.append(f"{tok.file}:{tok.line}: {message}")

    def warn(self, tok: Token, message: str) -> None:
        self.warnings.append(f"{tok.file}:{tok.line}: warning: {message}")

    # -- tokens ----------------------------------------------------------------------------------------------

    def peek(self) -> Token:
        if self._la is None:
            self._la = self.lexer.next()
        return self._la

    def advance(self) -> Token:
        tok = self.peek()
        self._la = None
        return tok

    def fail(self, tok: Token | None = None) -> NoReturn:
        raise _Syntax(tok if tok is not None else self.peek())

    def expect_char(self, c: str) -> Token:
        tok = self.peek()
        if not tok.is_char(c):
            self.fail(tok)
        return self.advance()

    def expect_keyword(self, word: str) -> Token:
        tok = self.peek()
        if not tok.is_keyword(word):
            self.fail(tok)
        return self.advance()

    def string(self) -> str:
        """parse.y `string`: one or more adjacent STRING tokens, concatenated."""
        tok = self.peek()
        if tok.kind != lx.STRING:
            self.fail(tok)
        parts = [self.advance().value]
        while self.peek().kind == lx.STRING:
            parts.append(self.advance().value)
        return "".join(parts)

    def single_string(self) -> str:
        tok = self.peek()
        if tok.kind != lx.STRING:
            self.fail(tok)
        return self.advance().value

    def number(self) -> int:
        tok = self.peek()
        if tok.kind != lx.NUMBER:
            self.fail(tok)
        return self.advance().number

    def end_of_statement(self) -> None:
        tok = self.peek()
        if tok.is_char("\n"):
            self.advance()
        elif tok.kind != lx.EOF:
            self.fail(tok)

    # -- error recovery --------------------------------------------------------------------------------------

    def syntax_error(self, tok: Token) -> None:
        if tok.kind == lx.ERROR or tok is self._last_syntax:
            return  # the lexer has reported it / reported already
        self._last_syntax = tok
        self.error(tok, "syntax error")

    def recover(self, in_block: bool) -> None:
        """Skip the rest of the statement: to the end of the line, or past a `{ ... }` opened on it; inside a
        block, stop before the `}` that closes it."""
        depth = 0
        while True:
            tok = self.peek()
            if tok.kind == lx.EOF:
                return
            if tok.kind == lx.ERROR:
                self.advance()
                if depth == 0:
                    return
                continue
            if tok.is_char("{"):
                depth += 1
            elif tok.is_char("}"):
                if depth == 0 and in_block:
                    return
                depth = max(depth - 1, 0)
            elif tok.is_char("\n") and depth == 0:
                self.advance()
                return
            self.advance()

    def block(self, option: Callable[[], None], separated: bool = True, commas: bool = False) -> None:
        """`{ options }`. separated (vm_opts_l, switch_opts_l in parse.y): `'{' optnl opts_l '}'` with
        `opts_l: opts_l opts nl | opts optnl`, so the first option may share its line with the second, and
        every later one ends its line. commas (instance_l): options separated by commas or newlines. Neither
        (iface_opts_l): options may share lines freely."""
        self.expect_char("{")
        if separated and not commas:
            self._option_list(option)
            return
        while True:
            tok = self.peek()
            if tok.is_char("}"):
                self.advance()
                return
            if tok.kind == lx.EOF:
                self.fail(tok)
            if tok.is_char("\n") or (commas and tok.is_char(",")):
                self.advance()
                continue
            try:
                option()
                nxt = self.peek()
                if nxt.is_char("\n") or (commas and nxt.is_char(",")):
                    self.advance()
                elif separated and not nxt.is_char("}"):
                    self.fail(nxt)
            except _Syntax as exc:
                self.syntax_error(exc.token)
                self.recover(in_block=True)

    def _option_list(self, option: Callable[[], None]) -> None:
        """The body of a vm or switch block, after its `{`, to the grammar of parse.y (see block)."""
        count = 0
        line_open = False  # an option after the first has been read and its newline not yet
        while True:
            tok = self.peek()
            try:
                if tok.kind == lx.EOF:
                    self.fail(tok)
                if tok.is_char("}"):
                    if line_open:  # an empty block is accepted, unlike parse.y (vm.conf(5))
                        self.fail(tok)
                    self.advance()
                    return
                if tok.is_char("\n"):
                    self.advance()
                    line_open = False
                    continue
                if line_open:
                    self.fail(tok)
                option()
                count += 1
                line_open = count > 1
            except _Syntax as exc:
                if exc.token.kind == lx.EOF:
                    raise
                self.syntax_error(exc.token)
                count, line_open = max(count, 1), False
                if exc.token.is_char("}"):
                    self.advance()
                    return
                self.recover(in_block=True)

    # -- top level -------------------------------------------------------------------------------------------

    def parse_file(self, path: str) -> None:
        """The top file; a missing file is an error here (the caller decides about a missing default)."""
        text = self._read(path, None)
        if text is None:
            return
        self._open_files.append(os.path.realpath(path))
        self.lexer.push(path, text)
        self.run()

    def parse_text(self, text: str, filename: str) -> None:
        self._open_files.append(os.path.realpath(filename))
        self.lexer.push(filename, text)
        self.run()

    def _read(self, path: str, tok: Token | None) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # not /dev/zero, a fifo, a directory
                    raise IsADirectoryError(errno.EINVAL, "not a regular file")
                return f.read()
        except OSError as exc:
            if tok is None:
                self.errors.append(f"failed to open {path}: {exc.strerror or exc}")
            else:
                self.error(tok, f"failed to include file {path}")
            return None

    def run(self) -> None:
        while True:
            tok = self.peek()
            if tok.kind == lx.EOF:
                break
            try:
                self.statement()
            except _Syntax as exc:
                self.syntax_error(exc.token)
                self.recover(in_block=False)
        for name, macro in self.macros.items():
            if not macro.used:  # parse_config prints it with no location
                self.warnings.append(f"warning: macro '{name}' not used")
        self.config.macros = {name: m.value for name, m in self.macros.items()}

    def statement(self) -> None:
        tok = self.peek()
        if tok.is_char("\n"):
            self.advance()
        elif tok.kind == lx.ERROR:
            self.advance()
        elif tok.is_keyword("include"):
            self.include()
        elif tok.kind == lx.STRING:
            name_tok = self.advance()
            if name_tok.value == "metrics" and not self.peek().is_char("="):
                self.metrics(name_tok)
                self.end_of_statement()
            else:
                self.varset(name_tok)
        elif tok.is_keyword("local") or tok.is_keyword("socket") or tok.is_keyword("agentx") \
                or tok.is_keyword("staggered"):
            self.main()
            self.end_of_statement()
        elif tok.is_keyword("switch"):
            self.switch()
            self.end_of_statement()
        elif tok.is_keyword("vm"):
            self.vm()
            self.end_of_statement()
        else:
            self.fail(tok)

    def include(self) -> None:
        """include "file" (parse.y `include`); the file is read after this line has ended."""
        kw = self.advance()
        path = self.string()
        self.end_of_statement()
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(kw.file), path)
        real = os.path.realpath(path)
        live = self._open_files[: len(self.lexer.sources)]
        if real in live:
            self.error(kw, f"failed to include file {path}: include loop")
            return
        if len(self.lexer.sources) >= MAX_INCLUDE_DEPTH:
            self.error(kw, f"failed to include file {path}: includes nested too deeply")
            return
        text = self._read(path, kw)
        if text is None:
            return
        del self._open_files[len(self.lexer.sources):]
        self._open_files.append(real)
        self.lexer.push(path, text)

    def varset(self, name_tok: Token) -> None:
        """name = value (parse.y `varset`), from the = on; a -D macro keeps its value (symset persist)."""
        self.expect_char("=")
        value_tok = self.peek()
        if value_tok.kind == lx.STRING:
            value = value_tok.value
        elif value_tok.kind == lx.NUMBER:  # our extension
            value = value_tok.text
        else:
            self.fail(value_tok)
        self.advance()
        self.end_of_statement()
        name = name_tok.value
        if any(c.isspace() for c in name):
            self.error(name_tok, "macro name cannot contain whitespace")
            return
        existing = self.macros.get(name)
        if existing is not None and existing.persist:
            return
        self.macros[name] = Macro(value)

    # -- global settings (parse.y `main`) --------------------------------------------------------------------

    def main(self) -> None:
        tok = self.advance()
        g = self.config.globals
        if tok.value == "local":
            nxt = self.peek()
            if nxt.kind == lx.KEYWORD:
                self.advance()
            if nxt.is_keyword("inet6"):
                if self.peek().is_keyword("prefix"):
                    self.advance()
                    text = self.single_string()
                    net6, why = parse_prefix6(text)
                    if net6 is None:
                        self.error(tok, f"invalid local inet6 prefix: {why}")
                        return
                    g.local_prefix6 = net6
                g.local_inet6 = True
            elif nxt.is_keyword("prefix"):
                text = self.single_string()
                net4, why = parse_prefix4(text)
                if net4 is None:
                    self.error(tok, f"invalid local prefix: {why}")
                    return
                g.local_prefix = net4
            else:
                self.fail(nxt)
        elif tok.value == "socket":
            self.expect_keyword("owner")
            owner = self.owner_id()
            if owner is not None:
                g.socket_owner = owner
        elif tok.value == "agentx":
            g.agentx.enabled = True
            while self.peek().is_keyword("context") or self.peek().is_keyword("path"):
                opt = self.advance()
                value = self.single_string()
                if opt.value == "context":
                    if len(value) > 32:
                        self.error(opt, "agentx context too large")
                    else:
                        g.agentx.context = value
                elif len(value) > UNIX_PATH_MAX:
                    self.error(opt, "agentx path too large")
                elif not value.startswith("/"):
                    self.error(opt, "agentx path is not absolute")
                else:
                    g.agentx.path = value
            self.warn(tok, "agentx is not supported on Linux; ignored")
        else:  # staggered start parallel N delay S
            self.expect_keyword("start")
            self.expect_keyword("parallel")
            parallel = self.number()
            self.expect_keyword("delay")
            delay = self.number()
            if parallel < 1:
                self.error(tok, f"invalid staggered start parallelism: {parallel}")
            elif delay < 0:
                self.error(tok, f"invalid staggered start delay: {delay}")
            else:
                g.staggered_start, g.parallel, g.delay = True, parallel, delay

    def metrics(self, tok: Token) -> None:
        """metrics socket "path" | metrics listen address port N (ours: the Prometheus endpoint)."""
        g = self.config.globals
        how = self.peek()
        if how.is_keyword("socket"):
            self.advance()
            path = self.single_string()
            spec = MetricsSpec(socket=path)
            if not path.startswith("/"):
                self.error(tok, f"metrics socket path is not absolute: {path}")
                return
            if len(os.fsencode(path)) > UNIX_PATH_MAX:
                self.error(tok, f"metrics socket path too long (at most {UNIX_PATH_MAX} bytes)")
                return
        elif how.kind == lx.STRING and how.value == "listen":
            self.advance()
            address = self.single_string()
            port_word = self.peek()
            if not (port_word.kind == lx.STRING and port_word.value == "port"):
                self.fail(port_word)
            self.advance()
            port = self.number()
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                self.error(tok, f"invalid metrics address: {address}")
                return
            if not 1 <= port <= 65535:
                self.error(tok, f"invalid metrics port: {port}")
                return
            spec = MetricsSpec(address=address, port=port)
        else:
            self.fail(how)
        if g.metrics is not None:
            self.error(tok, "metrics specified more than once")
            return
        g.metrics = spec

    def owner_id(self) -> OwnerSpec | None:
        """parse.y `owner_id`: uid | user | user:group | :group. None after an error."""
        tok = self.peek()
        if tok.kind not in (lx.NUMBER, lx.STRING):
            self.fail(tok)
        self.advance()
        if tok.kind == lx.NUMBER:
            if not 0 <= tok.number <= UID_MAX:
                self.error(tok, f"invalid user id: {tok.number}")
                return None
            return OwnerSpec(uid=tok.number)
        user, sep, group = tok.value.partition(":")
        owner = OwnerSpec()
        if user:
            uid = self.resolver.user(user)
            if uid is None:
                self.error(tok, f"failed to get user: {user}")
                return None
            owner.uid, owner.user = uid, user
        if sep and group:
            gid = self.resolver.group(group)
            if gid is None:
                self.error(tok, f"failed to get group: {group}")
                return None
            owner.gid, owner.group = gid, group
        return owner

    # -- switch ----------------------------------------------------------------------------------------------

    def switch(self) -> None:
        kw = self.advance()
        sw = SwitchSpec(name=self.string(), file=kw.file, line=kw.line)
        self.block(lambda: self.switch_option(sw))
        if len(sw.name.encode()) > VM_NAME_MAX:
            self.error(kw, f"switch name too long: {sw.name}")
            return
        if sw.interface is None:
            self.error(kw, f'switch "{sw.name}" is missing interface name')
            return
        if any(other.name == sw.name for other in self.config.switches):
            self.warn(kw, f'switch "{sw.name}" defined more than once; VMs use the first one')
        self.config.switches.append(sw)

    def switch_option(self, sw: SwitchSpec) -> None:
        tok = self.advance()
        word = tok.value if tok.kind == lx.KEYWORD else ""
        if word in ("enable", "disable"):
            sw.enabled = word == "enable"
        elif word == "group":
            name = self.string()
            if not valid_group(name):
                self.error(tok, f"invalid group name: {name}")
            else:
                sw.group = name
        elif word == "interface":
            name = self.string()
            if not valid_ifname(name):
                self.error(tok, f"invalid switch interface: {name}")
            elif len(name.encode()) > IFNAME_MAX:
                self.error(tok, f"switch interface too long: {name}")
            else:
                sw.interface = name
        elif word == "locked":
            self.expect_keyword("lladdr")
            sw.locked_lladdr = True
        elif word == "rdomain":
            value = self.number()
            if not 0 <= value <= RDOMAIN_MAX:
                self.error(tok, f"invalid rdomain: {value}")
            else:
                sw.rdomain = value
        elif word in ("up", "down"):
            sw.up = word == "up"
        else:
            self.fail(tok)

    # -- vm --------------------------------------------------------------------------------------------------

    def vm(self) -> None:
        kw = self.advance()
        first = self.string()
        parent_name: str | None = None
        name = first
        if self.peek().is_keyword("instance"):
            self.advance()
            parent_name, name = first, self.string()
        vm = VmSpec(name=name, instance_of=parent_name, file=kw.file, line=kw.line)
        errors_before = len(self.errors)
        self.block(lambda: self.vm_option(vm))
        if parent_name is not None and len(parent_name.encode()) > VM_NAME_MAX:
            self.error(kw, f"vm {parent_name} name too long")
            return
        if len(name.encode()) > VM_NAME_MAX:
            self.error(kw, "vm name too long")
            return
        if len(self.errors) != errors_before:
            return  # vmd drops a VM whose block had an error
        self.register(kw, vm)

    def register(self, kw: Token, vm: VmSpec) -> None:
        """vmd.c vm_register() for a VM from the file (as root)."""
        reason = check_vm_name(vm.name)
        if reason is not None:
            self.error(kw, f'vm "{vm.name}" failed: {reason}')
            return
        if self.config.vm(vm.name) is not None:
            self.warn(kw, f'vm "{vm.name}" skipped (already exists)')
            return
        if vm.instance_of is not None:
            parent = self.config.vm(vm.instance_of)
            if parent is None:
                self.error(kw, f'vm "{vm.name}" failed: parent vm "{vm.instance_of}" not found')
                return
            try:
                vm = make_instance(parent, vm.name, vm, requester_uid=0)
            except InstanceError as exc:
                self.error(kw, str(exc))
                return
        if vm.kernel is None and not vm.disks and vm.cdrom is None:
            self.error(kw, f'vm "{vm.name}" failed: no kernel or disk/cdrom specified')
            return
        self.config.vms.append(vm)

    def path_arg(self, tok: Token, path: str) -> str:
        """A path relative to the directory of the file that names it."""
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(tok.file)), path)
        return path

    def existing_path(self, tok: Token, path: str, what: str) -> str | None:
        """realpath() when check_paths (vmd resolves boot and disk paths while parsing)."""
        path = self.path_arg(tok, path)
        if not self.check_paths:
            return path
        try:
            return os.path.realpath(path, strict=True)
        except OSError as exc:
            self.error(tok, f"{what}: {path}: {exc.strerror or os.strerror(exc.errno or errno.ENOENT)}")
            return None
        except ValueError:
            self.error(tok, f"{what}: {path}: invalid path")
            return None

    def vm_option(self, vm: VmSpec) -> None:
        tok = self.advance()
        word = tok.value if tok.kind == lx.KEYWORD else ""
        if word in ("enable", "disable"):
            vm.enabled = word == "enable"
        elif word in ("sev", "seves"):
            vm.sev = True
            vm.seves = vm.seves or word == "seves"
            self.error(tok, f"{word} is not supported on Linux KVM")
        elif word == "disk":
            self.disk(tok, vm)
        elif word == "local":
            self.expect_keyword("interface")
            self.interface(tok, vm, local=True)
        elif word == "interface":
            self.interface(tok, vm, local=False)
        elif word == "boot":
            if self.peek().is_keyword("device"):
                self.advance()
                dev = self.peek()
                if dev.kind != lx.KEYWORD or dev.value not in BOOT_DEVICES:
                    self.fail(dev)
                vm.boot_device = self.advance().value
                return
            path = self.string()
            if vm.kernel is not None:
                self.error(tok, "kernel specified more than once")
                return
            if len(path) > PATH_MAX:
                self.error(tok, "kernel name too long")
                return
            vm.kernel = self.existing_path(tok, path, "kernel path not found")
        elif word == "cdrom":
            path = self.string()
            if vm.cdrom is not None:
                self.error(tok, "cdrom specified more than once")
            elif len(path) > PATH_MAX:
                self.error(tok, "cdrom name too long")
            else:
                vm.cdrom = self.path_arg(tok, path)
        elif word == "interfaces":
            count = self.number()
            if vm.nic_count is not None:
                self.error(tok, "interfaces specified more than once")
            elif not 0 <= count <= VM_MAX_NICS_PER_VM:
                self.error(tok, f"too many interfaces: {count}")
            else:
                vm.nic_count = count
        elif word == "memory":
            self.memory(tok, vm)
        elif word == "owner":
            owner = self.owner_id()
            if owner is not None:
                vm.owner = owner
        elif word == "allow":
            self.expect_keyword("instance")
            if self.peek().is_char("{"):
                self.block(lambda: self.instance_flag(vm.allow_instance), commas=True)
            else:
                self.instance_flag(vm.allow_instance)
        elif tok.kind == lx.STRING and tok.value in ("vcpus", "cpu", "initrd", "append", "gdb"):
            self.extension(tok, vm)
        else:
            self.fail(tok)

    def extension(self, tok: Token, vm: VmSpec) -> None:
        """vcpus N, cpu TEMPLATE, initrd PATH, append "CMDLINE", gdb [wait] (ours, not OpenBSD's)."""
        word = tok.value
        if word == "gdb":
            mode = "listen"
            if self.peek().kind == lx.STRING and self.peek().value == "wait":
                self.advance()
                mode = "wait"
            if vm.gdb is not None:
                self.error(tok, "gdb specified more than once")
            else:
                vm.gdb = mode
        elif word == "vcpus":
            count = self.number()
            if vm.vcpus is not None:
                self.error(tok, "vcpus specified more than once")
            elif not 1 <= count <= VMM_MAX_VCPUS_PER_VM:
                self.error(tok, f"invalid number of vcpus: {count} (1 to {VMM_MAX_VCPUS_PER_VM})")
            else:
                vm.vcpus = count
        elif word == "cpu":
            model = self.string()
            if vm.cpu is not None:
                self.error(tok, "cpu specified more than once")
            else:
                try:
                    parse_cpu_model(model)
                except CpuModelError as error:
                    self.error(tok, str(error))
                else:
                    vm.cpu = model
        elif word == "initrd":
            path = self.string()
            if vm.initrd is not None:
                self.error(tok, "initrd specified more than once")
            elif len(path) > PATH_MAX:
                self.error(tok, "initrd name too long")
            else:
                vm.initrd = self.existing_path(tok, path, "initrd path not found")
        else:
            cmdline = self.string()
            if vm.append is not None:
                self.error(tok, "append specified more than once")
            else:
                vm.append = cmdline

    def memory(self, tok: Token, vm: VmSpec) -> None:
        """memory NUMBER (bytes) | memory STRING (scan_scaled); parse.y parse_size()."""
        arg = self.peek()
        scanned: str | int
        if arg.kind == lx.NUMBER:
            self.advance()
            word, scanned = arg.text, arg.number
        elif arg.kind == lx.STRING:
            self.advance()
            word = scanned = arg.value
        else:
            self.fail(arg)
        if vm.memory is not None:
            self.error(tok, "memory specified more than once")
            return
        try:
            size, rounded = parse_size(scanned)
        except ScaledError:
            self.error(tok, f"failed to parse size: {word}: invalid memory size")
            return
        except SizeTooSmall:
            self.error(tok, f"failed to parse size: {word}: memory size must be at least 1MB")
            return
        except SizeTooLarge as e:
            self.error(tok, f"failed to parse size: {word}: memory size too large (limit is {fmt_scaled(e.limit)})")
            return
        if rounded:
            self.warn(tok, f"memory size rounded to {fmt_scaled(size)}")
        vm.memory = size

    def disk(self, tok: Token, vm: VmSpec) -> None:
        """disk PATH [format raw|qcow2] (parse.y parse_disk, parse_format)."""
        word = self.string()
        fmt: str | None = None
        if self.peek().is_keyword("format"):
            self.advance()
            name = self.string()
            if name.lower() not in ("raw", "qcow2"):
                self.error(tok, f"unrecognized disk format {name}")
                return
            fmt = name.lower()
        if len(vm.disks) >= VM_MAX_DISKS_PER_VM:
            self.error(tok, f"failed to parse disks: {word}: too many disks")
            return
        path = self.existing_path(tok, word, "failed to parse disks")
        if path is None:
            return
        if len(path) > PATH_MAX:
            self.error(tok, f"failed to parse disks: {word}: disk path too long")
            return
        # parse.y parse_disk(): without `format`, qcow2 if the file starts with the qcow magic, else raw
        vm.disks.append(DiskSpec(path=path, format=fmt or file_format(path)))

    def interface(self, tok: Token, vm: VmSpec, local: bool) -> None:
        """[local] interface [name] [{ opts } | opts] (parse.y vm_opts, iface_opts_o)."""
        iface = InterfaceSpec(local=local)
        name_tok = self.peek()
        name: str | None = None
        if name_tok.kind == lx.STRING:
            name = self.advance().value
        if self.peek().is_char("{"):
            self.block(lambda: self.iface_option(iface), separated=False, commas=True)
        else:
            while True:
                nxt = self.peek()
                if nxt.is_char(","):
                    self.advance()
                    continue
                if nxt.kind == lx.KEYWORD and nxt.value in IFACE_OPTIONS:
                    self.iface_option(iface)
                    continue
                break
        if len(vm.interfaces) + 1 > VM_MAX_NICS_PER_VM:
            self.error(tok, f"too many interfaces: {len(vm.interfaces) + 1}")
            return
        if name is not None:
            if name != "tap" and not valid_ifname(name):
                self.error(tok, f"invalid interface: {name}")
                return
            if len(name.encode()) > IFNAME_MAX:
                self.error(tok, f"interface name too long: {name}")
                return
            iface.name = name
        vm.interfaces.append(iface)

    def iface_option(self, iface: InterfaceSpec) -> None:
        tok = self.advance()
        word = tok.value if tok.kind == lx.KEYWORD else ""
        if word == "switch":
            name = self.string()
            if len(name.encode()) > VM_NAME_MAX:
                self.error(tok, f"switch name too long: {name}")
            else:
                iface.switch = name
        elif word == "group":
            name = self.string()
            if not valid_group(name):
                self.error(tok, f"invalid group name: {name}")
            else:
                iface.group = name
        elif word in ("locked", "lladdr"):
            if word == "locked":
                self.expect_keyword("lladdr")
                iface.locked = True
            if self.peek().kind == lx.STRING:
                text = self.advance().value
                try:
                    iface.lladdr = format_mac(parse_mac(text))  # kept as lower-case xx:xx:xx:xx:xx:xx
                except ValueError:
                    self.error(tok, f"invalid address: {text}")
        elif word == "rdomain":
            value = self.number()
            if not 0 <= value <= RDOMAIN_MAX:
                self.error(tok, f"invalid rdomain: {value}")
            else:
                iface.rdomain = value
        elif word in ("up", "down"):
            iface.up = word == "up"
        else:
            self.fail(tok)

    def instance_flag(self, allow: AllowInstance) -> None:
        """parse.y instance_flags: boot, memory, interface, disk, cdrom, instance, owner ID; ours: vcpus."""
        tok = self.peek()
        if tok.kind not in (lx.KEYWORD, lx.STRING):
            self.fail(tok)
        self.advance()
        if tok.kind == lx.KEYWORD and tok.value in INSTANCE_FLAGS:
            setattr(allow, tok.value, True)
        elif tok.is_keyword("owner"):
            owner = self.owner_id()
            if owner is not None:
                allow.owner = owner
        elif tok.kind == lx.STRING and tok.value == "vcpus":
            allow.vcpus = True
        else:
            self.fail(tok)


def _result(parser: Parser) -> ParseResult:
    config = parser.config if not parser.errors else None
    return ParseResult(config=config, errors=parser.errors, warnings=parser.warnings)


def parse_config(path: str, macros: dict[str, str] | None = None, check_paths: bool = True, *,
                 resolver: AccountResolver | None = None) -> ParseResult:
    """Parse the vm.conf at `path`. macros: `vmd -D name=value`, which win over the file's definitions.
    check_paths: resolve `boot`, `disk` and `initrd` paths now and fail on missing ones, as vmd does.
    A file that cannot be opened is an error ("failed to open PATH: REASON"); the daemon decides whether a
    missing default /etc/vm.conf is fine (it is, for vmd)."""
    parser = Parser(macros, check_paths, resolver or SystemResolver())
    try:
        parser.parse_file(path)
    except RecursionError:  # pragma: no cover - the parser does not recurse on input
        parser.errors.append(f"{path}: configuration too complex")
    return _result(parser)


def parse_string(text: str, filename: str = "vm.conf", macros: dict[str, str] | None = None,
                 check_paths: bool = True, *, resolver: AccountResolver | None = None) -> ParseResult:
    """Parse vm.conf text; `filename` is used in messages and for relative paths."""
    parser = Parser(macros, check_paths, resolver or SystemResolver())
    try:
        parser.parse_text(text, filename)
    except RecursionError:  # pragma: no cover
        parser.errors.append(f"{filename}: configuration too complex")
    return _result(parser)
