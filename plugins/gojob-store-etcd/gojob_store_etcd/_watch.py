"""What a node sees of the queue without asking: one watch on ``{p}q/``, and the views it keeps current.

The views: the head of the ready and of the delayed index (:class:`QueueWindow`), every running entry
(``_running``: revision and entry, by uuid) and the etcd leases whose liveness key exists (``_live``).
They are read once at one revision (:meth:`QueueWatch._load`), then kept current from the watch. New
ready work, a new first delayed instance, a vanished liveness key or a cancel flag wake the node.
aetcd's watch stream does not resume by itself after a server restart: the watch is re-created from
the last revision seen + 1, so nothing that happened meanwhile is missed; if etcd has compacted that
revision, the views are read again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from gojob_core import StoreError

from ._batching import PAGE
from ._client import Compacted, op_range, prefix_end
from ._keys import now
from ._leases import holds
from ._queue_window import QueueWindow

__all__ = ["QueueWatch"]

_log = logging.getLogger("gojob.etcd")


class QueueWatch:
    """The watch and the views of the queue it keeps (a mixin of :class:`~gojob_store_etcd.EtcdStore`)."""

    def _reset_watch(self) -> None:
        self._rw, self._dw = QueueWindow(), QueueWindow()  # the ready and the delayed index
        self._taken: dict[bytes, float] = {}  # ready keys this node took: the revision of the claim (inf: in flight)
        self._running: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._live: set[int] = set()  # etcd leases whose liveness key exists (their nodes hold claims)
        self._mirror_rev = 0  # the revision _running and _live were read at
        self._rev = 0  # the last revision the watch has seen
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_ok = False
        self._watch_lock = asyncio.Lock()
        self._ready_reading: asyncio.Event | None = None
        self._wake_ev = asyncio.Event()
        self._cancel_subs: list[MemoryObjectSendStream[str]] = []

    async def _ensure_watch(self) -> None:
        if self._watch_task is not None:
            return
        async with self._watch_lock:
            if self._watch_task is None:
                await self._load()
                self._watch_ok = True
                self._watch_task = asyncio.create_task(self._watch_loop(), name="gojob-etcd-watch")

    async def _load(self) -> None:
        """Read the queue heads, every running entry and liveness key at one revision."""
        w = self.options.window
        k = self.keys
        c = self._c()
        self._rw.begin()
        self._dw.begin()
        try:
            resp = await c.txn([op_range(k.ready, prefix_end(k.ready), limit=w),
                                op_range(k.delayed, prefix_end(k.delayed), limit=w),
                                op_range(k.running, prefix_end(k.running), limit=PAGE),
                                op_range(k.liveness, prefix_end(k.liveness), limit=PAGE, keys_only=True)])
            rev = resp.header.revision
            rr, rd, rp, rc = (r.response_range for r in resp.responses)
            self._rw.load(rr.kvs, rr.more, rev, self._taken)
            self._dw.load(rd.kvs, rd.more, rev)
        finally:
            self._rw.end()
            self._dw.end()
        running: dict[str, tuple[int, dict[str, Any] | None]] = {}
        live: set[int] = set()
        for base, first in ((k.running, rp), (k.liveness, rc)):
            page = first
            while True:
                for kv in page.kvs:
                    if base is k.running:
                        running[kv.key[len(base):].decode()] = (kv.mod_revision, self._decode_p(kv.key, kv.value))
                    elif (lid := k.lease_of(kv.key)) is not None:
                        live.add(lid)
                if not page.more or not page.kvs:
                    break
                page = await c.range(page.kvs[-1].key + b"\0", prefix_end(base), limit=PAGE, revision=rev,
                                     keys_only=base is k.liveness)
        self._running, self._live = running, live
        self._mirror_rev = self._rev = rev

    async def _watch_loop(self) -> None:
        delay = 0.05
        base = self.keys.queue
        while True:
            try:
                async for resp in self._c().watch(base, prefix_end(base), self._rev + 1):
                    if not self._watch_ok:
                        self._watch_ok = True
                        self._wake()
                    delay = 0.05
                    if resp.events:
                        self._apply(resp.events)
                    elif not resp.created and resp.header.revision > self._rev:
                        self._rev = resp.header.revision  # progress: everything before it was sent
            except Compacted:
                self._watch_ok = False
                try:
                    await self._load()  # what was missed is gone from etcd's history: read it all again
                    self._wake()
                except StoreError as exc:
                    _log.warning("etcd store: reading the queue again after a compaction failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            except StoreError as exc:
                if self._watch_ok:
                    _log.warning("etcd store: watch interrupted (%s); resuming from revision %d", exc,
                                 self._rev + 1)
                self._watch_ok = False
                self._wake()  # waiters fall back to reading the queue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _apply(self, events: Any) -> None:
        k = self.keys
        lq, lp = len(k.queue), len(k.running)
        wake = False
        hints = False
        rw, dw = self._rw, self._dw
        first_due = dw.keys[0] if dw.keys else None
        for ev in events:
            kv = ev.kv
            key, rev, put = kv.key, kv.mod_revision, ev.type == 0
            if rev > self._rev:
                self._rev = rev
            sub = key[lq:lq + 2]
            if sub == b"r/":
                if put:
                    wake = rw.put(key, rev, kv.value) or wake
                else:
                    rw.delete(key, rev)
                    if self._taken.get(key, 0) <= rev:
                        self._taken.pop(key, None)
            elif sub == b"d/":
                if put:
                    dw.put(key, rev, kv.value)
                else:
                    dw.delete(key, rev)
            elif rev > self._mirror_rev:
                u = key[lp:].decode(errors="replace")
                if sub == b"p/":
                    if put:
                        known = self._running.get(u)
                        # this node's own claim recorded the entry it wrote: no need to decode it
                        p = known[1] if known is not None and known[0] == rev else self._decode_p(key, kv.value)
                        self._running[u] = (rev, p)
                        if p is not None and p.get("cancel"):
                            self._notify_cancel(u)
                    else:
                        self._running.pop(u, None)
                elif sub == b"n/" and (lid := k.lease_of(key)) is not None:
                    if put:
                        self._live.add(lid)
                    else:
                        self._live.discard(lid)
                        hints = True
        if hints and any(p is not None and p.get("lease") not in self._live for _, p in self._running.values()):
            wake = True  # a liveness key vanished (its node's etcd lease expired): re-queue its instances
        if dw.keys and dw.keys[0] != first_due:
            wake = True  # a new first delayed instance: waiters recompute their timer
        w = self.options.window
        rw.trim(w)
        dw.trim(w)
        if wake:
            self._wake()

    def _queued(self, key: bytes, rev: int, raw: bytes) -> None:
        """This node wrote a queue entry (at ``rev``): in view at once, before its watch reports it."""
        (self._rw if key.startswith(self.keys.ready) else self._dw).put(key, rev, raw)

    def _wake(self) -> None:
        ev, self._wake_ev = self._wake_ev, asyncio.Event()
        ev.set()

    def _notify_cancel(self, uuid: str) -> None:
        for send in list(self._cancel_subs):
            try:
                send.send_nowait(uuid)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                self._cancel_subs.remove(send)

    async def cancel_notifications(self) -> AsyncIterator[str]:
        await self._ensure_watch()
        send, receive = anyio.create_memory_object_stream[str](1000)
        self._cancel_subs.append(send)
        try:
            async with receive:
                async for uuid in receive:
                    yield uuid
        finally:
            if send in self._cancel_subs:
                self._cancel_subs.remove(send)
            send.close()

    async def _read_ready(self) -> None:
        """Read the head of the ready index; one read at a time per node (a second caller waits for it)."""
        reading = self._ready_reading
        if reading is not None:
            await reading.wait()
            return
        reading = self._ready_reading = asyncio.Event()
        base = self.keys.ready
        self._rw.begin()
        try:
            resp = await self._c().range(base, prefix_end(base), limit=self.options.window)
            self._rw.load(resp.kvs, resp.more, resp.header.revision, self._taken)
        finally:
            self._rw.end()
            self._ready_reading = None
            reading.set()

    async def _read_delayed(self) -> None:
        base = self.keys.delayed
        self._dw.begin()
        try:
            resp = await self._c().range(base, prefix_end(base), limit=self.options.window)
            self._dw.load(resp.kvs, resp.more, resp.header.revision)
        finally:
            self._dw.end()

    def _expired(self, t: float) -> list[str]:
        """The running instances whose node no longer holds them, as the views tell."""
        live = self._live
        return [u for u, (_, p) in self._running.items() if p is not None and not holds(p, live, t)]

    def _next_due(self) -> float:
        if not self._dw.keys:
            return math.inf
        return self.keys.due(self._dw.keys[0])

    def _next_expiry(self) -> float:
        t = math.inf
        for _, p in self._running.values():
            if p is not None:
                t = min(t, float(p.get("lease_ts") or 0))
        return t

    async def wait_ready(self, timeout: float) -> None:
        await self._ensure_watch()
        t = now()
        if self._rw.keys or not self._rw.complete or self._next_due() <= t \
                or (not self._dw.keys and not self._dw.complete):
            return  # work now, or a queue head to read again
        if self._running and t >= self._reclaim_at and self._expired(t):
            return
        deadline = min(self._next_due(), max(self._next_expiry() + 0.01, self._reclaim_at)) - t
        wait = min(timeout, max(0.0, deadline))
        if not self._watch_ok:
            wait = min(wait, 0.5)
        if wait <= 0:
            return
        ev = self._wake_ev
        with anyio.move_on_after(wait):
            await ev.wait()
