"""The Manager: registers jobs, schedules instances into the store, and runs them on a worker pool.

One Manager is one node. Several Managers (in one process or on many machines) sharing one store
share its queue, history and logs; each instance runs on one node at a time, under a lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import inspect
import json
import logging
import math
import os
import random
import socket
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import sniffio
from anyio.abc import TaskGroup

from ._arguments import ExecutorSignature, encode_result, results_list
from ._builtin import BackoffPlugin, MemoryStorePlugin, RunnerPlugin
from ._context import Context
from ._cron import CronSchedule
from ._instance import Instance
from ._job import BackoffStrategy, Job, TerminateProcessor
from ._metrics import ManagerMetrics
from ._plugins import Plugins
from ._records import LogRecord, Query, StateRecord
from ._runners import ExecutorRunner
from ._state import LogLevel, State
from ._time import now, seconds, to_epoch
from ._worker import Worker
from .abc import Outcome, Store
from .errors import (
    InstanceNotFoundError,
    InvalidJobError,
    JobTimeoutError,
    ScheduleError,
    StoreError,
    UnknownJobError,
    WaitTimeoutError,
)

__all__ = ["Manager"]

_log = logging.getLogger("gojob")
_getrandbits = random.getrandbits
_NAMESPACE = _uuid.UUID("6f1d3c2e-9a57-4d0b-8f43-3c1b7a9e5d21")
_UNSET: Any = object()
_RETIRE: Any = None  # sent to the worker stream to retire one worker


class _Running:
    """This node's bookkeeping for one claimed instance."""

    __slots__ = ("ctx", "ended", "finishing", "inst", "lease_until", "lost", "previous", "returned", "scope",
                 "started", "stop_reason")

    def __init__(self, inst: Instance, lease_until: float, lost: Callable[[], None] | None = None) -> None:
        self.inst = inst
        self.lost = lost  # called once if the attempt is stopped for a lost lease (a metric)
        self.scope: anyio.CancelScope | None = None
        self.ctx: Context | None = None
        self.stop_reason: str | None = None
        self.finishing = False  # its outcome is with the finish writer, not yet answered
        self.started = False  # the executor was called
        self.returned = False  # the worker is done with this attempt (its outcome may still be being written)
        self.ended: anyio.Event | None = None  # made when a newer attempt must wait for this one to return
        self.previous: _Running | None = None  # an older attempt of the same instance still running here
        #: anyio clock time by which this node must have renewed the lease, or stop the attempt itself
        #: (the store may hand the instance to another node, or to this one again, soon after)
        self.lease_until = lease_until

    def stop(self, reason: str) -> None:
        """Stop the attempt: "canceled" (user cancel), "lost" (lease lost), "shutdown" (node stopping)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            if reason == "lost" and self.lost is not None:
                self.lost()
        if self.ctx is not None:
            self.ctx._stop("canceled" if reason == "canceled" else reason)
        if self.scope is not None:
            self.scope.cancel()


class _Overrides:
    """Per-instance callables given at schedule time; they live on the scheduling node only."""

    __slots__ = ("backoff", "terminate")

    def __init__(self, backoff: BackoffStrategy | None, terminate: TerminateProcessor | None) -> None:
        self.backoff = backoff
        self.terminate = terminate


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
            oks, claimed = await m.store.finish_and_claim(m.node_id, [o for o, _ in batch], max(0, free),
                                                          m.lease_time)
            if free > 0:
                m._starved = len(claimed) < free
            m._dispatch(claimed)
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


class Manager:
    """Registers jobs, schedules their instances and runs them, on any store.

    Use it as an async context manager (``async with Manager(...) as mgr``), or call ``start()`` and
    ``stop()`` from the same task. ``store`` is a URL (``"memory://"``, ``"valkey://host:6379/0"``,
    resolved through the installed store plugins) or a :class:`~gojob_core.abc.Store` object.

    :param num_workers: size of the worker pool; change it at run time with :meth:`resize_workers`.
    :param node_id: this node's name in leases and history (default: host name and a random suffix).
    :param plugins: extra plugin objects or modules (besides the ``gojob`` entry points).
    :param autoload_plugins: load entry-point plugins (default: yes, unless
        ``GOJOB_DISABLE_PLUGIN_AUTOLOAD`` is set).
    :param lease_time: seconds a claim is held without a heartbeat; a node that dies loses its
        instances to other nodes after this long. Heartbeats run every third of it.
    :param poll_interval: the safety-net wake-up of an idle dispatcher (the store's wake-up is the main path).
    :param shutdown_timeout: on stop, how long running instances may take to finish before they are
        interrupted and handed back to the queue.
    :param metrics_interval: seconds between two reads of the queue sizes from the store, which feed the
        ``go_job_queued`` and ``go_job_oldest_ready_age_seconds`` gauges (the cluster's queue, read by
        every node; a scrape serves the last read, so they lag the store by at most this long; the age
        itself is computed at scrape time). Default 5 s: fresher than common scrape intervals, one small
        store read per node. A read that takes long (a store that reads every queued key, on a huge
        queue) spaces the next one to twenty times its duration.
    """

    def __init__(
        self,
        store: str | Store = "memory://",
        *,
        num_workers: int = 4,
        node_id: str | None = None,
        plugins: Iterable[object] = (),
        autoload_plugins: bool | None = None,
        lease_time: float = 30.0,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 10.0,
        store_options: dict[str, Any] | None = None,
        metrics_interval: float = 5.0,
    ) -> None:
        _check_workers(num_workers)
        if not (lease_time > 0 and math.isfinite(lease_time)):
            raise ValueError(f"lease_time must be a positive number of seconds, got {lease_time!r}")
        if not (metrics_interval > 0 and math.isfinite(metrics_interval)):
            raise ValueError(f"metrics_interval must be a positive number of seconds, got {metrics_interval!r}")
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{_uuid.uuid4().hex[:6]}"
        self.lease_time = float(lease_time)
        self.poll_interval = float(poll_interval)
        self.shutdown_timeout = float(shutdown_timeout)
        self.metrics_interval = float(metrics_interval)
        self._runner_plugin = RunnerPlugin()
        self._default_backoff = BackoffPlugin()
        self.metrics = ManagerMetrics(self)
        self.plugins = Plugins([MemoryStorePlugin(), self._runner_plugin, self._default_backoff, self.metrics],
                               plugins, autoload_plugins)
        if isinstance(store, Store):
            if store_options:
                raise ValueError("store_options apply to a store URL, not to a Store object")
            self.store: Store = store
        elif isinstance(store, str):
            self.store = self.plugins.store_from_url(store, dict(store_options or {}))
        else:
            raise TypeError(f"store must be a URL string or a Store object, got {store!r}")
        self.plugins.register_metrics(self, self.metrics.registry)
        self._jobs: dict[str, Job] = {}
        self._runners: dict[str, ExecutorRunner] = {}
        self._overrides: dict[str, _Overrides] = {}
        self._target = num_workers
        self._workers: set[Worker] = set()
        self._worker_ids = 0
        self._running: dict[str, _Running] = {}
        self._in_flight = 0
        self._reserved = 0
        self._starved = False  # the last claim got fewer instances than it asked for (see FINISH_LINGER)
        self._suspects: set[str] = set()  # suspect instances running here: no claims until they end
        self._capacity: anyio.Event | None = None
        self._grown: anyio.Event | None = None  # set when a pool of zero gets workers (see _cancel_listener)
        self._idle: anyio.Event | None = None
        self._log_buffer: list[LogRecord] = []
        self._finisher = _FinishBatcher(self)
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._send: Any = None
        self._recv: Any = None
        self._started = False
        self._stopping = False
        self._handed_back = False
        self._injectable = {Instance: "instance", Manager: "manager", Worker: "worker", Context: "context"}

    def __repr__(self) -> str:
        return f"<Manager node={self.node_id} store={self.store.name} workers={self._target}>"

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> Manager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._started and not self._stopping

    async def start(self) -> None:
        """Connect the store, register plugin-contributed jobs, start the workers and the node's loops."""
        if self._started:
            raise RuntimeError(f"manager {self.node_id} is already started")
        backend = sniffio.current_async_library()
        if backend not in self.store.ANYIO_BACKENDS:
            raise StoreError(f"the {self.store.name} store runs on {', '.join(self.store.ANYIO_BACKENDS)} only, "
                             f"not on {backend}; run the Manager under a supported anyio backend")
        if self.store.FINISH_MODE not in ("await", "split", "handoff"):
            raise StoreError(f"the {self.store.name} store's FINISH_MODE is {self.store.FINISH_MODE!r}; "
                             "it must be 'await', 'split' or 'handoff'")
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.store.start()
            stack.push_async_callback(self.store.stop)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack
            self._send, self._recv = anyio.create_memory_object_stream[Any](math.inf)
            self._started = True
            self._stopping = False
            self._handed_back = False
            self.plugins.freeze()
            for job in self.plugins.jobs(self):
                if job.kind not in self._jobs:
                    await self.register_job(job)
            self._spawn_workers(self._target)
            self._tg.start_soon(self._dispatch_loop)
            self._tg.start_soon(self._heartbeat_loop)
            self._tg.start_soon(self._reclaim_loop)
            self._tg.start_soon(self._cancel_listener)
            self._tg.start_soon(self._log_flush_loop)
            self._tg.start_soon(self._metrics_loop)
            await self.plugins.manager_started(self)
        except BaseException:
            # stop what was started (cancelled, so the workers do not see their stream closed under
            # them), then close the streams and raise the error that made the start fail
            self._started = False
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            self._tg = None
            self._stack = None
            try:
                await stack.__aexit__(None, None, None)  # unshielded: the task group's scope must be current
            finally:
                if self._send is not None:
                    self._send.close()
                    self._recv.close()
            raise

    async def stop(self, *, abandon: bool = False) -> None:
        """Stop the node.

        Gracefully by default: no new claims; running instances get ``shutdown_timeout`` seconds to
        finish, then they are interrupted and handed back to the queue, as are claimed ones not yet
        started. With ``abandon=True`` the node stops as if it crashed: nothing is finished or handed
        back, and other nodes re-run its instances when their leases expire (for tests and drills).
        """
        if not self._started or self._stack is None:
            return
        stack, self._stack = self._stack, None
        self._stopping = True
        self._wake_dispatcher()
        try:
            if not abandon:
                try:
                    await self.plugins.manager_stopping(self)
                except Exception as exc:  # a plugin's failure must not cost the graceful stop
                    self._report(f"a gojob_manager_stopping hook failed: {exc!r}; stopping anyway")
                if self._running:
                    with anyio.move_on_after(self.shutdown_timeout):
                        while self._running:
                            await self._wait_idle()
                    # interrupted attempts and claims not yet started go back to the queue
                    # (not those whose outcome is being written: the write decides)
                    leftover = [u for u, r in self._running.items() if not r.finishing]
                    self._handed_back = True
                    for run in list(self._running.values()):
                        run.stop("shutdown")
                    if leftover:
                        with anyio.CancelScope(shield=True):
                            await self.store.release(self.node_id, leftover)
                with anyio.CancelScope(shield=True):
                    await self._flush_logs()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        finally:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            try:
                # not shielded: the task group's scope must be the current one when it exits
                await stack.__aexit__(None, None, None)
            finally:
                self._send.close()
                self._recv.close()
                self._tg = None
                self._started = False
                self._running.clear()
                self._in_flight = 0
                self._workers.clear()

    def _check_idle(self) -> None:
        if self._idle is not None and not self._running:
            ev, self._idle = self._idle, None
            ev.set()

    async def _wait_idle(self) -> None:
        if self._idle is None:
            self._idle = anyio.Event()
        await self._idle.wait()

    def _require_started(self) -> None:
        if not self._started or self._stopping:
            raise RuntimeError(f"manager {self.node_id} is not running; use 'async with Manager(...)' "
                               "or call 'await manager.start()' first")

    # -- registry ----------------------------------------------------------------------------------
    async def register_job(self, job: Job) -> Job:
        """Register a job so that instances of its kind can be scheduled and run on this node.

        Raises InvalidJobError if the executor cannot be analysed or another job holds the kind.
        """
        if not isinstance(job, Job):
            raise InvalidJobError(f"register_job expects a gojob.Job, got {job!r}")
        other = self._jobs.get(job.kind)
        if other is not None and not _same_definition(other, job):
            raise InvalidJobError(f"another job is already registered under kind {job.kind!r}; "
                                  "unregister it first")
        if job._signature is None:
            job._signature = ExecutorSignature.of(job.kind, job.executor, self._injectable)
        self._runners[job.kind] = self.plugins.executor_runner(self, job)
        self._jobs[job.kind] = job
        return job

    async def unregister_job(self, job: Job | str) -> None:
        """Remove a job from this node's registry (its queued instances stay in the store)."""
        kind = job.kind if isinstance(job, Job) else job
        if kind not in self._jobs:
            raise UnknownJobError(kind, list(self._jobs))
        del self._jobs[kind]
        self._runners.pop(kind, None)

    def registered_jobs(self) -> list[Job]:
        """The jobs registered on this node, by kind (a snapshot: safe from a metrics scrape thread)."""
        jobs = dict(self._jobs)
        return [jobs[k] for k in sorted(jobs)]

    def lookup_job(self, kind: str) -> Job:
        """The job registered under a kind; raises UnknownJobError."""
        try:
            return self._jobs[kind]
        except KeyError:
            raise UnknownJobError(kind, list(self._jobs)) from None

    # -- scheduling --------------------------------------------------------------------------------
    async def schedule_job(
        self,
        job: Job,
        *,
        arguments: Any = (),
        schedule_at: _dt.datetime | float | None = None,
        schedule_after: float | _dt.timedelta | None = None,
        crontab_spec: str | None = None,
        timezone: str | _dt.tzinfo | None = None,
        priority: int | None = None,
        max_retries: int | None = None,
        timeout: float | _dt.timedelta | None = _UNSET,
        backoff_strategy: BackoffStrategy | None = None,
        terminate_processor: TerminateProcessor | None = None,
    ) -> Instance:
        """Schedule one instance of a job (registering the job first if its kind is new).

        ``arguments`` is a tuple or list (positional), a dict (keyword), or a single value. Timing:
        now by default, or ``schedule_at`` (a datetime; a naive one is local time), or
        ``schedule_after`` (seconds or a timedelta), or ``crontab_spec`` (recurring, in ``timezone``,
        default local time; see :mod:`gojob_core._cron` for DST days). Every other option overrides
        the job's default for this instance. Bad input raises before anything is written.

        A recurring schedule is identified by (kind, spec, timezone, arguments): scheduling it again,
        from this node or another sharing the store, does not double it. The returned instance is
        the first occurrence; canceling any occurrence cancels the schedule.
        """
        insts = await self._schedule(job, [arguments], schedule_at=schedule_at, schedule_after=schedule_after,
                                     crontab_spec=crontab_spec, timezone=timezone, priority=priority,
                                     max_retries=max_retries, timeout=timeout, backoff_strategy=backoff_strategy,
                                     terminate_processor=terminate_processor)
        return insts[0]

    async def schedule_registered_job(self, kind: str, **options: Any) -> Instance:
        """Schedule an instance of the job registered under ``kind`` (options as for schedule_job)."""
        return await self.schedule_job(self.lookup_job(kind), **options)

    async def schedule_many(self, job: Job | str, arguments: Iterable[Any], **options: Any) -> list[Instance]:
        """Schedule one instance per item of ``arguments`` in one store call; all or nothing.

        Every item is checked before anything is written; options apply to every instance.
        """
        if isinstance(job, str):
            job = self.lookup_job(job)
        items = list(arguments)
        if options.get("crontab_spec") is not None or (job.crontab_spec and not _timing_given(options)):
            raise ScheduleError(f"job {job.kind!r}: schedule_many does not take crontab specs; "
                                "schedule each recurring instance with schedule_job")
        return await self._schedule(job, items, **options)

    async def _schedule(self, job: Job, items: list[Any], *, schedule_at: Any = None, schedule_after: Any = None,
                        crontab_spec: str | None = None, timezone: Any = None, priority: int | None = None,
                        max_retries: int | None = None, timeout: Any = _UNSET,
                        backoff_strategy: BackoffStrategy | None = None,
                        terminate_processor: TerminateProcessor | None = None) -> list[Instance]:
        self._require_started()
        if not isinstance(job, Job):
            raise InvalidJobError(f"schedule_job expects a gojob.Job, got {job!r}")
        kind = job.kind
        registered = self._jobs.get(kind)
        if registered is not None and not _same_definition(registered, job):
            raise InvalidJobError(f"another job is already registered under kind {kind!r}; "
                                  "schedule it with schedule_registered_job or unregister it first")
        sig = job._signature or ExecutorSignature.of(kind, job.executor, self._injectable)

        # -- options, validated before anything is written --
        if schedule_at is None and schedule_after is None and crontab_spec is None:
            schedule_at, schedule_after, crontab_spec = job.schedule_at, job.schedule_after, job.crontab_spec
        if timezone is None:
            timezone = job.timezone
        given = [n for n, v in (("schedule_at", schedule_at), ("schedule_after", schedule_after),
                                ("crontab_spec", crontab_spec)) if v is not None]
        if len(given) > 1:
            raise ScheduleError(f"job {kind!r}: give one of schedule_at, schedule_after, crontab_spec, "
                                f"not {' and '.join(given)}")
        ts = now()
        ready = ts
        cron: CronSchedule | None = None
        if schedule_at is not None:
            try:
                ready = to_epoch(schedule_at, what="schedule_at")
            except ValueError as exc:
                raise ScheduleError(f"job {kind!r}: {exc}") from None
        elif schedule_after is not None:
            try:
                delay = seconds(schedule_after, what="schedule_after")
            except ValueError as exc:
                raise ScheduleError(f"job {kind!r}: {exc}") from None
            if delay < 0:
                raise ScheduleError(f"job {kind!r}: schedule_after must not be negative, got {schedule_after!r}")
            ready = ts + delay
        elif crontab_spec is not None:
            cron = CronSchedule(crontab_spec, timezone, kind=kind)
            ready = cron.next_after(ts)
        prio = job.priority if priority is None else priority
        if not isinstance(prio, int) or isinstance(prio, bool):
            raise ScheduleError(f"job {kind!r}: priority must be an integer, got {prio!r}")
        retries = job.max_retries if max_retries is None else max_retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ScheduleError(f"job {kind!r}: max_retries must be a non-negative integer, got {retries!r}")
        tmo = job.timeout if timeout is _UNSET else timeout
        tmo_s: float | None = None
        if tmo is not None:
            try:
                tmo_s = seconds(tmo, what="timeout")
            except ValueError as exc:
                raise ScheduleError(f"job {kind!r}: {exc}") from None
            if tmo_s <= 0:
                raise ScheduleError(f"job {kind!r}: timeout must be positive seconds or None, got {tmo!r}")
        for name, fn in (("backoff_strategy", backoff_strategy), ("terminate_processor", terminate_processor)):
            if fn is not None and not callable(fn):
                raise ScheduleError(f"job {kind!r}: {name} must be callable, got {fn!r}")

        # -- arguments, bound and coerced (raises ArgumentError naming kind, parameter, value) --
        bound = [sig.bind(*_split_arguments(a)) for a in items]

        # -- write --
        if registered is None:
            await self.register_job(job)
        else:
            job = registered
        insts = []
        for args, kwargs in bound:
            if cron is not None:
                sid = str(_uuid.uuid5(_NAMESPACE, json.dumps([kind, cron.spec, cron.tz_name, args, kwargs],
                                                              sort_keys=True, default=str)))
                uid = _occurrence_uuid(sid, ready)
            else:
                sid = None
                uid = _new_uuid()
            insts.append(Instance(uuid=uid, kind=kind, args=args, kwargs=kwargs, priority=prio,
                                  state=State.SCHEDULED, max_retries=retries, timeout=tmo_s, created_ts=ts,
                                  ready_ts=ready, crontab_spec=cron.spec if cron else None,
                                  timezone=cron.tz_name if cron else None, schedule_id=sid,
                                  max_abandons=job.max_abandons))
            insts[-1]._sink = self._log_sink
        if backoff_strategy is not None or terminate_processor is not None:
            ov = _Overrides(backoff_strategy, terminate_processor)
            for inst in insts:
                self._overrides[inst.schedule_id or inst.uuid] = ov
        added = await self.store.enqueue(insts, node=self.node_id)
        out = []
        for inst, was_added in zip(insts, added):
            if not was_added and cron is not None:
                inst, was_added = await self._reopen_schedule(inst, cron)
            if not was_added:
                existing = await self.store.get_instance(inst.uuid)
                if existing is not None:
                    inst = existing
            else:
                if (aw := self._state_changed(inst, State.CREATED, job)) is not None:
                    await aw
                if (aw := self._state_changed(inst, State.SCHEDULED, job)) is not None:
                    await aw
            inst._sink = self._log_sink
            out.append(inst)
        return out

    async def _reopen_schedule(self, inst: Instance, cron: CronSchedule) -> tuple[Instance, bool]:
        """A recurring schedule canceled earlier and scheduled anew: its occurrence at this fire time is
        already there, CANCELED, so the schedule starts again at the next fire time."""
        existing = await self.store.get_instance(inst.uuid)
        if existing is None or existing.state is not State.CANCELED:
            return inst, False
        fire = inst.ready_ts
        for _ in range(8):
            fire = cron.next_after(fire)
            fresh = inst.copy()
            fresh.uuid, fresh.ready_ts = _occurrence_uuid(inst.schedule_id or "", fire), fire
            fresh._sink = self._log_sink
            [ok] = await self.store.enqueue([fresh], node=self.node_id)
            if ok:
                return fresh, True
        return inst, False

    # -- queries -------------------------------------------------------------------------------------
    async def lookup_instances(self, query: Query | None = None) -> list[Instance]:
        """Instances in the store matching the query (any state), oldest first."""
        found = await self.store.list_instances(query or Query())
        for inst in found:
            inst._sink = self._log_sink
        return found

    async def lookup_instance(self, instance: Instance | str) -> Instance:
        """The instance as the store has it now; raises InstanceNotFoundError."""
        uid = _uuid_of(instance)
        inst = await self.store.get_instance(uid)
        if inst is None:
            raise InstanceNotFoundError(uid)
        inst._sink = self._log_sink
        return inst

    async def lookup_instance_history(self, query: Query | None = None) -> list[StateRecord]:
        """State records matching the query, sorted by time."""
        return await self.store.lookup_history(query or Query())

    async def lookup_instance_logs(self, query: Query | None = None) -> list[LogRecord]:
        """Log records matching the query, sorted by time (this node's unwritten lines included)."""
        await self._flush_logs()
        return await self.store.lookup_logs(query or Query())

    async def clear_instance_history(self, query: Query) -> int:
        """Delete the state records matching the query; returns how many."""
        return await self.store.clear_history(query)

    async def clear_instance_logs(self, query: Query) -> int:
        """Delete the log records matching the query; returns how many."""
        await self._flush_logs()
        return await self.store.clear_logs(query)

    async def wait(self, instance: Instance | str, timeout: float | _dt.timedelta | None = None) -> Instance:
        """Wait until the instance reaches a final state; returns it (state, result, error, attempts).

        Raises WaitTimeoutError if it is not final within ``timeout`` seconds, InstanceNotFoundError if
        the store has no such instance.
        """
        uid = _uuid_of(instance)
        limit = None if timeout is None else seconds(timeout, what="timeout")
        inst = await self.store.wait_final(uid, limit)
        if inst is None:
            raise InstanceNotFoundError(uid)
        if not inst.state.is_final:
            raise WaitTimeoutError(f"instance {uid} of job {inst.kind!r} is still {inst.state.value} "
                                   f"after {limit}s")
        inst._sink = self._log_sink
        return inst

    async def cancel_instance(self, instance: Instance | str, *,
                              wait: float | _dt.timedelta | None = 10.0) -> Instance:
        """Cancel an instance on whichever node holds it: queued, delayed, recurring or running.

        A waiting instance is CANCELED at once; a running one is interrupted (an async executor is
        canceled; a sync one sees ``ctx.cancelled``) and ends CANCELED. Canceling an occurrence of a
        recurring schedule cancels the schedule. A cancel is final: no retry follows.

        For an instance a node holds (claimed, perhaps not started yet), the call waits up to ``wait``
        seconds for that node to stop it and record CANCELED. What it returns is the truth:

        - state CANCELED (or another final state, if the attempt ended first): the executor is not
          running and will never start for this instance (a sync executor's thread that ignored its
          Context for a second is the exception, and its CANCELED record says so);
        - state PROCESSING with ``cancel_requested`` set: the node did not confirm within ``wait``
          (it may be cut off from the store, or dead: its lease expiry then records CANCELED); the
          executor may still be running, and may still start.
        """
        uid = _uuid_of(instance)
        limit = 0.0 if wait is None else seconds(wait, what="wait")
        if limit < 0:
            raise ValueError(f"cancel_instance: wait must not be negative, got {wait!r}")
        before = await self.store.get_instance(uid)
        if before is None:
            raise InstanceNotFoundError(uid)
        waiting: list[Instance] = [before] if before.state in (State.CREATED, State.SCHEDULED) else []
        if before.schedule_id is not None:  # the whole schedule goes: its waiting occurrences too
            waiting = await self.store.list_instances(Query(schedule_id=before.schedule_id,
                                                            state=[State.CREATED, State.SCHEDULED]))
        inst = await self.store.cancel(uid, node=self.node_id)
        if inst is None:
            raise InstanceNotFoundError(uid)
        if inst.state is State.CANCELED or inst.cancel_requested:
            self._overrides.pop(inst.schedule_id or uid, None)
        run = self._running.get(uid)
        if run is not None:
            run.stop("canceled")
        if inst.state is State.PROCESSING and limit > 0:
            inst = await self.store.wait_final(uid, limit) or inst
        for w in waiting:  # report the transitions the store made, once each
            job = self._jobs.get(w.kind)
            now_w = inst if w.uuid == uid else await self.store.get_instance(w.uuid)
            if job is not None and now_w is not None and now_w.state is State.CANCELED:
                now_w._sink = self._log_sink
                if (aw := self._state_changed(now_w, State.CANCELED, job)) is not None:
                    await aw
        inst._sink = self._log_sink
        return inst

    # -- the pool ------------------------------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """The pool's size (workers asked to retire are no longer counted)."""
        return self._target

    @property
    def workers(self) -> list[Worker]:
        """The pool's workers (those retiring after their current instance included)."""
        return sorted(self._workers, key=lambda w: w.id)

    async def resize_workers(self, num_workers: int) -> None:
        """Grow or shrink the pool at run time. A retiring worker finishes its instance first;
        no running instance is lost or run twice."""
        _check_workers(num_workers)
        delta = num_workers - self._target
        self._target = num_workers
        if not self._started:
            return
        if delta > 0:
            self._spawn_workers(delta)
            self._wake_dispatcher()
            if self._grown is not None:
                self._grown.set()
        else:
            for _ in range(-delta):
                self._send.send_nowait(_RETIRE)

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
            self._dispatch(insts)
            # let the workers start them before this loop asks the store again (its next call's
            # bookkeeping, or a round trip, would otherwise come first)
            await anyio.lowlevel.checkpoint()

    def _dispatch(self, insts: list[Instance]) -> None:
        """Hand claimed instances to the workers (they count against the pool at once)."""
        lease_until = anyio.current_time() + self.lease_time * _LEASE_MARGIN
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

    # -- one attempt ---------------------------------------------------------------------------------
    async def _run_instance(self, worker: Worker, inst: Instance) -> None:
        run = self._running.get(inst.uuid)
        if run is None or self._handed_back:  # stop() handed it back to the queue
            return
        inst._sink = self._log_sink
        job = self._jobs.get(inst.kind)
        if job is None:
            await self._finish(inst, None, Outcome(inst.uuid, State.TERMINATED,
                                                   error=f"UnknownJobError: job kind {inst.kind!r} is not "
                                                         f"registered on node {self.node_id}",
                                                   attempt=inst.attempts))
            return
        if inst.crontab_spec is not None:
            await self._chain_next_occurrence(inst)
        if (aw := self._state_changed(inst, State.PROCESSING, job)) is not None:
            await aw
        sig = job._signature
        assert sig is not None
        ctx = Context(inst.timeout)
        run.ctx = ctx
        result: Any = None
        error: BaseException | None = None
        scope = anyio.CancelScope()
        if inst.timeout is not None:
            scope.deadline = anyio.current_time() + inst.timeout
        run.scope = scope
        try:
            args, kwargs = sig.prepare_call(inst.args, inst.kwargs, {"instance": inst, "manager": self,
                                                                    "worker": worker, "context": ctx})
            if run.previous is not None and run.previous.ended is not None:
                # an older attempt of this instance was told to stop here: it must be gone before this
                # one starts (an async one is at its next await; a thread is let go as on a cancel)
                await run.previous.ended.wait()
                run.previous = None
            # the last moment before the executor starts: a cancel (or a lost lease) that reached this
            # node while the instance was claimed and waiting for its turn means it never starts
            if run.stop_reason == "canceled":
                await self._finish(inst, job, Outcome(inst.uuid, State.CANCELED, detail="canceled before it started",
                                                      attempt=inst.attempts))
                return
            if run.stop_reason is not None:
                return
            run.started = True
            with scope:
                result = await self._runners[inst.kind].run(job.executor, args, kwargs, ctx)
        except Exception as exc:  # the executor's failure (or bad stored arguments)
            error = exc
        stopped = scope.cancelled_caught or (scope.cancel_called and run.stop_reason is not None)
        if stopped:
            reason = run.stop_reason
            if reason is None:
                ctx._stop("timed out")
                error = JobTimeoutError(f"job {inst.kind!r} attempt {inst.attempts} timed out "
                                        f"after {inst.timeout}s")
            elif reason == "canceled":
                detail = "canceled while running"
                if not await _thread_returned(ctx, _CANCEL_GRACE):
                    detail = (f"canceled while running; its thread had not returned {_CANCEL_GRACE:g} s later "
                              "and may still be running")
                await self._finish(inst, job, Outcome(inst.uuid, State.CANCELED, detail=detail, attempt=inst.attempts))
                return
            else:  # "lost": another node owns it now; "shutdown": handed back by stop()
                return
        if error is None:
            await self._complete(inst, job, result)
        else:
            await self._fail(inst, job, error)

    async def _complete(self, inst: Instance, job: Job, result: Any) -> None:
        results = results_list(result)
        inst.result = encode_result(result)
        if job.complete_processor is not None:
            await self._call_processor("complete_processor", inst, job.complete_processor, inst, results)
        self.plugins.completed(self, inst, results)
        await self._finish(inst, job, Outcome(inst.uuid, State.COMPLETED, result=inst.result, attempt=inst.attempts))

    async def _fail(self, inst: Instance, job: Job, error: BaseException) -> None:
        timed_out = isinstance(error, JobTimeoutError)
        err: BaseException | None = error
        decided = self.plugins.terminated(self, inst, error)
        if decided is False:
            err = None
        elif isinstance(decided, BaseException):
            err = decided
        ov = self._overrides.get(inst.schedule_id or inst.uuid)
        processor = (ov.terminate if ov is not None and ov.terminate is not None else job.terminate_processor)
        if processor is not None and err is not None:
            try:
                err = await _maybe_await(processor(inst, err))
            except Exception as exc:
                inst.errorf("terminate_processor raised %s: %s", type(exc).__name__, exc)
        if err is None:  # the processor cleared the error: the attempt counts as a success
            await self._finish(inst, job, Outcome(inst.uuid, State.COMPLETED, detail=f"cleared: {_describe(error)}",
                                                  attempt=inst.attempts))
            return
        state = State.TIMED_OUT if timed_out and isinstance(err, JobTimeoutError) else State.TERMINATED
        message = _describe(err)
        inst.error = message
        retry_at = None
        if inst.attempts - inst.abandoned <= inst.max_retries:  # abandoned attempts are not failures
            retry_at = now() + self._backoff(inst, job, ov)
        await self._finish(inst, job, Outcome(inst.uuid, state, error=message, retry_at=retry_at,
                                              attempt=inst.attempts))

    def _backoff(self, inst: Instance, job: Job, ov: _Overrides | None) -> float:
        strategy = ov.backoff if ov is not None and ov.backoff is not None else job.backoff_strategy
        delay: Any = None
        if strategy is not None:
            try:
                delay = strategy(inst)
            except Exception as exc:
                inst.errorf("backoff_strategy raised %s: %s; using the default backoff", type(exc).__name__, exc)
        if delay is None:
            delay = self.plugins.backoff_delay(inst)
        if delay is None:  # a backoff plugin failed (it was reported): the built-in default applies
            delay = self._default_backoff.gojob_backoff_delay(inst)
        try:
            return max(0.0, seconds(delay, what="backoff delay"))
        except ValueError:
            inst.errorf("backoff_strategy returned %r, not seconds; retrying at once", delay)
            return 0.0

    async def _finish(self, inst: Instance, job: Job | None, outcome: Outcome) -> None:
        """Run the state-change processors, then write the outcome (logs first) in one store step."""
        if job is not None:
            inst.state = outcome.state
            if (aw := self._state_changed(inst, outcome.state, job)) is not None:
                await aw
            if outcome.retry_at is not None:
                inst.state = State.SCHEDULED
                if (aw := self._state_changed(inst, State.SCHEDULED, job)) is not None:
                    await aw
        if self.store.FINISH_MODE != "handoff":
            try:
                ok = await self._finisher.submit(outcome)
            except (StoreError, OSError) as exc:
                self._finished(inst, None, outcome, False, exc)
                return
            self._finished(inst, None, outcome, ok, None)
            return
        run = self._running.get(inst.uuid)
        if run is not None:
            run.finishing = True
        self._finisher.post(outcome, lambda ok, exc: self._finished(inst, run, outcome, ok, exc))

    def _finished(self, inst: Instance, run: _Running | None, outcome: Outcome, ok: bool,
                  error: BaseException | None) -> None:
        """The store answered a finish (``run``: the attempt, if its bookkeeping waited for it)."""
        if error is not None:
            self._report(f"finish of {inst.uuid} failed: {error!r}; its lease will expire and it will re-run")
        elif ok and outcome.retry_at is None and inst.crontab_spec is None:
            self._overrides.pop(inst.uuid, None)
        if run is not None and self._running.get(inst.uuid) is run:
            del self._running[inst.uuid]
            self._check_idle()

    async def _chain_next_occurrence(self, inst: Instance) -> None:
        """Enqueue the next occurrence of a recurring instance (idempotent: its uuid is derived)."""
        try:
            cron = CronSchedule(inst.crontab_spec or "", inst.timezone, kind=inst.kind)
        except ScheduleError as exc:
            inst.errorf("cannot compute the next occurrence: %s", exc)
            return
        base = max(inst.ready_ts, now())
        nxt = cron.next_after(base)
        assert inst.schedule_id is not None
        follow = Instance(uuid=_occurrence_uuid(inst.schedule_id, nxt), kind=inst.kind, args=inst.args,
                          kwargs=inst.kwargs, priority=inst.priority, state=State.SCHEDULED,
                          max_retries=inst.max_retries, timeout=inst.timeout, created_ts=now(), ready_ts=nxt,
                          crontab_spec=inst.crontab_spec, timezone=inst.timezone, schedule_id=inst.schedule_id,
                          max_abandons=inst.max_abandons)
        [added] = await self.store.enqueue([follow], node=self.node_id, chained=True)
        job = self._jobs.get(inst.kind)
        if added and job is not None:
            follow._sink = self._log_sink
            if (aw := self._state_changed(follow, State.CREATED, job)) is not None:
                await aw
            if (aw := self._state_changed(follow, State.SCHEDULED, job)) is not None:
                await aw

    def _state_changed(self, inst: Instance, state: State, job: Job) -> Awaitable[None] | None:
        """Tell the hooks (at once) and the job's state-change processor (awaitable, if it has one)."""
        self.plugins.state_changed(self, inst, state)
        if job.state_change_processor is not None:
            return self._call_processor("state_change_processor", inst, job.state_change_processor, inst, state)
        return None

    async def _call_processor(self, name: str, inst: Instance, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await _maybe_await(fn(*args))
        except Exception as exc:
            inst._sink = self._log_sink
            inst.errorf("%s raised %s: %s", name, type(exc).__name__, exc)

    # -- background loops ------------------------------------------------------------------------------
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
        sent = anyio.current_time()
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
            t = anyio.current_time()
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

    # -- logs ----------------------------------------------------------------------------------------
    def _log_sink(self, inst: Instance, level: LogLevel, message: str) -> None:
        # list.append is atomic, so executors in worker threads may log too
        self._log_buffer.append(LogRecord(inst.uuid, inst.kind, level, message, now(), inst.attempts, self.node_id))

    async def _flush_logs(self) -> None:
        if self._log_buffer:
            batch, self._log_buffer = self._log_buffer, []
            await self.store.append_logs(batch)

    def _report(self, message: str) -> None:
        _log.warning("node %s: %s", self.node_id, message)


# -- helpers ---------------------------------------------------------------------------------------------
_METRICS_SPACING = 20  # a queue-size read that took d seconds is followed by at least 20 d without one
#: a node stops an attempt itself once this share of the lease has passed since the claim or the last
#: renewal that reached the store (the store's own expiry comes later: the margin covers round trips and
#: the fence check's period)
_LEASE_MARGIN = 0.8
#: seconds a canceled sync executor's thread is given to return before the instance is recorded CANCELED
#: with a detail saying it may still be running
_CANCEL_GRACE = 1.0


async def _thread_returned(ctx: Context, grace: float) -> bool:
    """Whether the attempt's executor has returned, waiting up to ``grace`` seconds for a thread that the
    cancel released (an async executor has always returned by then)."""
    done = ctx._thread_done
    if done is None or done.is_set():
        return True
    with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
        while not done.is_set():
            await anyio.sleep(0.005)
    return done.is_set()


def _check_workers(n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {n!r}")


def _same_definition(a: Job, b: Job) -> bool:
    """Two Job objects define the same job if every field is equal (executors by identity)."""
    if a is b:
        return True
    return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(Job) if f.init)


def _timing_given(options: dict[str, Any]) -> bool:
    return any(options.get(k) is not None for k in ("schedule_at", "schedule_after", "crontab_spec"))


def _split_arguments(arguments: Any) -> tuple[Sequence[Any], dict[str, Any]]:
    if isinstance(arguments, (tuple, list)):
        return arguments, {}
    if isinstance(arguments, dict):
        return (), arguments
    return (arguments,), {}


def _new_uuid() -> str:
    """A random (version 4) UUID string, made faster than ``str(uuid.uuid4())``: one is made per
    instance. random's generator is seeded from os.urandom and reseeded in forked children."""
    n = (_getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC << 60) | (0x8 << 60)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _occurrence_uuid(schedule_id: str, fire_ts: float) -> str:
    return str(_uuid.uuid5(_NAMESPACE, f"{schedule_id}@{round(fire_ts)}"))


def _uuid_of(instance: Instance | str) -> str:
    if isinstance(instance, Instance):
        return instance.uuid
    if isinstance(instance, str):
        return instance
    raise TypeError(f"expected an Instance or a uuid string, got {instance!r}")


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value

