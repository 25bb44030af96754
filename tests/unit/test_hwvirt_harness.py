"""The bounds of the hwvirt harness (tests/hwvirt): the test host's agent answers when its command exits and
beats while it runs; a stuck hwvirt test fails after its timeout with where it was stuck, and the tests
after it still run."""

from __future__ import annotations

import base64
import os
import signal
import time

import pytest

from tests.hwvirt import agent, plugin

pytest_plugins = ["pytester"]


class Channel:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def send(self, message: dict[str, object]) -> None:
        self.sent.append(message)

    def output(self) -> bytes:
        return b"".join(base64.b64decode(str(m["out"])) for m in self.sent if "out" in m)


def test_the_agent_answers_when_its_command_exits_though_a_child_keeps_the_pipe() -> None:
    channel = Channel()
    started = time.monotonic()
    agent.run(channel, {"op": "run", "argv": ["sh", "-c", "sleep 60 & echo child=$!; echo done"], "timeout": 120})
    assert time.monotonic() - started < 15
    assert channel.sent[-1] == {"status": 0}
    output = channel.output().decode()
    assert "done" in output
    os.kill(int(output.split("child=")[1].split()[0]), signal.SIGKILL)


def test_the_agent_beats_while_a_silent_command_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "HEARTBEAT", 0.3)
    channel = Channel()
    agent.run(channel, {"op": "run", "argv": ["sleep", "2"], "timeout": 60})
    assert sum(1 for m in channel.sent if "alive" in m) >= 3
    assert channel.sent[-1] == {"status": 0}


def test_the_agent_kills_a_command_past_its_timeout() -> None:
    channel = Channel()
    started = time.monotonic()
    agent.run(channel, {"op": "run", "argv": ["sleep", "60"], "timeout": 1})
    assert time.monotonic() - started < 15
    assert channel.sent[-1] == {"status": 124}
    assert b"timed out" in channel.output()


def test_a_stuck_hwvirt_test_fails_after_its_timeout_and_the_next_one_runs(pytester: pytest.Pytester,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "TEST_TIMEOUT", 1.0)
    pytester.makepyfile("""
import time
import pytest

@pytest.mark.hwvirt
def test_stuck():
    time.sleep(60)

@pytest.mark.hwvirt
def test_after():
    pass

def test_not_hwvirt_is_not_bounded():
    time.sleep(1.5)
""")
    started = time.monotonic()
    result = pytester.runpytest_inprocess("-p", "tests.hwvirt.plugin", "--hwvirt=here", "-p", "no:cacheprovider")
    assert time.monotonic() - started < 30
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*time.sleep(60)*", "*the call of test_stuck ran past 1 s*"])


class _LocalTestHost:
    """Stands in for the test host: runs the inner pytest here; the first one 'dies' when a test named
    test_crash starts, as a test host whose kernel panics would."""

    boots = 0

    def __init__(self, log: object = None) -> None:
        self.boot_seconds = 0.0

    def __enter__(self) -> _LocalTestHost:
        type(self).boots += 1
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def console_tail(self, lines: int = 30) -> str:
        return "[  1.0] kvm: the console of a stand-in test host"

    def run(self, argv: list[str], timeout: float, on_output: object, on_report: object) -> object:
        import subprocess
        import sys

        read, write = os.pipe()
        env = dict(os.environ, VMD_HWVIRT_REPORT_FD=str(write), PYTHONPATH=str(plugin.ROOT))
        process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tests.hwvirt.plugin", *argv[3:]], env=env,
                                   pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        os.close(write)
        with os.fdopen(read, "rb") as reports:
            for line in reports:
                on_report(line)  # type: ignore[operator]
                if type(self).boots == 1 and b'"start"' in line and b"test_crash" in line:
                    process.kill()
                    process.wait()
                    raise plugin.TestHostDied("the test host's kernel failed (BUG: stack guard page was hit)")
        status = process.wait()
        return type("Result", (), {"status": status, "output": ""})()


@pytest.fixture
def local_host(monkeypatch: pytest.MonkeyPatch) -> type[_LocalTestHost]:
    """The plugin's test host replaced by _LocalTestHost, its boots counted from 0."""
    monkeypatch.setattr(plugin, "TestHost", _LocalTestHost)
    monkeypatch.setattr(_LocalTestHost, "boots", 0)
    return _LocalTestHost


def test_a_test_whose_host_died_runs_again_once_and_skips_come_back_as_skips(
        pytester: pytest.Pytester, local_host: type[_LocalTestHost]) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.hwvirt
