"""Crontab specs (croniter) in a timezone, with one rule for DST days.

A spec has five fields (``minute hour day-of-month month day-of-week``) or six, the sixth being
**seconds** (croniter's order: ``"* * * * * */10"`` fires every ten seconds).

- Spring forward: a wall-clock time that does not exist that day (02:30 when clocks jump 02:00 -> 03:00)
  fires at the first valid time after it (03:00), once.
- Fall back: a wall-clock time that happens twice (01:30 when clocks go 02:00 -> 01:00) fires once,
  at its first occurrence, like cron. croniter alone would fire it twice; we skip the repeat.
- Specs that fire every hour or more often fire on each real hour, both 01:00s included.
"""

from __future__ import annotations

import datetime as _dt
import zoneinfo

from croniter import croniter

from .errors import ScheduleError

__all__ = ["CronSchedule", "resolve_timezone"]


def resolve_timezone(tz: str | _dt.tzinfo | None, *, kind: str) -> tuple[_dt.tzinfo, str | None]:
    """The tzinfo for a cron schedule and the name stored with the instance (None: local time)."""
    if tz is None:
        return _local_tz(), None
    if isinstance(tz, _dt.tzinfo):
        key = getattr(tz, "key", None)
        if key is None and tz is _dt.UTC:
            key = "UTC"
        if key is None:
            raise ScheduleError(f"job {kind!r}: timezone {tz!r} has no IANA name; pass a name like 'Europe/Paris'")
        return tz, key
    try:
        return zoneinfo.ZoneInfo(str(tz)), str(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"job {kind!r}: unknown timezone {tz!r} (use an IANA name like 'Europe/Paris')") from None


def _local_tz() -> _dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo("localtime")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        local = _dt.datetime.now().astimezone().tzinfo
        return local if local is not None else _dt.UTC


class CronSchedule:
    """A validated crontab spec in a timezone; ``next_after(ts)`` gives the next fire time."""

    __slots__ = ("spec", "tz", "tz_name")

    def __init__(self, spec: str, tz: str | _dt.tzinfo | None, *, kind: str) -> None:
        if not isinstance(spec, str) or not croniter.is_valid(spec.strip()):
            raise ScheduleError(
                f"job {kind!r}: invalid crontab_spec {spec!r} (expected 'minute hour day-of-month month day-of-week', "
                f"or six fields with seconds last)")
        self.spec = spec.strip()
        self.tz, self.tz_name = resolve_timezone(tz, kind=kind)

    def next_after(self, ts: float) -> float:
        """The first fire time strictly after ``ts`` (epoch seconds), following the DST rule above."""
        start = _dt.datetime.fromtimestamp(ts, self.tz)
        it = croniter(self.spec, start)
        prev_wall: _dt.datetime | None = None
        for _ in range(4):
            nxt: _dt.datetime = it.get_next(_dt.datetime)
            if nxt.fold == 1 and not self._is_frequent():
                # the second pass through a repeated hour: a fixed-time spec already fired on the first
                continue
            if prev_wall is not None and nxt.replace(tzinfo=None) == prev_wall:
                continue
            return nxt.timestamp()
        return nxt.timestamp()

    def _is_frequent(self) -> bool:
        """True if the spec fires in every hour (its hour field is '*' or a step over all hours)."""
        fields = self.spec.split()
        if self.spec.startswith("@"):
            return self.spec in ("@hourly",)
        hour = fields[1] if len(fields) >= 2 else "*"
        return hour == "*" or hour.startswith("*/")
