"""Leases: how a node holds what it claimed, and how the others know when it no longer does.

Each node grants one etcd lease per lease time (TTL = the lease time rounded up to whole seconds) and
keeps it alive from a task; one liveness key ``q/n/{lease id}`` hangs on it, and every running entry the
node writes names the lease. When the node dies or loses etcd for a whole TTL, etcd deletes the liveness
key by itself; the other nodes see that in their watch and re-queue what it held. The contract's own
lease end (``lease_ts``, renewed by ``extend_leases``) is kept in each running entry: an entry is held
while its etcd lease lives *and* its lease end is ahead (:func:`lease_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from gojob_core import StoreError

from ._client import EtcdClient, op_put, prefix_end

__all__ = ["NodeLeases", "holds", "lease_end"]

_log = logging.getLogger("gojob.etcd")


def lease_end(p: dict[str, Any], live: set[int]) -> float:
    """When the lease of a running entry ends: its lease end, or 0 (it has ended) if the etcd lease it
    names is gone. An entry without a lease id, from before liveness keys, has its lease end alone."""
    lid = p.get("lease")
    if lid is not None and lid not in live:
        return 0.0
    return float(p.get("lease_ts") or 0)


def holds(p: dict[str, Any], live: set[int], t: float) -> bool:
    """Whether a running entry's node still holds it at ``t``."""
    return lease_end(p, live) >= t


class NodeLeases:
    """This node's etcd leases (a mixin of :class:`~gojob_store_etcd.EtcdStore`)."""

    def _reset_leases(self) -> None:
        self._leases: dict[int, int] = {}  # TTL -> this node's etcd lease for claims of that lease time
        self._keyed: set[int] = set()  # this node's leases whose liveness key was written
        self._keepalive: asyncio.Task[None] | None = None
        self._lease_lock = asyncio.Lock()

    async def _lease_for(self, lease: float) -> int:
        """This node's etcd lease for claims of ``lease`` seconds (granted once, kept alive by a task),
        with its liveness key ``q/n/{id}`` written: the running entries of its claims name the lease, and
        other nodes re-queue them once that key is gone (the lease expired or was revoked)."""
        ttl = max(1, math.ceil(lease))
        lease_id = self._leases.get(ttl)
        if lease_id is not None and lease_id in self._keyed:
            return lease_id
        async with self._lease_lock:
            if ttl not in self._leases:
                self._leases[ttl] = await self._c().grant(ttl)
                if self._keepalive is None:
                    self._keepalive = asyncio.create_task(self._keepalive_loop(), name="gojob-etcd-keepalive")
                    self._tasks.append(self._keepalive)
            lease_id = self._leases[ttl]
            if lease_id not in self._keyed:
                await self._c().txn([op_put(self.keys.liveness_key(lease_id), b"", lease_id)])
                self._keyed.add(lease_id)
            return lease_id

    def _lease_lapsed(self, lease_id: int) -> None:
        """A claim found this lease's liveness key gone (it expired before the keepalive saw it): the
        next claim gets a new lease, and re-queues what was held under the old one (as other nodes do:
        this node need not wait for its watch to report the key gone)."""
        self._keyed.discard(lease_id)
        self._live.discard(lease_id)
        self._reclaim_at = 0.0
        for ttl, lid in list(self._leases.items()):
            if lid == lease_id:
                del self._leases[ttl]

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, min(self._leases, default=3) / 3))
            for ttl, lease_id in list(self._leases.items()):
                try:
                    left = await self._c().keepalive(lease_id)
                    if left <= 0:  # it expired (the node could not reach etcd for a whole TTL)
                        _log.warning("etcd store: lease %x expired; granting a new one", lease_id)
                        self._keyed.discard(lease_id)
                        self._leases[ttl] = await self._c().grant(ttl)  # keyed on its next use
                except StoreError as exc:
                    _log.warning("etcd store: lease keepalive failed: %s", exc)

    async def _revoke_leases(self, client: EtcdClient) -> None:
        """On stop: the liveness keys of this node's leases go now, so other nodes re-queue what is left."""
        for lease_id in self._leases.values():
            with contextlib.suppress(StoreError):
                await client.revoke(lease_id)

    async def _live_leases(self) -> set[int]:
        """The etcd leases whose liveness key exists now (one per node and lease time: a short scan)."""
        base = self.keys.liveness
        return {lid async for kv in self._scan(base, prefix_end(base), keys_only=True)
                if (lid := self.keys.lease_of(kv.key)) is not None}
