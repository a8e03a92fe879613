"""A worker's round trip: finish a batch of attempts and claim the next instances, in one request.

Before a claim the node re-queues the expired leases its watch knows of and moves due delayed
instances into the ready index (:meth:`Claims._prepare_claims`). The candidates come from the ready
window in key order (priority, ready time, FIFO); each claim is a nested transaction
(:meth:`~gojob_store_etcd._state_changes.StateChanges._claim_part`), so one candidate another node took
fails alone. **Suspects are claimed alone:** an instance with an abandoned attempt (its node died or
lost etcd while running it) may be what kills nodes: a claim that meets one first takes it alone; a
claim that meets one after others ends before it, and it stays first in line for the next claim.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from gojob_core import Instance, State, StoreError, transitions
from gojob_core.abc import Outcome

from ._batching import NEST, Part, send
from ._client import mod_below, mod_is, op_delete, op_put, op_range, op_txn
from ._keys import now
from ._records import Snapshot

__all__ = ["Claims"]


class Claims:
    """Claims, finishes and the promotion of due instances (a mixin of :class:`~gojob_store_etcd.EtcdStore`)."""

    def _reset_claims(self) -> None:
        self._held: dict[str, Snapshot] = {}  # what this node claimed and has not finished, as it wrote it
        self._reclaimed: list[Instance] = []  # re-queued before a claim: reported by the next reclaim_expired
        self._reclaim_at = 0.0  # no reclaim from the watch's view before this time

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        if limit <= 0:
            return []
        return (await self.finish_and_claim(node, (), limit, lease))[1]

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        return (await self.finish_and_claim(node, outcomes, 0, 0.0))[0]

    async def finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                               lease: float) -> tuple[list[bool], list[Instance]]:
        """Finish a batch and claim up to ``limit`` more in one request (nested transactions)."""
        if not outcomes and limit <= 0:
            return [], []
        return await self._finish_and_claim(node, outcomes, limit, lease)

    async def _states_for(self, node: str, uuids: Sequence[str]) -> dict[str, Snapshot]:
        """What this node knows of the instances it holds; the others read (one round trip)."""
        states: dict[str, Snapshot] = {}
        missing = []
        for u in uuids:
            snap = self._held.get(u)
            if snap is None or snap.inst is None or snap.p is None or snap.p.get("node") != node:
                missing.append(u)
            else:
                states[u] = snap
        if missing:
            states.update(await self._read(missing))
        return states

    def _forget_unless_held(self, uuid: str, snap: Snapshot | None, node: str) -> None:
        """The table refused an event for an instance (``snap`` as last read): if this node does not hold it
        (in any attempt), forget it, so that its queue entry is claimed again. (A hand-back or finish whose
        answer was lost, and whose retry found it done, would otherwise leave it here for ever, and this
        node would skip its queue entry.)"""
        if snap is None or snap.inst is None or snap.p is None or not transitions.holds(snap.inst, node):
            self._held.pop(uuid, None)

    async def _prepare_claims(self, node: str) -> None:
        """Before claiming: re-queue expired leases the watch knows of, move due delayed instances."""
        await self._ensure_watch()
        t = now()
        if t >= self._reclaim_at and self._running:
            expired = self._expired(t)
            if expired:
                self._reclaim_at = t + 0.2
                self._reclaimed += await self._reclaim(node, expired)
                await self._flush_corrupt()
        if not self._dw.keys and not self._dw.complete:
            await self._read_delayed()
        if self._dw.keys and self._next_due() <= t:
            await self._promote(t)

    async def _promote(self, t: float) -> None:
        """Move due delayed instances into the ready index (any node may; a conflict just loses)."""
        k = self.keys
        while True:
            dw = self._dw
            due = 0
            while due < len(dw.keys) and due < NEST and k.due(dw.keys[due]) <= t:
                due += 1
            if not due:
                if not dw.keys and not dw.complete:
                    await self._read_delayed()
                    continue
                return
            parts = []
            for key, rev, raw in dw.take(due):
                u = k.uuid_in(key, k.delayed)
                got = None if u is None else self._decode_inst(key, raw, u)
                if got is None or got[0].state is not State.SCHEDULED:
                    parts.append(self._set_aside_part(key, rev, raw, "delayed entry cannot be decoded or is not "
                                                                     "SCHEDULED: set aside", u))
                    continue
                rkey = k.queue_keys(got[0])[0]
                ikey = k.instance + u.encode()  # type: ignore[union-attr]

                def done(r: Any, rev: int, key: bytes = key, key_rev: int = rev, rkey: bytes = rkey,
                         raw: bytes = raw, u: str = u) -> None:  # type: ignore[assignment]
                    txn = r.response_txn
                    if txn.succeeded:
                        self._rw.put(rkey, rev, raw)
                    else:
                        self._record_changed(txn, key, key_rev, raw, u)

                # only while the record is the one queued (written with the entry or before it)
                parts.append(Part(op_txn([mod_is(key, rev), mod_below(ikey, rev + 1)],
                                         [op_delete(key), op_put(rkey, raw)],
                                         [op_range(key, keys_only=True), op_range(ikey, keys_only=True)]), done,
                                  2 * len(raw) + 200))
            await send(self._c(), parts)
            await self._flush_corrupt()
            if due < NEST:
                return

    async def _finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                                lease: float) -> tuple[list[bool], list[Instance]]:
        k = self.keys
        n = len(outcomes)
        oks: list[bool | None] = [None] * n
        claimed: list[Instance] = []
        states = await self._states_for(node, [oc.uuid for oc in outcomes]) if n else {}
        if limit > 0:
            await self._prepare_claims(node)
        lease_id = await self._lease_for(lease) if limit > 0 else 0
        pending = list(range(n))
        rounds = 0
        stop_claims = False  # a suspect instance is (or ends) the claim
        while True:
            rounds += 1
            t = now()
            fresh: dict[str, Snapshot] = {}
            parts: list[Part] = []
            seen: set[str] = set()
            for idx in pending:
                oc = outcomes[idx]
                if oc.uuid in seen:  # the same instance twice in one batch: the first one counts
                    oks[idx] = False
                    continue
                seen.add(oc.uuid)
                snap = states.get(oc.uuid)
                part = None if snap is None else self._finish_part(node, oc, snap, t, oks, idx, fresh)
                if part is None:
                    oks[idx] = False
                    self._forget_unless_held(oc.uuid, snap, node)
                    continue
                parts.append(part)
            taken: list[tuple[bytes, int, bytes]] = []
            need = limit - len(claimed)
            alone_first = False
            if need > 0 and rounds <= 8 and not stop_claims:
                if not self._rw.keys and (not self._rw.complete or not self._watch_ok
                                          or time.monotonic() - self._rw.read_at > 1.0):
                    await self._read_ready()
                taken = self._rw.take(min(need, NEST - len(parts)))
                nclaims = 0
                for i, (key, rev, raw) in enumerate(taken):
                    u = k.uuid_in(key, k.ready)
                    if u is None:
                        parts.append(self._set_aside_part(key, rev, raw, "ready key is malformed: set aside", None))
                        continue
                    # an entry for an instance this node holds or finishes is stale (read before its
                    # claim); one instance twice in a request would fail it whole (duplicate key)
                    if u in seen or u in self._held:
                        continue
                    seen.add(u)
                    got = self._decode_inst(key, raw, u)
                    history = None if got is None else transitions.claim(got[0], t, node, lease)
                    if got is None or history is None:
                        parts.append(self._set_aside_part(key, rev, raw, "ready entry cannot be decoded or is not "
                                                                         "SCHEDULED: set aside", u))
                        continue
                    inst, pointers = got
                    if inst.abandoned > 0:
                        # a suspect (an attempt of it was abandoned: it may kill its node) is handed out
                        # alone: first, it is the whole claim; after others, the claim ends before it.
                        # Either way what follows it stays queued, in order.
                        rest = i + 1 if not (claimed or nclaims) else i
                        for rk, r, v in taken[rest:]:
                            self._rw.restore(rk, r, v)
                        taken = taken[:rest]
                        if rest == i:
                            stop_claims = True
                            break
                        alone_first = True
                    self._taken[key] = math.inf
                    nclaims += 1
                    parts.append(self._claim_part(node, lease_id, key, rev, raw, inst, pointers, history, claimed))
                    if alone_first:
                        break
            if not parts:
                break
            try:
                await send(self._c(), parts)
            except BaseException:
                for key, rev, raw in taken:  # not sent or not answered: keep them in view
                    self._taken.pop(key, None)
                    self._rw.restore(key, rev, raw)
                raise
            done_rev = self._c().last_revision
            for key, _, _ in taken:
                self._taken[key] = done_rev
            if alone_first and claimed:
                stop_claims = True
            if self._aside:  # entries that must not be used: set them aside before the next round
                await self._flush_corrupt()
            pending = [idx for idx in pending if oks[idx] is None]
            for idx in pending:
                states[outcomes[idx].uuid] = fresh.get(outcomes[idx].uuid, states[outcomes[idx].uuid])
            if rounds > 8 and pending:
                raise StoreError(f"etcd store: finish of {len(pending)} instance(s) kept conflicting")
            if not pending and (len(claimed) >= limit or not taken or stop_claims):
                break
        await self._flush_corrupt()
        return [bool(x) for x in oks], claimed
