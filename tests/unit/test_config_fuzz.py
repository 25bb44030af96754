"""Property tests: whatever the text, the parser returns errors and never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmd.config import MappingResolver, parse_string
from vmd.config.lexer import KEYWORDS

RESOLVER = MappingResolver(users={"joe": 1000}, groups={"staff": 20})
PIECES = sorted(KEYWORDS) + ["{", "}", "\n", ",", "=", '"', "'", "\\", "#", "$x", "x = y", "1G", "512",
                             "-1", "/p", "tap0", "fe:e1:ba:d0:00:01", "joe:staff", "vcpus", "cpu", "host",
                             "\t", " ", "\0", "é", "\r\n", '"a b"', "include \"/nonexistent\""]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    res = parse_string(text, check_paths=False, resolver=RESOLVER)
    assert (res.config is None) == bool(res.errors)
    assert all(isinstance(e, str) and e for e in res.errors)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=80).map(" ".join))
def test_random_token_soup(text: str) -> None:
    res = parse_string(text, check_paths=False, resolver=RESOLVER, macros={"x": "memory 1G"})
    assert (res.config is None) == bool(res.errors)
    for err in res.errors:
        assert err.startswith("vm.conf:") or err.startswith("/nonexistent"), err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map(" ".join))
def test_inside_a_vm_block(body: str) -> None:
    text = f'vm "a" {{\n boot /k\n {body}\n}}\nvm "b" {{\n boot /k\n}}\n'
    res = parse_string(text, check_paths=False, resolver=RESOLVER)
    assert (res.config is None) == bool(res.errors)
