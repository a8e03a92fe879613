"""The worker pool: the dispatcher that claims for free slots, the workers that run what it hands them,
and the finish batcher that group-commits outcomes (and claims for the slots they free in the same call).

A mixin of :class:`~gojob_core.Manager`; ``resize_workers`` and ``workers`` are on the Manager.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._attempt import _LEASE_MARGIN, _Running
from ._instance import Instance
from ._worker import Worker
from .abc import Outcome
from .errors import StoreError

if TYPE_CHECKING:
    from ._manager import Manager

__all__: list[str] = []  # internal: the Manager is the public face

_log = logging.getLogger("gojob")


_monotonic = time.monotonic
_RETIRE: Any = None  # sent to the worker stream to retire one worker


class Pool:
    """The Manager's pool: dispatcher, workers, and the bookkeeping of slots in use."""

    def _spawn_workers(self, n: int) -> None:
        assert self._tg is not None
        for _ in range(n):
            self._worker_ids += 1
            w = Worker(self, self._worker_ids)
            self._workers.add(w)
            self._tg.start_soon(self._worker_loop, w, name=f"gojob-worker-{w.id}")

    def _wake_dispatcher(self) -> None:
        ev = self._capacity
        if ev is not None:
            self._capacity = None
            ev.set()

    async def _dispatch_loop(self) -> None:
        store, node = self.store, self.node_id
        while not self._stopping:
            free = self._target - self._in_flight if not self._suspects else 0
            if free <= 0:
                if self._capacity is None:
                    self._capacity = anyio.Event()
                await self._capacity.wait()
                continue
            self._reserved = free  # finishes meanwhile must not claim these slots twice
            try:
                shrinks = self._shrinks
                insts = await store.claim_or_wait(node, free, self.lease_time, self.poll_interval)
            except (StoreError, OSError) as exc:
                self._report(f"claim failed: {exc!r}")
                await anyio.sleep(min(self.poll_interval, 1.0))
                continue
            finally:
                self._reserved = 0
            self._starved = len(insts) < free  # the queue had less than this node could take
            if not insts:
                continue
            if self._stopping:
                with anyio.CancelScope(shield=True):
                    await store.release(node, [i.uuid for i in insts])
                return
            self._dispatch(insts, shrinks=shrinks)
            # let the workers start them before this loop asks the store again (its next call's
            # bookkeeping, or a round trip, would otherwise come first)
            await anyio.lowlevel.checkpoint()

    def _dispatch(self, insts: list[Instance], freed: int = 0, shrinks: int | None = None) -> None:
        """Hand claimed instances to the workers (they count against the pool at once).

        ``shrinks``: the pool's shrink count when the claim was sent; if the pool shrank since
        (resize_workers), what no longer fits goes back to the queue (``freed``: slots of a finish batch
        whose workers have not let go of them yet, which its claim filled)."""
        room = len(insts)
        if shrinks is not None and shrinks != self._shrinks:
            room = max(0, self._target - self._in_flight + freed - self._reserved)
        if len(insts) > room:
            # the pool shrank while the claim was out (resize_workers): the retiring workers would leave
            # the surplus in the stream, held under a lease nobody runs; it goes back to the queue
            insts, extra = insts[:room], insts[room:]
            assert self._tg is not None
            self._tg.start_soon(self._hand_back, [i.uuid for i in extra])
        lease_until = _monotonic() + self.lease_time * _LEASE_MARGIN
        for inst in insts:
            old = self._running.get(inst.uuid)
            if old is not None:
                # this node lost the lease of an earlier attempt (it could not reach the store in
                # time) and the store handed it the instance again: the old attempt stops first, and
                # its outcome could not be written anyway (finish is fenced by attempt)
                self._report(f"instance {inst.uuid} claimed again (attempt {inst.attempts}) while its "
                             f"attempt {old.inst.attempts} still ran here; stopping the old attempt")
                old.stop("lost")
            if inst.abandoned:
                # a suspect (its earlier attempts died with their node): the store hands it out
                # alone, and this node claims nothing more until it ends, so that if it kills the
                # process again no neighbour dies with it
                self._suspects.add(inst.uuid)
            self._in_flight += 1
            run = self._running[inst.uuid] = _Running(inst, lease_until, self.metrics.add_lease_lost)
            if old is not None and not old.returned:
                old.ended = old.ended or anyio.Event()
                run.previous = old
            self._send.send_nowait(inst)

    async def _hand_back(self, uuids: list[str]) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release(self.node_id, uuids)
            except (StoreError, OSError) as exc:
                self._report(f"handing back {len(uuids)} instances claimed beyond the pool failed: {exc!r}; "
                             "their leases will expire")

    async def _worker_loop(self, worker: Worker) -> None:
        recv = self._recv
        try:
            while True:
                inst = await recv.receive()
                if inst is _RETIRE:
                    return
                worker.current = inst
                run = self._running.get(inst.uuid)
                try:
                    await self._run_instance(worker, inst)
                finally:
                    worker.current = None
                    worker.processed += 1
                    # a retry may already be claimed again under the same uuid: remove only this run
                    # (one whose outcome is still being written stays until the write is answered)
                    if run is not None:
                        run.returned = True
                        if run.ended is not None:
                            run.ended.set()
                    if run is not None and not run.finishing and self._running.get(inst.uuid) is run:
                        del self._running[inst.uuid]
                    if inst.abandoned:
                        self._suspects.discard(inst.uuid)
                    self._in_flight -= 1
                    self._wake_dispatcher()
                    self._check_idle()
        finally:
            self._workers.discard(worker)

    def _check_idle(self) -> None:
        if self._idle is not None and not self._running:
            ev, self._idle = self._idle, None
            ev.set()

    async def _wait_idle(self) -> None:
        if self._idle is None:
            self._idle = anyio.Event()
        await self._idle.wait()


