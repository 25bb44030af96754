"""x86 register files for the GDB stub: gdb's amd64 and i386 layouts, their target description, KVM's state.

gdb numbers a remote target's registers in the order of its target description (GDB manual, "Target
Description Format"); the 'g' packet carries the ones marked in_g, in that order, each little-endian. The
names in the org.gnu.gdb.i386.core/sse/segments features are the ones gdb's i386 and amd64 architectures
look for; org.vmd.x86.system adds the control registers, fetched one by one with 'p'.

The values come from KVM_GET_REGS, KVM_GET_SREGS and KVM_GET_FPU (api.rst 4.11, 4.13, 4.22); the FPU part
of kvm_fpu is the FXSAVE image (SDM vol. 1, 10.5.1), whose abridged tag byte is turned into the x87 tag word
gdb shows (SDM vol. 1, 8.1.7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmd.kvm import structs as k

CR0_PE = 1 << 0
FEATURE_CORE = "org.gnu.gdb.i386.core"
FEATURE_SSE = "org.gnu.gdb.i386.sse"
FEATURE_SEGMENTS = "org.gnu.gdb.i386.segments"
FEATURE_SYSTEM = "org.vmd.x86.system"


def quoteattr(text: str) -> str:
    """An XML attribute value in double quotes (our names and types have no quotes or ampersands; escaped
    anyway). Not xml.sax.saxutils: it imports urllib and with it 10 MiB of modules into every VM process."""
    return '"' + text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;") + '"'


class RegisterError(Exception):
    """A register value the stub cannot set; str() says why."""


@dataclass(frozen=True)
class Register:
    name: str
    size: int  # bytes
    kind: str  # where it lives: gpr, seg, st, fpu, xmm, mxcsr, base, sys
    source: str | int  # the kvm_regs/kvm_sregs/kvm_fpu field, or the st/xmm index
    xml_type: str
    feature: str
    group: str | None = None
    in_g: bool = True


@dataclass
class CpuState:
    """One vCPU's registers as KVM gives them; the parts changed are written back (dirty)."""

    regs: k.kvm_regs
    sregs: k.kvm_sregs
    fpu: k.kvm_fpu
    dirty: set[str] = field(default_factory=set)


# -- the x87 tag word (SDM vol. 1, 8.1.7 and 10.5.1.1) --------------------------------------------------------


def full_tag_word(abridged: int, status: int, fpr: bytes) -> int:
    """The 16-bit tag word from FXSAVE's abridged tag byte (1 bit per physical register) and ST(0..7)."""
    top = (status >> 11) & 7
    word = 0
    for physical in range(8):
        if not abridged & (1 << physical):
            tag = 3  # empty
        else:
            st = (physical - top) & 7
            value = fpr[st * 16 : st * 16 + 10]
            mantissa = int.from_bytes(value[:8], "little")
            exponent = int.from_bytes(value[8:10], "little") & 0x7FFF
            if exponent == 0x7FFF:
                tag = 2  # special: infinity or NaN
            elif exponent == 0:
                tag = 1 if mantissa == 0 else 2  # zero, or denormal
            elif not mantissa >> 63:
                tag = 2  # unnormal
            else:
                tag = 0  # valid
        word |= tag << (2 * physical)
    return word


def abridged_tag(word: int) -> int:
    return sum(1 << physical for physical in range(8) if (word >> (2 * physical)) & 3 != 3)


# -- layouts --------------------------------------------------------------------------------------------------


