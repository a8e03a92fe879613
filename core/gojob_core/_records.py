"""What the store keeps besides instances: state-history records, log records, and the Query that finds them."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ._state import LogLevel, State
from ._time import from_epoch, to_epoch

if TYPE_CHECKING:
    from ._instance import Instance

__all__ = ["LogRecord", "Query", "StateRecord"]


class StateRecord(NamedTuple):
    """One state transition of one instance: written by the store in the same step as the change.

    A named tuple: the store writes several per instance, so it must be cheap to make.
    """

    uuid: str
    kind: str
    state: State
    ts: float
    attempt: int = 0
    node: str | None = None
    detail: str | None = None

    @property
    def timestamp(self) -> _dt.datetime:
        """When the transition happened (aware, UTC)."""
        return from_epoch(self.ts)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"uuid": self.uuid, "kind": self.kind, "state": self.state.value, "ts": self.ts,
                "attempt": self.attempt, "node": self.node, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateRecord:
        return cls(uuid=d["uuid"], kind=d["kind"], state=State(d["state"]), ts=float(d["ts"]),
                   attempt=int(d.get("attempt") or 0), node=d.get("node"), detail=d.get("detail"))


class LogRecord(NamedTuple):
    """One log line of one instance (``inst.infof`` / ``warnf`` / ``errorf``)."""

    uuid: str
    kind: str
    level: LogLevel
    message: str
    ts: float
    attempt: int = 0
    node: str | None = None

    @property
    def timestamp(self) -> _dt.datetime:
        """When the line was logged (aware, UTC)."""
        return from_epoch(self.ts)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"uuid": self.uuid, "kind": self.kind, "level": self.level.value, "message": self.message,
                "ts": self.ts, "attempt": self.attempt, "node": self.node}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogRecord:
        return cls(uuid=d["uuid"], kind=d["kind"], level=LogLevel(d["level"]), message=str(d["message"]),
                   ts=float(d["ts"]), attempt=int(d.get("attempt") or 0), node=d.get("node"))


@dataclass(frozen=True, slots=True, init=False)
class Query:
    """Which instances, history records or log lines to look up or clear.

    Every field is optional and they combine with AND: ``instance`` (an Instance or its uuid),
    ``kind``, ``state`` (one state or several), ``since``/``until`` (datetimes, a naive one read as
    local time, or epoch seconds; both bounds inclusive), ``limit`` (the newest N after sorting by time,
    returned oldest first). ``Query()`` matches everything.
    """

    uuid: str | None
    kind: str | None
    states: frozenset[State] | None
    since_ts: float | None
    until_ts: float | None
    limit: int | None
    schedule_id: str | None = field(default=None)

    def __init__(
        self,
        *,
        instance: Instance | str | None = None,
        kind: str | None = None,
        state: State | str | Iterable[State | str] | None = None,
        since: _dt.datetime | float | None = None,
        until: _dt.datetime | float | None = None,
        limit: int | None = None,
        schedule_id: str | None = None,
    ) -> None:
        uuid = instance if isinstance(instance, str) or instance is None else instance.uuid
        if state is None:
            states = None
        elif isinstance(state, (State, str)):
            states = frozenset({State.parse(state)})
        else:
            states = frozenset(State.parse(s) for s in state)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"query limit must be a non-negative integer, got {limit!r}")
        object.__setattr__(self, "uuid", uuid)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "states", states)
        # a datetime has microsecond resolution: widen its bound by half a microsecond so that a
        # record's own timestamp, turned into a datetime and back, still matches inclusively
        since_ts = None if since is None else to_epoch(since, what="query since")
        until_ts = None if until is None else to_epoch(until, what="query until")
        if isinstance(since, _dt.datetime):
            since_ts -= 5e-7  # type: ignore[operator]
        if isinstance(until, _dt.datetime):
            until_ts += 5e-7  # type: ignore[operator]
        object.__setattr__(self, "since_ts", since_ts)
        object.__setattr__(self, "until_ts", until_ts)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "schedule_id", schedule_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible form (for network stores and the gRPC API)."""
        return {"uuid": self.uuid, "kind": self.kind,
                "states": sorted(s.value for s in self.states) if self.states is not None else None,
                "since": self.since_ts, "until": self.until_ts, "limit": self.limit,
                "schedule_id": self.schedule_id}

    def matches_time(self, ts: float) -> bool:
        return (self.since_ts is None or ts >= self.since_ts) and (self.until_ts is None or ts <= self.until_ts)

    def matches_record(self, rec: StateRecord | LogRecord) -> bool:
        """True if a history or log record passes every filter (``state`` applies to history only)."""
        if self.uuid is not None and rec.uuid != self.uuid:
            return False
        if self.kind is not None and rec.kind != self.kind:
            return False
        if self.states is not None and isinstance(rec, StateRecord) and rec.state not in self.states:
            return False
        return self.matches_time(rec.ts)

    def matches_instance(self, inst: Instance) -> bool:
        """True if an instance passes every filter; the time range applies to its creation time."""
        if self.uuid is not None and inst.uuid != self.uuid:
            return False
        if self.kind is not None and inst.kind != self.kind:
            return False
        if self.states is not None and inst.state not in self.states:
            return False
        if self.schedule_id is not None and inst.schedule_id != self.schedule_id:
            return False
        return self.matches_time(inst.created_ts)

    def apply_limit(self, items: list[Any]) -> list[Any]:
        """Keep the newest ``limit`` items of a time-sorted list."""
        if self.limit is None or len(items) <= self.limit:
            return items
        return items[len(items) - self.limit:] if self.limit else []
