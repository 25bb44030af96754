"""The vmd parent process: the registry, the control requests, and the VM processes' lifecycle."""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmd.cpu import CpuModelError, parse_cpu_model
from vmd.daemon.conf import instance_definition
from vmd.daemon.control import Client, ControlServer, RequestError
from vmd.daemon.metrics import MetricsError, MetricsServer
from vmd.daemon.permissions import Owner, Peer
from vmd.daemon.registry import (
    PAUSED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    USER_FILES,
    WAITING,
    Registry,
    VmDefinition,
    VmEntry,
)
from vmd.daemon.settings import ConfigError, Settings
from vmd.daemon.stats import clean_report, vm_stats
from vmd.daemon.supervisor import VM_USER, VmProcess, describe_exit
from vmd.daemon.vmstart import (
    VMD_DISK_MISSING,
    VMD_PARENT_INVALID,
    VmLauncher,
    user_peer,
)
from vmd.limits import (
    VM_DEFAULT_MEMORY,
    check_vm_name,
)
from vmd.vmchannel import EXIT_REBOOT

log = logging.getLogger("vmd")

RESTART_LIMIT = 3  # VM_START_RATE_LIMIT: a 3rd restart each within 6 s is refused
RESTART_WINDOW = 6.0  # VM_START_RATE_SEC
STOP_TIMEOUT = 30.0  # vmd's own shutdown (SIGTERM): how long VMs get before they are forced
STOP_REQUEST_TIMEOUT = 125.0  # vmctl stop: past vmmci's 120 s for a guest that acknowledged, then force
STATS_FRESH = 0.2  # a VM's counters younger than this are not asked for again (scrapes close together)
STATS_TIMEOUT = 1.0  # how long a status --json or a scrape waits for the VMs' counters
ROOT_ONLY = {"load", "reload", "reset", "log"}



@dataclass(order=True)
class _Timer:
    deadline: float
    sequence: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


ConfigLoader = Callable[[str], tuple[list[VmDefinition], Settings]]