def test_first():
    pass

@pytest.mark.hwvirt
def test_skipped():
    pytest.skip("the emulated host cannot do that")

@pytest.mark.hwvirt
def test_crash():
    pass

@pytest.mark.hwvirt
def test_last():
    pass
""")
    result = pytester.runpytest_inprocess("-p", "tests.hwvirt.plugin", "--hwvirt=testhost", "-p",
                                          "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["*test host 1 failed (the test host's kernel failed*); test_crash runs again*",
                                 "*SKIPPED*the emulated host cannot do that*"])
    assert _LocalTestHost.boots == 2


def test_a_failed_test_gets_a_second_try_in_a_fresh_host_and_only_its_outcome_there_counts(
        pytester: pytest.Pytester, local_host: type[_LocalTestHost]) -> None:
    pytester.makepyfile("""
import os
import pytest

@pytest.mark.hwvirt
def test_flaky():
    if not os.path.exists("tried"):
        open("tried", "w").close()
        assert False, "the guest never printed a line"

@pytest.mark.hwvirt
def test_broken():
    assert 6 * 7 == 41, "arithmetic is off"

@pytest.mark.hwvirt
def test_fine():
    pass
""")
    result = pytester.runpytest_inprocess("-p", "tests.hwvirt.plugin", "--hwvirt=testhost", "-p",
                                          "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*2 tests failed in test host 1; each gets a second try in a fresh one*",
        "*test_flaky failed in test host 1 and passed in test host 2; its first failure: AssertionError: the guest"
        " never printed a line*",
        "*AssertionError: arithmetic is off*", "*FAILED*test_broken*"])
    assert _LocalTestHost.boots == 2


def test_no_second_try_when_the_budget_cannot_hold_it(pytester: pytest.Pytester, local_host: type[_LocalTestHost],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "BUDGET", 200.0)  # less than the failed test's time and the margin
    pytester.makepyfile("""
import time
import pytest

@pytest.mark.hwvirt
def test_slow_and_failing():
    time.sleep(0.2)
    assert False, "first and final"
""")
    monkeypatch.setattr(plugin._Relay, "retry_seconds", lambda self: 150.0)
    result = pytester.runpytest_inprocess("-p", "tests.hwvirt.plugin", "--hwvirt=testhost", "-p",
                                          "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no time left to give 1 failed tests a second try*",
                                 "*AssertionError: first and final*", "*FAILED*test_slow_and_failing*"])
    assert _LocalTestHost.boots == 1


def test_tests_marked_hwvirt_last_run_after_the_others(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="""
import pytest

pytestmark = [pytest.mark.hwvirt, pytest.mark.hwvirt_last]

def test_upsets_the_host():
    pass
""", test_b="""
import pytest

@pytest.mark.hwvirt
def test_ordinary():
    pass
""")
    result = pytester.runpytest_inprocess("-p", "tests.hwvirt.plugin", "--hwvirt=here", "-p", "no:cacheprovider",
                                          "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_b.py::test_ordinary PASSED*", "*test_a.py::test_upsets_the_host PASSED*"])


def test_a_stuck_test_host_kernel_is_told_from_a_slow_one() -> None:
    # As the test host's console showed it when one of its CPUs stayed inside a nested guest for good
    # while the agent's heartbeat went on from the other.
    from tests.hwvirt.testhost import kernel_trouble

    slow = ("testhost: kvm npt=Y, starting /work/main/tests/hwvirt/agent.py\n"
            "[  103.239554] kvm [142]: vcpu0, guest rIP: 0xffffffff8107e744 Unhandled WRMSR(0xc0010007) = 0xffff\n"
            "[  295.560013] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
            "[  295.561261] rcu: \t0-....: (0 ticks this GP) idle=302c/1/0x4000000000000000 softirq=15308/15308\n")
    assert kernel_trouble(slow) is None  # one stall report: maybe only a loaded machine
    stuck = slow + ("[  358.577581] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
                    "[  358.578083] rcu: \t0-....: (0 ticks this GP) idle=302c/1/0x4000000000000000\n")
    assert kernel_trouble(stuck) == "[  358.577581] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
    hung = slow.splitlines()[0] + "\n[  484.269967] INFO: task khugepaged:35 blocked for more than 120 seconds.\n"
    assert kernel_trouble(hung) == "[  484.269967] INFO: task khugepaged:35 blocked for more than 120 seconds."
    assert kernel_trouble("[ 22.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s!") is not None
