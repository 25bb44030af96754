"""pytest plugin: tests marked `hwvirt` need a hardware KVM (VT-x or AMD-V) to run real operating systems.

Where this machine's /dev/kvm is one (or inside the test host), they run here like any other test. Where it
is not, they are taken out of the normal run and, once it is over, run together in one boot of the
hardware-virtualization test host (tests/hwvirt/testhost.py); their reports come back and are shown here
as if they had run here, so `pytest` passes or fails on them as usual.

--hwvirt=auto (the default; $VMD_HWVIRT overrides): as above. here: run them on this machine's KVM whatever
it is. testhost: always in the test host. skip: do not run them.

Bounds, so that one stuck guest or a failing test host costs one test, not the run: each phase (setup, call,
teardown) of a hwvirt test has TEST_TIMEOUT seconds ($VMD_HWVIRT_TEST_TIMEOUT), after which it fails with the
stack it was stuck in; the proxied run as a whole has BUDGET seconds ($VMD_HWVIRT_TIMEOUT). A test host that
dies or goes silent gives the test it was running one more try: a fresh one runs it first and then the tests
still to run (at most MAX_BOOTS boots); the test fails if that host fails under it too.

A test that fails in a test host whose kernel lived through the run also gets one more try, in a fresh test
host, when the budget still holds the time it took: emulated nested SVM has broken the test host's kernel
without killing it (after a 4-vCPU guest, the next guest never printed a line), which is no verdict on vmd.
Its reports are held back until it has passed or failed for good; a pass on the second try says so in one
line that names the first failure, which the run's log keeps in full. Tests marked `hwvirt_last` run after
the others, so that a guest known to upset the test host's kernel cannot take the rest with it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from types import FrameType

import pytest

from tests.hwvirt.testhost import (
    CACHE,
    ROOT,
    TestHost,
    TestHostDied,
    TestHostError,
    TestHostHung,
    inside_test_host,
    kvm_is_hardware,
)

PROXIED = pytest.StashKey[list[pytest.Item]]()
MODES = ("auto", "here", "testhost", "skip")
BUDGET = float(os.environ.get("VMD_HWVIRT_TIMEOUT", 28 * 60))  # seconds for the whole proxied run, boots included
TEST_TIMEOUT = float(os.environ.get("VMD_HWVIRT_TEST_TIMEOUT", 600))  # seconds for one phase of one test
MAX_BOOTS = 4  # test hosts booted in one run: the first, and fresh ones after a failure of the host or a test
LOGS = CACHE / "runs"  # one pair of logs per run (pytest output, the test host's console): runs may overlap
KEEP_LOGS = 10


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hwvirt", choices=MODES, default=os.environ.get("VMD_HWVIRT", "auto"),
                     help="where tests that need a hardware KVM run (default: auto)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hwvirt: needs a hardware KVM; runs in the test host where there is none")
    config.addinivalue_line("markers", "hwvirt_last: a hwvirt test that runs after every other one")


def _mode(config: pytest.Config) -> str:
    mode = str(config.getoption("hwvirt"))
    if mode == "auto":
        return "here" if kvm_is_hardware() or inside_test_host() else "testhost"
    return mode


class _Alarm:
    """SIGALRM after TEST_TIMEOUT seconds fails the phase where it is; a stack dump follows if it is stuck where
    Python cannot raise (inside a C call that does not return on a signal)."""

    def __init__(self, item: pytest.Item, phase: str) -> None:
        self.what = f"the {phase} of {item.name}"
        self.armed = item.get_closest_marker("hwvirt") is not None and hasattr(signal, "SIGALRM")

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        pytest.fail(f"{self.what} ran past {TEST_TIMEOUT:.0f} s ($VMD_HWVIRT_TEST_TIMEOUT)", pytrace=True)

    def __enter__(self) -> None:
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
            faulthandler.dump_traceback_later(TEST_TIMEOUT + 60, exit=False)

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            signal.signal(signal.SIGALRM, self.previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    with _Alarm(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    with _Alarm(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    with _Alarm(item, "teardown"):
        return (yield)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly:
        return
    items.sort(key=lambda item: item.get_closest_marker("hwvirt_last") is not None)  # stable: the rest keep order
    mode = _mode(config)
    if mode == "here":
        return
    hardware = [item for item in items if item.get_closest_marker("hwvirt") is not None]
    if mode == "skip":
        for item in hardware:
            item.add_marker(pytest.mark.skip(reason="needs a hardware KVM (--hwvirt=skip)"))
        return
    if hardware:
        chosen = set(hardware)
        items[:] = [item for item in items if item not in chosen]
        config.stash[PROXIED] = hardware


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    result = yield  # the tests that run here, first
    proxied = session.config.stash.get(PROXIED, [])
    if proxied and not session.shouldstop and not session.shouldfail:
        # they were taken out of the session's items, which pytest counts: a run of nothing but hwvirt tests
        # would exit 5, "no tests collected", whatever their outcome
        session.testscollected += len(proxied)
        _run_in_test_host(session, proxied)
    return result


class _Relay:
    """Replays the reports of the inner run through this session's hooks. A test's reports are held until its
    teardown: a failure may yet be retried in a fresh test host (deferred), and then only the outcome of the
    second try is shown."""

    def __init__(self, session: pytest.Session, items: list[pytest.Item], say: Callable[[str], None]) -> None:
        self.session = session
        self.say = say
        self.items = {item.nodeid: item for item in items}
        self.started: set[str] = set()
        self.finished: set[str] = set()
        self.running: str | None = None  # the test the inner run last said it started
        self.seconds: dict[str, float] = {}
        self.retried: set[str] = set()  # tests already given a second test host after theirs failed
        self.held: dict[str, list[pytest.TestReport]] = {}  # reports of the test running now
        self.deferred: dict[str, tuple[int, list[pytest.TestReport]]] = {}  # failed tests waiting for a second
        # try: the test host they failed in, and their reports there
        self.host = 1  # the test host running now, counted from 1

    def _start(self, item: pytest.Item) -> None:
        if item.nodeid not in self.started:
            self.started.add(item.nodeid)
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)

    def report(self, line: bytes) -> None:
        try:
            data = json.loads(line)
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("start"), str):
            self.running = data["start"]
            return
        config = self.session.config
        report = config.hook.pytest_report_from_serializable(config=config, data=data)
        if not isinstance(report, pytest.TestReport):
            return
        if isinstance(report.longrepr, list):
            # A skip's (path, line, reason) crossed as a JSON list; the terminal's summary wants the tuple back.
            report.longrepr = tuple(report.longrepr)
        item = self.items.get(report.nodeid)
        if item is None or item.nodeid in self.finished:
            return
        self.seconds[item.nodeid] = self.seconds.get(item.nodeid, 0.0) + report.duration
        self.held.setdefault(item.nodeid, []).append(report)
        if report.when != "teardown":
            return
        reports = self.held.pop(item.nodeid)
        first = self.deferred.pop(item.nodeid, None)
        if any(r.failed for r in reports) and item.nodeid not in self.retried:
            self.retried.add(item.nodeid)
            self.deferred[item.nodeid] = (self.host, reports)
            if self.running == item.nodeid:
                self.running = None
            return
        if first is not None and not any(r.failed for r in reports):
            failed_in, failure = first
            self.say(f"hwvirt: {item.name} failed in test host {failed_in} and passed in test host {self.host};"
                     f" its first failure: {_first_line(failure)} (in full in the run's log)")
        self._emit(item, reports)

    def _emit(self, item: pytest.Item, reports: list[pytest.TestReport]) -> None:
        self._start(item)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        self.finish(item)

    def finish(self, item: pytest.Item) -> None:
        self.finished.add(item.nodeid)
        if self.running == item.nodeid:
            self.running = None
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def unfinished(self) -> list[pytest.Item]:
        return [item for nodeid, item in self.items.items() if nodeid not in self.finished]

    def retry_seconds(self) -> float:
        """What the failed tests waiting for a second try took on their first."""
        return sum(self.seconds.get(nodeid, 0.0) for nodeid in self.deferred)

    def give_up_retries(self) -> None:
        """No second try after all (no time, or no host): the first failures are the verdict."""
        for nodeid, (_host, reports) in list(self.deferred.items()):
            del self.deferred[nodeid]
            self._emit(self.items[nodeid], reports)

    def fail_running(self, why: str, retry: bool = False) -> str | None:
        """The test the test host was running when it failed: run again in the next host if retry and it has
        not been retried yet (returns its id), else failed with why."""
        item = self.items.get(self.running or "")
        self.running = None
        if item is None or item.nodeid in self.finished:
            return None
        self.held.pop(item.nodeid, None)
        self.deferred.pop(item.nodeid, None)
        if retry and item.nodeid not in self.retried:
            self.retried.add(item.nodeid)
            return item.nodeid
        self._fail(item, f"the test host failed while it ran this test: {why}")
        return None

    def _fail(self, item: pytest.Item, longrepr: str) -> None:
        report = pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, "failed", longrepr,
                                   "call")
        self._emit(item, [report])

    def times(self) -> str:
        ranked = sorted(self.seconds.items(), key=lambda pair: -pair[1])
        return ", ".join(f"{nodeid.rsplit('::', 1)[-1]} {seconds:.0f} s" for nodeid, seconds in ranked)

    def fail_rest(self, why: str, skip: bool = False) -> None:
        """Every test that did not report: failed, with why (the host died, timed out, or never came up), or
        skipped when the inner run stopped early on purpose (--maxfail). A test waiting for its second try
        keeps its first failure."""
        self.give_up_retries()
        for item in self.unfinished():
            self.held.pop(item.nodeid, None)
            if not skip:
                self._fail(item, f"not run to its end in the test host: {why}")
                continue
            path, line, _name = item.location
            report = pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, "skipped",
                                       (str(path), (line or 0) + 1, f"Skipped: {why}"), "call")
            self._emit(item, [report])


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def _first_line(reports: list[pytest.TestReport]) -> str:
    for report in reports:
        if report.failed:
            text = str(report.longrepr)
            lines = [line.strip() for line in text.splitlines() if line.strip().startswith("E ")]
            return (lines[0][1:].strip() if lines else text.strip().splitlines()[-1])[:300]
    return "(none)"


def _run_in_test_host(session: pytest.Session, items: list[pytest.Item]) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(text: str) -> None:
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text, file=sys.stderr)

    relay = _Relay(session, items, say)
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in sorted(LOGS.glob("*.log"), key=lambda path: path.stat().st_mtime)[:-2 * KEEP_LOGS]:
        old.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    log_path = LOGS / f"{stamp}-pytest.log"
    say(f"hwvirt: {len(items)} tests need a hardware KVM; running them in the test host"
        f" (QEMU TCG with AMD SVM), output in {log_path}")
    started = time.monotonic()
    # Byte-compile the tree here, natively, where $PYTHONDONTWRITEBYTECODE may have kept it from being done:
    # in the test host every module not compiled is compiled again, under TCG, by each new process.
    # A child process does it: a worker pool started from inside this pytest run cannot pickle its work items
    # once some test has reloaded concurrent.futures.
    try:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(ROOT / "src"), str(ROOT / "tests")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        say("hwvirt: byte-compiling the tree took over 300 s; the test host compiles what is left")
    why = "the run ended before it"
    with open(log_path, "wb") as log:

        def keep(chunk: bytes) -> None:
            log.write(chunk)
            log.flush()

        for boot in range(1, MAX_BOOTS + 1):
            left = BUDGET - (time.monotonic() - started)
            todo = relay.unfinished()
            if not todo:
                break
            if left < 120:
                why = f"the hwvirt budget of {BUDGET:.0f} s ($VMD_HWVIRT_TIMEOUT) was spent before it could run"
                break
            argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "tests.hwvirt.report", "-p",
                    "no:cacheprovider", "-q", "-rfEs", "--hwvirt=here", *[item.nodeid for item in todo]]
            if session.config.option.maxfail:
                argv.append(f"--maxfail={session.config.option.maxfail}")
            relay.host = boot
            try:
                with TestHost(log=LOGS / f"{stamp}-console-{boot}.log") as host:
                    say(f"hwvirt: test host {boot} up in {host.boot_seconds:.1f} s; {len(todo)} tests to run")
                    result = host.run(argv, timeout=left - host.boot_seconds, on_output=keep,
                                      on_report=relay.report)
                    console = host.console_tail(12)
                if result.status not in (0, 1):
                    why = f"pytest in the test host exited with status {result.status}; its output:\n" \
                          + result.output[-4000:]
                    break
                if result.status == 1 and session.config.option.maxfail:
                    relay.fail_rest("not run: the run stopped at --maxfail", skip=True)
                    break
                why = f"the test host's pytest did not report it (see {log_path})"
                if not relay.deferred:
                    break
                left = BUDGET - (time.monotonic() - started)
                if boot == MAX_BOOTS or left < relay.retry_seconds() + 90:
                    say(f"hwvirt: no time left to give {len(relay.deferred)} failed tests a second try")
                    break
                say(f"hwvirt: {len(relay.deferred)} tests failed in test host {boot}; each gets a second try in a"
                    f" fresh one. The test host's console ended with:\n{_indent(console)}")
            except (TestHostDied, TestHostHung) as error:
                # The test host's own kernel failing (nested SVM under TCG has panicked it with a stack
                # overflow in its exception entry, once in several hundred seconds of guests) is not the
                # test's verdict: the test gets one more host; a second failure there fails it.
                again = relay.fail_running(str(error), retry=True)
                lines = str(error).splitlines()
                say(f"hwvirt: test host {boot} failed ({lines[0]})"
                    + (f"; {again.rsplit('::', 1)[-1]} runs again in a fresh one" if again else "")
                    + "\n" + _indent("\n".join(lines[1:][-12:])))
                why = str(error)
            except TimeoutError as error:
                relay.fail_running(f"{error}: the hwvirt budget of {BUDGET:.0f} s ($VMD_HWVIRT_TIMEOUT) is spent")
                why = f"the hwvirt budget of {BUDGET:.0f} s ($VMD_HWVIRT_TIMEOUT) was spent before it could run"
                break
            except (TestHostError, OSError) as error:
                why = str(error)  # the host could not be built or booted: another try would fare the same
                break
    relay.fail_rest(why)
    say(f"hwvirt: {len(items)} tests in {time.monotonic() - started:.0f} s in the test host: {relay.times()}")
