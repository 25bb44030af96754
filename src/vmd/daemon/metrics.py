"""The metrics endpoint: Prometheus's text format over HTTP, on a Unix socket or a TCP address (vm.conf
`metrics`, our stand-in for OpenBSD's agentx vmMIB), served by the vmd parent's event loop.

Bounded: at most MAX_CONNECTIONS scrapes at a time (a connection past that gets 503 and is closed), a request
of at most MAX_REQUEST bytes (431 past that), TIMEOUT seconds for a connection from accept to the last byte
of the answer. Only `GET` (and `HEAD`) of `/metrics` or `/` is answered; anything else gets its HTTP error.
The body is rendered by prometheus_client from the status rows `vmctl status --json` shows (daemon/stats.py).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vmd.daemon.registry import PAUSED, RUNNING, STARTING, STOPPED, STOPPING, WAITING
from vmd.daemon.stats import DISK_COUNTERS, NIC_COUNTERS

log = logging.getLogger("vmd.metrics")

MAX_CONNECTIONS = 4
MAX_REQUEST = 8192  # request line and headers
TIMEOUT = 10.0
BACKLOG = 16
STATES = (RUNNING, PAUSED, STOPPED, STARTING, STOPPING, WAITING)
VM_LABELS = ["name", "id", "owner"]
# Prometheus's classic text format, which generate_latest writes for names like ours (no escaping needed);
# every Prometheus version reads it
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# what each counter of daemon/stats.py is called here, and its help text
_DISK_HELP = {"reads": "virtio-blk reads completed", "read_bytes": "bytes read by virtio-blk",
              "writes": "virtio-blk writes completed", "write_bytes": "bytes written by virtio-blk",
              "flushes": "virtio-blk flushes completed", "errors": "virtio-blk requests that failed"}
_NIC_HELP = {"rx_packets": "frames given to the guest", "rx_bytes": "bytes given to the guest",
             "rx_dropped": "frames for the guest that were dropped", "tx_packets": "frames the guest sent",
             "tx_bytes": "bytes the guest sent", "tx_dropped": "frames from the guest that were dropped"}


# -- the exposition -------------------------------------------------------------------------------------------

class _Rows:
    """A prometheus_client collector over status rows (Daemon.status_rows with stats)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("vmd_vm_state", "1 for the state the VM is in", labels=VM_LABELS + ["state"])
        vcpus = GaugeMetricFamily("vmd_vm_vcpus", "virtual CPUs", labels=VM_LABELS)
        memory = GaugeMetricFamily("vmd_vm_memory_bytes", "configured guest memory", labels=VM_LABELS)
        rss = GaugeMetricFamily("vmd_vm_rss_bytes", "resident set of the VM process", labels=VM_LABELS)
        vcpu_time = CounterMetricFamily("vmd_vm_vcpu_seconds", "CPU time of each vCPU thread",
                                        labels=VM_LABELS + ["vcpu"])
        exits = CounterMetricFamily("vmd_vm_kvm_exits", "KVM exits, all reasons", labels=VM_LABELS)
        reasons = CounterMetricFamily("vmd_vm_kvm_exits_by_reason", "KVM exits by reason (KVM's statistics)",
                                      labels=VM_LABELS + ["reason"])
        disks = {name: CounterMetricFamily(f"vmd_disk_{name}", text, labels=VM_LABELS + ["disk", "path"])
                 for name, text in _DISK_HELP.items()}
        nics = {name: CounterMetricFamily(f"vmd_nic_{name}", text, labels=VM_LABELS + ["nic", "interface"])
                for name, text in _NIC_HELP.items()}
        for row in self.rows:
            vm = [str(row["name"]), str(row["id"]), str(row["owner"])]
            for name in STATES:
                state.add_metric(vm + [name], 1.0 if row["state"] == name else 0.0)
            vcpus.add_metric(vm, row["vcpus"])
            memory.add_metric(vm, row["maxmem"])
            stats = row.get("stats")
            if not stats:
                continue
            if stats["rss_bytes"] is not None:
                rss.add_metric(vm, stats["rss_bytes"])
            for index, seconds in enumerate(stats["vcpu_seconds"]):
                vcpu_time.add_metric(vm + [str(index)], seconds)
            exits.add_metric(vm, stats["kvm_exits_total"])
            for reason, count in stats["kvm_exits"].items():
                reasons.add_metric(vm + [reason], count)
            for index, disk in enumerate(stats["disks"]):
                for name in DISK_COUNTERS:
                    disks[name].add_metric(vm + [str(index), disk["path"]], disk[name])
            for index, nic in enumerate(stats["nics"]):
                for name in NIC_COUNTERS:
                    nics[name].add_metric(vm + [str(index), nic["interface"]], nic[name])
        yield from (state, vcpus, memory, rss, vcpu_time, exits, reasons, *disks.values(), *nics.values())


