#!/usr/bin/env python3
"""Build the freestanding test guests in tests/guests/ with gcc, ld and objcopy.

Usage:  python3 tests/guests/build.py [outdir] [name ...]
Import: from build import build_all; paths = build_all(outdir)  # {name: path}

Each guest is rebuilt only when the hash of its inputs (sources, every header
and linker script in this directory, the compiler flags and this file) changed.
Also exports fnv1a32(), the initrd checksum the guests verify (initrd_sum=).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out"

CFLAGS = [
    "-ffreestanding", "-fno-pic", "-fno-pie", "-fno-stack-protector", "-nostdlib",
    "-mno-sse", "-mno-mmx", "-mno-80387", "-mno-red-zone", "-O2",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fcf-protection=none",
    "-fno-jump-tables", "-Wall", "-Wno-parentheses",
]
ARCH_FLAGS = {
    32: ["-m32", "-march=i686"],
    64: ["-m64", "-mcmodel=small", "-mgeneral-regs-only"],
    16: ["-m16", "-march=i386", "-Os"],
}
LD_EMUL = {32: "elf_i386", 64: "elf_x86_64", 16: "elf_i386"}
LDFLAGS = ["-nostdlib", "--build-id=none", "-z", "noexecstack", "-z", "max-page-size=4096",
           "--no-warn-rwx-segments"]

LIB_COMMON = ["serial.c", "printf.c", "string.c", "check.c", "idt.c", "isr.S", "pic.c",
              "apic.c", "pit.c", "rtc.c", "pci.c", "mptable.c", "platform.c", "memmap.c"]
LIB32 = ["lib/" + f for f in LIB_COMMON + ["div64.c", "start32.S"]]
LIB64 = ["lib/" + f for f in LIB_COMMON]

# name -> recipe. kind "elf": link with the ld script; "bin": objcopy -O binary of it.
GUESTS: dict[str, dict] = {
    "multiboot": dict(kind="elf", arch=32, ld="flat32.ld", out="multiboot.elf",
                      src=LIB32 + ["lib/mbstart.S", "src/multiboot.c"]),
    "multiboot-aout": dict(kind="bin", arch=32, ld="flat32-bin.ld", out="multiboot-aout.bin",
                           defs=["AOUT_KLUDGE"],
                           src=LIB32 + ["lib/mbstart.S", "src/multiboot.c"]),
    # the multiboot guest linked the way people link small kernels, by a plain `ld -Ttext=ADDRESS` without
    # a script: its first PT_LOAD holds only the ELF headers, a page below the text (-z separate-code)
    "multiboot-ld": dict(kind="elf", arch=32, ld=None, ldargs=["-Ttext=0x100000", "-e", "_start"],
                         out="multiboot-ld.elf", defs=["MB_HEADER_IN_TEXT"],
                         src=["lib/mbstart.S", *LIB32, "src/multiboot.c"]),
    # ... and linked low, over the pages where vmd puts its own boot structures for other kernels
    "multiboot-low": dict(kind="elf", arch=32, ld=None, ldargs=["-Ttext=0x8000", "-e", "_start"],
                          out="multiboot-low.elf", defs=["MB_HEADER_IN_TEXT"],
                          src=["lib/mbstart.S", *LIB32, "src/multiboot.c"]),
    "demo": dict(kind="elf", arch=32, ld="flat32.ld", out="demo.elf",
                 src=LIB32 + ["lib/mbstart.S", "src/demo.c"]),
    "bench": dict(kind="elf", arch=32, ld="flat32.ld", out="bench.elf",
                  src=LIB32 + ["lib/mbstart.S", "src/bench.c"]),
    "acpi": dict(kind="elf", arch=32, ld="flat32.ld", out="acpi.elf",
                 src=LIB32 + ["lib/mbstart.S", "src/acpi.c"]),
    # prints the CPUID vendor, x2apic and MCE bits and IA32_MCG_CAP (README: "cpuinfo")
    "cpuinfo": dict(kind="elf", arch=32, ld="flat32.ld", out="cpuinfo.elf",
                    src=LIB32 + ["lib/mbstart.S", "src/cpuinfo.c"]),
    "openbsd64": dict(kind="elf", arch=64, ld="elf64.ld", out="openbsd64.elf",
                      src=LIB64 + ["lib/start64.S", "src/openbsd64_start.S", "src/openbsd.c"]),
    "openbsd32": dict(kind="elf", arch=32, ld="flat32.ld", out="openbsd32.elf",
                      src=LIB32 + ["src/openbsd32_start.S", "src/openbsd.c"]),
    "pvh": dict(kind="elf", arch=32, ld="pvh.ld", out="pvh.elf",
                src=LIB32 + ["src/pvh_start.S", "src/pvh.c"]),
    "bzimage": dict(kind="custom", arch=64, ld="bzimage.ld", out="bzimage.bzImage",
                    src=LIB64 + ["lib/start64.S", "src/bzimage_start.S", "src/bzimage.c"],
                    setup_src="src/bzimage_setup.S", extra_inputs=["src/bzimage_setup.S"],
                    builder="_build_bzimage"),
    "biosboot": dict(kind="custom", arch=16, ld="rom16.ld", out="biosboot.rom",
                     src=["lib/printf.c", "lib/string.c", "lib/check.c", "lib/memmap.c", "lib/div64.c",
                          "src/biosboot_head.S", "src/biosboot.c"],
                     builder="_build_rom"),
    # test tool, not a guest: under QEMU -kernel, loads openbsd64/openbsd32 or the
    # bzImage (64-bit entry) the way vmd does, so those entry paths can be checked
    "vmdshim": dict(kind="elf", arch=32, ld="shim32.ld", out="vmdshim.elf",
                    src=LIB32 + ["lib/mbstart.S", "src/vmdshim_enter.S", "src/vmdshim.c"]),
    # an MBR boot sector for SeaBIOS to start from a virtio-blk disk (README: "bootsector")
    "bootsector": dict(kind="bin", arch=16, ld="bootsector.ld", out="bootsector.bin",
                       src=["src/bootsector.S"]),
    # virtio guests: drive virtio-pci devices through lib/virtio.c (README: "virtio guests")
    "virtio_blk": dict(kind="elf", arch=32, ld="flat32.ld", out="virtio_blk.elf",
                       src=LIB32 + ["lib/mbstart.S", "lib/virtio.c", "src/virtio_blk.c"]),
    "virtio_rng": dict(kind="elf", arch=32, ld="flat32.ld", out="virtio_rng.elf",
                       src=LIB32 + ["lib/mbstart.S", "lib/virtio.c", "src/virtio_rng.c"]),
    "virtio_scsi": dict(kind="elf", arch=32, ld="flat32.ld", out="virtio_scsi.elf",
                        src=LIB32 + ["lib/mbstart.S", "lib/virtio.c", "src/virtio_scsi.c"]),
    "virtio_net": dict(kind="elf", arch=32, ld="flat32.ld", out="virtio_net.elf",
                       src=LIB32 + ["lib/mbstart.S", "lib/virtio.c", "src/virtio_net.c"]),
}


def _build_bzimage(name: str, recipe: dict, objs: list[Path], objdir: Path, out: Path) -> None:
    """Real-mode setup (boot sector + 2 setup sectors, with the setup header)
    followed by the protected-mode part; syssize and init_size patched in."""
    pm_elf = objdir / "pm.elf"
    _link(recipe, objs, pm_elf)
    pm_bin = objdir / "pm.bin"
    _run(["objcopy", "-O", "binary", str(pm_elf), str(pm_bin)])
    setup_obj = objdir / "setup.o"
    _run(["gcc", "-m32", "-c", str(HERE / recipe["setup_src"]), "-o", str(setup_obj)])
    setup_elf = objdir / "setup.elf"
    _run(["ld", "-m", "elf_i386", *LDFLAGS, "-T", str(HERE / "ld" / "bzsetup.ld"),
          "-o", str(setup_elf), str(setup_obj)])
    setup_bin = objdir / "setup.bin"
    _run(["objcopy", "-O", "binary", "-j", ".text", str(setup_elf), str(setup_bin)])
    setup = bytearray(setup_bin.read_bytes())
    pm = pm_bin.read_bytes()
    if len(setup) != 512 * (1 + setup[0x1F1]) or setup[0x202:0x206] != b"HdrS":
        raise RuntimeError(f"bzimage setup is {len(setup)} bytes / bad header")
    # memory the protected-mode part needs, bss included: from the ELF's _end
    syms = subprocess.run(["nm", str(pm_elf)], stdout=subprocess.PIPE, text=True, check=True).stdout
    end = next(int(line.split()[0], 16) for line in syms.splitlines() if line.endswith(" _end"))
    struct.pack_into("<I", setup, 0x1F4, (len(pm) + 15) // 16)
    struct.pack_into("<I", setup, 0x260, (end - 0x100000 + 0xFFF) & ~0xFFF)
    out.write_bytes(bytes(setup) + pm)


def _build_rom(name: str, recipe: dict, objs: list[Path], objdir: Path, out: Path) -> None:
    """Option ROM: link, flatten, then fill the size byte, the PnP header
    checksum and the last byte so that all bytes sum to 0 (mod 256)."""
    elf = objdir / (name + ".elf")
    _link(recipe, objs, elf)
    raw = objdir / (name + ".raw")
    _run(["objcopy", "-O", "binary", "-j", ".text", "-j", ".rodata", "-j", ".data", str(elf), str(raw)])
    rom = bytearray(raw.read_bytes())
    rom += bytes(-(len(rom) + 1) % 512 + 1)     # room for the checksum byte, 512-byte multiple
    if len(rom) > 0x10000:
        raise RuntimeError("option ROM larger than 64 KiB")
    rom[2] = len(rom) // 512
    pnp = struct.unpack_from("<H", rom, 0x1A)[0]
    if rom[pnp:pnp + 4] != b"$PnP":
        raise RuntimeError("no $PnP header")
    rom[pnp + 9] = 0
    rom[pnp + 9] = -sum(rom[pnp:pnp + 16 * rom[pnp + 5]]) & 0xFF
    rom[-1] = 0
    rom[-1] = -sum(rom) & 0xFF
    out.write_bytes(bytes(rom))


def fnv1a32(data: bytes) -> int:
    """The checksum the guests compare with initrd_sum=<hex> (32-bit FNV-1a)."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError("command failed: " + " ".join(cmd) + "\n" + r.stdout)


