"""JSON for the columns that hold user values (args, kwargs, result): orjson on the hot path, the json
module where the two differ, so that what is read back is what the json module would have read.

- orjson refuses what json accepts (non-string dict keys, integers beyond 64 bits): such values go
  through json, which converts or refuses them as it always did;
- orjson writes NaN and infinities as ``null`` where json writes ``NaN``/``Infinity``: a value holding
  one is written by json, so it reads back as it was stored; orjson's reader refuses those tokens,
  and a value it cannot read is read again by json (a corrupt value still raises ``ValueError``);
- orjson's reader turns an integer beyond 64 bits into a float, silently: text with a run of 19 or
  more digits is read by json (an exact int, as it was written).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_json_encode = json.JSONEncoder(separators=(",", ":")).encode
_LONG_B = re.compile(rb"\d{19}")
_LONG_S = re.compile(r"\d{19}")


def _non_finite(value: Any) -> bool:
    t = type(value)
    if t is float:
        return not math.isfinite(value)
    if t is list or t is tuple:
        return any(_non_finite(v) for v in value)
    if t is dict:
        return any(_non_finite(v) for v in value.values())
    return False


def dumps(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes, as ``json.dumps(obj, separators=(",", ":"))`` writes it."""
    t = type(obj)
    if t is not str and t is not int and t is not bool and obj is not None and _non_finite(obj):
        return _json_encode(obj).encode()
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: a key or an integer json takes
        return _json_encode(obj).encode()


def loads(raw: bytes | str) -> Any:
    """Decode JSON; ``ValueError`` if it is not JSON."""
    if (_LONG_S if isinstance(raw, str) else _LONG_B).search(raw) is not None:
        return json.loads(raw)  # an integer orjson would read as a float, perhaps
    try:
        return orjson.loads(raw)
    except ValueError:  # NaN, Infinity, a big integer... or not JSON at all
        return json.loads(raw)
