"""pytest plugin: tests marked `hwvirt` need a hardware KVM (VT-x or AMD-V) to run real operating systems.

Where this machine's /dev/kvm is one (or inside the test host), they run here like any other test. Where it
is not, they are taken out of the normal run and, once it is over, run together in one boot of the
hardware-virtualization test host (tests/hwvirt/testhost.py); their reports come back and are shown here
as if they had run here, so `pytest` passes or fails on them as usual.

--hwvirt=auto (the default; $VMD_HWVIRT overrides): as above. here: run them on this machine's KVM whatever
it is. testhost: always in the test host. skip: do not run them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Generator

import pytest

from tests.hwvirt.testhost import CACHE, ROOT, TestHost, TestHostError, inside_test_host, kvm_is_hardware

PROXIED = pytest.StashKey[list[pytest.Item]]()
MODES = ("auto", "here", "testhost", "skip")
TOTAL_TIMEOUT = float(os.environ.get("VMD_HWVIRT_TIMEOUT", 45 * 60))  # seconds for the whole proxied run
LOGS = CACHE / "runs"  # one pair of logs per run (pytest output, the test host's console): runs may overlap
KEEP_LOGS = 10


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hwvirt", choices=MODES, default=os.environ.get("VMD_HWVIRT", "auto"),
                     help="where tests that need a hardware KVM run (default: auto)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hwvirt: needs a hardware KVM; runs in the test host where there is none")


def _mode(config: pytest.Config) -> str:
    mode = str(config.getoption("hwvirt"))
    if mode == "auto":
        return "here" if kvm_is_hardware() or inside_test_host() else "testhost"
    return mode


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly:
        return
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
        _run_in_test_host(session, proxied)
    return result


class _Relay:
    """Replays the reports of the inner run through this session's hooks."""

    def __init__(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        self.session = session
        self.items = {item.nodeid: item for item in items}
        self.started: set[str] = set()
        self.finished: set[str] = set()

    def report(self, line: bytes) -> None:
        try:
            data = json.loads(line)
        except ValueError:
            return
        config = self.session.config
        report = config.hook.pytest_report_from_serializable(config=config, data=data)
        if not isinstance(report, pytest.TestReport):
            return
        item = self.items.get(report.nodeid)
        if item is None:
            return
        if report.nodeid not in self.started:
            self.started.add(report.nodeid)
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        item.ihook.pytest_runtest_logreport(report=report)
        if report.when == "teardown":
            self.finish(item)

    def finish(self, item: pytest.Item) -> None:
        self.finished.add(item.nodeid)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def fail_rest(self, why: str, skip: bool = False) -> None:
        """Every test that did not report: failed, with why (the host died, timed out, or never came up), or
        skipped when the inner run stopped early on purpose (--maxfail)."""
        for nodeid, item in self.items.items():
            if nodeid in self.finished:
                continue
            if nodeid not in self.started:
                item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            path, line, _name = item.location
            longrepr: tuple[str, int, str] | str = (str(path), (line or 0) + 1, f"Skipped: {why}") if skip else \
                f"not run to its end in the test host: {why}"
            report = pytest.TestReport(nodeid, item.location, {k: 1 for k in item.keywords},
                                       "skipped" if skip else "failed", longrepr, "call")
            item.ihook.pytest_runtest_logreport(report=report)
            self.finish(item)


def _run_in_test_host(session: pytest.Session, items: list[pytest.Item]) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(text: str) -> None:
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text, file=sys.stderr)

    relay = _Relay(session, items)
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in sorted(LOGS.glob("*.log"), key=lambda path: path.stat().st_mtime)[:-2 * KEEP_LOGS]:
        old.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    log_path, console_path = LOGS / f"{stamp}-pytest.log", LOGS / f"{stamp}-console.log"
    say(f"hwvirt: {len(items)} tests need a hardware KVM; running them in the test host"
        f" (QEMU TCG with AMD SVM), output in {log_path}")
    started = time.monotonic()
    argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "tests.hwvirt.report", "-p",
            "no:cacheprovider", "-q", "-rfEs", "--hwvirt=here", *[item.nodeid for item in items]]
    if session.config.option.maxfail:
        argv.append(f"--maxfail={session.config.option.maxfail}")
    with open(log_path, "wb") as log:

        def keep(chunk: bytes) -> None:
            log.write(chunk)
            log.flush()

        try:
            with TestHost(log=console_path) as host:
                say(f"hwvirt: test host up in {host.boot_seconds:.1f} s")
                result = host.run(argv, timeout=TOTAL_TIMEOUT, on_output=keep,
                                  on_report=relay.report)
                if result.status not in (0, 1):
                    relay.fail_rest(f"pytest in the test host exited with status {result.status}; its output:\n"
                                    + result.output[-4000:])
                elif result.status == 1 and session.config.option.maxfail:
                    relay.fail_rest("not run: the run stopped at --maxfail", skip=True)
                else:
                    relay.fail_rest(f"the test host's pytest did not report it (see {log_path})")
        except (TestHostError, TimeoutError, OSError) as error:
            relay.fail_rest(str(error))
    say(f"hwvirt: {len(items)} tests in {time.monotonic() - started:.0f} s in the test host")

