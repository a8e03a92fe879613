"""Compaction of etcd's history by the store: opt-in (``compact`` seconds; 0, the default, never).

etcd keeps every revision of every key until its history is compacted, and a job store writes about ten
keys per job: left alone, etcd's database grows until it reaches its space quota and etcd refuses writes.
Compaction is cluster-wide (it drops old revisions of *every* key, other applications' included), so it
is the cluster operator's to decide: etcd does it itself with ``--auto-compaction-mode`` and
``--auto-compaction-retention`` (see the plugin README). A store given ``compact=S`` instead compacts,
from every node, the revisions older than ``S`` seconds: for a cluster that gojob has to itself and
whose flags cannot be set.

A watch resumed after a compaction that removed the revisions it needed reads the queue again
(``QueueWatch``): compaction never loses an event, however short the retention.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gojob_core import StoreError

from ._client import EtcdClient

__all__ = ["compact_history"]

_log = logging.getLogger("gojob.etcd")


async def compact_history(client: EtcdClient, keep: float) -> None:
    """Until cancelled: compact etcd's history to what it was ``keep`` seconds ago (keys keep their
    values; only superseded revisions go). Checks at least every minute."""
    marks: list[tuple[float, int]] = []  # (when, the revision this client had seen then)
    while True:
        await asyncio.sleep(min(keep, 60.0))
        t = time.monotonic()
        marks.append((t, client.last_revision))
        old = [m for m in marks if m[0] <= t - keep]
        if not old:
            continue
        rev = old[-1][1]
        marks = [m for m in marks if m[0] > t - keep]
        if rev > 0:
            try:
                await client.compact(rev)
            except StoreError as exc:
                _log.warning("etcd store: compaction to revision %d failed: %s", rev, exc)
