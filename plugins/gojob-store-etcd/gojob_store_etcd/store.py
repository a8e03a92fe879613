"""The etcd store: every guarantee of the store contract on etcd's transactions, leases and watches.

:class:`EtcdStore` is put together from one module per concern; each holds one part of the store's
methods (a mixin) or of what they use:

=========================  ======================================================================================
``_keys``                  where everything lives: the key layout, the parts of keys, the per-process clocks
``_records``               what values hold: instance records and running entries to and from Instance
``_client``                the etcd calls (aetcd's stubs, grpc.aio), the URL and its options
``_batching``              many changes in few requests: nested transactions, request sizes, pages
``_state_changes``         every change of an instance, each one transaction applying ``gojob_core.transitions``
``_claims``                a worker's round trip: finish a batch and claim the next, suspects alone
``_queue_window``          the head of a queue index, in key order, as one node sees it
``_watch``                 the watch on the queue and the views it keeps current; waiting for work
``_leases``                each node's etcd leases and liveness keys: who still holds what
``_corrupt``               records that cannot be decoded or used: reported, set aside, never run
``_queries``               reading instances, listing and clearing them, the queue's sizes
``_history``               state history and logs
``_schedules``             schedule records (compare-and-set on their mod revision)
``_compaction``            the store's own compaction of etcd's history: opt-in (``compact``), off by default
=========================  ======================================================================================

Every change of an instance is one etcd transaction. A request carries one nested transaction per
instance, each guarded by the revisions it read, so a batch of claims or finishes costs one round trip
and one instance lost to a conflict does not fail the others. The plugin README says how each guarantee
is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import anyio
from gojob_core import Store, StoreError

from ._claims import Claims
from ._client import EtcdClient, EtcdOptions, parse_etcd_url
from ._compaction import compact_history
from ._corrupt import CorruptRecords
from ._history import HistoryAndLogs
from ._keys import Keys
from ._leases import NodeLeases
from ._queries import Queries
from ._schedules import ScheduleRecords
from ._state_changes import StateChanges
from ._watch import QueueWatch

__all__ = ["EtcdStore"]


class EtcdStore(StateChanges, Claims, QueueWatch, NodeLeases, CorruptRecords, Queries, HistoryAndLogs, ScheduleRecords,
                Store):
    """Queue, history and logs on etcd, shared by every node pointed at the same cluster and prefix.

    ``EtcdStore.from_url("etcd://user:pw@h1:2379,h2:2379/myapp?timeout=5")``; ``etcds://`` for TLS
    (``?ca=..&cert=..&key=..``); keyword options (``prefix``, ``timeout``, ``window``, ``compact``, ...)
    override the URL. Runs on the asyncio backend only (grpc.aio).
    """

    SCHEMES: ClassVar[tuple[str, ...]] = ("etcd", "etcds")
    ANYIO_BACKENDS: ClassVar[tuple[str, ...]] = ("asyncio",)
    name = "etcd"

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.keys = Keys(options.prefix)
        self.client: EtcdClient | None = None
        self._reset()

    def _reset(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._reset_watch()
        self._reset_leases()
        self._reset_claims()
        self._reset_corrupt()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdStore:
        return cls(parse_etcd_url(url, **options))

    def __repr__(self) -> str:
        return f"<EtcdStore {self.options.address} prefix={self.options.prefix!r}>"

    async def start(self) -> None:
        self._reset()
        client = EtcdClient(self.options)
        await client.connect()
        self.client = client
        if self.options.compact > 0:  # opt-in: compaction is cluster-wide (see _compaction)
            self._tasks.append(asyncio.create_task(compact_history(client, self.options.compact),
                                                   name="gojob-etcd-compact"))

    async def stop(self) -> None:
        tasks = [t for t in (*self._tasks, self._watch_task) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for send in self._cancel_subs:
            send.close()
        client, self.client = self.client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await self._revoke_leases(client)
                await client.close()
        self._reset()

    def _c(self) -> EtcdClient:
        if self.client is None:
            raise StoreError("etcd store is not started")
        return self.client
