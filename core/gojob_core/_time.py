"""Time conversions shared by scheduling, queries and stores: everything is stored as epoch seconds."""

from __future__ import annotations

import datetime as _dt
import math
import time

__all__ = ["from_epoch", "now", "seconds", "to_epoch"]

now = time.time


def to_epoch(value: _dt.datetime | float | int, *, what: str) -> float:
    """Epoch seconds from a datetime (a naive one is read as local time) or a number of epoch seconds."""
    if isinstance(value, _dt.datetime):
        return value.timestamp()  # naive datetimes are local time, as documented
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{what} must be a datetime or epoch seconds, got {value!r}")


def from_epoch(ts: float | None) -> _dt.datetime | None:
    """An aware UTC datetime from epoch seconds (None stays None)."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC)


def seconds(value: float | int | _dt.timedelta, *, what: str) -> float:
    """Seconds from a number or a timedelta, for delays, timeouts and durations."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{what} must be seconds (a number) or a timedelta, got {value!r}")