class Daemon:
    def __init__(self, socket_path: str, config_path: str, load_config: ConfigLoader, verbose: int = 0,
                 vm_user: str | None = VM_USER) -> None:
        self.socket_path = socket_path
        self.gdb_dir = os.path.join(os.path.dirname(os.path.abspath(socket_path)), "vmd")  # /run/vmd
        self.config_path = config_path
        self.load_config = load_config
        self.verbose = verbose
        self.vm_user = vm_user
        self.selector = selectors.DefaultSelector()
        self.registry = Registry()
        self.settings = Settings()
        self._timers: list[_Timer] = []
        self._sequence = itertools.count()
        self._autostart: list[VmEntry] = []
        self._autostart_timer: _Timer | None = None
        self._quit = False
        self._quit_deadline: float | None = None
        self.launcher = VmLauncher(self.gdb_dir, vm_user, verbose, lambda: self.settings)
        self.control = ControlServer(socket_path, self.selector, self.handle_request, on_close=self._client_gone,
                                     call_later=self.call_later)
        self.metrics: MetricsServer | None = None
        self._stats_waiters: list[Callable[[], None]] = []
        self._stats_timer: _Timer | None = None
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._signal_r, selectors.EVENT_READ, self._on_signal)

    # -- timers ---------------------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(time.monotonic() + delay, next(self._sequence), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def _run_timers(self) -> float | None:
        now = time.monotonic()
        while self._timers and (self._timers[0].cancelled or self._timers[0].deadline <= now):
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception as error:  # as for the handlers in _loop
                    log.error("timer failed: %s: %s", type(error).__name__, error)
        return max(0.0, self._timers[0].deadline - now) if self._timers else None

    # -- configuration --------------------------------------------------------------------------------
    def configure(self, path: str, replace: bool) -> None:
        """Load vm.conf: reload (replace: drop VMs that are not running) or load (add)."""
        definitions, settings = self.load_config(path)
        if replace:
            for entry in list(self.registry.entries.values()):
                if not entry.running:
                    self.registry.remove(entry)
        if replace:  # load only adds VMs (vmd_reload(0, file)); reload takes the file's global settings too
            self.settings = settings
            self.control.set_group(settings.socket_group)
            self._set_metrics(settings.metrics, settings.socket_group)
        if settings.switches or (replace and self.launcher.has_network):
            try:
                if replace:  # reload: switches that went or changed are taken down, new ones set up
                    self.launcher.network().reconcile_switches(settings.switches)
                else:
                    self.launcher.network().setup_switches(settings.switches)
            except Exception as error:  # NetError, or netlink failing: vmd keeps running without them
                log.warning("failed to set up switches: %s", error)
        for definition in definitions:
            existing = self.registry.find(definition.name)
            if existing is not None:
                log.debug('vm "%s" skipped (%s)', definition.name, "running" if existing.running else "already exists")
                continue
            uid = definition.owner.uid if definition.owner.uid is not None else 0
            entry = self.registry.add(definition, configured=True, uid=uid)
            if definition.enabled:
                entry.state = WAITING
                self._autostart.append(entry)
        self._schedule_autostart(0.0)

    def _schedule_autostart(self, delay: float) -> None:
        if self._autostart and self._autostart_timer is None:
            self._autostart_timer = self.call_later(delay, self._autostart_batch)

    def _autostart_batch(self) -> None:
        """staggered start: parallel VMs at a time, then wait delay seconds (vm.conf(5))."""
        self._autostart_timer = None
        parallel = self.settings.stagger_parallel or os.cpu_count() or 1
        batch, self._autostart = self._autostart[:parallel], self._autostart[parallel:]
        for entry in batch:
            if self.registry.entries.get(entry.id) is entry and entry.state == WAITING:
                entry.state = STOPPED
                try:
                    self.start_entry(entry, entry.definition.owner.uid or 0)
                except RequestError as error:
                    log.warning("%s: failed to start vm: %s", entry.name, error.message)
                except Exception as error:  # OSError from pty, fork or pidfd: vmd runs on
                    log.warning("%s: failed to start vm: %s", entry.name, error)
        if self._autostart:
            self._schedule_autostart(self.settings.stagger_delay)

    # -- requests -------------------------------------------------------------------------------------
    def handle_request(self, client: Client, request: dict[str, Any]) -> None:
        command = request.get("command")
        handler = getattr(self, f"cmd_{command}", None) if isinstance(command, str) else None
        if handler is None:
            raise RequestError("EINVAL", f"unknown command {command!r}")
        if command in ROOT_ONLY and not client.peer.is_root:
            log.warning("denied request %s from uid %d", command, client.peer.uid)
            raise RequestError.from_errno(errno.EPERM)
        handler(client, request)

    def _target(self, request: dict[str, Any]) -> VmEntry:
        target = request.get("target")
        if not isinstance(target, (str, int)) or isinstance(target, bool):
            raise RequestError("EINVAL", "missing or invalid target")
        entry = self.registry.find(target)
        if entry is None:
            raise RequestError.from_errno(errno.ENOENT)
        return entry

    def cmd_status(self, client: Client, request: dict[str, Any]) -> None:
        target, running_only = request.get("target"), bool(request.get("running_only"))
        if not request.get("stats"):
            client.respond({"vms": self.status_rows(target, running_only)})
            return
        # vmctl status --json: with each running VM's counters, asked for now (as a scrape asks)
        self.refresh_stats(lambda: client.respond({"vms": self.status_rows(target, running_only, stats=True)}))

    def status_rows(self, target: object = None, running_only: bool = False,
                    stats: bool = False) -> list[dict[str, Any]]:
        """The VMs as `status` lists them; with stats, each row's counters under "stats" (daemon/stats.py),
        the same snapshot the metrics endpoint renders."""
        rows = []
        for entry in self.registry.ordered():
            if target not in (None, "") and not (str(entry.id) == str(target) or entry.name == target):
                continue
            if running_only and not entry.running:
                continue
            process = entry.process
            row: dict[str, Any] = {
                "id": entry.id,
                "pid": process.pid if process else None,
                "vcpus": entry.definition.vcpus,
                "maxmem": entry.definition.memory or VM_DEFAULT_MEMORY,
                "curmem": process.resident_guest_bytes() if process else None,
                "tty": entry.terminal.path if entry.terminal and process else None,
                "owner": entry.owner_text(),
                "state": entry.state,
                "name": entry.name,
            }
            if stats:
                row["stats"] = None if process is None else vm_stats(
                    process.stats, process.rss_bytes(), [str(d.get("path", "")) for d in entry.definition.disks],
                    [str(getattr(tap, "ifname", "")) for tap in entry.taps])
            rows.append(row)
        return rows

    # -- counters from the VM processes ---------------------------------------------------------------
    def refresh_stats(self, done: Callable[[], None]) -> None:
        """Ask every running VM process for its counters (unless they are fresh), and call done() when all
        have answered or STATS_TIMEOUT has passed. One request per VM at a time: a VM process that does not
        answer is asked again only after it has."""
        now = time.monotonic()
        for entry in self.registry.entries.values():
            process = entry.process
            if process is None or not process.running or process.stats_asked is not None:
                continue
            if now - process.stats_time >= STATS_FRESH:
                process.stats_asked = now
                process.send("stats")
        if not self._stats_awaited():
            done()
            return
        self._stats_waiters.append(done)
        if self._stats_timer is None:
            self._stats_timer = self.call_later(STATS_TIMEOUT, self._stats_answered)

    def _stats_awaited(self) -> bool:
        now = time.monotonic()
        return any(entry.process is not None and entry.process.stats_asked is not None
                   and now - entry.process.stats_asked < STATS_TIMEOUT for entry in self.registry.entries.values())

    def _stats_answered(self) -> None:
        """Every VM asked has answered, or the time is up: the waiting requests and scrapes get their rows."""
        if self._stats_timer is not None:
            self._stats_timer.cancel()
            self._stats_timer = None
        waiters, self._stats_waiters = self._stats_waiters, []
        for done in waiters:
            try:
                done()
            except Exception:  # one failing answer must not keep the others waiting
                log.exception("answering with the VMs' counters failed")

    def _set_metrics(self, spec: Any, group: int) -> None:
        """vm.conf `metrics`: start, move or stop the endpoint; one that cannot listen is logged, vmd runs on."""
        if self.metrics is not None and self.metrics.spec == spec:
            self.metrics.set_group(group)
            return
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if spec is None:
            return
        try:
            self.metrics = MetricsServer(spec, self.selector, self.call_later, self.refresh_stats,
                                         lambda: self.status_rows(stats=True), group)
        except MetricsError as error:
            log.warning("%s", error)
            return
        log.info("metrics on %s", spec.describe())

    def cmd_start(self, client: Client, request: dict[str, Any]) -> None:
        peer = client.peer
        target = request.get("target")
        if not isinstance(target, (str, int)) or isinstance(target, bool) or target == "":
            raise RequestError("EINVAL", "missing or invalid target")
        overrides = {key: request[key] for key in ("kernel", "initrd", "append", "memory", "vcpus", "cpu", "disks",
                                                   "cdrom", "boot_device", "nics", "switches", "local_nics",
                                                   "networks")
                     if request.get(key) not in (None, [], 0, "")}
        _check_start_fields(overrides)
        gdb = request.get("gdb")
        if gdb is None:
            gdb = False
        if not isinstance(gdb, bool):
            raise RequestError("EINVAL", "invalid field gdb")
        parent_name = request.get("instance_of")
        if parent_name is not None and not isinstance(parent_name, str):
            raise RequestError("EINVAL", "invalid field instance_of")
        if parent_name:
            entry = self._make_instance(peer, str(target), str(parent_name), overrides)
        else:
            existing = self.registry.find(target)
            if existing is not None:
                self._check_restart(existing, peer, overrides)
                entry = existing
            else:
                entry = self._new_vm(peer, target, overrides)
        if entry.state == WAITING:
            entry.state = STOPPED
        entry.gdb_request = "wait" if gdb else None
        try:
            self.start_entry(entry, peer.uid if not entry.configured else (entry.definition.owner.uid or 0),
                             client=client)
        except Exception:
            if not entry.configured:
                if entry.terminal is not None:
                    entry.terminal.close()
                    entry.terminal = None
                self.registry.remove(entry)
            raise

    def _check_restart(self, entry: VmEntry, peer: Peer, overrides: dict[str, Any]) -> None:
        """vmctl start of a VM vmd knows, in vmd.c 1.169's order: vm_register refuses a user who may not
        manipulate the VM (EPERM) before anything about its state shows; then the control dispatch refuses
        a VM that is running, and any option but -b (VMOP_CREATE_KERNEL), with EALREADY."""
        if not entry.permitted(peer):
            log.warning("permission denied: uid %d may not start vm %s", peer.uid, entry.name)
            raise RequestError.from_errno(errno.EPERM)
        if entry.running or entry.state == STARTING:
            log.debug("%s: vm is already running", entry.name)
            raise RequestError.from_errno(errno.EALREADY)
        if set(overrides) - {"kernel"}:
            raise RequestError.from_errno(errno.EALREADY)
        if "kernel" in overrides:  # the user's own file (vmctl opens it as the user in OpenBSD)
            self.launcher.check_file(overrides["kernel"], peer)
            entry.kernel_override = overrides["kernel"]

    def _new_vm(self, peer: Peer, target: str | int, overrides: dict[str, Any]) -> VmEntry:
        """vmctl start of a name (or id) vmd does not know: vm_register (vmd.c 1.169). Only root may create
        a VM; a request without options is `invalid configuration, no devices`, which vmd answers with
        VMD_DISK_MISSING (vmctl: `could not open disk image(s)`), for a name as for an id."""
        if not peer.is_root:
            log.warning("permission denied: uid %d may not create vm %s", peer.uid, _printable(target))
            raise RequestError.from_errno(errno.EPERM)
        if not overrides:
            log.warning("invalid configuration, no devices")
            raise RequestError("ENOENT", "could not open disk image(s)", code=VMD_DISK_MISSING)
        if not isinstance(target, str) or target.isdigit():  # an id that names no VM: no name to create
            log.warning("invalid VM name")
            raise RequestError.from_errno(errno.EINVAL)
        reason = check_vm_name(target)  # the rule of vm.conf and vmctl, for root too
        if reason is not None:
            log.warning("%s", reason)
            raise RequestError("EINVAL", reason)
        definition = self._definition_from_request(target, overrides)
        if not (definition.kernel or definition.disks or definition.cdrom):
            raise RequestError("EINVAL", "no kernel or disk/cdrom specified")
        definition.user_files = USER_FILES  # all from the request (root's, so nothing is refused)
        return self.registry.add(definition, configured=False, uid=peer.uid)

    def _make_instance(self, peer: Peer, name: str, parent_name: str, overrides: dict[str, Any]) -> VmEntry:
        parent = self.registry.find(parent_name)
        if parent is None:  # vm_instance: VMD_PARENT_INVALID, which vmctl prints as `invalid template`
            raise RequestError("ENOENT", "invalid template", code=VMD_PARENT_INVALID)
        if self.registry.find(name) is not None:
            raise RequestError.from_errno(errno.EALREADY)
        try:
            definition = instance_definition(parent.definition, name, overrides, peer)
        except PermissionError as error:
            log.warning("permission denied: %s", error)
            raise RequestError.from_errno(errno.EPERM) from None
        except ValueError as error:
            raise RequestError("EINVAL", str(error), code=VMD_PARENT_INVALID) from None
        return self.registry.add(definition, configured=False, uid=peer.uid)

    def _definition_from_request(self, name: str, fields: dict[str, Any]) -> VmDefinition:
        definition = VmDefinition(name=name)
        for key, value in fields.items():
            setattr(definition, key, value)
        return definition

    def start_entry(self, entry: VmEntry, run_uid: int, client: Client | None = None) -> None:
        """config_setvm + vmm start: open what the VM needs, fork+exec its process (vmd.daemon.vmstart)."""
        now = time.monotonic()
        peer = user_peer(run_uid) if client is None else client.peer
        process = self.launcher.launch(entry, run_uid, peer)
        self.registry.mark_started(entry)
        entry.process = process
        entry.run_uid = run_uid
        entry.state = STARTING
        entry.last_error = ""
        entry.restarts = [t for t in entry.restarts if now - t < RESTART_WINDOW] + [now]
        if client is not None:
            entry.start_waiters.append(client)
        self.selector.register(process.sock, selectors.EVENT_READ, lambda m, e=entry, p=process: self._vm_event(e, p))
        self.selector.register(process.pidfd, selectors.EVENT_READ, lambda m, e=entry, p=process: self._vm_exit(e, p))


    # -- events from VM processes ---------------------------------------------------------------------
    def _vm_event(self, entry: VmEntry, process: VmProcess) -> None:
        message = process.read_event()
        if message is None:
            try:
                self.selector.unregister(process.sock)
            except (KeyError, ValueError):
                pass
            return
        event = message.get("event")
        if event == "running":
            process.running = True
            if entry.state == STARTING:
                entry.state = RUNNING
            assert entry.terminal is not None
            log.info("started %s (vm %d) successfully, tty %s", entry.name, entry.id, entry.terminal.path)
            log.info("%s: %s boot, %s run loop", entry.name, _word(message.get("boot")), _word(message.get("run_loop")))
            for client in entry.start_waiters:
                client.respond({"id": entry.id, "name": entry.name, "tty": entry.terminal.path, "pid": process.pid,
                                "warnings": [], "gdb": entry.gdb_path})
            entry.start_waiters.clear()
        elif event == "exit":
            process.outcome = message
        elif event == "stats":
            process.stats = clean_report(message.get("stats"))
            process.stats_time = time.monotonic()
            process.stats_asked = None
            if self._stats_waiters and not self._stats_awaited():
                self._stats_answered()

    def _vm_exit(self, entry: VmEntry, process: VmProcess) -> None:
        for fd in (process.sock, process.pidfd):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        # a last message may still be queued on the socket
        process.sock.setblocking(False)
        while True:
            try:
                event = process.read_event()
            except BlockingIOError:
                break
            if event is None:
                break
            if event.get("event") == "exit":
                process.outcome = event
        code = process.reap()
        entry.process = None
        if self._stats_waiters and not self._stats_awaited():  # it was the one the counters waited for
            self._stats_answered()
        self.launcher.close_interfaces(entry)
        if entry.stop_timer is not None:
            entry.stop_timer.cancel()
            entry.stop_timer = None
        message = str(process.outcome.get("message", "")) or describe_exit(code)
        log.info("%s (vm %d): %s", entry.name, entry.id, message)
        if entry.start_waiters:
            error = RequestError("EIO", message.splitlines()[0] if message else "failed to start vm")
            for client in entry.start_waiters:
                client.fail(error)
            entry.start_waiters.clear()
            entry.last_error = message
        stopping = entry.state == STOPPING or self._quit
        if code == EXIT_REBOOT and not stopping and process.running and not entry.definition.boot_device:
            recent = [t for t in entry.restarts if time.monotonic() - t < RESTART_WINDOW]
            if len(recent) >= RESTART_LIMIT:
                log.warning("vm %d restarted too quickly", entry.id)
            else:
                try:
                    self.start_entry(entry, entry.run_uid if entry.run_uid is not None else 0)
                    return
                except RequestError as error:
                    log.warning("%s: restart failed: %s", entry.name, error.message)
                except Exception as error:  # OSError from fork or pidfd: the VM stops, vmd runs on
                    log.warning("%s: restart failed: %s", entry.name, error)
        self._terminated(entry)

    def _terminated(self, entry: VmEntry) -> None:
        """vm_terminate: a configured VM stays, stopped; one started ad hoc is forgotten."""
        entry.state = STOPPED
        entry.run_uid = None
        entry.gdb_request = None
        self.launcher.remove_gdb_socket(entry)
        if entry.terminal is not None:
            entry.terminal.close()
            entry.terminal = None
        for client in entry.stop_waiters:
            client.respond({"results": [{"id": entry.id, "name": entry.name, "result": "terminated"}]})
        entry.stop_waiters.clear()
        if not entry.configured:
            self.registry.remove(entry)

    # -- stop, pause, wait ----------------------------------------------------------------------------
    def cmd_stop(self, client: Client, request: dict[str, Any]) -> None:
        force, wait = bool(request.get("force")), bool(request.get("wait"))
        if request.get("all"):  # vmctl.c terminate_all: every running VM in status order, newest first
            targets = [e for e in self.registry.ordered() if e.running]
        else:
            targets = [self._target(request)]
        results = []
        waiting: list[VmEntry] = []
        for entry in targets:
            result = self._stop_one(entry, client.peer, force)
            results.append({"id": entry.id, "name": entry.name, "result": result})
            if result in ("requested", "already stopping") and wait:
                waiting.append(entry)
        if not waiting:
            client.respond({"results": results})
            return
        pending = {entry.id for entry in waiting}
        collector = _StopCollector(client, pending, [r for r in results if r["id"] not in pending])
        for entry in waiting:
            entry.stop_waiters.append(collector)

    def _stop_one(self, entry: VmEntry, peer: Peer, force: bool) -> str:
        """vmd.c 1.169 TERMINATE_VM_REQUEST: the VM's state is checked before the user's permission
        (already stopping without -f: EALREADY; not running: EINVAL; then EPERM)."""
        if entry.state == STOPPING and not force:
            return "already stopping"
        if not entry.running:
            return "not running"
        if not entry.permitted(peer):
            return "not permitted"
        assert entry.process is not None
        entry.state = STOPPING
        if force:
            entry.process.kill()
        else:
            entry.process.send("shutdown")
            process = entry.process
            entry.stop_timer = self.call_later(STOP_REQUEST_TIMEOUT, process.kill)
        return "requested"

    def cmd_wait(self, client: Client, request: dict[str, Any]) -> None:
        """WAIT_VM_REQUEST shares TERMINATE's checks in vmd.c 1.169: a VM that is not running is EINVAL
        (vmctl: `failed: Invalid argument`), before the permission check. Waiting for a VM that is
        stopping is allowed here; vmd.c refuses it with EALREADY."""
        entry = self._target(request)
        if not entry.running:
            raise RequestError.from_errno(errno.EINVAL)
        if not entry.permitted(client.peer):
            raise RequestError.from_errno(errno.EPERM)
        entry.stop_waiters.append(_WaitReply(client, entry.id, entry.name))

    def _client_gone(self, client: Client) -> None:
        """A client closed: forget what it was waiting for, so that nothing keeps it (or its buffers)."""
        for entry in self.registry.entries.values():
            entry.start_waiters[:] = [c for c in entry.start_waiters if c is not client]
            entry.stop_waiters[:] = [w for w in entry.stop_waiters if w.client is not client]

    def cmd_pause(self, client: Client, request: dict[str, Any]) -> None:
        self._pause(client, request, pause=True)

    def cmd_unpause(self, client: Client, request: dict[str, Any]) -> None:
        self._pause(client, request, pause=False)

    def _pause(self, client: Client, request: dict[str, Any], pause: bool) -> None:
        """pause_vm / unpause_vm: the VM process stops or restarts its vCPUs.

        As in OpenBSD: the permission is checked first (vmd.c 1.169); a VM that is not running is unknown
        to the vmm process, ENOENT (vmm.c 1.133); pausing a paused VM or unpausing a running one succeeds
        and changes nothing (vm.c pause_vm/unpause_vm return early, the answer is a success). A VM still
        starting or already stopping cannot be paused here (EINVAL)."""
        entry = self._target(request)
        if not entry.permitted(client.peer):
            raise RequestError.from_errno(errno.EPERM)
        if entry.process is None:
            raise RequestError.from_errno(errno.ENOENT)
        if entry.state != (PAUSED if pause else RUNNING):
            if entry.state != (RUNNING if pause else PAUSED):
                raise RequestError.from_errno(errno.EINVAL)
            entry.process.send("pause" if pause else "unpause")
            entry.state = PAUSED if pause else RUNNING
        log.info("%s vm %d successfully", "paused" if pause else "unpaused", entry.id)
        client.respond({"id": entry.id})

    # -- root-only ------------------------------------------------------------------------------------
    def cmd_load(self, client: Client, request: dict[str, Any]) -> None:
        path = request.get("path")
        if not isinstance(path, str) or not path:
            raise RequestError("EINVAL", "missing path")
        self._configure_or_fail(path, replace=False)
        client.respond({})

    def cmd_reload(self, client: Client, request: dict[str, Any]) -> None:
        self._configure_or_fail(self.config_path, replace=True)
        client.respond({})

    def _configure_or_fail(self, path: str, replace: bool) -> None:
        try:
            self.configure(path, replace)
        except ConfigError as error:
            for line in error.errors:
                log.warning("%s", line)
            raise RequestError("EINVAL", error.errors[0] if error.errors else "invalid configuration") from None

    def cmd_reset(self, client: Client, request: dict[str, Any]) -> None:
        what = request.get("what", "all")
        if what not in ("all", "switches", "vms"):
            raise RequestError("EINVAL", f"invalid reset target {what!r}")
        if what in ("all", "switches") and self.launcher.has_network:
            self.launcher.network().teardown()
        if what in ("all", "vms"):
            for entry in list(self.registry.entries.values()):
                if entry.process is not None:
                    entry.state = STOPPING
                    entry.process.kill()
                entry.configured = False
                if not entry.running:
                    self.registry.remove(entry)
            self._autostart.clear()
            self.registry.reset_ids()
        client.respond({})

    def cmd_log(self, client: Client, request: dict[str, Any]) -> None:
        level = request.get("level")
        if level not in ("brief", "verbose"):
            raise RequestError("EINVAL", f"invalid log level {level!r}")
        self.verbose = 2 if level == "verbose" else 0
        logging.getLogger("vmd").setLevel(logging.DEBUG if level == "verbose" else logging.INFO)
        client.respond({})

    # -- the loop -------------------------------------------------------------------------------------
    def signal_received(self, number: int) -> None:
        """Called from the signal handler: only writes to the self-pipe."""
        try:
            os.write(self._signal_w, bytes([number]))
        except OSError:
            pass

    def _on_signal(self, mask: int) -> None:
        try:
            data = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for number in data:
            if number == signal.SIGHUP:
                log.info("reload requested with SIGHUP")
                try:
                    self.configure(self.config_path, replace=True)
                except ConfigError as error:
                    for line in error.errors:
                        log.warning("%s", line)
            elif number in (signal.SIGTERM, signal.SIGINT):
                self.shutdown()

    def shutdown(self) -> None:
        """SIGTERM: ask every VM to shut down, force those still running after STOP_TIMEOUT, then exit."""
        if self._quit:
            return
        log.info("terminating")
        self._quit = True
        self._quit_deadline = time.monotonic() + STOP_TIMEOUT
        self._autostart.clear()
        for entry in self.registry.entries.values():
            if entry.process is not None:
                entry.state = STOPPING
                entry.process.send("shutdown")

    def run(self) -> None:
        try:
            self._loop()
        finally:
            if self.launcher.has_network:
                self.launcher.network().teardown()
                self.launcher.network().close()

    def _loop(self) -> None:
        while True:
            if self._quit:
                running = [e for e in self.registry.entries.values() if e.process is not None]
                if not running:
                    break
                if self._quit_deadline is not None and time.monotonic() > self._quit_deadline:
                    for entry in running:
                        assert entry.process is not None
                        entry.process.kill()
                    self._quit_deadline = None
            timeout = self._run_timers()
            if self._quit:
                timeout = 0.5 if timeout is None else min(timeout, 0.5)
            for key, mask in self.selector.select(timeout):
                try:
                    key.data(mask)
                except Exception as error:  # a bug in one handler must not end vmd and its VMs
                    log.error("event handler failed: %s: %s", type(error).__name__, error)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.control.shutdown()


