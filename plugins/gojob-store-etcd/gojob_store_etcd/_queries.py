"""Reading instances: one or a few by uuid (with their revisions, for a transaction to compare), every
instance a query matches, clearing them, and the queue's sizes. Large reads are paged, at one revision."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from gojob_core import CorruptRecordError, Instance, Query, State

from ._batching import PAGE, Part, send
from ._client import mod_is, op_delete, op_put, op_range, op_txn, prefix_end
from ._codec import dumps
from ._keys import new_tag
from ._records import Snapshot, current

__all__ = ["Queries"]


class Queries:
    """Reads and queries (a mixin of :class:`~gojob_store_etcd.EtcdStore`)."""

    async def _scan(self, key: bytes, end: bytes, *, desc: bool = False, keys_only: bool = False,
                    stop: Callable[[int], bool] | None = None) -> AsyncIterator[Any]:
        """Every key in ``[key, end)``, a page at a time at one revision (gRPC's receive limit)."""
        c = self._c()
        lo, hi, rev = key, end, 0
        got = 0
        while True:
            page = await c.range(lo, hi, limit=PAGE, desc=desc, keys_only=keys_only, revision=rev)
            rev = rev or page.header.revision
            for kv in page.kvs:
                yield kv
            got += len(page.kvs)
            if not page.more or not page.kvs or (stop is not None and stop(got)):
                return
            if desc:
                hi = page.kvs[-1].key
            else:
                lo = page.kvs[-1].key + b"\0"

    async def _read(self, uuids: Sequence[str]) -> dict[str, Snapshot]:
        """The current record and running entry of each instance (one round trip per 50)."""
        k = self.keys
        out: dict[str, Snapshot] = {}
        for i in range(0, len(uuids), 50):
            chunk = uuids[i:i + 50]
            ops = []
            for u in chunk:
                b = u.encode()
                ops += [op_range(k.instance + b), op_range(k.running + b)]
            resp = await self._c().txn(ops)
            for n, u in enumerate(chunk):
                out[u] = self._snapshot(resp.responses[2 * n], resp.responses[2 * n + 1])
        return out

    def _snapshot(self, ri: Any, rp: Any) -> Snapshot:
        """A Snapshot from the answers of a read of an instance record and of its running entry."""
        inst, pointers, i_rev, p, p_rev = None, None, 0, None, 0
        kvs = ri.response_range.kvs
        if kvs:
            i_rev = kvs[0].mod_revision
            got = self._decode_inst(kvs[0].key, kvs[0].value)
            if got is not None:
                inst, pointers = got
        kvs = rp.response_range.kvs
        if kvs:
            p, p_rev = self._decode_p(kvs[0].key, kvs[0].value), kvs[0].mod_revision
        return Snapshot(inst, pointers, i_rev, p, p_rev)

    def _not_corrupt(self, uuid: str, snap: Snapshot) -> None:
        """Raise CorruptRecordError if the instance has a record that cannot be decoded."""
        if snap.inst is None and snap.i_rev:
            raise CorruptRecordError((self.keys.instance + uuid.encode()).decode(), "cannot be decoded (set aside)")

    async def get_instance(self, uuid: str) -> Instance | None:
        k, b = self.keys, uuid.encode()
        resp = await self._c().txn([op_range(k.instance + b), op_range(k.running + b)])
        snap = self._snapshot(resp.responses[0], resp.responses[1])
        await self._flush_corrupt()
        self._not_corrupt(uuid, snap)
        return None if snap.inst is None else current(snap)

    async def _instances(self, query: Query) -> list[tuple[Instance, int, list[str] | None]]:
        """(instance, revision of its record, its history pointers) of each match, oldest first."""
        k = self.keys
        found: list[tuple[Instance, int, list[str] | None]] = []
        if query.uuid is not None:
            b = query.uuid.encode()
            resp = await self._c().txn([op_range(k.instance + b), op_range(k.running + b)])
            snap = self._snapshot(resp.responses[0], resp.responses[1])
            if snap.inst is not None:
                inst = current(snap)
                if query.matches_instance(inst):
                    found.append((inst, snap.i_rev, snap.pointers))
        else:
            running: dict[bytes, tuple[dict[str, Any] | None, int]] = {}
            async for kv in self._scan(k.running, prefix_end(k.running)):
                running[kv.key[len(k.running):]] = (self._decode_p(kv.key, kv.value), kv.mod_revision)
            li = len(k.instance)
            async for kv in self._scan(k.instance, prefix_end(k.instance)):
                got = self._decode_inst(kv.key, kv.value)
                if got is None:
                    continue
                p, p_rev = running.get(kv.key[li:], (None, 0))
                snap = Snapshot(got[0], got[1], kv.mod_revision, p, p_rev)
                inst = current(snap)
                if query.matches_instance(inst):
                    found.append((inst, kv.mod_revision, got[1]))
            found.sort(key=lambda x: (x[0].created_ts, x[0].uuid))
        await self._flush_corrupt()
        return found

    async def list_instances(self, query: Query) -> list[Instance]:
        return query.apply_limit([inst for inst, _, _ in await self._instances(query)])

    async def clear_instances(self, query: Query) -> int:
        k = self.keys
        found = [f for f in await self._instances(query) if f[0].state is not State.PROCESSING]
        removed = [0]
        parts = []
        for inst, rev, pointers in found:
            b = inst.uuid.encode()
            rkey, dkey = k.queue_keys(inst)
            self._rw.delete(rkey)
            self._dw.delete(dkey)
            ops = [op_delete(k.instance + b), op_delete(rkey), op_delete(dkey)]
            if pointers:  # its history stays: where its records are is kept with the record gone
                ops.append(op_put(k.cleared + b + f"/{new_tag()}".encode(), dumps(pointers)))
            if inst.schedule_id is not None:
                ops.append(op_delete(k.schedule + inst.schedule_id.encode() + b"/" + b))

            def done(r: Any, rev: int) -> None:
                if r.response_txn.succeeded:
                    removed[0] += 1

            parts.append(Part(op_txn([mod_is(k.instance + b, rev)], ops), done, 300))
        await send(self._c(), parts)
        return removed[0]

    async def queue_counts(self) -> dict[str, int]:
        counts, _ = await self.queue_stats()
        return counts

    async def oldest_ready(self) -> dict[str, float]:
        _, oldest = await self.queue_stats()
        return oldest

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        """Queued instances per kind, and per kind the ready time of the oldest due one, from the
        ready and delayed index keys alone (never the records: a store may hold millions)."""
        counts: dict[str, int] = {}
        oldest: dict[str, float] = {}
        now_us = int(time.time() * 1e6)
        # ready keys: {prio}/{ready}/{seq}/{uuid}/{kind}; delayed keys: {ready}/{seq}/{uuid}/{kind}
        for base, skip, at in ((self.keys.ready, 4, 1), (self.keys.delayed, 3, 0)):
            async for kv in self._scan(base, prefix_end(base), keys_only=True):
                parts = kv.key[len(base):].decode(errors="replace").split("/", skip)
                if len(parts) <= skip:
                    continue
                kind = parts[skip]
                counts[kind] = counts.get(kind, 0) + 1
                try:
                    ready_us = int(parts[at])
                except ValueError:
                    continue
                if ready_us <= now_us and ready_us / 1e6 < oldest.get(kind, math.inf):
                    oldest[kind] = ready_us / 1e6
        return counts, oldest
