"""pytest plugin for the run inside the test host: every test report, serialized, one JSON line each, to the
file descriptor the agent names in $VMD_HWVIRT_REPORT_FD (tests/hwvirt/plugin.py replays them outside)."""

from __future__ import annotations

import json
import os

import pytest


class Reporter:
    def __init__(self, config: pytest.Config, fd: int) -> None:
        self.config, self.fd = config, fd

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        line = json.dumps(data).encode() + b"\n"
        while line:
            line = line[os.write(self.fd, line):]


def pytest_configure(config: pytest.Config) -> None:
    fd = os.environ.get("VMD_HWVIRT_REPORT_FD")
    if fd is not None:
        config.pluginmanager.register(Reporter(config, int(fd)), "hwvirt-reporter")
