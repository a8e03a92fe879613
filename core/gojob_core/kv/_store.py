"""KvStore: the whole store contract over any :class:`KvBackend` (get, set, compare-and-set, scan).

Key layout (``{p}`` is the store's prefix, ``gojob/`` by default; ``{u}``, ``{k}``, ``{s}`` are the uuid,
kind and schedule id, percent-encoded so they contain no ``/``; numbers are zero-padded so keys sort):

- ``{p}i/{u}``: the instance (JSON of ``Instance.to_dict()``), the source of truth, changed only by
  compare-and-set; under ``"_history"`` it carries the history records of its transitions not yet
  copied to their own keys (``{history key: record}``);
- ``{p}q/r/{priority+2^63:20}/{ready_us:17}/{seq:20}/{u}/{k}``: the ready index, whose key order is
  the claim order; ``{p}q/d/{ready_us:17}/{seq:20}/{priority+2^63:20}/{u}/{k}``: the delayed index,
  moved to ``q/r/`` when due;
- ``{p}run/{u}/{seq:20}``: the running index, one key per claim (value: the node), read by reclaim;
- ``{p}cx/{u}``: a cancel asked for a running instance (watched by the nodes);
- ``{p}sm/{s}/{u}`` and ``{p}sc/{s}``: an occurrence chain's occurrences, and a canceled chain;
- ``{p}sr/{s}``: a schedule record (JSON; its version is the key's version, compare-and-set by it);
- ``{p}h/{u}/{ts_us:17}.{token}.{n}``: history records (JSON); ``{p}l/...``: log records;
- ``{p}seq``: the counter handing out sequence numbers (FIFO order, and telling stale index keys apart);
- ``{p}wake``: written when work may be ready (watched by idle nodes);
- ``{p}bad/{key}``: records that could not be decoded, set aside with their exact bytes.

How the contract is kept with single-key compare-and-set only:

- An index key names the instance and the ``seq`` it was written for. A claim reads the index in key
  order, reads only those instances, and takes one by compare-and-set from (SCHEDULED, that seq) to
  PROCESSING: two nodes never both win. An index key whose instance moved on (a higher seq, no
  longer SCHEDULED at that seq, final, or gone) is stale and deleted; one whose instance has a lower seq is a re-queue
  still being written and is skipped.
- A re-queue (retry, release, reclaim) takes a new seq from the counter *after* reading the instance,
  writes the index key, then the instance; if the compare-and-set fails it deletes its index key and
  starts over. So a stale key can always be told apart from a pending one, and a node dying between
  the two writes leaves at worst a stale key, never an instance nobody will run. A new instance is
  written before its index key (an enqueue retried after a crash writes the key again).
- Every state change is one compare-and-set of the instance record, and its history records are
  part of that write: the new record carries them (with the keys they will have) under
  ``"_history"``, together with any still there from earlier changes. The same call then copies them
  to their ``h/`` keys and clears them from the record with a further compare-and-set (*flush*). A
  copy is idempotent (the key travels with the record), a clear that loses a race is harmless (the
  next writer carries them on, or flushes them), and a node dying in between leaves them in the
  record: whoever reads or changes it next flushes them (a transition, claim, reclaim, get, list;
  clearing an instance copies them first). History queries read the instance records first, then
  the ``h/`` keys, and count a record by its key: each committed record is seen exactly once,
  wherever it is at that moment.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import anyio

from .. import transitions
from .._instance import Instance
from .._records import LogRecord, Query, StateRecord
from .._state import State
from .._time import now
from ..abc import CorruptRecord, LeaseReport, Outcome, ScheduleRecord, Store
from ..errors import StoreError
from ._backend import KvBackend, KvEntry

__all__ = ["KvStore"]

_log = logging.getLogger("gojob.kv")

_PRIO = 2 ** 63
_MAX_US = 10 ** 17 - 1

#: what decide() returns in a transition: the new instance and the history records of the change
_Plan = tuple[Instance, list[StateRecord]]
#: the key, inside an instance record, of its history records not yet copied out ({key: record})
_PENDING = "_history"


class _Cur(NamedTuple):
    """An instance record as read: the instance, the record's version, and its pending history."""

    inst: Instance
    version: int
    pending: dict[str, dict[str, Any]]


def _q(s: str) -> str:
    return quote(s, safe="")


def _us(ts: float) -> int:
    return min(_MAX_US, max(0, int(ts * 1_000_000)))


