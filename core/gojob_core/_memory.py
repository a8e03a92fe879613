"""The memory store: the whole store contract in one process, for development, tests and one-node use.

Every ``memory://`` URL makes a new store; to share one between Managers (two "nodes" in one process),
pass the same :class:`MemoryStore` object to each. Nothing survives the process.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from . import transitions
from ._instance import Instance
from ._records import LogRecord, Query, StateRecord
from ._state import State
from ._time import now
from .abc import LeaseReport, Outcome, ScheduleRecord, Store

__all__ = ["MemoryStore"]

def _ts(rec: StateRecord | LogRecord) -> float:
    return rec.ts


class MemoryStore(Store):
    """Queue, leases, history and logs in process memory (no persistence, no sharing across processes)."""

    SCHEMES = ("memory",)
    FINISH_MODE = "await"
    name = "memory"

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._ready: list[tuple[int, float, int, str]] = []      # (priority, ready_ts, seq, uuid)
        self._delayed: list[tuple[float, int, str]] = []          # (ready_ts, seq, uuid)
        self._running: dict[str, Instance] = {}
        self._by_schedule: dict[str, set[str]] = {}
        self._canceled_schedules: set[str] = set()
        self._schedule_records: dict[str, ScheduleRecord] = {}
        self._versions = itertools.count(1)
        self._seq = itertools.count(1)
        self._history: list[StateRecord] = []
        self._history_by_uuid: dict[str, list[StateRecord]] = {}
        self._logs: list[LogRecord] = []
        self._logs_by_uuid: dict[str, list[LogRecord]] = {}
        self._wakeup: anyio.Event | None = None
        self._final_waiters: dict[str, anyio.Event] = {}
        self._cancel_subscribers: list[MemoryObjectSendStream[str]] = []
        self._loop: object = None

    def _on_this_loop(self) -> None:
        """Forget wake-up objects made on another event loop (a store reused after a restart, e.g. by a
        BlockingManager started again): anyio events are bound to the loop that made them."""
        token = anyio.lowlevel.current_token()
        if token != self._loop:
            self._loop = token
            self._wakeup = None
            self._final_waiters = {}
            self._cancel_subscribers = []

    async def start(self) -> None:
        self._on_this_loop()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
        if options:
            raise ValueError(f"memory store takes no options, got {sorted(options)}")
        return cls()

    def __repr__(self) -> str:
        return f"<MemoryStore instances={len(self._instances)} running={len(self._running)}>"

    # -- internals ---------------------------------------------------------------------------------
    def _write(self, records: list[StateRecord]) -> None:
        for rec in records:
            self._history.append(rec)
            lst = self._history_by_uuid.get(rec.uuid)
            if lst is None:
                self._history_by_uuid[rec.uuid] = [rec]
            else:
                lst.append(rec)

    def _push(self, inst: Instance, ts: float) -> None:
        inst.seq = next(self._seq)
        if inst.ready_ts <= ts:
            heapq.heappush(self._ready, (inst.priority, inst.ready_ts, inst.seq, inst.uuid))
        else:
            heapq.heappush(self._delayed, (inst.ready_ts, inst.seq, inst.uuid))

    def _notify(self) -> None:
        ev = self._wakeup
        if ev is not None:
            self._wakeup = None
            ev.set()

    def _finalize(self, inst: Instance) -> None:
        ev = self._final_waiters.pop(inst.uuid, None)
        if ev is not None:
            ev.set()

    def _promote_due(self, ts: float) -> None:
        delayed, ready = self._delayed, self._ready
        while delayed and delayed[0][0] <= ts:
            _, seq, uuid = heapq.heappop(delayed)
            inst = self._instances.get(uuid)
            if inst is not None and inst.seq == seq and inst.state is State.SCHEDULED:
                heapq.heappush(ready, (inst.priority, inst.ready_ts, seq, uuid))

    def _has_ready(self) -> bool:
        ready = self._ready
        while ready:
            _, _, seq, uuid = ready[0]
            inst = self._instances.get(uuid)
            if inst is not None and inst.seq == seq and inst.state is State.SCHEDULED:
                return True
            heapq.heappop(ready)  # stale entry: canceled, cleared or re-queued since
        return False

    # -- queue -------------------------------------------------------------------------------------
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        ts = now()
        added: list[bool] = []
        for given in instances:
            sid = given.schedule_id
            if given.uuid in self._instances or (chained and sid in self._canceled_schedules):
                added.append(False)
                continue
            if sid is not None and not chained:
                self._canceled_schedules.discard(sid)
            inst = given.copy()
            self._write(transitions.enqueue(inst, ts, node))
            self._instances[inst.uuid] = inst
            if sid is not None:
                self._by_schedule.setdefault(sid, set()).add(inst.uuid)
            self._push(inst, ts)
            added.append(True)
        self._notify()
        return added

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        ts = now()
        self._promote_due(ts)
        out: list[Instance] = []
        ready, instances, running = self._ready, self._instances, self._running
        while ready and len(out) < limit:
            _, _, seq, uuid = heapq.heappop(ready)
            inst = instances.get(uuid)
            if inst is None or inst.seq != seq or inst.state is not State.SCHEDULED:
                continue
            if inst.abandoned and out:  # a suspect is handed out alone: it waits, first, for the next claim
                heapq.heappush(ready, (inst.priority, inst.ready_ts, seq, uuid))
                break
            self._write(transitions.claim(inst, ts, node, lease) or [])
            running[uuid] = inst
            out.append(inst.copy())
            if inst.abandoned:
                break
        return out

    async def wait_ready(self, timeout: float) -> None:
        ts = now()
        self._promote_due(ts)
        if self._has_ready():
            return
        if self._delayed:
            timeout = min(timeout, max(0.0, self._delayed[0][0] - ts))
        self._on_this_loop()
        if self._wakeup is None:
            self._wakeup = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._wakeup.wait()

    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        ts = now()
        lost: set[str] = set()
        canceled: set[str] = set()
        for uuid in uuids:
            inst = self._running.get(uuid)
            if inst is None or transitions.extend(inst, ts, node, lease) is None:
                lost.add(uuid)
                continue
            if inst.cancel_requested:
                canceled.add(uuid)
        return LeaseReport(frozenset(lost), frozenset(canceled))

    async def reclaim_expired(self, node: str) -> list[Instance]:
        ts = now()
        out: list[Instance] = []
        # by lease expiry, then uuid: the order the Valkey/Redis scripts take them in (their FIFO seq follows)
        for uuid, inst in sorted(self._running.items(), key=lambda kv: (kv[1].lease_ts or 0.0, kv[0])):
            history = transitions.reclaim(inst, ts, node)
            if history is None:
                continue
            del self._running[uuid]
            self._write(history)
            if inst.state is State.SCHEDULED:
                self._push(inst, ts)
                out.append(inst.copy())
            else:
                self._finalize(inst)
        if out:
            self._notify()
        return out

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        ts = now()
        done: list[bool] = []
        requeued = False
        for oc in outcomes:
            inst = self._running.get(oc.uuid)
            history = transitions.finish(inst, oc, ts, node) if inst is not None else None
            if inst is None or history is None:
                done.append(False)
                continue
            del self._running[oc.uuid]
            self._write(history)
            if inst.state is State.SCHEDULED:
                self._push(inst, ts)
                requeued = True
            else:
                self._finalize(inst)
            done.append(True)
        if requeued:
            self._notify()
        return done

    async def release(self, node: str, uuids: Sequence[str]) -> None:
        ts = now()
        for uuid in uuids:
            inst = self._running.get(uuid)
            history = transitions.release(inst, ts, node) if inst is not None else None
            if inst is None or history is None:
                continue
            del self._running[uuid]
            self._write(history)
            self._push(inst, ts)
        self._notify()

    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        target = self._instances.get(uuid)
        if target is None:
            return None
        self._cancel_one(target, now(), node)
        return target.copy()

    def _cancel_one(self, inst: Instance, ts: float, node: str | None) -> bool:
        """Apply a cancel to one instance; True if it became CANCELED."""
        history = transitions.cancel(inst, ts, node)
        if history:
            self._write(history)
            self._finalize(inst)
            return True
        if history is not None:  # running: its node hears of it
            for send in list(self._cancel_subscribers):
                try:
                    send.send_nowait(inst.uuid)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._cancel_subscribers.remove(send)
        return False

    async def cancel_schedule(self, schedule_id: str, *, node: str | None = None) -> list[Instance]:
        self._canceled_schedules.add(schedule_id)
        ts = now()
        out = []
        for u in sorted(self._by_schedule.get(schedule_id, ())):
            inst = self._instances.get(u)
            if inst is not None and inst.state in transitions.WAITING and self._cancel_one(inst, ts, node):
                out.append(inst.copy())
        return out

    # -- schedule records ------------------------------------------------------------------------------
    async def get_schedule_record(self, schedule_id: str) -> ScheduleRecord | None:
        rec = self._schedule_records.get(schedule_id)
        return None if rec is None else rec._replace(data=copy.deepcopy(rec.data))

    async def list_schedule_records(self) -> list[ScheduleRecord]:
        return [r._replace(data=copy.deepcopy(r.data)) for _, r in sorted(self._schedule_records.items())]

    async def put_schedule_record(self, schedule_id: str, data: dict[str, Any], *,
                                  version: int | None) -> int | None:
        cur = self._schedule_records.get(schedule_id)
        if (cur.version if cur is not None else None) != version:
            return None
        new = next(self._versions)
        self._schedule_records[schedule_id] = ScheduleRecord(schedule_id, copy.deepcopy(data), new)
        return new

    async def delete_schedule_record(self, schedule_id: str, *, version: int) -> bool:
        cur = self._schedule_records.get(schedule_id)
        if cur is None or cur.version != version:
            return False
        del self._schedule_records[schedule_id]
        return True

    async def cancel_notifications(self) -> AsyncIterator[str]:
        self._on_this_loop()
        send, receive = anyio.create_memory_object_stream[str](float("inf"))
        self._cancel_subscribers.append(send)
        try:
            async with receive:
                async for uuid in receive:
                    yield uuid
        finally:
            if send in self._cancel_subscribers:
                self._cancel_subscribers.remove(send)
            send.close()

    async def get_instance(self, uuid: str) -> Instance | None:
        inst = self._instances.get(uuid)
        return inst.copy() if inst is not None else None

    async def list_instances(self, query: Query) -> list[Instance]:
        if query.uuid is not None:
            inst = self._instances.get(query.uuid)
            found = [inst] if inst is not None and query.matches_instance(inst) else []
        else:
            found = [i for i in self._instances.values() if query.matches_instance(i)]
            found.sort(key=lambda i: (i.created_ts, i.uuid))
        return [i.copy() for i in query.apply_limit(found)]

    async def queue_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for inst in self._instances.values():
            if inst.state is State.SCHEDULED:
                counts[inst.kind] = counts.get(inst.kind, 0) + 1
        return counts

    async def oldest_ready(self) -> dict[str, float]:
        ts = now()
        oldest: dict[str, float] = {}
        for inst in self._instances.values():
            if inst.state is State.SCHEDULED and inst.ready_ts <= ts and inst.ready_ts < oldest.get(inst.kind, ts + 1):
                oldest[inst.kind] = inst.ready_ts
        return oldest

    async def clear_instances(self, query: Query) -> int:
        gone = [u for u, i in self._instances.items()
                if query.matches_instance(i) and i.state is not State.PROCESSING]
        for uuid in gone:
            inst = self._instances.pop(uuid)
            if inst.schedule_id is not None:
                self._by_schedule.get(inst.schedule_id, set()).discard(uuid)
        return len(gone)

    async def wait_final(self, uuid: str, timeout: float | None) -> Instance | None:
        inst = self._instances.get(uuid)
        if inst is None or inst.state.is_final:
            return inst.copy() if inst is not None else None
        self._on_this_loop()
        ev = self._final_waiters.get(uuid)
        if ev is None:
            ev = self._final_waiters[uuid] = anyio.Event()
        with anyio.move_on_after(timeout):
            await ev.wait()
        return await self.get_instance(uuid)

    # -- history and logs ----------------------------------------------------------------------------
    async def lookup_history(self, query: Query) -> list[StateRecord]:
        source = self._history_by_uuid.get(query.uuid, []) if query.uuid is not None else self._history
        return query.apply_limit(sorted((r for r in source if query.matches_record(r)), key=_ts))

    async def clear_history(self, query: Query) -> int:
        before = len(self._history)
        self._history = [r for r in self._history if not query.matches_record(r)]
        self._history_by_uuid = {}
        for r in self._history:
            self._history_by_uuid.setdefault(r.uuid, []).append(r)
        return before - len(self._history)

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        for rec in records:
            self._logs.append(rec)
            self._logs_by_uuid.setdefault(rec.uuid, []).append(rec)

    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        source = self._logs_by_uuid.get(query.uuid, []) if query.uuid is not None else self._logs
        return query.apply_limit(sorted((r for r in source if query.matches_record(r)), key=_ts))

    async def clear_logs(self, query: Query) -> int:
        before = len(self._logs)
        self._logs = [r for r in self._logs if not query.matches_record(r)]
        self._logs_by_uuid = {}
        for r in self._logs:
            self._logs_by_uuid.setdefault(r.uuid, []).append(r)
        return before - len(self._logs)