def _inputs_digest(name: str, recipe: dict) -> str:
    h = hashlib.sha256()
    h.update(repr(sorted((k, repr(v)) for k, v in recipe.items())).encode())
    h.update(repr((CFLAGS, ARCH_FLAGS, LDFLAGS)).encode())
    files = set(recipe.get("src", [])) | set(recipe.get("extra_inputs", []))
    files |= {str(p.relative_to(HERE)) for p in (HERE / "lib").glob("*.h")}
    files |= {str(p.relative_to(HERE)) for p in (HERE / "ld").glob("*.ld")}
    files.add("build.py")
    for f in sorted(files):
        h.update(f.encode())
        h.update((HERE / f).read_bytes())
    return h.hexdigest()


def _compile(recipe: dict, objdir: Path) -> list[Path]:
    arch = recipe["arch"]
    objs = []
    defs = ["-D" + d for d in recipe.get("defs", [])]
    for src in recipe["src"]:
        sarch = 64 if src.endswith("@64") else arch
        src = src.removesuffix("@64")
        obj = objdir / (src.replace("/", "_") + ".o")
        cmd = ["gcc", *CFLAGS, *ARCH_FLAGS[sarch], *defs, "-I", str(HERE / "lib"),
               "-c", str(HERE / src), "-o", str(obj)]
        _run(cmd)
        objs.append(obj)
    return objs


