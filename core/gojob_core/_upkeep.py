"""The node's upkeep loops: lease heartbeats and the fence that stops attempts whose lease could not be
renewed, the reclaim of other nodes' expired leases, the cancel listener, the log flush and the metrics
reads of the queue.

A mixin of :class:`~gojob_core.Manager`; ``start()`` starts each loop in the node's task group.
"""

from __future__ import annotations

import contextlib
import random
import time

import anyio
import anyio.lowlevel

from ._attempt import _LEASE_MARGIN
from ._instance import Instance
from ._records import LogRecord
from ._state import LogLevel
from ._time import now
from .errors import StoreError

__all__: list[str] = []  # internal: the Manager is the public face


_METRICS_SPACING = 20  # a queue-size read that took d seconds is followed by at least 20 d without one


class Upkeep:
    """The Manager's background loops, each started by ``start()``."""

    async def _heartbeat_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._lease_fence_loop)
            while True:
                await anyio.sleep(self.lease_time / 3)
                await self._renew_leases()

    async def _renew_leases(self) -> None:
        runs = dict(self._running)
        if not runs:
            return
        sent = time.monotonic()
        try:
            # a renewal answered after the lease would have lapsed renews nothing this node can use
            with anyio.fail_after(self.lease_time * _LEASE_MARGIN):
                report = await self.store.extend_leases(self.node_id, list(runs), self.lease_time)
        except (StoreError, OSError, TimeoutError) as exc:
            self._report(f"lease heartbeat failed: {exc!r}")
            return
        until = sent + self.lease_time * _LEASE_MARGIN
        for uid, run in runs.items():
            if uid not in report.lost and self._running.get(uid) is run:
                run.lease_until = max(run.lease_until, until)
        for uid in report.lost:
            run = self._running.get(uid)
            if run is not None:
                run.stop("lost")
        for uid in report.cancel_requested:
            run = self._running.get(uid)
            if run is not None:
                run.stop("canceled")

    async def _lease_fence_loop(self) -> None:
        """Stop attempts whose lease this node could not renew in time (the store unreachable, say):
        once it lapses, any node may re-queue and run the instance, this one included, and two attempts
        must not run side by side. Their outcome is not written; the store's lease expiry re-queues
        them (an abandoned attempt in history)."""
        period = min(self.lease_time * (1 - _LEASE_MARGIN) / 2, 1.0)
        while True:
            await anyio.sleep(period)
            t = time.monotonic()
            for uid, run in list(self._running.items()):
                if run.lease_until < t and run.stop_reason is None and not run.finishing:
                    self._report(f"lease of {uid} (attempt {run.inst.attempts}) not renewed in time: "
                                 "stopping the attempt; the store re-queues it when the lease expires")
                    run.stop("lost")

    async def _reclaim_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease_time / 2 * random.uniform(0.5, 1.0))
            try:
                reclaimed = await self.store.reclaim_expired(self.node_id)
            except (StoreError, OSError) as exc:
                self._report(f"reclaim of expired leases failed: {exc!r}")
                continue
            if reclaimed:
                self.metrics.add_reclaimed(len(reclaimed))
                self._wake_dispatcher()

    async def _cancel_listener(self) -> None:
        # A node without workers runs nothing that a cancel could stop (a producer, say), so it does not
        # subscribe until its pool grows: on etcd the subscription is a watch that receives every change
        # of the queue, which made a producer's store read each job's queue traffic twice over.
        while self._target == 0:
            self._grown = anyio.Event()
            await self._grown.wait()
        self._grown = None
        while True:
            try:
                async with contextlib.aclosing(self.store.cancel_notifications()) as notes:
                    async for uid in notes:
                        run = self._running.get(uid)
                        if run is not None:
                            run.stop("canceled")
                return
            except (StoreError, OSError) as exc:  # e.g. the server restarted: listen again
                self._report(f"cancel notifications interrupted: {exc!r}; listening again")
                await anyio.sleep(min(self.poll_interval, 1.0))

    async def _log_flush_loop(self) -> None:
        while True:
            await anyio.sleep(0.2)
            if self._log_buffer:
                try:
                    await self._flush_logs()
                except (StoreError, OSError) as exc:
                    self._report(f"writing instance logs failed: {exc!r}")

    async def _metrics_loop(self) -> None:
        while True:
            started = anyio.current_time()
            try:
                self.metrics.set_queued(*await self.store.queue_stats())
                self.metrics.set_corrupt(len(await self.store.corrupt_records()))
            except (StoreError, OSError) as exc:
                self._report(f"reading queue sizes failed: {exc!r}")
            # a store that reads every queued key for this (etcd) takes long on a huge queue: space the
            # reads so that they take at most a twentieth of the node's time
            took = anyio.current_time() - started
            await anyio.sleep(max(self.metrics_interval, _METRICS_SPACING * took))

    def _log_sink(self, inst: Instance, level: LogLevel, message: str) -> None:
        # list.append is atomic, so executors in worker threads may log too
        self._log_buffer.append(LogRecord(inst.uuid, inst.kind, level, message, now(), inst.attempts, self.node_id))

    async def _flush_logs(self) -> None:
        if self._log_buffer:
            batch, self._log_buffer = self._log_buffer, []
            await self.store.append_logs(batch)
