"""The VM process's system-call filter (seccomp-bpf through libseccomp's own Python binding).

Installed once the machine is built, its files and taps are open and privileges are dropped (vmproc.py), for
every thread of the process (TSYNC) and every thread it starts later: what OpenBSD's vmd gets from pledge(2)
with "stdio vmm recvfd". What a VM process still needs is allowed — reading and writing the descriptors it
holds, ioctl (any request: KVM's, the terminal's), memory, threads, timers, its control channel and the GDB socket it
was handed — and nothing else: a call outside the list fails with EPERM (a Python error with a message, never
a kill that leaves the guest's disks half written). So a compromised VM process cannot make a socket or
connect one (host loopback TCP, abstract Unix sockets), signal another process (other VMs run as the same
user), fork, exec, or ptrace.

The list comes from tracing VM processes through the integration tests (strace -ff: virtio-blk on raw and
qcow2, virtio-net with DHCP, the GDB stub, reboot, pause, stats) plus the interpreter's own needs (lazy
imports and tracebacks read files, which the empty chroot leaves nothing to find).
"""

from __future__ import annotations

import errno
import logging
import os

log = logging.getLogger("vmd.vm")

# Allowed whatever their arguments.
ALLOWED = (
    # the descriptors the process holds: disks, the tap, the terminal, KVM, eventfds, its control socket
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "lseek", "close", "fstat", "newfstatat", "statx", "fcntl", "ioctl", "dup", "dup3", "pipe2",
    "fsync", "fdatasync", "fallocate", "ftruncate", "flock",
    # waiting: the event loop, the console, the timers
    "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "eventfd2", "futex", "nanosleep", "clock_nanosleep", "clock_gettime", "gettimeofday", "sched_yield",
    "sched_getaffinity",
    # memory
    "mmap", "munmap", "mprotect", "madvise", "mremap", "brk",
    # threads and signals (to its own threads only: tgkill below)
    "set_robust_list", "rseq", "gettid", "getpid", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "sigaltstack", "exit", "exit_group", "restart_syscall",
    # the control channel and the GDB stub's socket, both handed in
    "sendto", "recvfrom", "sendmsg", "recvmsg", "accept4", "shutdown", "getsockname", "getpeername",
    "getsockopt", "setsockopt",
    # the interpreter: imports and tracebacks look at files (the chroot is empty), randomness, identity
    "getdents64", "readlink", "getcwd", "getrandom", "uname", "sysinfo", "getrusage",
    "getuid", "geteuid", "getgid", "getegid",
)
PR_SET_NAME, PR_GET_NAME = 15, 16
CLONE_THREAD = 0x00010000
OPEN_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxUnavailable(Exception):
    pass


# Imported with this module, before the VM process locks itself in its empty chroot, where the binding's
# shared object could no longer be found.
try:
    import seccomp
except ImportError:
    seccomp = None


def confine() -> None:
    """Filter this process's system calls from now on, in every thread. SandboxUnavailable without libseccomp's
    binding; OSError if the kernel refuses the filter."""
    if seccomp is None:
        raise SandboxUnavailable("libseccomp's Python binding is missing (Debian: python3-seccomp)")
    denied = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(defaction=denied)
    rules.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # the threads already running get it too
    for name in ALLOWED:
        rules.add_rule(seccomp.ALLOW, name)
    # threads, never processes: clone only with CLONE_THREAD; clone3 hides its flags in memory a filter cannot
    # read, so it answers ENOSYS and glibc falls back to clone
    rules.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # signals to its own threads (pthread_kill kicks a vCPU out of KVM_RUN), to no other process
    rules.add_rule(seccomp.ALLOW, "tgkill", seccomp.Arg(0, seccomp.EQ, os.getpid()))
    # its own limits only (another VM's, lowered, would kill it); files read, never written (imports and
    # tracebacks read; a VM process without its chroot must not write as root)
    rules.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0))
    rules.add_rule(seccomp.ALLOW, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, OPEN_WRITING, 0))
    for option in (PR_SET_NAME, PR_GET_NAME):
        rules.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, option))
    rules.load()


def confine_or_warn(name: str) -> None:
    """confine(), or one warning in the log saying why the VM process runs without a filter."""
    try:
        confine()
    except SandboxUnavailable as error:
        log.warning("vm %s: no system-call filter: %s", name, error)
    except OSError as error:
        log.warning("vm %s: no system-call filter: the kernel refused it: %s", name, error.strerror or error)