def render(rows: list[dict[str, Any]]) -> bytes:
    """The text exposition of these status rows."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Rows(rows))
    return generate_latest(registry)


# -- HTTP -----------------------------------------------------------------------------------------------------

Refresh = Callable[[Callable[[], None]], None]  # refresh(done): done() once the VMs' counters are in (or later)
Rows = Callable[[], list[dict[str, Any]]]  # the status rows, with their stats
Timers = Callable[[float, Callable[[], None]], Any]  # call_later(delay, callback) -> a timer with cancel()

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


class MetricsError(Exception):
    """The endpoint could not be set up: one line naming where and why."""


def http_response(code: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
                  head: bool = False, extra: Iterable[str] = ()) -> bytes:
    """A whole HTTP/1.0 answer; the connection closes after it."""
    if code != 200 and not body:
        body = f"{code} {_REASONS[code]}\n".encode()
    lines = [f"HTTP/1.0 {code} {_REASONS[code]}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


def parse_request(data: bytes) -> tuple[int, str | None]:
    """The request head (up to the blank line): (0, method) for a scrape, else (HTTP error code, None)."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return 400, None
    parts = text.split(" ")
    if len(parts) != 3 or not all(parts):
        return 400, None
    method, target, version = parts
    if not version.startswith("HTTP/"):
        return 400, None
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return 505, None
    if method not in ("GET", "HEAD"):
        return 405, None
    if target.split("?", 1)[0] not in ("/metrics", "/"):
        return 404, None
    return 0, method


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = b""
        self.closed = False
        self.answered = False
        self.timer: Any = None


