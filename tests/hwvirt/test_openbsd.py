"""OpenBSD under vmd: the OpenBSD 5.1 i386 installer kernel (bsd.rd) from ../shared/guests, booted as OpenBSD's
vmd boots bsd.rd (loadfile_elf), reaches its installer's question on the console."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import SHARED_GUESTS, Vmd

pytestmark = pytest.mark.hwvirt

BSD_RD = SHARED_GUESTS / "openbsd51-i386-bsd.rd"


@pytest.fixture(scope="module")
def vmd() -> Iterator[Vmd]:
    if not BSD_RD.exists():
        pytest.skip(f"{BSD_RD} is not here: the OpenBSD test kernel comes with ../shared, not with this tree")
    daemon = Vmd(f"""
vm "openbsd" {{
    disable
    memory 256M
    boot "{BSD_RD}"
}}
""")
    yield daemon
    daemon.close()


def test_bsd_rd_reaches_the_installer_and_its_shell(vmd: Vmd) -> None:
    vmd.must("start", "openbsd")
    with vmd.console("openbsd") as console:
        console.expect(r"OpenBSD 5\.1 \(RAMDISK\)", timeout=240)
        dmesg = console.expect(r"\(I\)nstall, \(U\)pgrade or \(S\)hell\? ", timeout=240)
        assert dmesg
        text = console.tail(20000)
        assert "com0: console" in text, text  # the consdev boot argument took effect
        assert "real mem  = 26" in text, text  # BOOTARG_MEMMAP: 256 MiB, less what vmd keeps
        console.send("s\r")
        console.expect(r"# ", timeout=60)
        console.send("sysctl kern.osrelease\r")  # bsd.rd has no uname
        console.expect(r"kern\.osrelease=5\.1\r?\n", timeout=60)
    vmd.must("stop", "-f", "-w", "openbsd")
    assert vmd.status()["openbsd"]["state"] == "stopped"
