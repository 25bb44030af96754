"""The one JSON decoder for what vmd reads from others (control requests, VM processes' messages, vmd's
answers in vmctl): bounded in size and nesting depth before json.loads sees the text, so a line of a
thousand `[` is refused with a message instead of raising RecursionError out of the event loop.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from typing import Any

from vmd.limits import JSON_DEPTH_MAX

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes included
# Brackets kept as 2 (opening) and 0 (closing), everything else deleted: the running sum of the first k
# bytes minus k is the nesting depth after k brackets.
_DEPTH_TABLE = bytes(2 if b in b"[{" else 0 for b in range(256))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonLimitError(ValueError):
    """A message too long or nested too deeply; str() is the reason ("too long", "nested too deeply")."""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in data, brackets inside strings not counted. An
    unterminated string counts its brackets: such text is not JSON anyway."""
    brackets = data.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= 1:  # the common case; 1 may be one too many
        return len(brackets) and 1
    brackets = _STRING.sub(b'""', data).translate(_DEPTH_TABLE, _NOT_BRACKETS)
    return max(map(operator.sub, itertools.accumulate(brackets), itertools.count(1)), default=0)


def loads(data: bytes | bytearray | str, max_size: int, max_depth: int = JSON_DEPTH_MAX) -> Any:
    """json.loads for untrusted text; raises JsonLimitError past the bounds, ValueError if it is not JSON."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > max_size:
        raise JsonLimitError("too long")
    if nesting_depth(raw) > max_depth:
        raise JsonLimitError("nested too deeply")
    try:
        return json.loads(raw)
    except RecursionError:  # cannot happen below the depth bound; kept so that it never escapes
        raise JsonLimitError("nested too deeply") from None
