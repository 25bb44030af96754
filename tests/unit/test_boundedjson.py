"""vmd.boundedjson: JSON from others, bounded in size and nesting before json.loads sees it."""

from __future__ import annotations

import json
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmd import boundedjson
from vmd.boundedjson import JsonLimitError, nesting_depth
from vmd.limits import CONTROL_LINE_MAX, JSON_DEPTH_MAX, VM_MESSAGE_MAX
from vmd.vmchannel import receive_message


@pytest.mark.parametrize("text, depth", [
    (b"", 0), (b"1", 0), (b'"x"', 0), (b"[]", 1), (b"{}", 1), (b"[[]]", 2), (b'{"a": [1, {"b": []}]}', 4),
    (b'["[[[[", "]]"]', 1), (b'{"a\\"[[[": "\\\\"}', 1), (b"[[],[[]],[]]", 3),
])
def test_depth_does_not_count_brackets_in_strings(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@given(json_values)
def test_depth_is_exact_for_any_json(value: object) -> None:
    text = json.dumps(value).encode()
    assert nesting_depth(text) == _depth(value) or (_depth(value) == 0 and nesting_depth(text) <= 1)
    if _depth(value) <= JSON_DEPTH_MAX:
        assert boundedjson.loads(text, 1 << 20) == value


def test_a_thousand_brackets_are_refused_not_a_recursion_error() -> None:
    for text in (b"[" * 1000, b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000,
                 b"[" * CONTROL_LINE_MAX):
        with pytest.raises(JsonLimitError, match="nested too deeply"):
            boundedjson.loads(text, CONTROL_LINE_MAX)


def test_the_depth_limit_is_exact() -> None:
    ok = b"[" * JSON_DEPTH_MAX + b"]" * JSON_DEPTH_MAX
    assert boundedjson.loads(ok, 1 << 20) is not None
    with pytest.raises(JsonLimitError):
        boundedjson.loads(b"[" + ok + b"]", 1 << 20)


def test_size_is_bounded() -> None:
    with pytest.raises(JsonLimitError, match="too long"):
        boundedjson.loads(b'"' + b"x" * 100 + b'"', 50)
    assert boundedjson.loads(b'"' + b"x" * 48 + b'"', 50) == "x" * 48


def test_not_json_is_a_value_error() -> None:
    for text in (b"{", b"\xff", b"nul", b'"\\'):
        with pytest.raises(ValueError):
            boundedjson.loads(text, 100)


def test_the_worst_line_costs_little() -> None:
    worst = b"[]" * (CONTROL_LINE_MAX // 2)
    start = time.perf_counter()
    for _ in range(10):
        nesting_depth(worst)
    assert (time.perf_counter() - start) / 10 < 0.1


def test_the_vm_channel_refuses_deep_and_long_messages() -> None:
    """vmd's end of a VM process's socket: a message nested a thousand deep was a RecursionError in vmd's
    event loop (supervisor.read_event let it through)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        theirs.send(b"[" * 1000)
        with pytest.raises(JsonLimitError, match="nested too deeply"):
            receive_message(ours)
        theirs.send(b" " * (VM_MESSAGE_MAX + 10))
        with pytest.raises(JsonLimitError, match="too long"):
            receive_message(ours)
        theirs.send(b'{"event": "running"}')
        assert receive_message(ours) == ({"event": "running"}, [])


def test_vmd_drops_a_bad_message_from_a_vm_process_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    """supervisor.read_event: a bad message is {} (ignored, the channel goes on), logged once per process."""
    from vmd.daemon.supervisor import VmProcess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        process = VmProcess(4242, -1, ours, None)  # type: ignore[arg-type]
        for _ in range(5):
            theirs.send(b"[" * 1000)
            assert process.read_event() == {}
        theirs.send(b'{"event": "running"}')
        assert process.read_event() == {"event": "running"}
        theirs.close()
        assert process.read_event() is None
    assert [r.getMessage() for r in caplog.records] == ["vm process 4242: invalid message: nested too deeply"]
