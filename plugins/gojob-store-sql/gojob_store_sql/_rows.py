"""Rows and records: the columns of each table, an Instance to row values and back, and how a row
that cannot be decoded is rendered for its corrupt-record report.

Every backend selects instance rows with the columns of :data:`INSTANCE_COLUMNS` in that order, history
rows with :data:`HISTORY_COLUMNS` and log rows with :data:`LOG_COLUMNS`; a row is any sequence
(an asyncpg ``Record``, a ``sqlite3`` tuple).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gojob_core import Instance, LogRecord, StateRecord, StoreError
from gojob_core._instance import _FIELDS as _INSTANCE_FIELDS
from gojob_core._state import LogLevel, State

from . import _codec

__all__ = [
    "HISTORY_COLUMNS",
    "INSTANCE_COLUMNS",
    "LOG_COLUMNS",
    "EXTRA_FIELDS",
    "MUTABLE_COLUMNS",
    "decode_history",
    "decode_instance",
    "decode_log",
    "instance_values",
    "mutable_values",
    "render_row",
]

#: every column of the instances table but ``aside``, in the order backends select them
INSTANCE_COLUMNS = (
    "uuid", "kind", "state", "priority", "ready_ts", "seq", "created_ts", "started_ts", "finished_ts",
    "attempts", "max_retries", "timeout", "node", "lease_ts", "cancel_requested", "crontab_spec",
    "timezone", "schedule_id", "abandoned", "max_abandons", "error", "args", "kwargs", "result", "extra",
)
#: the fields of this gojob_core's Instance that have no column of their own: they travel in ``extra``
#: (a JSON object, NULL when they are all empty), so that a field added to Instance is kept by every
#: node without a schema migration (``headers`` came this way)
EXTRA_FIELDS = tuple(f for f in _INSTANCE_FIELDS if f not in INSTANCE_COLUMNS)
_SLOTS = frozenset(Instance.__slots__)
_DEFAULT = Instance(uuid="", kind="")
#: the columns a transition may change (all of ``transitions``' writes), in the order of :func:`mutable_values`
MUTABLE_COLUMNS = ("state", "attempts", "started_ts", "finished_ts", "node", "lease_ts", "ready_ts", "error",
                   "result", "cancel_requested", "abandoned")
#: history rows as selected: the id first (ties in time keep the order they were written in)
HISTORY_COLUMNS = ("id", "uuid", "kind", "state", "ts", "attempt", "node", "detail")
LOG_COLUMNS = ("id", "uuid", "kind", "level", "message", "ts", "attempt", "node")

_new = object.__new__
_STATES = {s.value: s for s in State}
_LEVELS = {lv.value: lv for lv in LogLevel}
_INT64 = 2 ** 63


def _text(value: Any, name: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{name} is {type(value).__name__}, not text")
    if not value.isascii():
        value.encode("utf-8")  # a string read with surrogate escapes (bytes that are not UTF-8) raises
    return value


def _opt_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _num(value: Any, name: str) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise TypeError(f"{name} is {type(value).__name__}, not a number")


def _opt_num(value: Any, name: str) -> float | None:
    return None if value is None else _num(value, name)


def _int(value: Any, name: str) -> int:
    if type(value) is int:
        return value
    raise TypeError(f"{name} is {type(value).__name__}, not an integer")


def _json(value: Any, name: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"{name} is {type(value).__name__}, not JSON text")
    try:
        return _codec.loads(bytes(value) if isinstance(value, memoryview) else value)
    except ValueError as exc:
        raise ValueError(f"{name} is not JSON: {exc}") from None


def decode_instance(row: Sequence[Any]) -> Instance:
    """The Instance of a row of :data:`INSTANCE_COLUMNS`; ``ValueError``/``TypeError`` if it cannot be."""
    inst = _new(Instance)
    inst.uuid = _text(row[0], "uuid")
    inst.kind = _text(row[1], "kind")
    state = _STATES.get(row[2])
    if state is None:
        raise ValueError(f"unknown state {row[2]!r}")
    inst.state = state
    inst.priority = _int(row[3], "priority")
    inst.ready_ts = _num(row[4], "ready_ts")
    inst.seq = _int(row[5], "seq")
    inst.created_ts = _num(row[6], "created_ts")
    inst.started_ts = _opt_num(row[7], "started_ts")
    inst.finished_ts = _opt_num(row[8], "finished_ts")
    inst.attempts = _int(row[9], "attempts")
    inst.max_retries = _int(row[10], "max_retries")
    inst.timeout = _opt_num(row[11], "timeout")
    inst.node = _opt_text(row[12], "node")
    inst.lease_ts = _opt_num(row[13], "lease_ts")
    inst.cancel_requested = bool(row[14])
    inst.crontab_spec = _opt_text(row[15], "crontab_spec")
    inst.timezone = _opt_text(row[16], "timezone")
    inst.schedule_id = _opt_text(row[17], "schedule_id")
    inst.abandoned = _int(row[18], "abandoned")
    inst.max_abandons = None if row[19] is None else _int(row[19], "max_abandons")
    inst.error = _opt_text(row[20], "error")
    args = _json(row[21], "args")
    kwargs = _json(row[22], "kwargs")
    if type(args) is not list:
        raise TypeError(f"args is {type(args).__name__}, not a JSON array")
    if type(kwargs) is not dict:
        raise TypeError(f"kwargs is {type(kwargs).__name__}, not a JSON object")
    inst.args = args
    inst.kwargs = kwargs
    inst.result = _json(row[23], "result")
    inst._sink = None
    for f in EXTRA_FIELDS:  # their defaults, unless the row holds them
        v = getattr(_DEFAULT, f)
        setattr(inst, f, v.copy() if isinstance(v, (dict, list)) else v)
    extra = _json(row[24], "extra")
    if extra is not None:
        if type(extra) is not dict:
            raise TypeError(f"extra is {type(extra).__name__}, not a JSON object")
        for f, v in extra.items():
            if f in _SLOTS and f not in INSTANCE_COLUMNS:
                if f == "headers" and not isinstance(v, dict):
                    raise TypeError(f"headers is {type(v).__name__}, not a JSON object")
                setattr(inst, f, v)
    return inst


def _dump(value: Any, what: str, inst: Instance) -> bytes:
    try:
        return _codec.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"instance {inst.uuid} of job {inst.kind!r}: its {what} cannot be stored as JSON: "
                         f"{exc}") from exc


def instance_values(inst: Instance) -> tuple[Any, ...]:
    """The values of :data:`INSTANCE_COLUMNS` for a new row (``seq`` as the instance has it)."""
    if not -_INT64 <= inst.priority < _INT64:
        raise StoreError(f"instance {inst.uuid} of job {inst.kind!r}: priority {inst.priority} is outside the "
                         "64-bit range the SQL stores keep")
    return (inst.uuid, inst.kind, inst.state.value, inst.priority, float(inst.ready_ts), inst.seq,
            float(inst.created_ts), inst.started_ts, inst.finished_ts, inst.attempts, inst.max_retries,
            inst.timeout, inst.node, inst.lease_ts, bool(inst.cancel_requested), inst.crontab_spec, inst.timezone,
            inst.schedule_id, inst.abandoned, inst.max_abandons, inst.error, _dump(inst.args, "arguments", inst),
            _dump(inst.kwargs, "keyword arguments", inst),
            None if inst.result is None else _dump(inst.result, "result", inst), _extra(inst))


def _extra(inst: Instance) -> bytes | None:
    if not EXTRA_FIELDS:
        return None
    extra = {f: v for f in EXTRA_FIELDS if (v := getattr(inst, f, None)) not in (None, {}, [], "")}
    return _dump(extra, "fields", inst) if extra else None


def mutable_values(inst: Instance) -> tuple[Any, ...]:
    """The values of :data:`MUTABLE_COLUMNS` of an instance after a transition."""
    return (inst.state.value, inst.attempts, inst.started_ts, inst.finished_ts, inst.node, inst.lease_ts,
            float(inst.ready_ts), inst.error, None if inst.result is None else _dump(inst.result, "result", inst),
            bool(inst.cancel_requested), inst.abandoned)


def decode_history(row: Sequence[Any]) -> StateRecord:
    """A StateRecord from a row of :data:`HISTORY_COLUMNS` (the id first)."""
    state = _STATES.get(row[3])
    if state is None:
        raise ValueError(f"unknown state {row[3]!r}")
    return StateRecord(_text(row[1], "uuid"), _text(row[2], "kind"), state, _num(row[4], "ts"),
                       _int(row[5], "attempt"), _opt_text(row[6], "node"), _opt_text(row[7], "detail"))


def decode_log(row: Sequence[Any]) -> LogRecord:
    """A LogRecord from a row of :data:`LOG_COLUMNS` (the id first)."""
    level = _LEVELS.get(row[3])
    if level is None:
        raise ValueError(f"unknown log level {row[3]!r}")
    return LogRecord(_text(row[1], "uuid"), _text(row[2], "kind"), level, _text(row[4], "message"),
                     _num(row[5], "ts"), _int(row[6], "attempt"), _opt_text(row[7], "node"))


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def render_row(table: str, columns: Sequence[str], row: Sequence[Any]) -> bytes:
    """A row that cannot be decoded, column for column, losslessly: a JSON object ``{"table": ...,
    "columns": {name: value}}``, where a binary value is its bytes as text with surrogate escapes, the
    whole encoded as UTF-8 with surrogate escapes (so ``raw.encode("utf-8", "surrogateescape")`` of a
    report's text gives these bytes back, and a value's bytes are the value's text encoded the same way)."""
    doc = {"table": table, "columns": {c: _plain(v) for c, v in zip(columns, row)}}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogateescape")