class MetricsServer:
    """The listening socket and its scrapes, on the daemon's selector and timers."""

    def __init__(self, spec: Any, selector: selectors.BaseSelector, call_later: Timers, refresh: Refresh,
                 rows: Rows, group: int = 0) -> None:
        """spec: a config.MetricsSpec. Raises MetricsError when it cannot listen there."""
        self.spec = spec
        self.selector = selector
        self.call_later = call_later
        self.refresh = refresh
        self.rows = rows
        self.connections: set[_Connection] = set()
        self.path: str | None = spec.socket
        try:
            self.sock = self._listen(spec, group)
        except OSError as error:
            raise MetricsError(f"metrics: cannot listen on {spec.describe()}: {error.strerror}") from None
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _listen(self, spec: Any, group: int) -> socket.socket:
        if spec.socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                _remove_stale_socket(spec.socket)
                old_umask = os.umask(0o117)
                try:
                    sock.bind(spec.socket)
                finally:
                    os.umask(old_umask)
                os.chmod(spec.socket, 0o660)  # as the control socket: root and the `socket owner` group
                os.chown(spec.socket, 0, group)
            except BaseException:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in spec.address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((spec.address, spec.port))
            except BaseException:
                sock.close()
                raise
        sock.setblocking(False)
        sock.listen(BACKLOG)
        return sock

    def set_group(self, group: int) -> None:
        if self.path is not None:
            try:
                os.chown(self.path, 0, group)
            except OSError as error:
                log.warning("metrics: %s: %s", self.path, error.strerror)

    def _accept(self, mask: int) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("metrics: accept: %s", error.strerror)
                return
            conn.setblocking(False)
            if len(self.connections) >= MAX_CONNECTIONS:
                try:
                    conn.send(http_response(503))
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(MAX_REQUEST)  # what already came: unread, it would turn the close into a reset
                except OSError:
                    pass
                conn.close()
                continue
            client = _Connection(conn)
            self.connections.add(client)
            client.timer = self.call_later(TIMEOUT, functools.partial(self._close, client))
            self.selector.register(conn, selectors.EVENT_READ, functools.partial(self._ready, client))

    def _ready(self, client: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
            return
        if client.answered:  # lingering: the rest of what the client sends is read and dropped
            self._drain(client)
            return
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        client.inbuf += data
        end = min((i for i in (client.inbuf.find(b"\r\n\r\n"), client.inbuf.find(b"\n\n")) if i >= 0), default=-1)
        if end < 0:
            if len(client.inbuf) > MAX_REQUEST:
                self._answer(client, http_response(431))
            return
        if end > MAX_REQUEST:
            self._answer(client, http_response(431))
            return
        code, method = parse_request(bytes(client.inbuf[:end]))
        if code:
            extra = ["Allow: GET, HEAD"] if code == 405 else []
            self._answer(client, http_response(code, extra=extra))
            return
        self._stop_reading(client)
        head = method == "HEAD"
        try:
            self.refresh(lambda: self._reply(client, head))
        except Exception:  # never a traceback to the scraper, nor vmd down
            log.exception("metrics: asking the VMs for their counters failed")
            self._answer(client, http_response(500))

    def _reply(self, client: _Connection, head: bool) -> None:
        if client.closed:
            return
        try:
            body = render(self.rows())
        except Exception:  # never a traceback to the scraper, nor vmd down
            log.exception("metrics: rendering failed")
            self._answer(client, http_response(500))
            return
        self._answer(client, http_response(200, body, CONTENT_TYPE, head=head))

    def _stop_reading(self, client: _Connection) -> None:
        """While the answer is being made (the VMs asked for their counters), the connection is not polled."""
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass

    def _answer(self, client: _Connection, data: bytes) -> None:
        if client.closed or client.outbuf:
            return
        client.outbuf = data
        client.answered = True
        callback = functools.partial(self._ready, client)
        try:
            self.selector.modify(client.sock, selectors.EVENT_WRITE, callback)
        except KeyError:
            self.selector.register(client.sock, selectors.EVENT_WRITE, callback)
        self._flush(client)

    def _flush(self, client: _Connection) -> None:
        """Send the answer; then close our side and wait for the client's close (a lingering close: closing
        with the client's bytes unread would reset the connection before it has read the answer)."""
        if client.closed or not client.answered:
            return
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(client)
                return
            client.outbuf = client.outbuf[sent:]
        try:
            client.sock.shutdown(socket.SHUT_WR)
            self.selector.modify(client.sock, selectors.EVENT_READ, functools.partial(self._ready, client))
        except (OSError, KeyError):
            self._close(client)
            return
        self._drain(client)

    def _drain(self, client: _Connection) -> None:
        while True:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return  # more later, or the client's close; the connection's timeout bounds the wait
            except OSError:
                data = b""
            if not data:
                self._close(client)
                return

    def _close(self, client: _Connection) -> None:
        if client.closed:
            return
        client.closed = True
        self.connections.discard(client)
        if client.timer is not None:
            client.timer.cancel()
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def close(self) -> None:
        for client in list(self.connections):
            self._close(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _remove_stale_socket(path: str) -> None:
    """A socket file left by an earlier vmd goes; anything else at the path is an error (EADDRINUSE)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EADDRINUSE, "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "in use by another process")
