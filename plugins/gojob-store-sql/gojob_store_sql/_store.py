"""SqlStore: the whole store contract over a :class:`~gojob_store_sql.SqlBackend`.

Each step that changes state is one transaction: read the rows (locked), decode them into Instances,
apply the :mod:`gojob_core.transitions` function, and write the rows, their history records and the
queue's bookkeeping together (see :mod:`gojob_store_sql._backend`). The queue is the instances table
itself: a waiting instance is a row in state SCHEDULED, found through a partial index in claim order
(priority, ready time, seq); a new seq is taken whenever an instance re-enters the queue (FIFO).

Wake-ups, cancels and final states reach the other nodes through the backend (PostgreSQL: NOTIFY),
or through a bounded poll where the database has no notification (SQLite); stores of one process on
the same database and event loop also hand them to each other directly (the in-process hand-off).
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream
from gojob_core import CorruptRecordError, Instance, LogRecord, Query, StateRecord, transitions
from gojob_core._state import State
from gojob_core._time import now
from gojob_core.abc import CorruptRecord, LeaseReport, Outcome, ScheduleRecord, Store

from ._backend import Aside, Reads, Rows, SqlBackend, Writes
from ._rows import (
    HISTORY_COLUMNS,
    INSTANCE_COLUMNS,
    LOG_COLUMNS,
    decode_history,
    decode_instance,
    decode_log,
    render_row,
)

__all__ = ["SqlStore"]

_log = logging.getLogger("gojob.sql")

_DECODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)
#: instances whose lease ended, re-queued per transaction (a reclaim makes several if there are more)
_RECLAIM_BATCH = 200

#: the stores of this process, by database and prefix: they hand wake-ups, cancels and final states to
#: each other directly (those on the same event loop)
_peers: dict[str, weakref.WeakSet[SqlStore]] = {}


class SqlStore(Store):
    """The store contract over a SQL database. Subclasses (one per database) set ``SCHEMES``, ``name``
    and ``from_url``, and give the backend.

    :param backend: the database.
    :param poll_interval: without notifications (``backend.PUSH`` false): the longest an idle node
        waits before it looks whether another process wrote, and how often a node looks for cancels of
        its running instances. With notifications it is unused (the Manager's own poll is the safety net).
    :param local_key: what identifies the database and tables in this process (for the hand-off).
    """

    name = "sql"

    def __init__(self, backend: SqlBackend, *, poll_interval: float = 0.05, local_key: str = "") -> None:
        if not (poll_interval > 0 and math.isfinite(poll_interval)):
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        self.backend = backend
        self.poll_interval = float(poll_interval)
        self._key = local_key or f"{type(self).__name__}:{id(self)}"
        backend.on_notify = self._on_notify
        self._loop: object = None
        self._wakeup: anyio.Event | None = None
        self._final_waiters: dict[str, anyio.Event] = {}
        self._cancel_subscribers: list[MemoryObjectSendStream[str]] = []
        #: whether the last claim got fewer instances than it asked for (the queue may be empty)
        self._short = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend.where}>"

    # -- lifecycle -----------------------------------------------------------------------------------
    def _on_this_loop(self) -> None:
        """Forget wake-up objects made on another event loop (a store started again elsewhere)."""
        token = anyio.lowlevel.current_token()
        if token != self._loop:
            self._loop = token
            self._wakeup = None
            self._final_waiters = {}
            self._cancel_subscribers = []

    async def start(self) -> None:
        self._on_this_loop()
        await self.backend.start()
        _peers.setdefault(self._key, weakref.WeakSet()).add(self)

    async def stop(self) -> None:
        peers = _peers.get(self._key)
        if peers is not None:
            peers.discard(self)
            if not peers:
                _peers.pop(self._key, None)
        for send in self._cancel_subscribers:
            send.close()
        self._cancel_subscribers = []
        await self.backend.stop()

    # -- hearing of changes ------------------------------------------------------------------------------
    def _wake_event(self) -> anyio.Event:
        """The event the next wake-up sets (take it *before* looking at the queue: none is missed)."""
        self._on_this_loop()
        if self._wakeup is None:
            self._wakeup = anyio.Event()
        return self._wakeup

    def _on_notify(self, channel: str, uuids: list[str]) -> None:
        """A wake-up, final states or cancels: from the backend's notifications, or a peer's hand-off.
        Runs on this store's event loop."""
        if channel == "wake":
            ev, self._wakeup = self._wakeup, None
            if ev is not None:
                ev.set()
        elif channel == "final":
            for uid in uuids:
                fev = self._final_waiters.pop(uid, None)
                if fev is not None:
                    fev.set()
        elif channel == "cancel":
            for send in list(self._cancel_subscribers):
                for uid in uuids:
                    try:
                        send.send_nowait(uid)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self._cancel_subscribers.remove(send)
                        break

    def _hand_off(self, w: Writes) -> None:
        """After a commit: tell the stores of this process on this event loop (this one included)."""
        if not (w.wake or w.finals or w.cancels):
            return
        token = anyio.lowlevel.current_token()
        for peer in list(_peers.get(self._key, ())):
            if peer._loop != token:
                continue
            if w.wake:
                peer._on_notify("wake", [])
            if w.finals and peer._final_waiters:
                peer._on_notify("final", w.finals)
            if w.cancels and peer._cancel_subscribers:
                peer._on_notify("cancel", w.cancels)

    async def _transact(self, reads: Reads, decide: Any) -> Any:
        result, writes = await self.backend.transact(reads, decide)
        self._hand_off(writes)
        return result

    # -- decoding -------------------------------------------------------------------------------------
    def _decode(self, row: Any, w: Writes) -> Instance | None:
        """The Instance of a row; None if it cannot be decoded (then it is set aside with ``w``)."""
        try:
            return decode_instance(row)
        except _DECODE_ERRORS as exc:
            w.aside.append(self._aside("instances", row[0], INSTANCE_COLUMNS, row, exc))
            return None

    def _aside(self, source: str, ident: Any, columns: Sequence[str], row: Any, exc: BaseException) -> Aside:
        reason = f"{type(exc).__name__}: {exc}"
        _log.error("%s: %s row %s cannot be decoded and is set aside: %s", self.backend.where, source,
                   str(ident)[:100], reason)
        return Aside(source, ident, reason, render_row(source, columns, row))

    # -- queue ----------------------------------------------------------------------------------------
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        if not instances:
            return []
        ts = now()
        items: list[tuple[Instance, list[StateRecord]]] = []
        seen: set[str] = set()
        for given in instances:
            if given.uuid in seen:
                continue  # the same uuid twice in one call: the first one is the one added
            seen.add(given.uuid)
            inst = given.copy()
            items.append((inst, transitions.enqueue(inst, ts, node)))
        inserted = await self.backend.enqueue(items, chained)
        if inserted:
            self._hand_off(Writes(wake=True))
        out: list[bool] = []
        for given in instances:
            added = given.uuid in inserted
            out.append(added)
            inserted.discard(given.uuid)  # a repeated uuid: only its first occurrence was added
        return out

    def _decide_claim(self, rows: list[Any], node: str, limit: int, lease: float, ts: float, w: Writes,
                      out: list[Instance]) -> None:
        for row in rows:
            if len(out) >= limit:
                return
            inst = self._decode(row, w)
            if inst is None:
                continue
            if inst.abandoned and out:  # a suspect is handed out alone: it stays first for the next claim
                return
            history = transitions.claim(inst, ts, node, lease)
            if history is None:
                continue
            w.updates.append((inst, False))
            w.history.extend(history)
            out.append(inst)
            if inst.abandoned:
                return

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        if limit <= 0:
            return []
        got: list[Instance] = []
        for _ in range(8):  # again only if rows had to be set aside
            ts = now()
            want = limit - len(got)

            def decide(rows: Rows) -> tuple[tuple[list[Instance], bool], Writes]:
                w = Writes()
                out: list[Instance] = []
                # the records' time is taken once the rows are read and locked: an instance whose enqueue
                # committed after ``ts`` was taken (between the clock and the read) is not recorded as
                # claimed before it was created
                self._decide_claim(rows.claim, node, want, lease, max(ts, now()), w, out)
                return (out, bool(w.aside) and len(rows.claim) == want), w

            out, again = await self._transact(Reads(ts=ts, claim=want), decide)
            self._short = len(out) < want
            got += out
            if not again or len(got) >= limit or (got and got[-1].abandoned):
                break
        return [i.copy() for i in got]

    async def finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                               lease: float) -> tuple[list[bool], list[Instance]]:
        if not outcomes:
            return [], await self.claim(node, limit, lease) if limit > 0 else []
        ts = now()
        uuids = sorted({oc.uuid for oc in outcomes})

        def decide(rows: Rows) -> tuple[tuple[list[bool], list[Instance]], Writes]:
            w = Writes()
            at = max(ts, now())  # after the reads, as in claim
            oks = self._decide_finish(rows.by_uuid, outcomes, node, at, w)
            out: list[Instance] = []
            if limit > 0:
                self._decide_claim(rows.claim, node, limit, lease, at, w, out)
            return (oks, out), w

        oks, out = await self._transact(Reads(uuids=uuids, ts=ts, claim=max(0, limit)), decide)
        if limit > 0:
            self._short = len(out) < limit
        return oks, [i.copy() for i in out]

    async def wait_ready(self, timeout: float) -> None:
        ev = self._wake_event()
        due = await self._next_due()
        ts = now()
        if due is not None and due <= ts:
            return
        await self._wait(ev, timeout if due is None else min(timeout, due - ts))

    async def claim_or_wait(self, node: str, limit: int, lease: float, timeout: float) -> list[Instance]:
        ev = self._wake_event()  # before looking at the queue: a wake-up that comes after it is not missed
        if self._short and limit > 0 and timeout > 0:
            # the last claim found the queue short: one plain read of the next due time, and a claim
            # transaction only when something is due (an idle node's wake-ups cost one read, not a
            # transaction: no write lock taken on SQLite, three round trips saved on PostgreSQL)
            due = await self._next_due()
            ts = now()
            if due is None or due > ts:
                await self._wait(ev, timeout if due is None else min(timeout, due - ts))
                return await self.claim(node, limit, lease)
        got = await self.claim(node, limit, lease)
        if got or limit <= 0 or timeout <= 0:
            return got
        ev = self._wake_event()
        due = await self._next_due()
        ts = now()
        # work is due but the claim got none (other nodes hold it in their claims): look again soon
        wait = timeout if due is None else min(timeout, max(due - ts, 0.005))
        await self._wait(ev, wait)
        return await self.claim(node, limit, lease)

    async def _next_due(self) -> float | None:
        rows = await self.backend.fetch(self.backend.dialect.next_due())
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def _wait(self, ev: anyio.Event, seconds: float) -> None:
        """Until ``ev`` is set (a wake-up) or ``seconds`` pass; a polling backend also ends the wait
        once another connection has committed."""
        if seconds <= 0:
            return
        if self.backend.PUSH:
            with anyio.move_on_after(seconds):
                await ev.wait()
            return
        deadline = anyio.current_time() + seconds
        while True:
            left = deadline - anyio.current_time()
            if left <= 0:
                return
            with anyio.move_on_after(min(left, self.poll_interval)):
                await ev.wait()
                return
            if await self.backend.changed():
                return

    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        if not uuids:
            return LeaseReport()
        ts = now()

        def decide(rows: Rows) -> tuple[LeaseReport, Writes]:
            w = Writes()
            found: dict[str, Instance] = {}
            for row in rows.by_uuid:
                inst = self._decode(row, w)
                if inst is not None:
                    found[inst.uuid] = inst
            lost: set[str] = set()
            canceled: set[str] = set()
            for uid in uuids:
                inst = found.get(uid)
                if inst is None or transitions.extend(inst, ts, node, lease) is None:
                    lost.add(uid)
                    continue
                w.updates.append((inst, False))
                if inst.cancel_requested:
                    canceled.add(uid)
            return LeaseReport(frozenset(lost), frozenset(canceled)), w

        return await self._transact(Reads(uuids=sorted(set(uuids))), decide)  # type: ignore[no-any-return]

    async def reclaim_expired(self, node: str) -> list[Instance]:
        out: list[Instance] = []
        for _ in range(50):
            ts = now()

            def decide(rows: Rows) -> tuple[tuple[list[Instance], int], Writes]:
                w = Writes()
                requeued: list[Instance] = []
                for row in rows.expired:
                    inst = self._decode(row, w)
                    if inst is None:
                        continue
                    history = transitions.reclaim(inst, ts, node)
                    if history is None:
                        continue
                    w.history.extend(history)
                    if inst.state is State.SCHEDULED:
                        w.updates.append((inst, True))
                        w.wake = True
                        requeued.append(inst.copy())
                    else:
                        w.updates.append((inst, False))
                        w.finals.append(inst.uuid)
                return (requeued, len(rows.expired)), w

            got, n = await self._transact(Reads(ts=ts, expired=_RECLAIM_BATCH), decide)
            out += got
            if n < _RECLAIM_BATCH:
                break
        return out

    def _decide_finish(self, rows: list[Any], outcomes: Sequence[Outcome], node: str, ts: float,
                       w: Writes) -> list[bool]:
        found: dict[str, Instance] = {}
        for row in rows:
            inst = self._decode(row, w)
            if inst is not None:
                found[inst.uuid] = inst
        oks: list[bool] = []
        for oc in outcomes:
            inst = found.get(oc.uuid)
            history = transitions.finish(inst, oc, ts, node) if inst is not None else None
            if inst is None or history is None:
                oks.append(False)
                continue
            w.history.extend(history)
            requeue = inst.state is State.SCHEDULED
            w.updates.append((inst, requeue))
            if requeue:
                w.wake = True
            else:
                w.finals.append(inst.uuid)
            oks.append(True)
        return oks

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        return (await self.finish_and_claim(node, outcomes, 0, 0.0))[0]

    async def release(self, node: str, uuids: Sequence[str]) -> None:
        if not uuids:
            return
        ts = now()

        def decide(rows: Rows) -> tuple[None, Writes]:
            w = Writes()
            for row in rows.by_uuid:
                inst = self._decode(row, w)
                history = transitions.release(inst, ts, node) if inst is not None else None
                if inst is None or history is None:
                    continue
                w.updates.append((inst, True))
                w.history.extend(history)
                w.wake = True
            return None, w

        await self._transact(Reads(uuids=sorted(set(uuids))), decide)

    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        if await self._get(uuid) is None:
            return None
        after = await self._transact(Reads(uuids=[uuid]), self._decide_cancel(now(), node, waiting_only=False))
        got = after.get(uuid)
        if got is None:  # gone meanwhile, or unreadable now
            return await self.get_instance(uuid)
        return got.copy()

    async def cancel_schedule(self, schedule_id: str, *, node: str | None = None) -> list[Instance]:
        # the backend marks the chain canceled and reads its occurrences in the same transaction
        after = await self._transact(Reads(cancel_schedule=schedule_id),
                                     self._decide_cancel(now(), node, waiting_only=True))
        return [i.copy() for _, i in sorted(after.items()) if i.state is State.CANCELED]

    def _decide_cancel(self, ts: float, node: str | None, *,
                       waiting_only: bool) -> Callable[[Rows], tuple[dict[str, Instance], Writes]]:
        """The cancel of the rows read (``waiting_only``: a chain stopped, its running occurrence left be);
        returns the instances it changed (a waiting one CANCELED, a running one flagged) by uuid."""

        def decide(rows: Rows) -> tuple[dict[str, Instance], Writes]:
            w = Writes()
            after: dict[str, Instance] = {}
            for row in rows.schedule if waiting_only else rows.by_uuid:
                inst = self._decode(row, w)
                if inst is None or (waiting_only and inst.state not in transitions.WAITING):
                    continue
                history = transitions.cancel(inst, ts, node)
                if history:  # waiting: final at once
                    w.updates.append((inst, False))
                    w.history.extend(history)
                    w.finals.append(inst.uuid)
                elif history is not None:  # running: its node hears of it
                    w.updates.append((inst, False))
                    w.cancels.append(inst.uuid)
                if history is not None or not waiting_only:
                    after[inst.uuid] = inst
            return after, w

        return decide

    # -- schedule records ------------------------------------------------------------------------------
    def _schedule_records(self, rows: list[Any]) -> list[ScheduleRecord]:
        out = []
        for sid, data, version in rows:
            try:
                d = json.loads(data)
                if not isinstance(d, dict):
                    raise ValueError(f"expected a JSON object, got {type(d).__name__}")
            except ValueError as exc:  # reported, skipped: an operator's to repair
                _log.error("%s: schedule record %r cannot be decoded: %s", self.backend.where, sid, exc)
                continue
            out.append(ScheduleRecord(str(sid), d, int(version)))
        return out

    async def get_schedule_record(self, schedule_id: str) -> ScheduleRecord | None:
        rows = await self.backend.fetch(self.backend.dialect.select_schedule_records(True), [schedule_id])
        found = self._schedule_records(rows)
        return found[0] if found else None

    async def list_schedule_records(self) -> list[ScheduleRecord]:
        return self._schedule_records(await self.backend.fetch(self.backend.dialect.select_schedule_records(False)))

    async def put_schedule_record(self, schedule_id: str, data: dict[str, Any], *,
                                  version: int | None) -> int | None:
        d = self.backend.dialect
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if version is None:
            return 1 if await self.backend.execute(d.insert_schedule_record(), [schedule_id, text]) == 1 else None
        changed = await self.backend.execute(d.update_schedule_record(), [text, schedule_id, version])
        return version + 1 if changed == 1 else None

    async def delete_schedule_record(self, schedule_id: str, *, version: int) -> bool:
        return await self.backend.execute(self.backend.dialect.delete_schedule_record(), [schedule_id, version]) == 1

    async def cancel_notifications(self) -> AsyncIterator[str]:
        self._on_this_loop()
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._cancel_subscribers.append(send)
        seen: set[str] = set()
        poll = not self.backend.PUSH
        # without notifications, the running instances are looked at (a query of the running index);
        # cancels made in this process arrive at once all the same, and the heartbeat carries them too
        every = max(self.poll_interval, 0.1) if poll else math.inf
        try:
            async with receive:
                while True:
                    got: str | None = None
                    with anyio.move_on_after(every):
                        try:
                            got = await receive.receive()
                        except anyio.EndOfStream:  # the store stopped
                            return
                    if got is not None:
                        yield got
                        continue
                    if poll:
                        asked = set(await self._running_cancels())
                        for uid in sorted(asked - seen):
                            yield uid
                        seen = asked
        finally:
            if send in self._cancel_subscribers:
                self._cancel_subscribers.remove(send)
            send.close()

    async def _running_cancels(self) -> list[str]:
        t = self.backend.dialect.instances
        rows = await self.backend.fetch(f"SELECT uuid FROM {t} WHERE state = 'PROCESSING' AND aside = FALSE "
                                        "AND cancel_requested = TRUE")
        return [r[0] for r in rows]

    # -- reading ----------------------------------------------------------------------------------------
    async def _set_aside(self, asides: Sequence[Aside]) -> None:
        if asides:
            await self.backend.set_aside(asides)

    async def _get(self, uuid: str) -> Instance | None:
        d = self.backend.dialect
        rows = await self.backend.fetch(f"SELECT {', '.join(INSTANCE_COLUMNS)}, aside FROM {d.instances} "
                                        f"WHERE uuid = {d.ph(1)}", [uuid])
        if not rows:
            return None
        row = rows[0]
        if row[len(INSTANCE_COLUMNS)]:
            raise CorruptRecordError(f"instances/{uuid}", "set aside as unreadable: see corrupt_records()")
        w = Writes()
        inst = self._decode(row, w)
        if inst is None:
            await self._set_aside(w.aside)
            raise CorruptRecordError(w.aside[0].key, w.aside[0].reason)
        return inst

    async def get_instance(self, uuid: str) -> Instance | None:
        return await self._get(uuid)

    async def list_instances(self, query: Query) -> list[Instance]:
        sql, args = self.backend.dialect.instances_select(", ".join(INSTANCE_COLUMNS), query)
        rows = await self.backend.lookup(sql, args)
        w = Writes()
        found = [inst for row in rows if (inst := self._decode(row, w)) is not None]
        await self._set_aside(w.aside)
        if query.limit is not None:
            found.reverse()
        return found

    async def clear_instances(self, query: Query) -> int:
        sql, args = self.backend.dialect.instances_delete(query)
        return await self.backend.execute(sql, args)

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        rows = await self.backend.fetch(self.backend.dialect.queue_stats(), [now()])
        counts = {str(kind): int(n) for kind, n, _ in rows}
        oldest = {str(kind): float(t) for kind, _, t in rows if t is not None}
        return counts, oldest

    async def queue_counts(self) -> dict[str, int]:
        return (await self.queue_stats())[0]

    async def oldest_ready(self) -> dict[str, float]:
        return (await self.queue_stats())[1]

    async def wait_final(self, uuid: str, timeout: float | None) -> Instance | None:
        self._on_this_loop()
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        # with notifications the poll is only a safety net; without, it is how other processes' finishes
        # are seen (growing like the contract's default)
        interval = 1.0 if self.backend.PUSH else 0.002
        ev: anyio.Event | None = None
        try:
            while True:
                ev = self._final_waiters.get(uuid)
                if ev is None:
                    ev = self._final_waiters[uuid] = anyio.Event()
                inst = await self._get(uuid)
                if inst is None or inst.state.is_final:
                    return inst
                left = deadline - anyio.current_time()
                if left <= 0:
                    return inst
                with anyio.move_on_after(min(left, interval)):
                    await ev.wait()
                if not self.backend.PUSH:
                    interval = min(interval * 1.5, max(0.1, self.poll_interval))
        finally:  # a waiter that gave up leaves nothing behind (another may still wait on the event)
            if ev is not None and not ev.is_set() and self._final_waiters.get(uuid) is ev:
                del self._final_waiters[uuid]

    # -- history and logs ----------------------------------------------------------------------------
    async def _records(self, source: str, columns: Sequence[str], query: Query, decode: Any) -> list[Any]:
        d = self.backend.dialect
        sql, args = d.records_select(getattr(d, source), ", ".join(columns), query, state_filter=source == "history")
        rows = await self.backend.lookup(sql, args)
        out: list[Any] = []
        asides: list[Aside] = []
        for row in rows:
            try:
                out.append(decode(row))
            except _DECODE_ERRORS as exc:
                asides.append(self._aside(source, row[0], columns, row, exc))
        await self._set_aside(asides)
        if query.limit is not None:
            out.reverse()
        return out

    async def lookup_history(self, query: Query) -> list[StateRecord]:
        return await self._records("history", HISTORY_COLUMNS, query, decode_history)

    async def clear_history(self, query: Query) -> int:
        d = self.backend.dialect
        sql, args = d.records_delete(d.history, query, state_filter=True)
        return await self.backend.execute(sql, args)

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        if records:
            await self.backend.append_logs(records)

    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        return await self._records("logs", LOG_COLUMNS, query, decode_log)

    async def clear_logs(self, query: Query) -> int:
        d = self.backend.dialect
        sql, args = d.records_delete(d.logs, query, state_filter=False)
        return await self.backend.execute(sql, args)

    # -- corrupt records ------------------------------------------------------------------------------------
    async def corrupt_records(self) -> list[CorruptRecord]:
        rows = await self.backend.fetch(f'SELECT "key", reason, raw FROM {self.backend.dialect.corrupt} '
                                        'ORDER BY ts, "key"')
        return [CorruptRecord(str(k), str(r), bytes(raw).decode("utf-8", "surrogateescape")) for k, r, raw in rows]

    async def drop_corrupt_record(self, key: str) -> bool:
        return await self.backend.drop_corrupt(key)
