"""`vmd [-dnv] [-D macro=value] [-f file]`: the daemon's entry point (vmd(8))."""

from __future__ import annotations

import errno
import getopt
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_CONFIG = "/etc/vm.conf"
DEFAULT_SOCKET = "/run/vmd.sock"

log = logging.getLogger("vmd")


USAGE = "usage: vmd [-dnv] [-D macro=value] [-f file]"


class UsageError(Exception):
    """A bad command line: the message (if any) and the usage line go to stderr, and vmd exits 1."""


@dataclass
class Options:
    foreground: bool = False
    check: bool = False
    verbose: int = 0
    macros: list[str] = field(default_factory=list)
    config: str | None = None


def parse_options(argv: Sequence[str]) -> Options:
    """vmd.c main(): getopt(3) over "D:df:nv", with getopt's own messages; no operands."""
    try:
        pairs, rest = getopt.getopt(list(argv), "D:df:nv")
    except getopt.GetoptError as error:
        needs = error.msg.endswith("requires argument")
        raise UsageError(f"{'option requires an argument' if needs else 'unknown option'} -- {error.opt}") from None
    if rest:
        raise UsageError("")
    options = Options()
    for flag, value in pairs:
        if flag == "-d":
            options.foreground = True
        elif flag == "-n":
            options.check = True
        elif flag == "-v":
            options.verbose += 1
        elif flag == "-D":
            options.macros.append(value)
        elif flag == "-f":
            options.config = value
    return options


def _setup_logging(foreground: bool, verbose: int) -> None:
    root = logging.getLogger("vmd")
    root.handlers.clear()
    if foreground:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vmd: %(message)s"))
    else:
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                     facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            handler.setFormatter(logging.Formatter("vmd[%(process)d]: %(message)s"))
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("vmd: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def socket_in_use(path: str) -> bool:
    """Is another vmd answering on path? (A stale socket file is not in use.)"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError as error:
        return error.errno not in (errno.ENOENT, errno.ECONNREFUSED)
    finally:
        probe.close()
    return True


def daemon_main(argv: Sequence[str]) -> int:
    from vmd.daemon.conf import check_config, load_definitions, parse_macros
    from vmd.daemon.core import Daemon
    from vmd.daemon.registry import VmDefinition
    from vmd.daemon.settings import ConfigError, Settings

    try:
        args = parse_options(argv)
    except UsageError as error:
        if str(error):
            print(f"vmd: {error}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 1
    macros, bad = parse_macros(args.macros)
    for text in bad:  # cmdline_symset failed: vmd.c logs it and carries on
        print(f"vmd: could not parse macro definition {text}", file=sys.stderr)
    config_path = os.path.abspath(args.config) if args.config else DEFAULT_CONFIG
    if args.check:  # vmd.c: the parser's lines through log_warnx, then "configuration OK", all on stderr
        errors, warnings = check_config(config_path, macros, explicit=args.config is not None)
        for line in warnings + errors:
            print(_logged(line), file=sys.stderr)
        if errors:
            return 1
        print("configuration OK", file=sys.stderr)
        return 0
    if os.geteuid() != 0:
        print("vmd: need root privileges", file=sys.stderr)
        return 1
    socket_path = os.environ.get("VMD_SOCKET", DEFAULT_SOCKET)
    if socket_in_use(socket_path):
        print(f"vmd: already running: another vmd answers on {socket_path}", file=sys.stderr)
        return 1
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    if not args.foreground and not os.environ.get("NOTIFY_SOCKET"):
        _daemonize()
    _setup_logging(args.foreground, args.verbose)

    def load(path: str) -> tuple[list[VmDefinition], Settings]:
        return load_definitions(path, macros, explicit=path != DEFAULT_CONFIG or args.config is not None)

    try:
        daemon = Daemon(socket_path, config_path, load, verbose=args.verbose)
    except OSError as error:
        print(f"vmd: {socket_path}: {error.strerror}", file=sys.stderr)
        return 1
    for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda n, frame: daemon.signal_received(n))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    log.info("startup")
    try:
        daemon.configure(config_path, replace=True)
    except ConfigError as error:
        for line in error.errors:
            print(_logged(line), file=sys.stderr)
        daemon.control.shutdown()
        return 1
    if not args.foreground:
        _notify_ready()
    daemon.run()
    return 0


def _logged(line: str) -> str:
    """A parser message as vmd's log_warnx prints it on stderr, after the program's name; parse.y writes the
    unused-macro warning with fprintf, bare."""
    return line if line.startswith(("warning: ", "vmd: ")) else f"vmd: {line}"


def _daemonize() -> None:
    """Detach from the terminal as daemon(3) does: fork, new session, fork, stdio on /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that vmd is ready, when it runs us."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"READY=1", address)
        except OSError:
            pass