class _FinishBatcher:
    """Group commit of finishes: outcomes that arrive while a write is in flight go in the next, and
    each write also claims for the slots that are free (one round trip). How the writes are made is
    the store's ``FINISH_MODE`` (see :class:`gojob_core.abc.Store`): :meth:`submit` serves "await"
    and "split" (the worker waits for its write), :meth:`post` serves "handoff" (a writer task).
    """

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._pending: list[tuple[Outcome, Any]] = []  # (outcome, slot list or callback)
        self._calls = 0
        self._busy = False

    async def submit(self, outcome: Outcome) -> bool:
        """Write the outcome with those that finish meanwhile; its answer (False: not this node's)."""
        slot: list[Any] = [None, None]  # [event, then the store's answer; error]
        self._pending.append((outcome, slot))
        m = self._manager
        split = m.store.FINISH_MODE == "split"
        if self._calls >= (2 if split else 1):
            ev = slot[0] = anyio.Event()
            await ev.wait()
        else:
            self._calls += 1
            try:
                if split:
                    # the other workers that finish in this same turn of the event loop join the
                    # batch (a store in this process gains nothing from waiting for them)
                    await anyio.lowlevel.checkpoint()
                    # linger only while the queue has nothing for this node: an early write would
                    # claim nothing, and a node with work waiting writes at once to claim it
                    linger = m.store.FINISH_LINGER
                    if linger > 0 and m._starved and len(self._pending) < m._target:
                        await anyio.sleep(linger)
                while self._pending:
                    cap = max(1, (m._target + 1) // 2) if split else len(self._pending)
                    batch, self._pending = self._pending[:cap], self._pending[cap:]
                    await self._write(batch, freed=len(batch))
                    if split and slot[0] is not None and self._calls > 1:
                        break  # answered; the other write in flight serves what came meanwhile
            finally:
                self._calls -= 1
        if slot[1] is not None:
            raise slot[1]
        return bool(slot[0])

    def post(self, outcome: Outcome, done: Callable[[bool, BaseException | None], None]) -> None:
        """Queue the outcome for the writer task; ``done(ok, error)`` is called when it is answered."""
        self._pending.append((outcome, done))
        if not self._busy:
            self._busy = True
            assert self._manager._tg is not None
            self._manager._tg.start_soon(self._drain, name="gojob-finish-writer")

    async def _drain(self) -> None:
        try:
            # the other workers that finish in this same turn of the event loop join the batch: one
            # store call then carries all of them
            await anyio.lowlevel.checkpoint()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._write(batch, freed=0)  # their slots were freed when they were posted
        finally:
            self._busy = False

    async def _write(self, batch: list[tuple[Outcome, Any]], *, freed: int) -> None:
        m = self._manager
        try:
            await m._flush_logs()
            # the free slots (those of this batch included, if not freed yet) are filled in the same call
            free = 0 if m._stopping or m._suspects else m._target - m._in_flight + freed - m._reserved
            shrinks = m._shrinks
            oks, claimed = await m.store.finish_and_claim(m.node_id, [o for o, _ in batch], max(0, free),
                                                          m.lease_time)
            if free > 0:
                m._starved = len(claimed) < free
            m._dispatch(claimed, freed, shrinks)
        except Exception as exc:
            for _, s in batch:
                _answer(s, False, exc)
            return
        for (_, s), ok in zip(batch, oks):
            _answer(s, ok, None)


def _answer(slot: Any, ok: bool, error: BaseException | None) -> None:
    if callable(slot):
        try:
            slot(ok, error)
        except Exception:  # a bug in the bookkeeping must not take the writer task (and the node) down
            _log.exception("gojob: handling the answer to a finish failed")
        return
    ev = slot[0]
    slot[0], slot[1] = ok, error
    if isinstance(ev, anyio.Event):
        ev.set()


def _check_workers(n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {n!r}")
