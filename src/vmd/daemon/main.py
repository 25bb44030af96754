"""`vmd [-dnv] [-D macro=value] [-f file]`: the daemon's entry point (vmd(8))."""

from __future__ import annotations

import argparse
import errno
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/vm.conf"
DEFAULT_SOCKET = "/run/vmd.sock"

log = logging.getLogger("vmd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vmd: {message}", file=sys.stderr)
        print("usage: vmd [-dnv] [-D macro=value] [-f file]", file=sys.stderr)
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmd", add_help=False)
    parser.add_argument("-d", dest="foreground", action="store_true")
    parser.add_argument("-n", dest="check", action="store_true")
    parser.add_argument("-v", dest="verbose", action="count", default=0)
    parser.add_argument("-D", dest="macros", action="append", default=[])
    parser.add_argument("-f", dest="config", default=None)
    parser.add_argument("-h", "--help", action="store_true")
    return parser


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
    from vmd.daemon.core import ConfigError, Daemon, Settings
    from vmd.daemon.registry import VmDefinition

    args = _parser().parse_args(list(argv))
    if args.help:
        print("usage: vmd [-dnv] [-D macro=value] [-f file]")
        return 0
    try:
        macros = parse_macros(args.macros)
    except ValueError as error:
        print(f"vmd: {error}", file=sys.stderr)
        return 1
    config_path = os.path.abspath(args.config) if args.config else DEFAULT_CONFIG
    if args.check:
        errors, warnings = check_config(config_path, macros, explicit=args.config is not None)
        for line in warnings + errors:
            print(line, file=sys.stderr)
        if errors:
            return 1
        print("configuration OK")
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
            print(line, file=sys.stderr)
        daemon.control.shutdown()
        return 1
    if not args.foreground:
        _notify_ready()
    daemon.run()
    return 0


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
