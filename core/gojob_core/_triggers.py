"""Triggers: when a schedule fires. A crontab spec, a fixed interval, or a single date; each may have a
start and an end.

A trigger is plain data (it is stored with its schedule and read by every node), and its fire times are a
pure function of that data: two nodes computing the next fire time of the same schedule get the same
number, which is what lets the occurrence of each fire time be derived, and so enqueued once.
"""

from __future__ import annotations

import abc
import copy
import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from croniter import croniter

from ._cron import CronSchedule
from ._time import from_epoch, seconds, to_epoch
from .errors import ScheduleError

__all__ = ["CronTrigger", "DateTrigger", "IntervalTrigger", "Trigger", "trigger_from_dict"]


def _when(value: _dt.datetime | float | None, what: str, kind: str) -> _dt.datetime | None:
    if value is None:
        return None
    try:
        return from_epoch(to_epoch(value, what=what))
    except ValueError as exc:
        raise ScheduleError(f"job {kind!r}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Trigger(abc.ABC):
    """Base of the triggers: ``start`` (no fire before it) and ``end`` (none after it), both optional.

    Datetimes are kept as aware UTC datetimes (a naive one given is read as local time; epoch seconds
    are accepted too).
    """

    TYPE: ClassVar[str] = ""

    start: _dt.datetime | None = None
    end: _dt.datetime | None = None

    def _check_window(self, kind: str) -> None:
        object.__setattr__(self, "start", _when(self.start, "start", kind))
        object.__setattr__(self, "end", _when(self.end, "end", kind))
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ScheduleError(f"job {kind!r}: end {self.end.isoformat()} is before start {self.start.isoformat()}")

    @property
    def _start_ts(self) -> float | None:
        return None if self.start is None else self.start.timestamp()

    @property
    def _end_ts(self) -> float | None:
        return None if self.end is None else self.end.timestamp()

    def _bounded(self, ts: float | None) -> float | None:
        end = self._end_ts
        return None if ts is None or (end is not None and ts > end) else ts

    @abc.abstractmethod
    def next_after(self, ts: float) -> float | None:
        """The first fire time (epoch seconds) strictly after ``ts``, or None when no fire is left."""

    def first_fire(self, ts: float) -> float | None:
        """The schedule's first fire time when it is added (or resumed) at ``ts``."""
        return self.next_after(ts)

    def latest_at_or_before(self, ts: float, after: float) -> float | None:
        """The last fire time in ``(after, ts]``, or None: where a coalesced catch-up lands."""
        best = None
        cur = after
        for _ in range(10_000):  # a generic walk; the triggers below compute it directly
            nxt = self.next_after(cur)
            if nxt is None or nxt > ts:
                break
            best = cur = nxt
        return best

    def bind(self, ts: float, kind: str) -> Trigger:
        """A checked copy for job ``kind``, with what depends on the time it is added (``ts``) fixed."""
        t = copy.copy(self)
        t._check_window(kind)
        return t

    def to_dict(self) -> dict[str, Any]:
        """The trigger as stored: JSON-compatible, with ``type``."""
        return {"type": self.TYPE, "start": self._start_ts, "end": self._end_ts}

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description (``jobctl schedules``)."""


@dataclass(frozen=True, kw_only=True)
class CronTrigger(Trigger):
    """Fire on a crontab spec in a time zone (default: the node's local time; give an IANA name so that
    nodes in different zones agree).

    Five fields: ``minute hour day-of-month month day-of-week``. Six fields add **seconds last**:
    ``minute hour day-of-month month day-of-week second`` (``"* * * * * */10"``: every ten seconds).
    The DST rule of :mod:`gojob_core._cron` applies: a skipped wall-clock time fires at the first valid
    time after it, a repeated one fires once.
    """

    TYPE: ClassVar[str] = "cron"

    spec: str
    timezone: str | _dt.tzinfo | None = field(default=None)

    def __init__(self, spec: str, timezone: str | _dt.tzinfo | None = None, *,
                 start: _dt.datetime | float | None = None, end: _dt.datetime | float | None = None) -> None:
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "timezone", timezone)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def _cron(self, kind: str = "?") -> CronSchedule:
        return CronSchedule(self.spec, self.timezone, kind=kind)

    def bind(self, ts: float, kind: str) -> CronTrigger:
        t = copy.copy(self)
        t._check_window(kind)
        cron = t._cron(kind)  # raises ScheduleError naming the kind and the spec
        object.__setattr__(t, "spec", cron.spec)
        object.__setattr__(t, "timezone", cron.tz_name)
        return t

    def next_after(self, ts: float) -> float | None:
        start = self._start_ts
        base = ts if start is None or ts >= start else start - 1e-6
        return self._bounded(self._cron().next_after(base))

    def latest_at_or_before(self, ts: float, after: float) -> float | None:
        cron = self._cron()
        prev: float = croniter(cron.spec, _dt.datetime.fromtimestamp(ts + 1e-3, cron.tz)).get_prev(float)
        start = self._start_ts
        if prev <= after or (start is not None and prev < start):
            return None
        return self._bounded(prev)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "spec": self.spec, "timezone": self.timezone}

    def describe(self) -> str:
        return f"cron {self.spec!r}" + (f" {self.timezone}" if self.timezone else "")


@dataclass(frozen=True, kw_only=True)
class IntervalTrigger(Trigger):
    """Fire every ``every`` (a timedelta or seconds): at ``start``, ``start + every``, ... With no
    ``start``, the first fire is one interval after the schedule is added."""

    TYPE: ClassVar[str] = "interval"

    every: _dt.timedelta

    def __init__(self, every: _dt.timedelta | float, *, start: _dt.datetime | float | None = None,
                 end: _dt.datetime | float | None = None) -> None:
        object.__setattr__(self, "every", every)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def bind(self, ts: float, kind: str) -> IntervalTrigger:
        t = copy.copy(self)
        try:
            every = seconds(t.every, what="every")
        except ValueError as exc:
            raise ScheduleError(f"job {kind!r}: IntervalTrigger {exc}") from None
        if every <= 0:
            raise ScheduleError(f"job {kind!r}: IntervalTrigger every must be positive, got {t.every!r}")
        object.__setattr__(t, "every", _dt.timedelta(seconds=every))
        if t.start is None:  # anchored once, so that every node derives the same fire times
            object.__setattr__(t, "start", from_epoch(ts + every))
        t._check_window(kind)
        return t

    @property
    def _every(self) -> float:
        return self.every.total_seconds()

    def next_after(self, ts: float) -> float | None:
        start = self._start_ts
        assert start is not None, "IntervalTrigger.bind() anchors the start"
        if ts < start:
            return self._bounded(start)
        k = math.floor((ts - start) / self._every) + 1
        nxt = start + k * self._every
        if nxt <= ts:  # float rounding
            nxt = start + (k + 1) * self._every
        return self._bounded(nxt)

    def latest_at_or_before(self, ts: float, after: float) -> float | None:
        start = self._start_ts
        assert start is not None
        if ts < start:
            return None
        f = start + math.floor((ts - start) / self._every) * self._every
        return self._bounded(f) if f > after else None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "every": self._every}

    def describe(self) -> str:
        return f"every {self.every}"


@dataclass(frozen=True, kw_only=True)
class DateTrigger(Trigger):
    """Fire once, at ``at`` (a datetime, naive is local time, or epoch seconds). A date already past
    when the schedule is added fires at once, as a late fire (the misfire rules apply)."""

    TYPE: ClassVar[str] = "date"

    at: _dt.datetime

    def __init__(self, at: _dt.datetime | float) -> None:
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "start", None)
        object.__setattr__(self, "end", None)

    def bind(self, ts: float, kind: str) -> DateTrigger:
        at = _when(self.at, "at", kind)
        if at is None:
            raise ScheduleError(f"job {kind!r}: DateTrigger needs a date, got {self.at!r}")
        t = copy.copy(self)
        object.__setattr__(t, "at", at)
        return t

    def next_after(self, ts: float) -> float | None:
        at = self.at.timestamp()
        return at if at > ts else None

    def first_fire(self, ts: float) -> float | None:
        return self.at.timestamp()

    def latest_at_or_before(self, ts: float, after: float) -> float | None:
        at = self.at.timestamp()
        return at if after < at <= ts else None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "at": self.at.timestamp()}

    def describe(self) -> str:
        return f"once at {self.at.isoformat()}"


def trigger_from_dict(d: dict[str, Any]) -> Trigger:
    """A trigger from its stored form (raises ValueError on a record it cannot read)."""
    t = d.get("type")
    if t == "cron":
        trig: Trigger = CronTrigger(d["spec"], d.get("timezone"), start=d.get("start"), end=d.get("end"))
    elif t == "interval":
        trig = IntervalTrigger(float(d["every"]), start=d.get("start"), end=d.get("end"))
    elif t == "date":
        trig = DateTrigger(float(d["at"]))
    else:
        raise ValueError(f"unknown trigger type {t!r}")
    return trig.bind(0.0, "?")