class _WaitReply:
    """vmctl wait: answers its client when the VM stops. A plain object (no closure, no class made per
    request), so that forgetting it frees the client at once."""

    def __init__(self, client: Client, vm_id: int, name: str) -> None:
        self.client, self.vm_id, self.name = client, vm_id, name

    def respond(self, payload: dict[str, Any]) -> None:
        self.client.respond({"id": self.vm_id, "name": self.name})

    def fail(self, error: RequestError) -> None:
        self.client.fail(error)


class _StopCollector:
    """vmctl stop -w: one answer when every VM it asked to stop has stopped."""

    def __init__(self, client: Client, pending: set[int], collected: list[dict[str, Any]]) -> None:
        self.client, self.pending, self.collected = client, pending, collected

    def respond(self, payload: dict[str, Any]) -> None:
        for row in payload["results"]:
            self.pending.discard(row["id"])
            self.collected.append(row)
        if not self.pending:
            self.client.respond({"results": self.collected})

    def fail(self, error: RequestError) -> None:
        self.respond({"results": []})


def _printable(value: object) -> str:
    """A name from a request, for the log: as it is when it is a valid VM name, else quoted with escapes
    (a newline must not forge a log line)."""
    if isinstance(value, str) and check_vm_name(value) is None:
        return value
    return ascii(value)[:80]