def _core(gprs: list[tuple[str, str]], size: int, pc: str) -> list[Register]:
    width = size * 8
    out = [Register(name, size, "gpr", source, "data_ptr" if name[1:] in ("sp", "bp") else f"int{width}",
                    FEATURE_CORE) for name, source in gprs]
    out.append(Register(pc, size, "gpr", "rip", "code_ptr", FEATURE_CORE))
    out.append(Register("eflags", 4, "gpr", "rflags", "i386_eflags", FEATURE_CORE))
    out += [Register(name, 4, "seg", name, "int32", FEATURE_CORE) for name in ("cs", "ss", "ds", "es", "fs", "gs")]
    out += [Register(f"st{i}", 10, "st", i, "i387_ext", FEATURE_CORE) for i in range(8)]
    out += [Register(name, 4, "fpu", name, "int", FEATURE_CORE, "float")
            for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    return out


def _sse(count: int) -> list[Register]:
    out = [Register(f"xmm{i}", 16, "xmm", i, "vec128", FEATURE_SSE) for i in range(count)]
    out.append(Register("mxcsr", 4, "mxcsr", "mxcsr", "i386_mxcsr", FEATURE_SSE, "vector"))
    return out


def _extra(size: int) -> list[Register]:
    # i386: no org.gnu.gdb.i386.segments (gdb 13 fails an internal assertion on an i386 description with it)
    out = [] if size == 4 else [Register(f"{seg}_base", size, "base", seg, "int", FEATURE_SEGMENTS, in_g=False)
                                for seg in ("fs", "gs")]
    crs = ("cr0", "cr2", "cr3", "cr4", "cr8") if size == 8 else ("cr0", "cr2", "cr3", "cr4")
    out += [Register(cr, size, "sys", cr, "int", FEATURE_SYSTEM, "system", in_g=False) for cr in crs]
    out.append(Register("efer", 8, "sys", "efer", "int", FEATURE_SYSTEM, "system", in_g=False))
    return out


AMD64_GPRS = [(name, name) for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")]
AMD64_GPRS += [(f"r{i}", f"r{i}") for i in range(8, 16)]
I386_GPRS = [("eax", "rax"), ("ecx", "rcx"), ("edx", "rdx"), ("ebx", "rbx"), ("esp", "rsp"), ("ebp", "rbp"),
             ("esi", "rsi"), ("edi", "rdi")]

_XML_CORE_TYPES = """\
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="PF" start="2" end="2"/>
    <field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
    <field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/>
    <field name="RF" start="16" end="16"/><field name="VM" start="17" end="17"/>
    <field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
    <field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
  </flags>
"""
_XML_SSE_TYPES = """\
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/>
    <field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/>
    <field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>
"""


class Layout:
    """One architecture's register file: numbering, the 'g' packet, and the target description."""

    def __init__(self, arch: str, registers: list[Register]) -> None:
        self.arch = arch
        self.registers = registers
        self.g_registers = [r for r in registers if r.in_g]
        self.g_size = sum(r.size for r in self.g_registers)
        self.pc = next(i for i, r in enumerate(registers) if r.xml_type == "code_ptr")

    def target_xml(self) -> bytes:
        lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">',
                 f"  <architecture>{self.arch}</architecture>"]
        feature = None
        for number, reg in enumerate(self.registers):
            if reg.feature != feature:
                if feature is not None:
                    lines.append("</feature>")
                feature = reg.feature
                lines.append(f"<feature name={quoteattr(feature)}>")
                types = {FEATURE_CORE: _XML_CORE_TYPES, FEATURE_SSE: _XML_SSE_TYPES}.get(feature)
                if types:  # a type is known only inside the feature that defines it
                    lines.append(types.rstrip("\n"))
            group = f" group={quoteattr(reg.group)}" if reg.group else ""
            lines.append(f"  <reg name={quoteattr(reg.name)} bitsize=\"{reg.size * 8}\""
                         f" type={quoteattr(reg.xml_type)} regnum=\"{number}\"{group}/>")
        lines += ["</feature>", "</target>", ""]
        return "\n".join(lines).encode()

    # -- values ----------------------------------------------------------------------------------------------
    def get(self, state: CpuState, number: int) -> bytes:
        reg = self.registers[number]
        regs, sregs, fpu = state.regs, state.sregs, state.fpu
        if reg.kind == "st":
            start = int(reg.source) * 16
            return bytes(fpu.fpr[start : start + 10])
        if reg.kind == "xmm":
            start = int(reg.source) * 16
            return bytes(fpu.xmm[start : start + 16])
        if reg.kind == "gpr":
            value = int(getattr(regs, str(reg.source)))
        elif reg.kind == "seg":
            value = int(getattr(sregs, str(reg.source)).selector)
        elif reg.kind == "base":
            value = int(getattr(sregs, str(reg.source)).base)
        elif reg.kind == "sys":
            value = int(getattr(sregs, str(reg.source)))
        elif reg.kind == "mxcsr":
            value = int(fpu.mxcsr)
        else:
            value = self._fpu_word(fpu, str(reg.source))
        return (value & ((1 << (8 * reg.size)) - 1)).to_bytes(reg.size, "little")

    @staticmethod
    def _fpu_word(fpu: k.kvm_fpu, name: str) -> int:
        if name == "fctrl":
            return int(fpu.fcw)
        if name == "fstat":
            return int(fpu.fsw)
        if name == "ftag":
            return full_tag_word(int(fpu.ftwx), int(fpu.fsw), bytes(fpu.fpr))
        if name == "fiseg":
            return int(fpu.last_ip) >> 32
        if name == "fioff":
            return int(fpu.last_ip) & 0xFFFF_FFFF
        if name == "foseg":
            return int(fpu.last_dp) >> 32
        if name == "fooff":
            return int(fpu.last_dp) & 0xFFFF_FFFF
        return int(fpu.last_opcode) & 0x7FF  # fop

    def set(self, state: CpuState, number: int, data: bytes) -> None:
        """Set register number from its little-endian bytes; raises RegisterError when it cannot be set."""
        reg = self.registers[number]
        if len(data) != reg.size:
            raise RegisterError(f"{reg.name} is {reg.size} bytes, not {len(data)}")
        if bytes(data) == self.get(state, number):
            return  # unchanged: nothing to write back (G writes every register)
        regs, sregs, fpu = state.regs, state.sregs, state.fpu
        value = int.from_bytes(data, "little")
        if reg.kind == "st":
            start = int(reg.source) * 16
            fpu.fpr[start : start + 10] = list(data)
            state.dirty.add("fpu")
        elif reg.kind == "xmm":
            start = int(reg.source) * 16
            fpu.xmm[start : start + 16] = list(data)
            state.dirty.add("fpu")
        elif reg.kind == "gpr":
            mask = (1 << (8 * reg.size)) - 1
            old = int(getattr(regs, str(reg.source)))
            setattr(regs, str(reg.source), (old & ~mask) | value)
            state.dirty.add("regs")
        elif reg.kind == "seg":
            if sregs.cr0 & CR0_PE:
                raise RegisterError(f"{reg.name} can be changed only in real mode (its descriptor is not reloaded)")
            segment = getattr(sregs, str(reg.source))
            segment.selector = value & 0xFFFF
            segment.base = (value & 0xFFFF) << 4
            state.dirty.add("sregs")
        elif reg.kind == "base":
            getattr(sregs, str(reg.source)).base = value
            state.dirty.add("sregs")
        elif reg.kind == "sys":
            setattr(sregs, str(reg.source), value)
            state.dirty.add("sregs")
        elif reg.kind == "mxcsr":
            fpu.mxcsr = value
            state.dirty.add("fpu")
        else:
            self._set_fpu_word(fpu, str(reg.source), value)
            state.dirty.add("fpu")

    @staticmethod
    def _set_fpu_word(fpu: k.kvm_fpu, name: str, value: int) -> None:
        if name == "fctrl":
            fpu.fcw = value & 0xFFFF
        elif name == "fstat":
            fpu.fsw = value & 0xFFFF
        elif name == "ftag":
            fpu.ftwx = abridged_tag(value)
        elif name == "fiseg":
            fpu.last_ip = (int(fpu.last_ip) & 0xFFFF_FFFF) | (value << 32)
        elif name == "fioff":
            fpu.last_ip = (int(fpu.last_ip) & ~0xFFFF_FFFF) | value
        elif name == "foseg":
            fpu.last_dp = (int(fpu.last_dp) & 0xFFFF_FFFF) | (value << 32)
        elif name == "fooff":
            fpu.last_dp = (int(fpu.last_dp) & ~0xFFFF_FFFF) | value
        else:
            fpu.last_opcode = value & 0x7FF

    # -- packets ---------------------------------------------------------------------------------------------
    def encode_g(self, state: CpuState) -> bytes:
        return b"".join(self.get(state, i) for i, r in enumerate(self.registers) if r.in_g)

    def decode_g(self, state: CpuState, data: bytes) -> None:
        """Apply a 'G' packet: every register in it, or none (RegisterError) when one cannot be set."""
        if len(data) != self.g_size:
            raise RegisterError(f"a G packet has {self.g_size} bytes of registers here, not {len(data)}")
        trial = CpuState(k.kvm_regs.from_buffer_copy(state.regs), k.kvm_sregs.from_buffer_copy(state.sregs),
                         k.kvm_fpu.from_buffer_copy(state.fpu))
        offset = 0
        for number, reg in enumerate(self.registers):
            if reg.in_g:
                self.set(trial, number, data[offset : offset + reg.size])
                offset += reg.size
        state.regs, state.sregs, state.fpu = trial.regs, trial.sregs, trial.fpu
        state.dirty |= trial.dirty


AMD64 = Layout("i386:x86-64", _core(AMD64_GPRS, 8, "rip") + _sse(16) + _extra(8))
I386 = Layout("i386", _core(I386_GPRS, 4, "eip") + _sse(8) + _extra(4))


# -- which layout -------------------------------------------------------------------------------------------

EFER_LMA = 1 << 10
ELF_MAGIC = b"\x7fELF"
GZIP_MAGIC = b"\x1f\x8b"


def image_bits(path: str | None) -> int | None:
    """32 or 64 for an ELF file (gzip-compressed or not): its EI_CLASS (System V ABI, 4.1); None otherwise."""
    import zlib

    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if head.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 64)
        except zlib.error:
            return None
    if head.startswith(ELF_MAGIC) and len(head) > 4 and head[4] in (1, 2):
        return 32 if head[4] == 1 else 64
    return None


def layout_for(cr0: int, efer: int, bits: int | None) -> Layout:
    """i386 for a guest that starts in 32-bit protected mode with a kernel that is not a 64-bit ELF (an i386
    kernel: multiboot, OpenBSD/i386, 32-bit Linux); amd64 for everything else: long mode, 64-bit ELF kernels
    entered in 32-bit mode (PVH), and firmware (real mode), as QEMU's x86-64 stub does."""
    if cr0 & CR0_PE and not efer & EFER_LMA and bits != 64:
        return I386
    return AMD64
