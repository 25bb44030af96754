"""pytest plugin for the run inside the test host: every test report, serialized, one JSON line each, to the
file descriptor the agent names in $VMD_HWVIRT_REPORT_FD (tests/hwvirt/plugin.py replays them outside).
A test's start is a line of its own, {"start": nodeid}, so that the outside knows which test a failure of
the test host took down."""

from __future__ import annotations

import json
import os

import pytest


class Reporter:
    def __init__(self, config: pytest.Config, fd: int) -> None:
        self.config, self.fd = config, fd

    def _write(self, data: object) -> None:
        line = json.dumps(data).encode() + b"\n"
        while line:
            line = line[os.write(self.fd, line):]

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._write({"start": nodeid})

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._write(self.config.hook.pytest_report_to_serializable(config=self.config, report=report))


def pytest_configure(config: pytest.Config) -> None:
    fd = os.environ.get("VMD_HWVIRT_REPORT_FD")
    if fd is not None:
        config.pluginmanager.register(Reporter(config, int(fd)), "hwvirt-reporter")
