"""Every change of an instance's state, each one etcd transaction that applies :mod:`gojob_core.transitions`.

The table decides: whether an event applies to the instance as it was read, what its new state and
fields are, and every history record with its detail. What is done here is everything around it, the
store's own part:

- **what the table is given**: the instance record with the lease end and cancel flag of its running
  entry (:func:`~gojob_store_etcd._records.current`); for a reclaim, a lease end of 0 when the etcd lease
  the running entry names is gone (:func:`~gojob_store_etcd._leases.lease_end`);
- **what is written with the record**, by the state the table left it in: its history key (one per
  transaction, with a pointer to it in the record), the running entry (written by a claim, renewed by
  ``extend_leases``, flagged by a cancel, deleted when the attempt ends), the queue entry (a new
  ``seq`` whenever it goes back in the queue: FIFO among the re-queued);
- **the guard**: each transaction holds only while the record and the running entry are at the
  revisions read, so that two nodes never both change an instance; a conflict reads them again and
  asks the table again.

A batch of changes goes in one request of nested transactions (:mod:`~gojob_store_etcd._batching`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gojob_core import Instance, State, StateRecord, transitions
from gojob_core.abc import LeaseReport, Outcome

from ._batching import PAGE, Part, send
from ._client import absent, mod_below, mod_is, op_delete, op_put, op_range, op_txn, prefix_end, present
from ._keys import PRIO_OFFSET, new_tag, next_seq, now, us
from ._leases import holds, lease_end
from ._records import Snapshot, current, encode_history, encode_record, encode_running

__all__ = ["StateChanges"]


class StateChanges:
    """Enqueue, claim, finish, lease renewal, reclaim, hand-back and cancel (a mixin of
    :class:`~gojob_store_etcd.EtcdStore`)."""

    def _with_history(self, inst: Instance, pointers: list[str] | None,
                      history: list[StateRecord]) -> tuple[bytes, list[str], Any]:
        """The instance record a transaction writes, with a pointer to the history key of the state records
        it writes too; its pointers; and the put of that history key (one key, by time)."""
        ts_us, tag = us(history[0].ts), new_tag()
        pointers = [*(pointers or ()), f"{ts_us}/{tag}"]
        return (encode_record(inst, pointers), pointers,
                op_put(self.keys.history + f"{ts_us}/{inst.uuid}/{tag}".encode(), encode_history(history)))

    # -- enqueue -----------------------------------------------------------------------------------------
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        if not instances:
            return []
        k = self.keys
        t = now()
        added = [False] * len(instances)
        parts: list[Part] = []
        seen: set[str] = set()
        for idx, given in enumerate(instances):
            u, sid = given.uuid, given.schedule_id
            if "/" in u or (sid is not None and "/" in sid):
                raise ValueError(f"instance uuid {u!r} and schedule id {sid!r} must not contain '/'")
            if not -PRIO_OFFSET <= given.priority < PRIO_OFFSET:
                raise ValueError(f"priority {given.priority!r} of job {given.kind!r} is out of range (64-bit)")
            if u in seen:
                continue
            seen.add(u)
            inst = given.copy()
            history = transitions.enqueue(inst, t, node)
            inst.seq = next_seq()
            raw, _, put_history = self._with_history(inst, None, history)
            qkey = k.queue_key(inst, t)
            b = u.encode()
            compare = [absent(k.instance + b)]  # idempotent by uuid
            success = [op_put(k.instance + b, raw), op_put(qkey, raw), put_history]
            if sid is not None:
                sb = sid.encode()
                success.append(op_put(k.schedule + sb + b"/" + b, b""))
                if chained:
                    compare.append(absent(k.schedule_canceled + sb))
                else:
                    success.append(op_delete(k.schedule_canceled + sb))

            def done(r: Any, rev: int, idx: int = idx, qkey: bytes = qkey, raw: bytes = raw) -> None:
                if r.response_txn.succeeded:
                    added[idx] = True
                    self._queued(qkey, rev, raw)

            parts.append(Part(op_txn(compare, success), done, 4 * len(raw) + 300))
        await send(self._c(), parts)
        self._rw.trim(self.options.window)
        self._dw.trim(self.options.window)
        return added

    # -- claim and finish (batched by Claims) --------------------------------------------------------------
    def _claim_part(self, node: str, lease_id: int, key: bytes, rev: int, raw: bytes, inst: Instance,
                    pointers: list[str] | None, history: list[StateRecord], out: list[Instance]) -> Part:
        """Take the queue entry ``key`` (at ``rev``, its record ``raw``) for ``node``: ``inst`` is its
        instance with the claim applied, ``history`` the claim's records. Handed to ``out`` if taken."""
        k = self.keys
        u = inst.uuid
        b = u.encode()
        ikey = k.instance + b
        p = {"node": node, "lease_ts": inst.lease_ts, "cancel": inst.cancel_requested, "lease": lease_id}
        raw_i, pointers, put_history = self._with_history(inst, pointers, history)
        success = [op_delete(key), op_put(ikey, raw_i), op_put(k.running + b, encode_running(p)), put_history]
        held = inst.copy()  # what this node knows of it; ``inst`` goes to the worker
        key_rev = rev

        def done(r: Any, rev: int) -> None:
            txn = r.response_txn
            if txn.succeeded:
                self._held[u] = Snapshot(held, pointers, rev, p, rev)
                if self._rev < rev:  # known before the watch reports it (a lapsed lease re-queues it)
                    self._running[u] = (rev, p)
                out.append(inst)
            elif not txn.responses[0].response_range.kvs:  # not taken: this node's etcd lease lapsed
                self._lease_lapsed(lease_id)
                self._rw.restore(key, key_rev, raw)
            else:
                self._record_changed(txn, key, key_rev, raw, u)

        # only while this node's lease lives (a claim under a lapsed lease would be re-queued at once),
        # and while the instance record is the one queued: written with the entry, or before it (a
        # record replaced since, by bytes that cannot be read or behind the store's back, is not run)
        lkey = k.liveness_key(lease_id)
        return Part(op_txn([mod_is(key, rev), present(lkey), mod_below(ikey, rev + 1)], success,
                           [op_range(lkey, keys_only=True), op_range(key, keys_only=True),
                            op_range(ikey, keys_only=True)]),
                    done, 3 * len(raw_i) + 400)

    def _finish_part(self, node: str, oc: Outcome, snap: Snapshot, t: float, oks: list[bool | None], idx: int,
                     fresh: dict[str, Snapshot]) -> Part | None:
        """Write the outcome of an attempt, as the table says; None if it does not apply (this node does
        not hold the instance in the outcome's attempt: an attempt that outlived its lease, the instance
        re-queued and claimed again, even by this node, writes nothing). ``oks[idx]`` is set once written;
        on a conflict, ``fresh`` gets the instance read again."""
        if snap.inst is None or snap.p is None:
            return None
        inst = current(snap)
        history = transitions.finish(inst, oc, t, node)
        if history is None:
            return None
        k = self.keys
        u = oc.uuid
        b = u.encode()
        qkey = None
        if inst.state is State.SCHEDULED:  # a retry
            inst.seq = next_seq()
            qkey = k.queue_key(inst, t)
        raw, _, put_history = self._with_history(inst, snap.pointers, history)
        success = [op_delete(k.running + b), put_history, op_put(k.instance + b, raw)]
        if qkey is not None:
            success.append(op_put(qkey, raw))

        def done(r: Any, rev: int) -> None:
            txn = r.response_txn
            if txn.succeeded:
                oks[idx] = True
                self._held.pop(u, None)
                self._running.pop(u, None)
                if qkey is not None:
                    self._queued(qkey, rev, raw)
            else:
                fresh[u] = self._snapshot(txn.responses[0], txn.responses[1])

        return Part(op_txn([mod_is(k.instance + b, snap.i_rev), mod_is(k.running + b, snap.p_rev)], success,
                           [op_range(k.instance + b), op_range(k.running + b)]), done, 3 * len(raw) + 400)

    # -- leases of running instances -----------------------------------------------------------------------
    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        if not uuids:
            return LeaseReport()
        k = self.keys
        lease_id = await self._lease_for(lease)
        lost: set[str] = set()
        cancel: set[str] = set()
        states = await self._states_for(node, list(dict.fromkeys(uuids)))
        pending = list(states)
        for _ in range(5):
            t = now()
            parts = []
            retry: dict[str, Snapshot] = {}
            for u in pending:
                snap = states[u]
                inst = current(snap) if snap.inst is not None and snap.p is not None else None
                if inst is None or transitions.extend(inst, t, node, lease) is None:
                    lost.add(u)
                    self._forget_unless_held(u, snap, node)
                    continue
                assert snap.p is not None
                p = dict(snap.p, lease_ts=inst.lease_ts, lease=lease_id)  # a lease granted anew is named here
                pkey = k.running + u.encode()

                def done(r: Any, rev: int, u: str = u, snap: Snapshot = snap, p: dict[str, Any] = p) -> None:
                    txn = r.response_txn
                    if txn.succeeded:
                        self._held[u] = snap._replace(p=p, p_rev=rev)
                        if p.get("cancel"):
                            cancel.add(u)
                    else:  # a cancel flagged it, or it is no longer this node's: ask again
                        retry[u] = self._snapshot(txn.responses[0], txn.responses[1])

                # the running entry as read: what it names still holds (a finish, a reclaim or a
                # hand-back deletes it; a cancel rewrites it)
                parts.append(Part(op_txn([mod_is(pkey, snap.p_rev)], [op_put(pkey, encode_running(p))],
                                         [op_range(k.instance + u.encode()), op_range(pkey)]), done, 300))
            await send(self._c(), parts)
            states.update(retry)
            pending = list(retry)
            if not pending:
                break
        return LeaseReport(frozenset(lost), frozenset(cancel))

    async def _reclaim(self, node: str, uuids: Sequence[str], live: set[int] | None = None) -> list[Instance]:
        """Re-queue (or end, as the table says) instances whose lease ended or whose node's etcd lease is
        gone; the re-queued ones are returned."""
        k = self.keys
        out: list[Instance] = []
        states = await self._read(list(uuids))
        if live is None:  # the caller's fresh scan, else one now (the watch's view may lag)
            live = await self._live_leases()
        self._live = live
        t = now()
        parts = []
        for u, snap in states.items():
            # what was read is newer than what the watch told: correct the mirror
            if snap.p is None:
                self._running.pop(u, None)
            else:
                self._running[u] = (snap.p_rev, snap.p)
            p = snap.p
            if snap.inst is None and p is not None and not holds(p, live, t):
                # a running entry whose instance record cannot be read (reported) or is gone: nothing
                # can re-queue or finish it; moved aside (reported) so that it is not read again and again
                why = "cannot be decoded" if snap.i_rev else "is missing"
                kv = (await self._c().range(k.running + u.encode())).kvs  # its bytes, to keep them as they are
                if kv and kv[0].mod_revision == snap.p_rev:
                    parts.append(self._set_aside_part(kv[0].key, snap.p_rev, kv[0].value,
                                                      f"running entry whose instance record {why}: set aside", None))
                continue
            if snap.inst is None or p is None:
                continue
            inst = current(snap)
            inst.lease_ts = lease_end(p, live)
            history = transitions.reclaim(inst, t, node)
            if history is None:
                continue  # still held, or not running
            b = u.encode()
            qkey = None
            if inst.state is State.SCHEDULED:
                inst.seq = next_seq()
                qkey = k.queue_key(inst, t)
            raw, _, put_history = self._with_history(inst, snap.pointers, history)
            success = [op_delete(k.running + b), op_put(k.instance + b, raw), put_history]
            if qkey is not None:
                success.append(op_put(qkey, raw))

            def done(r: Any, rev: int, inst: Instance = inst, qkey: bytes | None = qkey, raw: bytes = raw,
                     u: str = u) -> None:
                if r.response_txn.succeeded:
                    self._running.pop(u, None)
                    self._held.pop(u, None)
                    if qkey is not None:
                        self._queued(qkey, rev, raw)
                        out.append(inst)

            # (a heartbeat meanwhile changes the running entry: then it is not taken)
            parts.append(Part(op_txn([mod_is(k.instance + b, snap.i_rev), mod_is(k.running + b, snap.p_rev)],
                                     success), done, 3 * len(raw) + 400))
        await send(self._c(), parts)
        if out:
            self._wake()
        return out

    async def reclaim_expired(self, node: str) -> list[Instance]:
        k = self.keys
        t = now()
        live = await self._live_leases()
        expired = []
        async for kv in self._scan(k.running, prefix_end(k.running)):
            p = self._decode_p(kv.key, kv.value)
            if p is not None and not holds(p, live, t):
                expired.append(kv.key[len(k.running):].decode())
        found = await self._reclaim(node, expired, live) if expired else []
        await self._flush_corrupt()
        earlier, self._reclaimed = self._reclaimed, []
        return earlier + found

    # -- hand-back and cancel ------------------------------------------------------------------------------
    async def release(self, node: str, uuids: Sequence[str]) -> None:
        if not uuids:
            return
        k = self.keys
        states = await self._states_for(node, list(dict.fromkeys(uuids)))
        pending = list(states)
        for _ in range(5):
            t = now()
            fresh: dict[str, Snapshot] = {}
            parts = []
            for u in pending:
                snap = states[u]
                inst = current(snap) if snap.inst is not None and snap.p is not None else None
                history = None if inst is None else transitions.release(inst, t, node)
                if history is None:
                    self._forget_unless_held(u, snap, node)
                    continue
                b = u.encode()
                inst.seq = next_seq()
                raw, _, put_history = self._with_history(inst, snap.pointers, history)
                qkey = k.queue_key(inst, t)
                success = [op_delete(k.running + b), op_put(k.instance + b, raw), op_put(qkey, raw), put_history]

                def done(r: Any, rev: int, u: str = u, qkey: bytes = qkey, raw: bytes = raw) -> None:
                    txn = r.response_txn
                    if txn.succeeded:
                        self._held.pop(u, None)
                        self._running.pop(u, None)
                        self._queued(qkey, rev, raw)
                    else:
                        fresh[u] = self._snapshot(txn.responses[0], txn.responses[1])

                parts.append(Part(op_txn([mod_is(k.instance + b, snap.i_rev), mod_is(k.running + b, snap.p_rev)],
                                         success, [op_range(k.instance + b), op_range(k.running + b)]),
                                  done, 3 * len(raw) + 400))
            await send(self._c(), parts)
            states.update(fresh)
            pending = list(fresh)
            if not pending:
                break
        self._wake()

    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        first = (await self._read([uuid]))[uuid]
        await self._flush_corrupt()
        self._not_corrupt(uuid, first)
        if first.inst is None:
            return None
        await self._cancel({uuid: first}, node, waiting_only=False)
        return await self.get_instance(uuid)

    async def cancel_schedule(self, schedule_id: str, *, node: str | None = None) -> list[Instance]:
        k = self.keys
        c = self._c()
        sb = str(schedule_id).encode()
        if b"/" in sb:
            raise ValueError(f"schedule id {schedule_id!r} must not contain '/'")
        # the mark first, in a request of its own: an occurrence chained after it is refused, one chained
        # before it is among the members read next
        await c.txn([op_put(k.schedule_canceled + sb, b"1")])
        base = k.schedule + sb + b"/"
        targets: list[str] = []
        key = base
        while True:
            page = await c.range(key, prefix_end(base), limit=PAGE, keys_only=True)
            targets += [kv.key[len(base):].decode() for kv in page.kvs]
            if not page.more or not page.kvs:
                break
            key = page.kvs[-1].key + b"\0"
        if not targets:
            return []
        states = await self._read(sorted(set(targets)))
        await self._flush_corrupt()
        done = await self._cancel(states, node, waiting_only=True)
        out = []
        for u in sorted(done):
            inst = await self.get_instance(u)
            if inst is not None and inst.state is State.CANCELED:
                out.append(inst)
        return out

    async def _cancel(self, states: dict[str, Snapshot], node: str | None, *, waiting_only: bool) -> set[str]:
        """Apply a cancel to each instance read (conflicts read again and retried); returns the uuids
        made CANCELED. ``waiting_only``: a running one is left be (a chain stopped, not a cancel asked)."""
        k = self.keys
        done: set[str] = set()
        pending = list(states)
        for _ in range(5):
            t = now()
            fresh: dict[str, Snapshot] = {}
            parts = []
            for u in pending:
                snap = states[u]
                if snap.inst is None:
                    continue
                inst = current(snap)
                if waiting_only and inst.state not in transitions.WAITING:
                    continue
                history = transitions.cancel(inst, t, node)
                if history is None:
                    continue
                b = u.encode()
                ikey, pkey = k.instance + b, k.running + b
                failure = [op_range(ikey), op_range(pkey)]

                def done_(r: Any, rev: int, u: str = u, final: bool = bool(history)) -> None:
                    txn = r.response_txn
                    if not txn.succeeded:
                        fresh[u] = self._snapshot(txn.responses[0], txn.responses[1])
                    elif final:
                        done.add(u)

                if history:  # the record changes (final at once): written with its history, out of the queue
                    rkey, dkey = k.queue_keys(snap.inst)
                    self._rw.delete(rkey)
                    self._dw.delete(dkey)
                    raw, _, put_history = self._with_history(inst, snap.pointers, history)
                    success = [op_put(ikey, raw), op_delete(rkey), op_delete(dkey), put_history]
                    parts.append(Part(op_txn([mod_is(ikey, snap.i_rev)], success, failure), done_, 2000))
                elif snap.p is not None and inst.cancel_requested:
                    # running: the flag goes to its running entry, where its node hears of it
                    p = dict(snap.p, cancel=True)
                    parts.append(Part(op_txn([mod_is(pkey, snap.p_rev), mod_is(ikey, snap.i_rev)],
                                             [op_put(pkey, encode_running(p))], failure), done_, 400))
            await send(self._c(), parts)
            states.update(fresh)
            pending = list(fresh)
            if not pending:
                break
        return done