def _link(recipe: dict, objs: list[Path], elf: Path) -> None:
    script = ["-T", str(HERE / "ld" / recipe["ld"])] if recipe["ld"] else recipe["ldargs"]
    _run(["ld", "-m", LD_EMUL[recipe["arch"]], *LDFLAGS, *script, "-o", str(elf), *map(str, objs)])


def _build_one(name: str, recipe: dict, outdir: Path) -> Path:
    objdir = outdir / "obj" / name
    objdir.mkdir(parents=True, exist_ok=True)
    out = outdir / recipe["out"]
    kind = recipe["kind"]
    objs = _compile(recipe, objdir)
    if kind == "elf":
        _link(recipe, objs, out)
    elif kind == "bin":
        elf = objdir / (name + ".elf")
        _link(recipe, objs, elf)
        _run(["objcopy", "-O", "binary", str(elf), str(out)])
    else:
        globals()[recipe["builder"]](name, recipe, objs, objdir, out)
    return out


def build_all(outdir: str | os.PathLike | None = None, names: list[str] | None = None) -> dict[str, Path]:
    """Build every guest (or just `names`) into outdir; return {name: output path}."""
    outdir = Path(outdir) if outdir else DEFAULT_OUT
    outdir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    todo: dict[str, tuple[dict, Path, str]] = {}
    for name, recipe in GUESTS.items():
        if names and name not in names:
            continue
        out = outdir / recipe["out"]
        stamp = outdir / "obj" / (name + ".stamp")
        digest = _inputs_digest(name, recipe)
        if not (out.exists() and stamp.exists() and stamp.read_text() == digest):
            todo[name] = (recipe, stamp, digest)
        paths[name] = out

    def one(name: str) -> None:
        recipe, stamp, digest = todo[name]
        _build_one(name, recipe, outdir)
        stamp.write_text(digest)

    if todo:
        # each guest has its own object directory, so they can build in parallel
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for f in [pool.submit(one, n) for n in todo]:
                f.result()
    return paths


def main(argv: list[str]) -> int:
    outdir = argv[1] if len(argv) > 1 else None
    names = argv[2:] or None
    for name, path in build_all(outdir, names).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
