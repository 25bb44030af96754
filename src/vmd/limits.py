"""The limits every layer shares, each defined once, and the VM name rule.

This is the bottom layer: it imports nothing from vmd, and every other module that needs one of these
imports it from here (tests/unit/test_limits.py fails if a second definition appears). Each value names
the OpenBSD constant it follows (usr.sbin/vmd/vmd.h, sys/dev/vmm/vmm.h) or, where OpenBSD has no name
for it, the function whose rule it is.
"""

from __future__ import annotations

VM_MAX_DISKS_PER_VM = 4  # vmd.h
VM_MAX_NICS_PER_VM = 4  # vmd.h
VMM_MAX_VCPUS_PER_VM = 64  # vmm.h (OpenBSD's kernel still runs one vCPU; KVM runs them all)

VM_NAME_MAX = 63  # VMM_MAX_NAME_LEN (vmm.h) is 64 bytes including the NUL
UNIX_PATH_MAX = 107  # sun_path (sys/un.h) is 108 bytes with the terminating NUL, on Linux as on OpenBSD
IFNAME_MAX = 15  # IF_NAMESIZE (OpenBSD) and IFNAMSIZ (Linux) are 16 bytes including the NUL

SIZE_MIN = 1 << 20  # parse_size() in parse.y and vmctl's main.c: "size must be at least 1MB" (no named constant)
VMM_MAX_VM_MEM_SIZE = 128 << 30  # vmm.h; memory.py keeps guest RAM below 128 GiB on Linux too
VM_DEFAULT_MEMORY = 512 << 20  # vmd.h

VM_MAGIC_QCOW = b"QFI\xfb"  # vmd.h; the first four bytes of a qcow2 image

# What one guest request may hold (no OpenBSD name: virtio.c trusts its fixed queue sizes). A virtqueue chain
# longer or larger is a broken ring (DEVICE_NEEDS_RESET), so no device ever joins or walks more than this.
IOV_MAX = 1024  # Linux UIO_MAXIOV: the most buffers one readv, writev or preadv takes
VIRTQ_MAX_CHAIN_BUFFERS = IOV_MAX  # buffers in one descriptor chain, direct and indirect ones together
VIRTQ_MAX_CHAIN_BYTES = 512 << 20  # above any request a device here takes: virtio-blk's seg_max x size_max
# is 254 MiB

# What a local user (or a VM process) may send vmd; OpenBSD's imsg framing bounds these by design
JSON_DEPTH_MAX = 32  # nesting of a JSON message (vmd.boundedjson); the deepest vmd sends or expects is 5
CONTROL_LINE_MAX = 65536  # a request on the control socket, without its newline
CONTROL_INPUT_MAX = CONTROL_LINE_MAX + 1  # what vmd buffers per client: one whole request and its newline
CONTROL_OUTPUT_MAX = 1 << 20  # answers a client has not read: past this, vmd reads no more requests from it
CONTROL_CLIENTS_PER_UID = 32  # connections of one user other than root
CONTROL_CLIENTS_MAX = 128  # connections of all users other than root together; root's are not counted
VM_MESSAGE_MAX = 65536  # one message on the channel between vmd and a VM process


def valid_vm_name(name: str) -> bool:
    """vmd.c vm_register(): not empty, only ASCII letters, digits, '.', '-' and '_', and not starting with
    '.', '-' or '_'. The length (at most VM_NAME_MAX bytes) is checked apart, each caller with its message."""
    if not name or name[0] in ".-_":
        return False
    return all((c.isascii() and c.isalnum()) or c in ".-_" for c in name)


def check_vm_name(name: str) -> str | None:
    """The one name rule, for root as for everyone (vm.conf, vmd run, vmctl start, the daemon's start
    request): None if name is a valid VM name, else vmd's reason, "vm name too long" (parse.y) or
    "invalid VM name" (vm_register). Callers do not echo a refused name: it may hold a newline or a NUL."""
    if len(name.encode(errors="surrogatepass")) > VM_NAME_MAX:
        return "vm name too long"
    if not valid_vm_name(name):
        return "invalid VM name"
    return None
