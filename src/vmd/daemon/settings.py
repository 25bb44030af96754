"""What vm.conf sets for vmd as a whole, and the error a configuration that cannot be loaded raises.

Below both the daemon (core.py) and the configuration loader (conf.py), which use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Settings:
    """Global settings from vm.conf."""

    socket_group: int = 0
    stagger_parallel: int = 0  # 0: number of CPUs
    stagger_delay: float = 30.0
    switches: list[Any] = field(default_factory=list)  # config.SwitchSpec
    local_prefix: Any = None  # IPv4Network; None: vm.conf's default
    local_prefix6: Any = None  # IPv6Network when `local inet6` is on
    metrics: Any = None  # config.MetricsSpec: where the Prometheus endpoint listens; None: off


class ConfigError(Exception):
    """A configuration with errors: every error line, as vmd prints them."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors[0] if errors else "invalid configuration")
        self.errors = errors
