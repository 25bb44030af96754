"""vm.conf parsing: the man page examples, every statement, and vmd's error messages."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from vmd.config import MappingResolver, ParseResult, parse_config, parse_string
from vmd.config.spec import DEFAULT_LOCAL_PREFIX
from vmd.limits import VM_MAGIC_QCOW

RESOLVER = MappingResolver(users={"joe": 1000, "root": 0}, groups={"staff": 20, "vmusers": 30, "wheel": 0})


def parse(text: str, **kw: object) -> ParseResult:
    kw.setdefault("check_paths", False)
    kw.setdefault("resolver", RESOLVER)
    return parse_string(text, **kw)  # type: ignore[arg-type]


def ok(text: str, **kw: object) -> ParseResult:
    res = parse(text, **kw)
    assert res.errors == [] and res.config is not None, res.errors
    return res


def errors(text: str, **kw: object) -> list[str]:
    res = parse(text, **kw)
    assert res.config is None
    return res.errors


# -- vm.conf(5) EXAMPLES and MACROS, verbatim ----------------------------------------------------------------

MAN_MACRO = """ramdisk="/bsd.rd"
vm "vm1.example.com" {
\tmemory 512M
\tboot $ramdisk
}
"""

MAN_EXAMPLES = """# Create a new VM with 1GB memory, 1 network interface connected to "uplink",
# with one disk image /home/joe/vm2-disk.img, owned by user joe:
vm "vm2.example.com" {
\tmemory 1G
\tdisk "/home/joe/vm2-disk.img"
\tinterface { switch "uplink" }
\towner joe
}

# Create a new VM as an instance from vm2.example.com:
vm "vm2.example.com" instance "vm3.example.com" {
\tdisk "/home/joe/vm3-disk.img"
}

