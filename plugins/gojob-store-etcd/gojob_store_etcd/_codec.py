"""JSON for the records the store writes and reads: orjson on the hot path, the json module where it differs.

Every claim and finish encodes the instance record, its running entry and its history records, and
decodes the queued record: with the json module that was a tenth of a worker's CPU, orjson takes a
tenth of that. The results are the json module's, bit for bit in meaning:

- orjson refuses what json accepts (non-string dict keys, integers beyond 64 bits): such values go
  through json, which converts or refuses them as it always did;
- orjson writes NaN and infinities as ``null`` where json writes ``NaN``/``Infinity``: an instance
  record whose user values (args, kwargs, result) hold one is written by json, so it reads back as it
  was stored; orjson's reader refuses those tokens, and a record it cannot read is read again by json
  (a corrupt record still raises ``ValueError``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

_json_encode = json.JSONEncoder(separators=(",", ":")).encode
_USER_FIELDS = ("args", "kwargs", "result")


def _non_finite(value: Any) -> bool:
    """Whether a float NaN or infinity is anywhere in ``value`` (lists, tuples, dict values)."""
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
    if type(obj) is dict:
        for f in _USER_FIELDS:
            v = obj.get(f)
            if v is not None and type(v) is not str and type(v) is not int and _non_finite(v):
                return _json_encode(obj).encode()
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: a key or an integer json takes
        return _json_encode(obj).encode()


def loads(raw: bytes | str) -> Any:
    """Decode JSON; ``ValueError`` if it is not (what ``json.loads`` raises)."""
    try:
        return orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError: NaN, Infinity, a big integer... or not JSON at all
        return json.loads(raw)
