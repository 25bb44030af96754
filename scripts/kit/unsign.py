"""Remove the appended signatures of kernel modules, leaving each module's ELF image as Debian built it.

Debian signs its modules (CONFIG_MODULE_SIG, not enforced: CONFIG_MODULE_SIG_FORCE is off), and the kernel checks
the RSA signature over the whole file on every insmod. Under QEMU TCG that check was a third of the guest kit's
boot (measured with -icount: 13.8 -> 8.9 guest seconds to the ready line). An unsigned module loads the same; the
kernel notes it once ("module verification failed ... tainting kernel", taint flag E).

The trailer (scripts/sign-file.c, include/linux/module_signature.h): the PKCS#7 signature, a 12-byte
struct module_signature whose last field is the signature's length (big-endian u32), and the magic string.

Usage: unsign.py MODULE...
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

MAGIC = b"~Module signature appended~\n"
SIGNATURE_INFO = 12  # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len


def unsigned(data: bytes) -> bytes:
    """The module without its signature; data itself when it carries none."""
    if not data.endswith(MAGIC):
        return data
    info_end = len(data) - len(MAGIC)
    sig_len, = struct.unpack_from(">I", data, info_end - 4)
    start = info_end - SIGNATURE_INFO - sig_len
    if start < 0:
        raise ValueError("signature trailer longer than the file")
    return data[:start]


def main(argv: list[str]) -> int:
    for name in argv:
        path = Path(name)
        try:
            data = path.read_bytes()
            stripped = unsigned(data)
        except (OSError, ValueError) as error:
            print(f"unsign.py: {path}: {error}", file=sys.stderr)
            return 1
        if not stripped.startswith(b"\x7fELF"):
            print(f"unsign.py: {path}: not an ELF module", file=sys.stderr)
            return 1
        if stripped is not data:
            path.write_bytes(stripped)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