def _word(value: object) -> str:
    """A short word a VM process reported, for the log: anything else is '?'."""
    if isinstance(value, str) and 0 < len(value) <= 32 and value.isascii() and value.isprintable():
        return value
    return "?"


def _check_start_fields(fields: dict[str, Any]) -> None:
    """The types docs/protocol.md gives start's fields: anything else is EINVAL, before vmd acts on it."""
    def invalid(key: str) -> RequestError:
        return RequestError("EINVAL", f"invalid field {key}")

    for key, value in fields.items():
        if key in ("kernel", "initrd", "append", "cpu", "cdrom"):
            ok = isinstance(value, str)
        elif key in ("memory", "vcpus", "nics", "local_nics"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif key == "boot_device":
            ok = value in ("disk", "cdrom", "net")
        elif key in ("switches", "networks"):
            ok = isinstance(value, list) and all(isinstance(name, str) and name for name in value)
        else:  # disks
            ok = isinstance(value, list) and all(
                isinstance(disk, dict) and isinstance(disk.get("path"), str)
                and disk.get("format") in (None, "raw", "qcow2")
                and isinstance(disk.get("read_only", False), bool) for disk in value)
        if not ok:
            raise invalid(key)
        if key == "cpu":  # vmctl checks the model too; a client that did not is told what is wrong
            try:
                parse_cpu_model(value)
            except CpuModelError as error:
                raise RequestError("EINVAL", str(error)) from None


__all__ = ["Daemon", "Owner"]