# Create the switch "uplink" with an additional physical network interface:
switch "uplink" {
\tinterface bridge0
}
"""

OTHER_STATEMENTS = """local prefix 10.0.0.0/16
local inet6 prefix fd12:3456:789a::/64
socket owner :vmusers
staggered start parallel 2 delay 10
agentx context "vm" path "/var/agentx/master"
vm "guest" {
\tdisable
\tmemory 2G
\tdisk "/var/vm/guest.qcow2" format qcow2
\tcdrom "/var/iso/install77.iso"
\tboot device cdrom
\tlocal interface
\tinterface tap3 {
\t\tswitch "uplink"
\t\tgroup vmnet
\t}
\tinterface locked lladdr fe:e1:ba:d0:00:01 switch "uplink" rdomain 2 up
\tinterfaces 3
\towner joe:staff
\tallow instance { memory, disk, interface, owner :staff }
}
"""


def test_man_page_macro_example() -> None:
    cfg = ok(MAN_MACRO).config
    assert cfg is not None
    (vm,) = cfg.vms
    assert vm.name == "vm1.example.com"
    assert vm.memory == 512 << 20
    assert vm.kernel == "/bsd.rd"
    assert cfg.macros == {"ramdisk": "/bsd.rd"}


def test_man_page_macro_example_with_real_path(tmp_path: Path) -> None:
    kernel = tmp_path / "bsd.rd"
    kernel.write_bytes(b"\x7fELF")
    text = MAN_MACRO.replace("/bsd.rd", str(kernel))
    res = parse(text, check_paths=True)
    assert res.errors == []
    assert res.config is not None and res.config.vms[0].kernel == str(kernel)


def test_man_page_include_example(tmp_path: Path) -> None:
    inc = tmp_path / "vm1.example.com.conf"
    inc.write_text(MAN_MACRO)
    main = tmp_path / "vm.conf"
    main.write_text(f'include "{inc}"\n')
    res = parse_config(str(main), check_paths=False, resolver=RESOLVER)
    assert res.errors == []
    assert res.config is not None and [v.name for v in res.config.vms] == ["vm1.example.com"]


def test_man_page_include_missing() -> None:
    assert errors('include "/etc/vm1.example.com.conf"\n') == [
        "vm.conf:1: failed to include file /etc/vm1.example.com.conf"]


def test_man_page_examples() -> None:
    cfg = ok(MAN_EXAMPLES).config
    assert cfg is not None
    vm2, vm3 = cfg.vms
    assert vm2.memory == 1 << 30
    assert [d.path for d in vm2.disks] == ["/home/joe/vm2-disk.img"]
    assert vm2.interfaces[0].switch == "uplink"
    assert vm2.owner.uid == 1000 and vm2.owner.user == "joe" and vm2.owner.gid is None
    assert vm3.instance_of == "vm2.example.com"
    assert [d.path for d in vm3.disks] == ["/home/joe/vm3-disk.img"]
    assert vm3.memory == 1 << 30 and vm3.owner.uid == 1000
    assert vm3.interfaces[0].switch == "uplink"
    (sw,) = cfg.switches
    assert sw.name == "uplink" and sw.interface == "bridge0" and sw.up and sw.enabled


def test_every_other_statement() -> None:
    res = ok(OTHER_STATEMENTS)
    cfg = res.config
    assert cfg is not None
    g = cfg.globals
    assert g.local_prefix == ipaddress.IPv4Network("10.0.0.0/16")
    assert g.local_inet6 and g.local_prefix6 == ipaddress.IPv6Network("fd12:3456:789a::/64")
    assert g.socket_owner is not None and g.socket_owner.gid == 30 and g.socket_owner.uid is None
    assert (g.staggered_start, g.parallel, g.delay) == (True, 2, 10)
    assert g.agentx.enabled and g.agentx.context == "vm"
    assert any("agentx is not supported" in w for w in res.warnings)
    (vm,) = cfg.vms
    assert not vm.enabled
    assert vm.disks[0].format == "qcow2" and vm.cdrom == "/var/iso/install77.iso"
    assert vm.boot_device == "cdrom"
    local, tap3, locked = vm.interfaces
    assert local.local and local.name is None
    assert tap3.name == "tap3" and tap3.switch == "uplink" and tap3.group == "vmnet"
    assert locked.locked and locked.lladdr == "fe:e1:ba:d0:00:01" and locked.rdomain == 2 and locked.up
    assert vm.nic_count == 3 and vm.nnics == 3
    assert (vm.owner.uid, vm.owner.gid) == (1000, 20)
    a = vm.allow_instance
    assert a.memory and a.disk and a.interface and not a.boot and not a.cdrom and a.owner.gid == 20


def test_defaults() -> None:
    cfg = ok('vm "a" {\n boot "/k"\n}\n').config
    assert cfg is not None
    assert cfg.globals.local_prefix == DEFAULT_LOCAL_PREFIX
    assert not cfg.globals.local_inet6 and cfg.globals.local_prefix6 is None
    assert cfg.globals.delay == 30 and cfg.globals.parallel >= 1 and not cfg.globals.staggered_start
    vm = cfg.vms[0]
    assert vm.enabled and vm.memory is None and vm.memory_bytes == 512 << 20
    assert vm.nnics == 0 and vm.owner.uid is None


# -- lexical rules -------------------------------------------------------------------------------------------

def test_comments_continuation_and_concatenation() -> None:
    text = ('# comment\nvm "a" "b" { # trailing\n  memory \\\n 64M\n  boot "/x" \'/y\'\n}\n')
    vm = ok(text).config.vms[0]  # type: ignore[union-attr]
    assert vm.name == "ab" and vm.memory == 64 << 20 and vm.kernel == "/x/y"


def test_quote_escapes_and_newlines() -> None:
    vm = ok('vm "a" {\n boot "/a\\ b\\"c\\d"\n}\n').config.vms[0]  # type: ignore[union-attr]
    assert vm.kernel == '/a b"c\\d'


def test_single_line_block_and_crlf() -> None:
    ok('vm "a" { boot "/k" }\r\n')


def test_number_then_word() -> None:
    vm = ok('vm "a" {\n memory 1073741824\n boot /k\n}\n').config.vms[0]  # type: ignore[union-attr]
    assert vm.memory == 1 << 30


def test_macro_rules() -> None:
    res = ok('m = "64M"\nunused = x\nvm "a" {\n memory $m\n boot "/k"\n}\n')
    assert res.warnings == ["warning: macro 'unused' not used"]  # no location, as parse_config prints it
    assert errors('vm "a" {\n memory $nope\n boot "/k"\n}\n') == ["vm.conf:2: macro 'nope' not defined"]
    assert errors('"a b" = c\n') == ["vm.conf:1: macro name cannot contain whitespace"]
    # not expanded inside quotes
    assert ok('k = "/k"\nvm "a" { boot "$k" }\n', check_paths=False).config.vms[0].kernel.endswith("$k")  # type: ignore[union-attr]


def test_macro_expands_to_several_tokens() -> None:
    vm = ok('o = "switch uplink group g"\nvm "a" {\n boot /k\n interface $o\n}\n').config.vms[0]  # type: ignore[union-attr]
    assert vm.interfaces[0].switch == "uplink" and vm.interfaces[0].group == "g"


def test_command_line_macros_override() -> None:
    res = ok('m = "64M"\nvm "a" {\n memory $m\n boot /k\n}\n', macros={"m": "128M"})
    assert res.config is not None and res.config.vms[0].memory == 128 << 20
    assert res.config.macros["m"] == "128M"


def test_unterminated_quote() -> None:
    errs = errors('vm "a {\n')
    assert errs[0] == "vm.conf:1: reached end of file while parsing quoted string"


def test_number_out_of_range() -> None:
    assert 'vm.conf:2: "99999999999999999999" invalid number: too large' in errors(
        'vm "a" {\n interfaces 99999999999999999999\n}\n')


# -- includes ------------------------------------------------------------------------------------------------

def test_include_relative_to_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.conf").write_text('vm "b" {\n boot /k\n}\n')
    (tmp_path / "a.conf").write_text('include "sub/b.conf"\nvm "a" {\n boot /k\n}\n')
    res = parse_config(str(tmp_path / "a.conf"), check_paths=False, resolver=RESOLVER)
    assert res.errors == [] and [v.name for v in res.config.vms] == ["b", "a"]  # type: ignore[union-attr]


def test_include_error_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "b.conf").write_text("\n\nbogus\n")
    (tmp_path / "a.conf").write_text('include "b.conf"\nalso bad\n')
    res = parse_config(str(tmp_path / "a.conf"), check_paths=False, resolver=RESOLVER)
    assert res.errors == [f"{tmp_path}/b.conf:3: syntax error", f"{tmp_path / 'a.conf'}:2: syntax error"]


def test_include_loop(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text('include "b.conf"\n')
    (tmp_path / "b.conf").write_text('include "a.conf"\n')
    res = parse_config(str(tmp_path / "a.conf"), check_paths=False, resolver=RESOLVER)
    assert res.config is None and len(res.errors) == 1 and "include loop" in res.errors[0]


def test_include_same_file_twice_is_fine(tmp_path: Path) -> None:
    (tmp_path / "m.conf").write_text('x = "1"\n')
    (tmp_path / "a.conf").write_text('include "m.conf"\ninclude "m.conf"\nvm "a" {\n boot /k$x\n}\n')
    res = parse_config(str(tmp_path / "a.conf"), check_paths=False, resolver=RESOLVER)
    assert res.errors == []


def test_missing_top_file(tmp_path: Path) -> None:
    res = parse_config(str(tmp_path / "nope.conf"))
    assert res.config is None and res.errors[0].startswith(f"failed to open {tmp_path}/nope.conf")


# -- vm options and their errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ("memory 1G\n memory 2G", "memory specified more than once"),
    ("memory 1G\n memory 2097152", "memory specified more than once"),
    ("memory 512K", "failed to parse size: 512K: memory size must be at least 1MB"),
    ("memory 129G", "failed to parse size: 129G: memory size too large (limit is 128G)"),
    ("memory 12Q", "failed to parse size: 12Q: invalid memory size"),
    ("boot /a\n boot /b", "kernel specified more than once"),
    ('cdrom "/a"\n cdrom "/b"', "cdrom specified more than once"),
    ("interfaces 2\n interfaces 3", "interfaces specified more than once"),
    ("interfaces 5", "too many interfaces: 5"),
    ("interfaces -1", "too many interfaces: -1"),
    ("interface\n interface\n interface\n interface\n interface", "too many interfaces: 5"),
    ("interface foo/bar", "invalid interface: foo/bar"),
    ("interface tap0123456789abcdef", "interface name too long: tap0123456789abcdef"),
    ("interface group vm0", "invalid group name: vm0"),
    ("interface rdomain 256", "invalid rdomain: 256"),
    ("interface lladdr zz:00:00:00:00:00", "invalid address: zz:00:00:00:00:00"),
    ('disk "/a" format vmdk', "unrecognized disk format vmdk"),
    ('disk /a\n disk /b\n disk /c\n disk /d\n disk /e', "failed to parse disks: /e: too many disks"),
    ("owner nobody-here", "failed to get user: nobody-here"),
    ("owner joe:nogroup", "failed to get group: nogroup"),
    ("sev", "sev is not supported on Linux KVM"),
    ("seves", "seves is not supported on Linux KVM"),
    ("vcpus 0", "invalid number of vcpus: 0 (1 to 64)"),
    ("cpu fancy", "cpu fancy: unknown CPU template fancy (choose host or baseline)"),
    ('cpu "host,+frob"', "cpu host,+frob: unknown CPU feature frob"),
    ('cpu host\n cpu baseline', "cpu specified more than once"),
    ("append a\n append b", "append specified more than once"),
    ("memory 1G memory 2G", "syntax error"),
    ("frobnicate", "syntax error"),
])
def test_vm_errors(body: str, message: str) -> None:
    errs = errors(f'vm "a" {{\n boot "/k0"\n {body}\n}}\n')
    assert errs and errs[0].endswith(": " + message), errs


def test_errors_carry_file_and_line() -> None:
    errs = errors('\n\nvm "a" {\n boot /k\n memory 1G\n memory 2G\n}\n', filename="/etc/vm.conf")
    assert errs == ["/etc/vm.conf:6: memory specified more than once"]


def test_errors_are_collected() -> None:
    errs = errors('vm "a" {\n memory 1K\n boot /k\n}\nvm "b" {\n interfaces 9\n boot /k\n}\nbad line\n')
    assert [e.split(": ", 1)[1] for e in errs] == [
        "failed to parse size: 1K: memory size must be at least 1MB",
        "too many interfaces: 9",
        "syntax error",
    ]
    assert [e.split(":")[1] for e in errs] == ["2", "6", "9"]


def test_recovery_inside_block_continues() -> None:
    errs = errors('vm "a" {\n boot /k\n bogus thing\n memory 1G\n memory 1G\n}\nvm "b" {\n boot /k\n}\n')
    assert errs == ["vm.conf:3: syntax error", "vm.conf:5: memory specified more than once"]


def test_recovery_skips_bad_block_header() -> None:
    errs = errors('vm "a" instance {\n memory 1G\n boot /k\n}\nvm "b" {\n memory 1K\n boot /k\n}\n')
    assert errs == ["vm.conf:1: syntax error",
                    "vm.conf:6: failed to parse size: 1K: memory size must be at least 1MB"]


def test_memory_rounding_and_numbers() -> None:
    res = ok('vm "a" {\n boot /k\n memory 1.5G\n}\nvm "b" {\n boot /k\n memory 1048577\n}\n')
    a, b = res.config.vms  # type: ignore[union-attr]
    assert a.memory == 1536 << 20 and b.memory == 1 << 20
    assert res.warnings == ["vm.conf:7: warning: memory size rounded to 1.0M"]  # fmt_scaled: 1.0M below 100M


def test_memory_is_read_as_vmctl_reads_it() -> None:
    """vm.conf and vmctl share parse_size and scan_scaled: a unit may be followed by punctuation, an empty
    size is 0 (too small), and fmt_scaled writes one decimal below 100 of a unit."""
    res = ok('vm "a" {\n boot /k\n memory "4G!"\n}\nvm "b" {\n boot /k\n memory 16445440\n}\n')
    a, b = res.config.vms  # type: ignore[union-attr]
    assert a.memory == 4 << 30 and b.memory == 15 << 20
    assert res.warnings == ["vm.conf:7: warning: memory size rounded to 15.0M"]
    assert errors('vm "a" {\n boot /k\n memory ""\n}\n') == [
        "vm.conf:3: failed to parse size: : memory size must be at least 1MB"]


def test_interfaces_minimum() -> None:
    vm = ok('vm "a" {\n boot /k\n interface { switch x }\n interfaces 3\n}\n').config.vms[0]  # type: ignore[union-attr]
    assert vm.nnics == 3 and len(vm.all_interfaces()) == 3 and vm.all_interfaces()[0].switch == "x"


def test_interface_forms() -> None:
    text = ('vm "a" {\n boot /k\n interface tap { switch "s"\n  locked lladdr\n  down\n }\n'
            ' local interface tap7 group grp, rdomain 5, lladdr 0:1:2:3:4:5\n interface {\n }\n}\n')
    i1, i2, i3 = ok(text).config.vms[0].interfaces  # type: ignore[union-attr]
    assert i1.name == "tap" and i1.locked and i1.lladdr is None and not i1.up and i1.switch == "s"
    assert i2.local and i2.name == "tap7" and i2.group == "grp" and i2.rdomain == 5
    assert i2.lladdr == "00:01:02:03:04:05" and not i2.locked
    assert i3 == type(i3)()


def test_boot_device_values() -> None:
    for dev in ("cdrom", "disk", "net"):
        assert ok(f'vm "a" {{\n boot /k\n boot device {dev}\n}}\n').config.vms[0].boot_device == dev  # type: ignore[union-attr]
    assert errors('vm "a" {\n boot /k\n boot device floppy\n}\n') == ["vm.conf:3: syntax error"]


def test_owner_forms() -> None:
    def owner(arg: str) -> tuple[int | None, int | None]:
        o = ok(f'vm "a" {{\n boot /k\n owner {arg}\n}}\n').config.vms[0].owner  # type: ignore[union-attr]
        return o.uid, o.gid
    assert owner("1000") == (1000, None)
    assert owner("joe") == (1000, None)
    assert owner("joe:staff") == (1000, 20)
    assert owner(":staff") == (None, 20)


def test_owner_system_resolver() -> None:
    res = parse_string('vm "a" {\n boot /k\n owner root:root\n}\n', check_paths=False)
    assert res.errors == [] and res.config.vms[0].owner.uid == 0  # type: ignore[union-attr]


def test_allow_instance_forms() -> None:
    text = ('vm "a" {\n boot /k\n allow instance boot\n allow instance {\n  cdrom\n  instance, vcpus\n'
            '  owner joe\n }\n}\n')
    a = ok(text).config.vms[0].allow_instance  # type: ignore[union-attr]
    assert a.boot and a.cdrom and a.instance and a.vcpus and a.owner.uid == 1000 and not a.memory


def test_extensions() -> None:
    text = 'vm "a" {\n boot /k\n vcpus 4\n cpu host\n initrd /i\n append "console=ttyS0 quiet"\n}\n'
    vm = ok(text).config.vms[0]  # type: ignore[union-attr]
    assert (vm.vcpus, vm.cpu, vm.initrd, vm.append) == (4, "host", "/i", "console=ttyS0 quiet")
    # still usable as macro names
    ok('cpu = "2"\nvm "a" {\n boot /k\n vcpus $cpu\n}\n')


def test_vm_names() -> None:
    ok('vm "a.b-c_d9" {\n boot /k\n}\nvm "9lives" {\n boot /k\n}\n')
    assert errors('vm "-x" {\n boot /k\n}\n') == ['vm.conf:1: vm "-x" failed: invalid VM name']
    assert errors('vm "a b" {\n boot /k\n}\n') == ['vm.conf:1: vm "a b" failed: invalid VM name']
    ok(f'vm "{"a" * 63}" {{\n boot /k\n}}\n')
    assert errors(f'vm "{"a" * 64}" {{\n boot /k\n}}\n') == ["vm.conf:1: vm name too long"]
    long_parent = f'vm "{"p" * 64}" instance "x" {{\n boot /k\n}}\n'
    assert errors(long_parent) == [f"vm.conf:1: vm {'p' * 64} name too long"]


def test_duplicate_vm_is_skipped() -> None:
    res = ok('vm "a" {\n boot /k\n}\nvm "a" {\n boot /j\n}\n')
    assert [v.kernel for v in res.config.vms] == ["/k"]  # type: ignore[union-attr]
    assert res.warnings == ['vm.conf:4: warning: vm "a" skipped (already exists)']


def test_vm_without_boot_source() -> None:
    assert errors('vm "a" {\n memory 1G\n}\n') == [
        'vm.conf:1: vm "a" failed: no kernel or disk/cdrom specified']


def test_instance_needs_parent_first() -> None:
    assert errors('vm "p" instance "c" {\n}\n') == ['vm.conf:1: vm "c" failed: parent vm "p" not found']


def test_instance_in_config_rules() -> None:
    base = 'vm "p" {\n disk /p.img\n interface lladdr 00:00:00:00:00:01\n}\n'
    assert errors(base + 'vm "p" instance "c" {\n disk /p.img\n}\n') == [
        'vm.conf:5: vm "c" disk /p.img cannot be reused']
    assert errors(base + 'vm "p" instance "c" {\n disk /c.img\n allow instance memory\n}\n') == [
        'vm.conf:5: vm "c" cannot change instance permissions']
    assert errors(base + 'vm "p" instance "c" {\n disk /c.img\n interface lladdr 0:0:0:0:0:1\n}\n') == [
        'vm.conf:5: vm "c" lladdr cannot be reused']
    vm = ok(base + 'vm "p" instance "c" {\n disk /c.img\n memory 1G\n}\n').config.vms[1]  # type: ignore[union-attr]
    assert vm.memory == 1 << 30 and vm.interfaces[0].lladdr is None


# -- switches ------------------------------------------------------------------------------------------------

def test_switch_options() -> None:
    text = 'switch "s" {\n interface br-lan\n group sw\n locked lladdr\n rdomain 3\n down\n disable\n}\n'
    sw = ok(text).config.switches[0]  # type: ignore[union-attr]
    assert (sw.interface, sw.group, sw.locked_lladdr, sw.rdomain, sw.up, sw.enabled) == (
        "br-lan", "sw", True, 3, False, False)


@pytest.mark.parametrize("body, message", [
    ("group x", 'switch "s" is missing interface name'),
    ("interface a/b", "invalid switch interface: a/b"),
    ("interface bridge0123456789ab", "switch interface too long: bridge0123456789ab"),
    ("interface br0\n group g1", "invalid group name: g1"),
    ("interface br0\n rdomain -1", "invalid rdomain: -1"),
])
def test_switch_errors(body: str, message: str) -> None:
    errs = errors(f'switch "s" {{\n {body}\n}}\n')
    assert errs and errs[0].endswith(": " + message), errs


def test_switch_inheritance_helper() -> None:
    cfg = ok('switch "s" {\n interface br0\n locked lladdr\n rdomain 4\n}\n'
             'vm "a" {\n boot /k\n interface { switch s }\n interface { switch s\n rdomain 9 }\n}\n').config
    assert cfg is not None
    sw = cfg.switch("s")
    a, b = (i.effective(sw) for i in cfg.vms[0].interfaces)
    assert a.locked and a.rdomain == 4 and b.rdomain == 9


# -- global settings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("local prefix 10.0.0.0/24", "invalid local prefix: too large"),
    ("local prefix 10.0.0.1/16", "invalid local prefix: bad mask"),
    ("local prefix foo", "invalid local prefix: invalid format"),
    ("local inet6 prefix fd00::/96", "invalid local inet6 prefix: too large"),
    ("local inet6 prefix fd00::1/64", "invalid local inet6 prefix: bad mask"),
    ("agentx path relative", "agentx path is not absolute"),
    ("staggered start parallel 0 delay 1", "invalid staggered start parallelism: 0"),
    ("socket owner nobody-here", "failed to get user: nobody-here"),
    ("local", "syntax error"),
])
def test_global_errors(line: str, message: str) -> None:
    errs = errors(line + "\n")
    assert errs == [f"vm.conf:1: {message}"]


def test_local_prefix_default_length() -> None:
    cfg = ok("local prefix 10.1.0.0\nlocal inet6\n").config
    assert cfg is not None
    assert cfg.globals.local_prefix == ipaddress.IPv4Network("10.1.0.0/16")
    assert cfg.globals.local_inet6 and cfg.globals.local_prefix6 is None


# -- paths ---------------------------------------------------------------------------------------------------

def test_check_paths(tmp_path: Path) -> None:
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 512)
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(VM_MAGIC_QCOW + b"\0\0\0\3")
    conf = tmp_path / "vm.conf"
    conf.write_text('vm "a" {\n disk raw.img\n disk "disk.qcow2"\n disk raw.img format qcow2\n}\n')
    res = parse_config(str(conf), resolver=RESOLVER)
    assert res.errors == []
    disks = res.config.vms[0].disks  # type: ignore[union-attr]
    assert [(d.path, d.format) for d in disks] == [
        (str(raw), "raw"), (str(qcow), "qcow2"), (str(raw), "qcow2")]


def test_missing_paths(tmp_path: Path) -> None:
    conf = tmp_path / "vm.conf"
    conf.write_text('vm "a" {\n boot /nonexistent/bsd\n disk /nonexistent/d.img\n initrd /nonexistent/i\n}\n')
    res = parse_config(str(conf), resolver=RESOLVER)
    assert res.errors == [
        f"{conf}:2: kernel path not found: /nonexistent/bsd: No such file or directory",
        f"{conf}:3: failed to parse disks: /nonexistent/d.img: No such file or directory",
        f"{conf}:4: initrd path not found: /nonexistent/i: No such file or directory",
    ]


@pytest.mark.parametrize("bad", ["boot device", "owner", "allow instance", "interfaces", "memory", "disk"])
def test_missing_argument_does_not_eat_the_next_line(bad: str) -> None:
    errs = errors(f'vm "a" {{\n boot /k\n {bad}\n memory 1K\n}}\nlocal\n')
    assert errs == ["vm.conf:3: syntax error",
                    "vm.conf:4: failed to parse size: 1K: memory size must be at least 1MB",
                    "vm.conf:6: syntax error"]


def test_unterminated_block() -> None:
    assert errors('vm "a" {\n boot /k\n') == ["vm.conf:3: syntax error"]


def test_block_must_end_its_line() -> None:
    assert errors('vm "a" { boot /k } vm "b" { boot /k }\n') == ["vm.conf:1: syntax error"]


def test_include_of_a_non_regular_file() -> None:
    assert errors('include "/dev/zero"\n') == ["vm.conf:1: failed to include file /dev/zero"]
    assert errors('include "/"\n') == ["vm.conf:1: failed to include file /"]


# -- option lists as parse.y reads them: `opts_l: opts_l opts nl | opts optnl` (vm_opts_l, switch_opts_l) -------

def test_the_first_option_may_share_its_line_with_the_second() -> None:
    res = ok('vm "a" { disk "/x" memory 1G\n}\nswitch "s" { interface bridge0 down\n}\n')
    vm, = res.config.vms  # type: ignore[union-attr]
    switch, = res.config.switches  # type: ignore[union-attr]
    assert (vm.disks[0].path, vm.memory) == ("/x", 1 << 30)
    assert (switch.interface, switch.up) == ("bridge0", False)


def test_a_single_option_may_share_the_line_of_both_braces() -> None:
    res = ok('vm "a" { boot "/k" }\nswitch "s" { interface bridge0 }\n')
    assert res.config.vms[0].kernel == "/k"  # type: ignore[union-attr]


@pytest.mark.parametrize("text, line", [
    ('vm "a" { boot "/k" memory 1G owner joe\n}\n', 1),  # the second option ends its line
    ('vm "a" {\n boot "/k"\n memory 1G }\n', 3),  # so does the last one, before the brace
    ('switch "s" {\n interface bridge0\n down }\n', 3),
])
def test_later_options_end_their_line(text: str, line: int) -> None:
    assert errors(text) == [f"vm.conf:{line}: syntax error"]
