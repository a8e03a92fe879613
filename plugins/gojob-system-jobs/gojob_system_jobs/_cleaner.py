"""The cleaning engine of both system jobs: walk a store's records newest first, in bounded windows,
and remove those the rules select, through the store contract only (lookup and clear by Query).

How it stays safe and bounded on any store:

- **Windows.** Records are read in time windows ``[lo, hi]`` with ``Query(limit=batch)``. The width
  adapts to the density seen so far: a window that came back full is cut at its oldest record and the
  next one is as wide as the part read; a sparse one grows. No single call returns or clears more
  than about one batch (records sharing one timestamp are never split, so a batch can grow to hold them).
- **Clears are sub-ranges of what was read.** A page holds *every* record of its window, so a clear
  by (kind or instance, since, until) inside the window removes exactly the records the page shows
  there. Its bounds sit just past the neighbouring records that stay, never on a record's own
  timestamp: a store that rounds its bounds (Valkey/Redis keep microseconds) still includes the
  records meant and excludes the ones that stay.
- **Overlap.** Consecutive windows overlap by a few microseconds, so a record a rounding store
  leaves out at one window's edge is read in the next; records read twice are recognised and
  handled once.
- **Fewest calls.** Each page's removals are planned three ways (one clear per run of records in the
  whole window, per kind, per instance) and the plan with the fewest store calls is used.
- **Protected instances.** Records of instances that are waiting or running (a set collected once
  per run, *after* the walk's top time is fixed) are never removed, and do not count against ``keep``
  per kind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gojob_core import LogRecord, Query, State, StateRecord

__all__ = ["Cleaner", "CleanStats"]

Record = StateRecord | LogRecord
Lookup = Callable[[Query], Awaitable[Sequence[Any]]]
Clear = Callable[[Query], Awaitable[int]]

#: the first window's width, in seconds; later ones adapt to the records found
_INITIAL_WINDOW = 1.0
_MIN_WINDOW = 1e-3
#: how far a window reaches above the previous one's bottom (above a store's timestamp rounding)
_OVERLAP = 1e-5
#: the most a sparse window grows, from one to the next
_MAX_GROWTH = 16.0


@dataclass
class CleanStats:
    """What one run did: records removed, kept because their instance is waiting or running, looked
    at, and the number of windows (store lookups that returned a page) and clear calls."""

    removed: int = 0
    kept_running: int = 0
    scanned: int = 0
    batches: int = 0
    clear_calls: int = 0

    def as_result(self) -> dict[str, int]:
        return {"removed": self.removed, "kept_running": self.kept_running, "scanned": self.scanned,
                "batches": self.batches}


class Cleaner:
    """One run over one record family (state history or logs).

    :param lookup: ``Query -> records`` sorted by time (``Manager.lookup_instance_history`` or ``..._logs``).
    :param clear: ``Query -> count`` (``Manager.clear_instance_history`` or ``..._logs``).
    :param protected: uuids of instances whose records are never removed.
    :param top: records newer than this (epoch seconds) are not looked at.
    :param cutoff: records at or before this (epoch seconds) are removed; None: no age rule.
    :param keep: the newest records kept per ``per`` group; None: no count rule.
    :param kind: only records of this kind are looked at.
    :param by_state: the records carry a state (history), so ties can be resolved by state.
    """

    def __init__(self, *, lookup: Lookup, clear: Clear, protected: set[str], top: float, cutoff: float | None,
                 keep: int | None, per: Literal["instance", "kind"], kind: str | None, batch_size: int,
                 by_state: bool) -> None:
        self._lookup, self._clear = lookup, clear
        self._protected = protected
        self._top = top if cutoff is None or keep is not None else min(top, cutoff)
        self._cutoff, self._keep, self._per, self._kind = cutoff, keep, per, kind
        self._batch = batch_size
        self._by_state = by_state
        self._counts: dict[str, int] = {}
        self.stats = CleanStats()

    # -- the walk ------------------------------------------------------------------------------------
    async def run(self) -> CleanStats:
        hi = self._top
        width = _INITIAL_WINDOW
        seen: Counter[Record] = Counter()  # records of the previous page inside this window's overlap
        while True:
            lo: float | None = hi - width if hi - width > 0 else None  # None: the last window, all below hi
            limit = self._batch + seen.total()
            while True:
                recs = sorted(await self._lookup(Query(kind=self._kind, since=lo, until=hi, limit=limit)),
                              key=_ts)
                full = len(recs) >= limit
                if not full or _fresh_above(recs, recs[0].ts, seen):
                    break
                limit *= 2  # the whole page shares one timestamp: read all of it
            self.stats.batches += 1
            if full:
                t_min = recs[0].ts  # records at t_min may go on past the page: they wait for the next window
                page = [r for r in recs if r.ts > t_min]
                page_lo: float | None = math.nextafter(t_min, math.inf)
                bottom = t_min
            else:
                page, page_lo, bottom = recs, lo, lo  # type: ignore[assignment]
            fresh = []
            for r in page:
                if seen[r] > 0:
                    seen[r] -= 1
                    fresh.append(False)
                else:
                    fresh.append(True)
            await self._process(page, fresh, page_lo, hi)
            if not full and lo is None:
                return self.stats
            assert bottom is not None
            new_hi = min(hi, bottom + _OVERLAP)
            seen = Counter(r for r in page if r.ts <= new_hi)
            if full:
                width = max(hi - t_min, _MIN_WINDOW)
            else:
                # aim at half a batch; an empty window grows the most
                width *= _MAX_GROWTH if not recs else min(_MAX_GROWTH, max(1.0, self._batch / 2 / len(recs)))
            hi = new_hi

    async def _process(self, page: list[Record], fresh: list[bool], lo: float | None, hi: float) -> None:
        drop = [False] * len(page)
        for i in range(len(page) - 1, -1, -1):  # newest first: the count rule keeps the newest
            drop[i] = fresh[i] and self._decide(page[i])
        self.stats.scanned += sum(fresh)
        if any(drop):
            for query in self._plan(page, drop, lo, hi):
                self.stats.clear_calls += 1
                self.stats.removed += await self._clear(query)
        if self._by_state and self._keep is not None and self._per == "instance":
            # an instance's CREATED record is its oldest: its counter is no longer needed
            for r, f in zip(page, fresh):
                if f and r.state is State.CREATED:  # type: ignore[union-attr]
                    self._counts.pop(r.uuid, None)

    def _decide(self, r: Record) -> bool:
        """Whether a record goes (walked newest first, each record once)."""
        protected = r.uuid in self._protected
        goes = self._cutoff is not None and r.ts <= self._cutoff
        if self._keep is not None:
            group = r.uuid if self._per == "instance" else r.kind
            n = self._counts.get(group, 0)
            goes = goes or n >= self._keep
            if self._per == "instance" or not protected:
                self._counts[group] = n + 1
        if protected:
            self.stats.kept_running += goes
            return False
        return goes

    # -- planning the clears of one page -------------------------------------------------------------------
    def _plan(self, page: list[Record], drop: list[bool], lo: float | None, hi: float) -> list[Query]:
        by_uuid: dict[str, list[int]] = {}
        for i, r in enumerate(page):
            by_uuid.setdefault(r.uuid, []).append(i)
        kind = self._kind
        plans = [self._plan_by(page, drop, lo, hi, by_uuid, lambda r: None, lambda r: {"kind": kind})]
        if kind is None:
            plans.append(self._plan_by(page, drop, lo, hi, by_uuid, lambda r: r.kind, lambda r: {"kind": r.kind}))
        plans.append(self._plan_by(page, drop, lo, hi, by_uuid, lambda r: r.uuid, lambda r: {"instance": r.uuid}))
        return min(plans, key=len)

    def _plan_by(self, page: list[Record], drop: list[bool], lo: float | None, hi: float,
                 by_uuid: dict[str, list[int]], key: Callable[[Record], Hashable],
                 filt: Callable[[Record], dict[str, Any]]) -> list[Query]:
        """Clears for a page, one per run of consecutive timestamps (within a group of records that one
        filter selects) where every record goes; a timestamp where some go and some stay falls back to
        clears per instance (and per state)."""
        groups: dict[Hashable, list[int]] = {}
        for i, r in enumerate(page):
            groups.setdefault(key(r), []).append(i)
        out: list[Query] = []
        for members in groups.values():
            if not any(drop[i] for i in members):
                continue
            f = filt(page[members[0]])
            since: float | None = None
            open_run = False
            prev_ts: float | None = None
            for ts, at in _by_ts(page, members):
                if all(drop[i] for i in at):
                    if not open_run:
                        open_run = True
                        since = lo if prev_ts is None else math.nextafter(prev_ts, math.inf)
                else:
                    if open_run:
                        out.append(Query(**f, since=since, until=math.nextafter(ts, -math.inf)))
                        open_run = False
                    going = [i for i in at if drop[i]]
                    if going:
                        out.extend(self._unit_clears(page, drop, lo, hi, by_uuid, ts, going))
                prev_ts = ts
            if open_run:
                out.append(Query(**f, since=since, until=hi))
        return out

    def _unit_clears(self, page: list[Record], drop: list[bool], lo: float | None, hi: float,
                     by_uuid: dict[str, list[int]], ts: float, going: list[int]) -> list[Query]:
        """Clears for the records of one timestamp that go, among others of that timestamp that stay."""
        out: list[Query] = []
        for uid in dict.fromkeys(page[i].uuid for i in going):
            mine = by_uuid[uid]
            at = [i for i in mine if page[i].ts == ts]
            before = [page[i].ts for i in mine if page[i].ts < ts]
            after = [page[i].ts for i in mine if page[i].ts > ts]
            since = math.nextafter(max(before), math.inf) if before else lo
            until = math.nextafter(min(after), -math.inf) if after else hi
            if all(drop[i] for i in at):
                out.append(Query(instance=uid, since=since, until=until))
            elif self._by_state:
                states = dict.fromkeys(page[i].state for i in at if drop[i])  # type: ignore[union-attr]
                for state in states:
                    if all(drop[i] for i in at if page[i].state is state):  # type: ignore[union-attr]
                        out.append(Query(instance=uid, state=state, since=since, until=until))
            # else: two log lines of one instance at one timestamp, one kept: both stay
        return out


def _ts(r: Record) -> float:
    return r.ts


def _by_ts(page: list[Record], members: list[int]) -> list[tuple[float, list[int]]]:
    out: list[tuple[float, list[int]]] = []
    for i in members:  # members are in time order
        ts = page[i].ts
        if out and out[-1][0] == ts:
            out[-1][1].append(i)
        else:
            out.append((ts, [i]))
    return out


def _fresh_above(recs: list[Record], t_min: float, seen: Counter[Record]) -> bool:
    """True if some record newer than t_min was not handled in the previous window."""
    left = Counter(seen)
    for r in recs:
        if r.ts > t_min:
            if left[r] > 0:
                left[r] -= 1
            else:
                return True
    return False
