"""Between the core's model (Instance, StateRecord, LogRecord, Query, State) and the gojob.v1 messages.

Shared by the server and the client. Arguments and results travel as JSON text; nothing received is
unpickled or evaluated.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable
from typing import Any

from gojob_core import (
    CronTrigger,
    DateTrigger,
    Instance,
    IntervalTrigger,
    LogLevel,
    LogRecord,
    Query,
    Schedule,
    State,
    StateRecord,
    Trigger,
)
from google.protobuf.timestamp_pb2 import Timestamp

from .proto.gojob.v1 import jobs_pb2 as pb

__all__ = [
    "BadField",
    "dumps",
    "instance_from_pb",
    "instance_to_pb",
    "log_from_pb",
    "log_to_pb",
    "query_from_pb",
    "query_to_pb",
    "record_from_pb",
    "record_to_pb",
    "state_from_pb",
    "state_to_pb",
    "ts_from_pb",
    "ts_to_pb",
]

_STATE_TO_PB = {s: pb.State.Value(f"STATE_{s.value}") for s in State}
_STATE_FROM_PB = {v: s for s, v in _STATE_TO_PB.items()}
_LEVEL_TO_PB = {lv: pb.LogLevel.Value(f"LOG_LEVEL_{lv.value}") for lv in LogLevel}
_LEVEL_FROM_PB = {v: lv for lv, v in _LEVEL_TO_PB.items()}
# what google.protobuf.Timestamp can hold: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z
_TS_MIN, _TS_MAX = -62135596800, 253402300799


class BadField(ValueError):
    """A request field that cannot be used; ``field`` names it (the server answers INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def dumps(value: Any) -> str:
    """Compact JSON for the wire (values the core stores are JSON-compatible already)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _loads(text: str) -> Any:
    return json.loads(text) if text else None


# -- enums -------------------------------------------------------------------------------------------
def state_to_pb(state: State) -> int:
    return _STATE_TO_PB[state]


def state_from_pb(value: int, field: str = "state") -> State:
    try:
        return _STATE_FROM_PB[value]
    except KeyError:
        names = ", ".join(pb.State.Name(v) for v in _STATE_FROM_PB)
        raise BadField(field, f"unknown state {value} (one of {names})") from None


# -- time --------------------------------------------------------------------------------------------
def ts_to_pb(ts: float, out: Timestamp | None = None) -> Timestamp:
    """Epoch seconds into a Timestamp (``out`` is a message field to fill, or a new one)."""
    msg = Timestamp() if out is None else out
    whole = math.floor(ts)
    msg.seconds = whole
    msg.nanos = min(999_999_999, max(0, round((ts - whole) * 1e9)))
    return msg


def ts_from_pb(msg: Timestamp, field: str) -> float:
    """Epoch seconds from a Timestamp, which must be valid (nanos in range, years 1..9999)."""
    if not 0 <= msg.nanos <= 999_999_999:
        raise BadField(field, f"invalid timestamp: nanos must be 0..999999999, got {msg.nanos}")
    if not _TS_MIN <= msg.seconds <= _TS_MAX:
        raise BadField(field, f"invalid timestamp: seconds {msg.seconds} is outside years 1..9999")
    return msg.seconds + msg.nanos / 1e9


def _opt_ts(msg: Any, name: str) -> float | None:
    return ts_from_pb(getattr(msg, name), name) if msg.HasField(name) else None


def datetime_of(ts: float | None) -> _dt.datetime | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.UTC)


# -- instances ---------------------------------------------------------------------------------------
def instance_to_pb(inst: Instance, state: State | None = None, out: pb.Instance | None = None) -> pb.Instance:
    """An Instance as a message; ``state`` overrides the instance's own (for state-change events)."""
    m = pb.Instance() if out is None else out
    m.uuid = inst.uuid
    m.kind = inst.kind
    m.state = _STATE_TO_PB[inst.state if state is None else state]
    m.args_json = dumps(list(inst.args))
    m.kwargs_json = dumps(dict(inst.kwargs))
    m.priority = int(inst.priority)
    m.attempts = int(inst.attempts)
    m.max_retries = int(inst.max_retries)
    if inst.timeout is not None:
        m.timeout = float(inst.timeout)
    ts_to_pb(inst.created_ts, m.created_at)
    ts_to_pb(inst.ready_ts, m.ready_at)
    if inst.started_ts is not None:
        ts_to_pb(inst.started_ts, m.started_at)
    if inst.finished_ts is not None:
        ts_to_pb(inst.finished_ts, m.finished_at)
    m.result_json = dumps(inst.result)
    for name in ("error", "node", "crontab_spec", "timezone", "schedule_id"):
        value = getattr(inst, name)
        if value is not None:
            setattr(m, name, str(value))
    m.cancel_requested = bool(inst.cancel_requested)
    m.abandoned = int(inst.abandoned or 0)
    return m


def instance_from_pb(m: pb.Instance) -> Instance:
    """The core's Instance from a message (a snapshot: its log methods are not attached to a node)."""
    opt = {name: getattr(m, name) if m.HasField(name) else None
           for name in ("error", "node", "crontab_spec", "timezone", "schedule_id", "timeout")}
    return Instance(
        uuid=m.uuid, kind=m.kind, state=_STATE_FROM_PB.get(m.state, State.CREATED),
        args=_loads(m.args_json) or [], kwargs=_loads(m.kwargs_json) or {},
        priority=m.priority, attempts=m.attempts, max_retries=m.max_retries, timeout=opt["timeout"],
        created_ts=m.created_at.seconds + m.created_at.nanos / 1e9,
        ready_ts=m.ready_at.seconds + m.ready_at.nanos / 1e9,
        started_ts=_opt_ts(m, "started_at"), finished_ts=_opt_ts(m, "finished_at"),
        result=_loads(m.result_json), error=opt["error"], node=opt["node"],
        cancel_requested=m.cancel_requested, crontab_spec=opt["crontab_spec"], timezone=opt["timezone"],
        schedule_id=opt["schedule_id"], abandoned=m.abandoned,
    )


# -- records -----------------------------------------------------------------------------------------
def record_to_pb(r: StateRecord) -> pb.StateRecord:
    m = pb.StateRecord(uuid=r.uuid, kind=r.kind, state=_STATE_TO_PB[r.state], attempt=int(r.attempt or 0))
    ts_to_pb(r.ts, m.timestamp)
    if r.node is not None:
        m.node = r.node
    if r.detail is not None:
        m.detail = r.detail
    return m


def record_from_pb(m: pb.StateRecord) -> StateRecord:
    return StateRecord(uuid=m.uuid, kind=m.kind, state=_STATE_FROM_PB.get(m.state, State.CREATED),
                       ts=m.timestamp.seconds + m.timestamp.nanos / 1e9, attempt=m.attempt,
                       node=m.node if m.HasField("node") else None,
                       detail=m.detail if m.HasField("detail") else None)


def log_to_pb(r: LogRecord) -> pb.LogRecord:
    m = pb.LogRecord(uuid=r.uuid, kind=r.kind, level=_LEVEL_TO_PB[r.level], message=r.message,
                     attempt=int(r.attempt or 0))
    ts_to_pb(r.ts, m.timestamp)
    if r.node is not None:
        m.node = r.node
    return m


def log_from_pb(m: pb.LogRecord) -> LogRecord:
    return LogRecord(uuid=m.uuid, kind=m.kind, level=_LEVEL_FROM_PB.get(m.level, LogLevel.INFO), message=m.message,
                     ts=m.timestamp.seconds + m.timestamp.nanos / 1e9, attempt=m.attempt,
                     node=m.node if m.HasField("node") else None)


# -- queries -----------------------------------------------------------------------------------------
def query_to_pb(q: Query | None, out: pb.Query) -> pb.Query:
    if q is None:
        return out
    if q.uuid is not None:
        out.uuid = q.uuid
    if q.kind is not None:
        out.kind = q.kind
    if q.states is not None:
        out.states.extend(sorted(_STATE_TO_PB[s] for s in q.states))
    if q.since_ts is not None:
        ts_to_pb(q.since_ts, out.since)
    if q.until_ts is not None:
        ts_to_pb(q.until_ts, out.until)
    if q.limit is not None:
        out.limit = q.limit
    return out


def query_from_pb(m: pb.Query, prefix: str = "query") -> Query:
    """A core Query from a message, checking every field (BadField names the one that is wrong)."""
    states: Iterable[State] | None = None
    if len(m.states):
        states = [state_from_pb(v, f"{prefix}.states") for v in m.states]
    since = ts_from_pb(m.since, f"{prefix}.since") if m.HasField("since") else None
    until = ts_from_pb(m.until, f"{prefix}.until") if m.HasField("until") else None
    if since is not None and until is not None and since > until:
        raise BadField(f"{prefix}.since", f"since ({datetime_of(since)}) is after until ({datetime_of(until)})")
    return Query(instance=m.uuid or None, kind=m.kind or None, state=states, since=since, until=until,
                 limit=m.limit if m.HasField("limit") else None)


# -- schedules ---------------------------------------------------------------------------------------------
def trigger_to_pb(trigger: Trigger, out: pb.Trigger) -> pb.Trigger:
    """A core trigger into ``out`` (a request's or a schedule's trigger field)."""
    if isinstance(trigger, CronTrigger):
        out.cron = trigger.spec
        if trigger.timezone is not None:
            out.timezone = str(trigger.timezone if isinstance(trigger.timezone, str)
                               else getattr(trigger.timezone, "key", trigger.timezone))
    elif isinstance(trigger, IntervalTrigger):
        every = trigger.every
        out.every = every.total_seconds() if isinstance(every, _dt.timedelta) else float(every)
    elif isinstance(trigger, DateTrigger):
        at = trigger.at
        ts_to_pb(at.timestamp() if isinstance(at, _dt.datetime) else float(at), out.at)
    else:
        raise ValueError(f"trigger must be a CronTrigger, IntervalTrigger or DateTrigger, got {trigger!r}")
    for name in ("start", "end"):
        when = getattr(trigger, name, None)
        if when is not None:
            ts_to_pb(when.timestamp() if isinstance(when, _dt.datetime) else float(when), getattr(out, name))
    return out


def trigger_from_pb(m: pb.Trigger, field: str = "trigger") -> Trigger:
    """The trigger a message gives (exactly one of cron, every, at); BadField names what is wrong."""
    given = [n for n, on in (("cron", bool(m.cron)), ("every", m.HasField("every")), ("at", m.HasField("at"))) if on]
    if len(given) != 1:
        raise BadField(field, f"give exactly one of {field}.cron, {field}.every, {field}.at"
                              + (f", not {' and '.join(given)}" if given else ""))
    start = ts_from_pb(m.start, f"{field}.start") if m.HasField("start") else None
    end = ts_from_pb(m.end, f"{field}.end") if m.HasField("end") else None
    if m.HasField("at"):
        if start is not None or end is not None:
            raise BadField(f"{field}.at", "a single date takes no start or end")
        return DateTrigger(ts_from_pb(m.at, f"{field}.at"))
    if m.HasField("every"):
        return IntervalTrigger(m.every, start=start, end=end)
    return CronTrigger(m.cron, m.timezone or None, start=start, end=end)


def schedule_to_pb(s: Schedule) -> pb.ScheduleInfo:
    m = pb.ScheduleInfo(id=s.id, kind=s.kind, state=s.state, description=s.trigger.describe(),
                        args_json=dumps(list(s.args)), kwargs_json=dumps(dict(s.kwargs)), priority=s.priority,
                        max_retries=s.max_retries, coalesce=s.coalesce, jitter=s.jitter, runs=s.runs)
    trigger_to_pb(s.trigger, m.trigger)
    for name in ("timeout", "misfire_grace_time", "max_runs"):
        if getattr(s, name) is not None:
            setattr(m, name, getattr(s, name))
    if s.next_fire_ts is not None:
        ts_to_pb(s.next_fire_ts, m.next_fire_at)
    return m


def schedule_from_pb(m: pb.ScheduleInfo) -> Schedule:
    trigger = trigger_from_pb(m.trigger).bind(0.0, m.kind)
    return Schedule(id=m.id, kind=m.kind, trigger=trigger, args=list(_loads(m.args_json) or []),
                    kwargs=dict(_loads(m.kwargs_json) or {}), state=m.state,  # type: ignore[arg-type]
                    priority=m.priority, max_retries=m.max_retries,
                    timeout=m.timeout if m.HasField("timeout") else None,
                    misfire_grace_time=m.misfire_grace_time if m.HasField("misfire_grace_time") else None,
                    coalesce=m.coalesce or "latest", max_runs=m.max_runs if m.HasField("max_runs") else None,  # type: ignore[arg-type]
                    jitter=m.jitter, runs=m.runs, next_fire_ts=_opt_ts(m, "next_fire_at"))
