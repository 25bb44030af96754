"""vm.conf's `metrics` statement (our extension, docs/vm.conf.5): good lines, bad lines and their messages."""

from __future__ import annotations

import pytest

from vmd.config import MappingResolver, parse_string
from vmd.config.spec import MetricsSpec

RESOLVER = MappingResolver(users={"root": 0}, groups={"wheel": 0})


def _parse(text: str):  # type: ignore[no-untyped-def]
    return parse_string(text, check_paths=False, resolver=RESOLVER)


@pytest.mark.parametrize("line, spec", [
    ('metrics socket "/var/run/vmd.metrics"', MetricsSpec(socket="/var/run/vmd.metrics")),
    ("metrics socket /run/vmd.metrics", MetricsSpec(socket="/run/vmd.metrics")),
    ("metrics listen 127.0.0.1 port 9100", MetricsSpec(address="127.0.0.1", port=9100)),
    ('metrics listen "::1" port 9100', MetricsSpec(address="::1", port=9100)),
    ("metrics listen 0:0::1 port 1", MetricsSpec(address="::1", port=1)),
    ("metrics listen 0.0.0.0 port 65535", MetricsSpec(address="0.0.0.0", port=65535)),
])
def test_good_metrics_lines(line: str, spec: MetricsSpec) -> None:
    result = _parse(line + "\n")
    assert result.errors == [] and result.warnings == []
    assert result.config is not None and result.config.globals.metrics == spec


def test_metrics_is_off_by_default() -> None:
    result = _parse('vm "a" {\n boot "/k"\n}\n')
    assert result.config is not None and result.config.globals.metrics is None


def test_a_macro_named_metrics_still_works() -> None:
    result = _parse('metrics = "web"\nvm $metrics {\n boot "/k"\n}\n')
    assert result.errors == [] and result.config is not None
    assert result.config.vms[0].name == "web" and result.config.globals.metrics is None


@pytest.mark.parametrize("line, message", [
    ("metrics", "syntax error"),
    ("metrics socket", "syntax error"),
    ("metrics socket 12", "syntax error"),
    ("metrics listen 127.0.0.1", "syntax error"),
    ("metrics listen 127.0.0.1 9100", "syntax error"),
    ("metrics listen 127.0.0.1 port", "syntax error"),
    ("metrics listen 127.0.0.1 port x", "syntax error"),
    ("metrics listen 127.0.0.1 port 9100 extra", "syntax error"),
    ("metrics serve /x", "syntax error"),
    ("metrics socket relative.sock", "metrics socket path is not absolute: relative.sock"),
    ('metrics socket "/' + "x" * 107 + '"', "metrics socket path too long (at most 107 bytes)"),
    ("metrics listen localhost port 9100", "invalid metrics address: localhost"),
    ("metrics listen 300.1.1.1 port 9100", "invalid metrics address: 300.1.1.1"),
    ("metrics listen 127.0.0.1 port 0", "invalid metrics port: 0"),
    ("metrics listen 127.0.0.1 port 65536", "invalid metrics port: 65536"),
])
def test_bad_metrics_lines(line: str, message: str) -> None:
    result = _parse(line + "\n")
    assert result.config is None
    assert result.errors == [f"vm.conf:1: {message}"]


def test_metrics_given_twice() -> None:
    result = _parse('metrics socket "/a"\nmetrics listen 127.0.0.1 port 9100\n')
    assert result.errors == ["vm.conf:2: metrics specified more than once"]


def test_longest_socket_path_is_accepted() -> None:
    path = "/" + "x" * 106
    result = _parse(f'metrics socket "{path}"\n')
    assert result.errors == [] and result.config is not None
    assert result.config.globals.metrics == MetricsSpec(socket=path)


def test_describe() -> None:
    assert MetricsSpec(socket="/run/m").describe() == "/run/m"
    assert MetricsSpec(address="127.0.0.1", port=9100).describe() == "127.0.0.1:9100"
    assert MetricsSpec(address="::1", port=9100).describe() == "[::1]:9100"


def test_vmd_n_reports_metrics_errors_with_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vmd.daemon.conf import check_config

    conf = tmp_path / "vm.conf"
    conf.write_text('\nmetrics listen 127.0.0.1 port 99999\nmetrics socket "x"\n')
    errors, warnings = check_config(str(conf), {}, explicit=True)
    assert errors == [f"{conf}:2: invalid metrics port: 99999", f"{conf}:3: metrics socket path is not absolute: x"]
    assert warnings == []