def _prio(p: int) -> int:
    return min(2 * _PRIO - 1, max(0, p + _PRIO))


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


class KvStore(Store):
    """The store contract over a :class:`~gojob_core.kv.KvBackend`: the easy way to write a store.

    :param backend: the key-value backend; its ``start``/``stop`` are called by the store's.
    :param prefix: prefix of every key this store writes (several stores can share one backend).
    :param poll_interval: for a backend without ``watch``: the longest an idle node waits before it
            looks at the queue again, and how often it looks for cancels of running instances (a
            generic kv has no notification, so this bounded poll replaces it). With a watch the store
            is woken by the change itself and this is unused.
    :param page: keys read per ``scan`` call.

    Several ``KvStore`` objects on one backend (and prefix) are nodes of one cluster.
    """

    name = "kv"

    def __init__(self, backend: KvBackend, *, prefix: str = "gojob/", poll_interval: float = 0.5,
                 page: int = 500) -> None:
        if poll_interval <= 0 or page <= 0:
            raise ValueError("poll_interval and page must be positive")
        self.backend = backend
        self.prefix = prefix
        self.poll_interval = float(poll_interval)
        self.page = int(page)
        self._token = secrets.token_hex(4)
        self._n = itertools.count()
        p = prefix
        self._k_ready, self._k_delayed, self._k_run = p + "q/r/", p + "q/d/", p + "run/"
        self._k_cancel, self._k_wake, self._k_seq, self._k_bad = p + "cx/", p + "wake", p + "seq", p + "bad/"

    def __repr__(self) -> str:
        return f"<KvStore backend={self.backend!r} prefix={self.prefix!r}>"

    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        await self.backend.stop()

    # -- keys ----------------------------------------------------------------------------------------
    def _k_inst(self, uuid: str) -> str:
        return f"{self.prefix}i/{_q(uuid)}"

    def _k_running(self, inst: Instance) -> str:
        """The running-index key of one claim: the seq names it, so removing it never touches a later claim's."""
        return f"{self._k_run}{_q(inst.uuid)}/{inst.seq:020d}"

    def _index_keys(self, inst: Instance) -> tuple[str, str]:
        """The ready and the delayed index key of the instance as it is (one of them, if any, exists)."""
        prio, us, u, k = _prio(inst.priority), _us(inst.ready_ts), _q(inst.uuid), _q(inst.kind)
        return (f"{self._k_ready}{prio:020d}/{us:017d}/{inst.seq:020d}/{u}/{k}",
                f"{self._k_delayed}{us:017d}/{inst.seq:020d}/{prio:020d}/{u}/{k}")

    def _queue_key(self, inst: Instance, ts: float) -> str:
        ready, delayed = self._index_keys(inst)
        return ready if inst.ready_ts <= ts else delayed

    def _rec_key(self, kind: str, uuid: str, ts: float) -> str:
        return f"{self.prefix}{kind}/{_q(uuid)}/{_us(ts):017d}.{self._token}.{next(self._n):012d}"

    @staticmethod
    def _parse_ready(rest: str) -> tuple[int, int, str, str]:
        """(ready_us, seq, uuid, kind) from a ready key without its prefix."""
        _, us, seq, u, k = rest.split("/")
        return int(us), int(seq), unquote(u), unquote(k)

    @staticmethod
    def _parse_delayed(rest: str) -> tuple[int, int, int, str, str]:
        """(ready_us, seq, priority+2^63, uuid, kind) from a delayed key without its prefix."""
        us, seq, prio, u, k = rest.split("/")
        return int(us), int(seq), int(prio), unquote(u), unquote(k)

    # -- reading, decoding, setting aside ---------------------------------------------------------------
    async def _scan_all(self, prefix: str, *, keys_only: bool = False) -> AsyncIterator[KvEntry]:
        after: str | None = None
        while True:
            page = await self.backend.scan(prefix, after=after, limit=self.page, keys_only=keys_only)
            for e in page:
                yield e
            if len(page) < self.page:
                return
            after = page[-1].key

    async def _set_aside(self, entry: KvEntry, reason: str) -> None:
        """Copy an undecodable record under ``bad/`` (exact bytes kept), then remove it from its place
        only if nobody rewrote it meanwhile: it no longer stops the others, and nothing is lost."""
        _log.error("%s store: record %s cannot be decoded and is set aside: %s", self.name, entry.key[:200], reason)
        report = {"key": entry.key, "reason": reason, "raw": entry.value.decode("utf-8", "replace"),
                  "raw_b64": base64.b64encode(entry.value).decode()}
        await self.backend.set(self._k_bad + entry.key, _dumps(report))
        await self.backend.delete(entry.key, entry.version)

    @staticmethod
    def _parse(value: bytes) -> tuple[Instance, dict[str, dict[str, Any]]]:
        """The instance of a record and its pending history records (each checked to decode)."""
        d = json.loads(value)
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        pending = d.pop(_PENDING, None) or {}
        if not isinstance(pending, dict):
            raise ValueError(f"pending history is not a JSON object: {type(pending).__name__}")
        for rec in pending.values():
            StateRecord.from_dict(rec)
        return Instance.from_dict(d), pending

    @classmethod
    def _parse_instance(cls, value: bytes) -> Instance:
        return cls._parse(value)[0]

    async def _decode(self, entry: KvEntry | None) -> _Cur | None:
        """The record of an entry; None if absent, or undecodable (then set aside)."""
        if entry is None:
            return None
        try:
            inst, pending = self._parse(entry.value)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            await self._set_aside(entry, f"{type(exc).__name__}: {exc}")
            return None
        return _Cur(inst, entry.version, pending)

    async def _read(self, uuid: str) -> _Cur | None:
        return await self._decode(await self.backend.get(self._k_inst(uuid)))

    def _pend(self, pending: dict[str, dict[str, Any]], history: Sequence[StateRecord]) -> dict[str, dict[str, Any]]:
        """``pending`` with ``history`` added, each record under the history key it will be copied to."""
        return {**pending, **{self._rec_key("h", r.uuid, r.ts): r.to_dict() for r in history}}

    async def _cas(self, inst: Instance, version: int | None,
                   pending: dict[str, dict[str, Any]] | None = None) -> int | None:
        """Write the instance record, with its pending history records, only if still at ``version``."""
        d = inst.to_dict()
        if pending:
            d[_PENDING] = pending
        try:
            value = _dumps(d)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"instance {inst.uuid} cannot be stored as JSON: {exc}") from exc
        return await self.backend.compare_and_set(self._k_inst(inst.uuid), value, version)

    async def _flush(self, curs: Sequence[_Cur | None]) -> None:
        """Copy the pending history records of these records to their keys (idempotent), then clear
        them from each record if it is unchanged (if not, its next writer carries them on)."""
        curs = [c for c in curs if c is not None and c.pending]
        if not curs:
            return
        await self.backend.set_many([(k, _dumps(r)) for c in curs for k, r in c.pending.items()])
        for c in curs:
            await self._cas(c.inst, c.version)

    async def _write_records(self, kind: str, records: Sequence[StateRecord | LogRecord]) -> None:
        if records:
            await self.backend.set_many([(self._rec_key(kind, r.uuid, r.ts), _dumps(r.to_dict())) for r in records])

    async def _alloc_seq(self, n: int) -> int:
        """Take ``n`` sequence numbers from the shared counter (compare-and-set); returns the first."""
        while True:
            entry = await self.backend.get(self._k_seq)
            try:
                current = int(entry.value) if entry is not None else 0
            except ValueError:
                assert entry is not None
                await self._set_aside(entry, "sequence counter is not an integer")
                continue
            if await self.backend.compare_and_set(self._k_seq, str(current + n).encode(),
                                                  entry.version if entry is not None else None) is not None:
                return current + 1

    async def _wake(self) -> None:
        await self.backend.set(self._k_wake, repr(now()).encode())

    async def _transition(self, uuid: str, entry: KvEntry | None,
                          decide: Callable[[Instance | None], _Plan | None]) -> tuple[Instance, Instance] | None:
        """Read, decide, compare-and-set, until the write lands or ``decide`` declines (None).

        A new state SCHEDULED is a re-queue: it gets a new seq (taken after the read) and its index key
        is written before the instance. Returns the instance as it was read and as it was written."""
        while True:
            cur = await self._decode(entry)
            plan = decide(cur.inst.copy() if cur is not None else None)
            if plan is None or cur is None:
                await self._flush([cur])
                return None
            new, history = plan
            qkey = None
            if new.state is State.SCHEDULED:
                new.seq = await self._alloc_seq(1)
                qkey = self._queue_key(new, now())
                await self.backend.set(qkey, b"")
            pending = self._pend(cur.pending, history)  # the history is part of the same write
            version = await self._cas(new, cur.version, pending)
            if version is not None:
                await self._flush([_Cur(new, version, pending)])
                return cur.inst, new
            if qkey is not None:
                await self.backend.delete(qkey)
            entry = await self.backend.get(self._k_inst(uuid))

    def _classify(self, cur: _Cur | None, seq: int) -> str:
        """What an index key written for ``seq`` is worth: "ok" (claimable), "stale" or "pending"."""
        if cur is None:
            return "stale"
        inst = cur.inst
        if inst.seq == seq:
            return "ok" if inst.state is State.SCHEDULED else "stale"
        if inst.seq > seq or inst.state.is_final:
            return "stale"
        return "pending"

    async def _bad_key(self, key: str, exc: Exception) -> None:
        await self._set_aside(KvEntry(key, b"", 0), f"unreadable index key: {type(exc).__name__}: {exc}")
        await self.backend.delete(key)

    # -- queue -------------------------------------------------------------------------------------
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        if not instances:
            return []
        b = self.backend
        ts = now()
        sids = sorted({i.schedule_id for i in instances if i.schedule_id is not None})
        sc = [f"{self.prefix}sc/{_q(s)}" for s in sids]
        canceled: set[str] = set()
        if chained and sids:
            canceled = {s for s, e in zip(sids, await b.get_many(sc)) if e is not None}
        elif sids:
            await b.delete_many(sc)  # scheduling anew re-opens a canceled schedule
        members = [(f"{self.prefix}sm/{_q(i.schedule_id)}/{_q(i.uuid)}", b"") for i in instances
                   if i.schedule_id is not None and i.schedule_id not in canceled]
        if members:
            await b.set_many(members)  # before the instance, so a cancel of the schedule finds it
        seq = await self._alloc_seq(len(instances))
        added: list[Instance] = []
        written: list[_Cur | None] = []
        out: list[bool] = []
        requeue: list[str] = []
        for n, given in enumerate(instances):
            if chained and given.schedule_id in canceled:
                out.append(False)
                continue
            inst = given.copy()
            inst.seq = seq + n
            pending = self._pend({}, transitions.enqueue(inst, ts, node))
            version = await self._cas(inst, None, pending)
            if version is None:
                out.append(False)
                cur = await self._read(inst.uuid)  # an enqueue retried after a crash: its index key again
                if cur is not None and cur.inst.state is State.SCHEDULED:
                    requeue.append(self._queue_key(cur.inst, ts))
                written.append(cur)
                continue
            added.append(inst)
            written.append(_Cur(inst, version, pending))
            out.append(True)
        await self._flush(written)
        requeue += [self._queue_key(i, ts) for i in added]
        if requeue:
            await b.set_many([(k, b"") for k in requeue])
            await self._wake()
        if chained and added:  # a cancel of the schedule that came meanwhile: it may not have seen them
            late = {s for s, e in zip(sids, await b.get_many(sc)) if e is not None}
            for inst in added:
                if inst.schedule_id in late:
                    await self._cancel_one(inst.uuid, node)
        return out

    async def _promote_due(self, ts: float) -> None:
        """Move due keys from the delayed index to the ready index (idempotent: any node may)."""
        ts_us = _us(ts)
        n = len(self._k_delayed)
        while True:
            page = await self.backend.scan(self._k_delayed, limit=self.page, keys_only=True)
            moves: list[tuple[str, bytes]] = []
            done: list[str] = []
            for e in page:
                try:
                    us, seq, prio, u, k = self._parse_delayed(e.key[n:])
                except ValueError as exc:
                    await self._bad_key(e.key, exc)
                    continue
                if us > ts_us:
                    break
                moves.append((f"{self._k_ready}{prio:020d}/{us:017d}/{seq:020d}/{_q(u)}/{_q(k)}", b""))
                done.append(e.key)
            if moves:
                await self.backend.set_many(moves)
                await self.backend.delete_many(done)
            if len(done) < self.page:
                return

    async def _ready_candidates(self, after: str | None, count: int
                                ) -> tuple[list[tuple[str, tuple[Instance, int] | None, str]], str | None, bool]:
        """Up to ``count`` ready index keys after ``after`` with their instances and classification;
        deletes the stale ones. Returns (candidates, last key read, whether the index has more)."""
        n = len(self._k_ready)
        page = await self.backend.scan(self._k_ready, after=after, limit=count, keys_only=True)
        parsed: list[tuple[str, int, str]] = []
        for e in page:
            try:
                _, seq, uuid, _ = self._parse_ready(e.key[n:])
            except ValueError as exc:
                await self._bad_key(e.key, exc)
                continue
            parsed.append((e.key, seq, uuid))
        entries = await self.backend.get_many([self._k_inst(u) for _, _, u in parsed])
        out = []
        stale = []
        for (key, seq, _), entry in zip(parsed, entries):
            cur = await self._decode(entry)
            cls = self._classify(cur, seq)
            if cls == "stale":
                stale.append(key)
            else:
                out.append((key, cur, cls))
        if stale:
            await self.backend.delete_many(stale)
        return out, (page[-1].key if page else after), len(page) == count

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        if limit <= 0:
            return []
        b = self.backend
        ts = now()
        await self._promote_due(ts)
        out: list[Instance] = []
        taken: list[str] = []
        written: list[_Cur | None] = []
        after: str | None = None
        more = True
        while more and len(out) < limit:
            cands, after, more = await self._ready_candidates(after, max(2 * (limit - len(out)), 16))
            for key, cur, cls in cands:
                if len(out) >= limit:
                    break
                if cls != "ok" or cur is None:
                    continue
                if cur.inst.abandoned and out:  # a suspect is handed out alone: it waits for the next claim
                    more = False
                    break
                # the running index first: a node dying after the claim still leaves it for reclaim
                await b.set(self._k_running(cur.inst), node.encode())
                while cur is not None:
                    new = cur.inst.copy()
                    history = transitions.claim(new, ts, node, lease)
                    if history is None:
                        break
                    pending = self._pend(cur.pending, history)
                    version = await self._cas(new, cur.version, pending)
                    if version is not None:
                        out.append(new)
                        taken.append(key)
                        written.append(_Cur(new, version, pending))
                        if new.abandoned:
                            more = False
                            limit = len(out)  # the suspect is the whole claim
                        break
                    # the record changed: still claimable at this seq (a flush, say)? then try again
                    seq = cur.inst.seq
                    cur = await self._read(cur.inst.uuid)
                    if self._classify(cur, seq) != "ok":
                        break
        if taken:
            await b.delete_many(taken)
            await self._flush(written)
        return out

    async def _has_ready(self) -> bool:
        after: str | None = None
        more = True
        while more:
            cands, after, more = await self._ready_candidates(after, self.page)
            if any(cls == "ok" for _, _, cls in cands):
                return True
        return False

    async def _next_due(self) -> float | None:
        page = await self.backend.scan(self._k_delayed, limit=1, keys_only=True)
        if not page:
            return None
        try:
            return self._parse_delayed(page[0].key[len(self._k_delayed):])[0] / 1_000_000
        except ValueError:
            return now()  # the claim's promotion sets it aside

    async def wait_ready(self, timeout: float) -> None:
        b = self.backend
        if not b.SUPPORTS_WATCH:
            deadline = await self._ready_deadline(timeout)
            if deadline > 0:
                await anyio.sleep(min(deadline, self.poll_interval))
            return
        async with b.watch(self._k_wake) as changes:  # subscribe first: no wake-up is missed
            deadline = await self._ready_deadline(timeout)
            if deadline <= 0:
                return
            with anyio.move_on_after(deadline):
                async for change in changes:
                    if change.key == self._k_wake:
                        return

    async def _ready_deadline(self, timeout: float) -> float:
        """0 if work is ready now, else how long to wait: ``timeout``, or less if a delayed one is due."""
        ts = now()
        await self._promote_due(ts)
        if await self._has_ready():
            return 0.0
        due = await self._next_due()
        return timeout if due is None else min(timeout, max(0.001, due - ts))

    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        ts = now()
        lost: set[str] = set()
        canceled: set[str] = set()

        def decide(inst: Instance | None) -> _Plan | None:
            history = transitions.extend(inst, ts, node, lease) if inst is not None else None
            return None if inst is None or history is None else (inst, history)

        entries = await self.backend.get_many([self._k_inst(u) for u in uuids])
        for uuid, entry in zip(uuids, entries):
            changed = await self._transition(uuid, entry, decide)
            if changed is None:
                lost.add(uuid)
            elif changed[1].cancel_requested:
                canceled.add(uuid)
        return LeaseReport(frozenset(lost), frozenset(canceled))

    async def reclaim_expired(self, node: str) -> list[Instance]:
        b = self.backend
        ts = now()
        n = len(self._k_run)
        keys: list[tuple[str, str, int]] = []
        async for e in self._scan_all(self._k_run, keys_only=True):
            try:
                u, seq = e.key[n:].split("/")
                keys.append((e.key, unquote(u), int(seq)))
            except ValueError as exc:
                await self._bad_key(e.key, exc)
        entries = await b.get_many([self._k_inst(u) for _, u, _ in keys])
        drop: list[str] = []
        out: list[Instance] = []
        for (key, uuid, seq), entry in zip(keys, entries):
            cur = await self._decode(entry)
            if cur is None or cur.inst.state.is_final or cur.inst.seq > seq:
                drop.append(key)  # a claim that lost its race, or ended by a node that died meanwhile
                await self._flush([cur])
                continue
            inst = cur.inst
            if inst.state is not State.PROCESSING or inst.lease_ts is None or inst.lease_ts >= ts:
                await self._flush([cur])  # a claim whose node died before it copied the history out
                continue

            def decide(inst: Instance | None) -> _Plan | None:
                history = transitions.reclaim(inst, ts, node) if inst is not None else None
                return None if inst is None or history is None else (inst, history)

            changed = await self._transition(uuid, entry, decide)
            if changed is not None:
                drop.append(self._k_running(changed[0]))
                if changed[1].state is State.SCHEDULED:
                    out.append(changed[1])
                else:
                    drop.append(self._k_cancel + _q(uuid))
        if drop:
            await b.delete_many(drop)
        if out:
            await self._wake()
        return out

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        b = self.backend
        ts = now()
        done: list[bool] = []
        cleanup: list[str] = []
        requeued = False
        entries = await b.get_many([self._k_inst(oc.uuid) for oc in outcomes])
        for oc, entry in zip(outcomes, entries):

            def decide(inst: Instance | None, oc: Outcome = oc) -> _Plan | None:
                history = transitions.finish(inst, oc, ts, node) if inst is not None else None
                return None if inst is None or history is None else (inst, history)

            changed = await self._transition(oc.uuid, entry, decide)
            done.append(changed is not None)
            if changed is not None:
                old, new = changed
                cleanup.append(self._k_running(old))
                if new.cancel_requested:
                    cleanup.append(self._k_cancel + _q(oc.uuid))
                requeued = requeued or new.state is State.SCHEDULED
        if cleanup:
            await b.delete_many(cleanup)
        if requeued:
            await self._wake()
        return done

    async def release(self, node: str, uuids: Sequence[str]) -> None:
        b = self.backend
        ts = now()

        def decide(inst: Instance | None) -> _Plan | None:
            history = transitions.release(inst, ts, node) if inst is not None else None
            return None if inst is None or history is None else (inst, history)

        released: list[str] = []
        entries = await b.get_many([self._k_inst(u) for u in uuids])
        for uuid, entry in zip(uuids, entries):
            changed = await self._transition(uuid, entry, decide)
            if changed is not None:
                released.append(self._k_running(changed[0]))
        if released:
            await b.delete_many(released)
            await self._wake()

    async def _cancel_one(self, uuid: str, node: str | None) -> None:
        ts = now()

        def decide(inst: Instance | None) -> _Plan | None:
            history = transitions.cancel(inst, ts, node) if inst is not None else None
            return None if inst is None or history is None else (inst, history)

        changed = await self._transition(uuid, await self.backend.get(self._k_inst(uuid)), decide)
        if changed is None:
            return
        new = changed[1]
        if new.state is State.CANCELED:
            await self.backend.delete_many(self._index_keys(new))
        else:  # the running node hears it through its watch on cx/, or its lease heartbeat
            await self.backend.set(self._k_cancel + _q(uuid), (node or "").encode())

    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        if await self._read(uuid) is None:
            return None
        await self._cancel_one(uuid, node)
        return await self.get_instance(uuid)

    async def cancel_schedule(self, schedule_id: str, *, node: str | None = None) -> list[Instance]:
        sid = _q(schedule_id)
        await self.backend.set(f"{self.prefix}sc/{sid}", b"1")  # first: a chained enqueue after this is refused
        members = f"{self.prefix}sm/{sid}/"
        uuids = [unquote(e.key[len(members):]) async for e in self._scan_all(members, keys_only=True)]
        out = []
        for u in uuids:
            cur = await self._read(u)
            if cur is None or cur.inst.state not in transitions.WAITING:
                continue
            await self._cancel_one(u, node)
            after = await self.get_instance(u)
            if after is not None and after.state is State.CANCELED:
                out.append(after)
        return out

    # -- schedule records ------------------------------------------------------------------------------
    def _k_schedule(self, schedule_id: str) -> str:
        return f"{self.prefix}sr/{_q(schedule_id)}"

    async def _schedule_record(self, entry: KvEntry) -> ScheduleRecord | None:
        try:
            data = json.loads(entry.value)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except ValueError as exc:
            await self._set_aside(entry, f"{type(exc).__name__}: {exc}")
            return None
        return ScheduleRecord(unquote(entry.key[len(self.prefix) + 3:]), data, entry.version)

    async def get_schedule_record(self, schedule_id: str) -> ScheduleRecord | None:
        entry = await self.backend.get(self._k_schedule(schedule_id))
        return None if entry is None else await self._schedule_record(entry)

    async def list_schedule_records(self) -> list[ScheduleRecord]:
        out = []
        async for entry in self._scan_all(self.prefix + "sr/"):
            rec = await self._schedule_record(entry)
            if rec is not None:
                out.append(rec)
        return out

    async def put_schedule_record(self, schedule_id: str, data: dict[str, Any], *,
                                  version: int | None) -> int | None:
        return await self.backend.compare_and_set(self._k_schedule(schedule_id), _dumps(data), version)

    async def delete_schedule_record(self, schedule_id: str, *, version: int) -> bool:
        return await self.backend.delete(self._k_schedule(schedule_id), version)

    async def cancel_notifications(self) -> AsyncIterator[str]:
        n = len(self._k_cancel)
        if not self.backend.SUPPORTS_WATCH:  # poll the (short) list of cancels asked for running instances
            seen: set[str] = set()
            while True:
                now_asked = {e.key async for e in self._scan_all(self._k_cancel, keys_only=True)}
                for key in sorted(now_asked - seen):
                    yield unquote(key[n:])
                seen = now_asked
                await anyio.sleep(self.poll_interval)
        async with self.backend.watch(self._k_cancel) as changes:
            async for change in changes:
                if change.value is not None:
                    yield unquote(change.key[n:])

    async def get_instance(self, uuid: str) -> Instance | None:
        cur = await self._read(uuid)
        await self._flush([cur])
        return cur.inst if cur is not None else None

    async def _all_instances(self) -> AsyncIterator[_Cur]:
        async for entry in self._scan_all(self.prefix + "i/"):
            cur = await self._decode(entry)
            if cur is not None:
                yield cur

    async def list_instances(self, query: Query) -> list[Instance]:
        if query.uuid is not None:
            inst = await self.get_instance(query.uuid)
            found = [inst] if inst is not None and query.matches_instance(inst) else []
        else:
            curs = [c async for c in self._all_instances()]
            await self._flush(curs)
            found = [c.inst for c in curs if query.matches_instance(c.inst)]
            found.sort(key=lambda i: (i.created_ts, i.uuid))
        return query.apply_limit(found)

    async def clear_instances(self, query: Query) -> int:
        b = self.backend
        if query.uuid is not None:
            cur = await self._read(query.uuid)
            candidates = [cur] if cur is not None else []
        else:
            candidates = [c async for c in self._all_instances()]
        n = 0
        for inst, version, pending in candidates:
            if not query.matches_instance(inst) or inst.state is State.PROCESSING:
                continue
            if pending:  # its history outlives it: copied out before the record goes
                await b.set_many([(k, _dumps(r)) for k, r in pending.items()])
            if await b.delete(self._k_inst(inst.uuid), version):  # only if unchanged since read
                n += 1
                extra = [self._k_running(inst), self._k_cancel + _q(inst.uuid), *self._index_keys(inst)]
                if inst.schedule_id is not None:
                    extra.append(f"{self.prefix}sm/{_q(inst.schedule_id)}/{_q(inst.uuid)}")
                await b.delete_many(extra)
        return n

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        """From the index keys alone (no instance is read); a key left stale by a race or a dead node
        counts until the next claim passes over it."""
        ts_us = _us(now())
        counts: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for prefix in (self._k_ready, self._k_delayed):
            async for e in self._scan_all(prefix, keys_only=True):
                rest = e.key[len(prefix):]
                try:
                    if prefix == self._k_ready:
                        us, _, _, kind = self._parse_ready(rest)
                    else:
                        us, _, _, _, kind = self._parse_delayed(rest)
                except ValueError:
                    continue  # the next claim sets it aside
                counts[kind] = counts.get(kind, 0) + 1
                if us <= ts_us and us < oldest.get(kind, _MAX_US + 1):
                    oldest[kind] = us
        return counts, {k: us / 1_000_000 for k, us in oldest.items()}

    async def queue_counts(self) -> dict[str, int]:
        return (await self.queue_stats())[0]

    async def oldest_ready(self) -> dict[str, float]:
        return (await self.queue_stats())[1]

    async def wait_final(self, uuid: str, timeout: float | None) -> Instance | None:
        b = self.backend
        if not b.SUPPORTS_WATCH:
            return await super().wait_final(uuid, timeout)
        key = self._k_inst(uuid)
        async with b.watch(key) as changes:
            inst = await self.get_instance(uuid)
            if inst is None or inst.state.is_final:
                return inst
            with anyio.move_on_after(timeout):
                async for change in changes:
                    if change.key != key:
                        continue
                    if change.value is None:
                        break
                    try:
                        if self._parse_instance(change.value).state.is_final:
                            break
                    except (KeyError, ValueError, TypeError):
                        break  # get_instance below reports and sets it aside
        return await self.get_instance(uuid)

    # -- history and logs ----------------------------------------------------------------------------
    async def _records(self, kind: str, query: Query, load: Callable[[dict[str, Any]], Any],
                       pending: Sequence[_Cur] = ()) -> list[tuple[float, str, Any]]:
        """Matching records of ``kind`` by key, those still pending in ``pending`` included, each once."""
        prefix = f"{self.prefix}{kind}/" + (f"{_q(query.uuid)}/" if query.uuid is not None else "")
        found: dict[str, tuple[float, str, Any]] = {}
        for cur in pending:
            for key, d in cur.pending.items():
                if key.startswith(prefix) and query.matches_record(rec := load(d)):
                    found[key] = (rec.ts, key, rec)
        async for entry in self._scan_all(prefix):
            if entry.key in found:
                continue  # copied out after the instance record was read: the same record
            try:
                rec = load(json.loads(entry.value))
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                await self._set_aside(entry, f"{type(exc).__name__}: {exc}")
                continue
            if query.matches_record(rec):
                found[entry.key] = (rec.ts, entry.key, rec)
        return sorted(found.values(), key=lambda t: (t[0], t[1]))

    async def _history(self, query: Query) -> tuple[list[_Cur], list[tuple[float, str, StateRecord]]]:
        """The instance records with pending history, then the matching history records, each once.

        The instance records are read first: a record copied out meanwhile is then found under its
        key (the same key it had in the record), one cleared from a record was copied before."""
        if query.uuid is not None:
            cur = await self._read(query.uuid)
            curs = [cur] if cur is not None and cur.pending else []
        else:
            curs = [c async for c in self._all_instances() if c.pending]
        return curs, await self._records("h", query, StateRecord.from_dict, curs)

    async def lookup_history(self, query: Query) -> list[StateRecord]:
        return query.apply_limit([r for _, _, r in (await self._history(query))[1]])

    async def clear_history(self, query: Query) -> int:
        curs, found = await self._history(query)
        keys = {k for _, k, _ in found}
        for cur in curs:  # first out of the instance records (so no flush copies them again), then the keys
            c: _Cur | None = cur
            while c is not None and keys.intersection(c.pending):
                kept = {k: r for k, r in c.pending.items() if k not in keys}
                if await self._cas(c.inst, c.version, kept) is not None:
                    break
                c = await self._read(c.inst.uuid)
        await self.backend.delete_many(sorted(keys))
        return len(found)

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        await self._write_records("l", records)

    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        return query.apply_limit([r for _, _, r in await self._records("l", query, LogRecord.from_dict)])

    async def clear_logs(self, query: Query) -> int:
        found = await self._records("l", query, LogRecord.from_dict)
        await self.backend.delete_many([k for _, k, _ in found])
        return len(found)

    async def corrupt_records(self) -> list[CorruptRecord]:
        out = []
        async for entry in self._scan_all(self._k_bad):
            try:
                d = json.loads(entry.value)
                out.append(CorruptRecord(str(d["key"]), str(d["reason"]), str(d.get("raw") or "")))
            except (KeyError, ValueError, TypeError):
                out.append(CorruptRecord(entry.key[len(self._k_bad):], "unreadable report",
                                         entry.value.decode("utf-8", "replace")))
        return out
