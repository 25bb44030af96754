"""vmd.ether: the one MAC address parser (vm.conf `lladdr`, the network layer, the machine's NICs)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmd.ether import format_mac, parse_mac


@pytest.mark.parametrize("text, mac", [
    ("fe:e1:ba:d0:00:01", b"\xfe\xe1\xba\xd0\x00\x01"),
    ("FE:E1:BA:D0:0:1", b"\xfe\xe1\xba\xd0\x00\x01"),  # ether_aton(3): one or two digits, either case
    ("0:0:0:0:0:0", bytes(6)),
])
def test_parse_mac(text: str, mac: bytes) -> None:
    assert parse_mac(text) == mac


@pytest.mark.parametrize("text", [
    "", "zz:00:00:00:00:00", "fe:e1:ba:d0:00", "fe:e1:ba:d0:00:01:02", "fe:e1:ba:d0:00:100", "fe-e1-ba-d0-00-01",
    " fe:e1:ba:d0:00:01", "fe:e1:ba:d0:00:01\n", "fe:e1:ba:d0::01",
])
def test_parse_mac_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mac(text)


def test_format_mac() -> None:
    assert format_mac(b"\xfe\xe1\xba\xd0\x00\x01") == "fe:e1:ba:d0:00:01"
    with pytest.raises(ValueError):
        format_mac(b"\x00" * 5)


@given(st.binary(min_size=6, max_size=6))
def test_round_trip(mac: bytes) -> None:
    assert parse_mac(format_mac(mac)) == mac
    assert format_mac(parse_mac(format_mac(mac).upper())) == format_mac(mac)
