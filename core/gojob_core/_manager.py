"""The Manager: registers jobs, schedules instances into the store, and runs them on a worker pool.

One Manager is one node. Several Managers (in one process or on many machines) sharing one store
share its queue, history and logs; each instance runs on one node at a time, under a lease.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import socket
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel
import sniffio
from anyio.abc import TaskGroup

from ._arguments import ExecutorSignature
from ._attempt import Attempts, _maybe_await, _Running
from ._builtin import BackoffPlugin, MemoryStorePlugin, RunnerPlugin
from ._context import Context
from ._instance import Instance
from ._job import BackoffStrategy, Job, TerminateProcessor
from ._metrics import ManagerMetrics
from ._plugins import Plugins
from ._pool import _RETIRE, Pool, _check_workers, _FinishBatcher
from ._records import LogRecord, Query, StateRecord
from ._runners import ExecutorRunner
from ._schedules import Schedules
from ._scheduling import (
    _UNSET,
    Scheduling,
    _Overrides,
    _same_definition,
    _timing_given,
)
from ._state import State
from ._time import seconds
from ._upkeep import Upkeep
from ._worker import Worker
from .abc import Store
from .errors import (
    InstanceNotFoundError,
    InvalidJobError,
    ScheduleError,
    StoreError,
    UnknownJobError,
    WaitTimeoutError,
)

__all__ = ["Manager"]

_log = logging.getLogger("gojob")


class Manager(Scheduling, Schedules, Attempts, Pool, Upkeep):
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
        self._shrinks = 0  # how many times the pool shrank (see Pool._dispatch)
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
            self._tg.start_soon(self._schedule_repair_loop)
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
        headers: dict[str, str] | None = None,
    ) -> Instance:
        """Schedule one instance of a job (registering the job first if its kind is new).

        ``arguments`` is a tuple or list (positional), a dict (keyword), or a single value. Timing:
        now by default, or ``schedule_at`` (a datetime; a naive one is local time), or
        ``schedule_after`` (seconds or a timedelta), or ``crontab_spec`` (recurring, in ``timezone``,
        default local time; see :mod:`gojob_core._cron` for DST days). Every other option overrides
        the job's default for this instance. ``headers`` (strings to strings) travel with the
        instance through the store, to the node that runs it and to every query (plugins may add
        theirs, such as a trace context). Bad input raises before anything is written.

        A recurring schedule is identified by (kind, spec, timezone, arguments): scheduling it again,
        from this node or another sharing the store, does not double it. It is a :class:`Schedule`
        (``add_schedule`` with a :class:`CronTrigger`, its id the returned instance's ``schedule_id``):
        the returned instance is its pending occurrence. Canceling an occurrence cancels that occurrence
        only; ``pause_schedule`` and ``remove_schedule`` stop the schedule.
        """
        insts = await self._schedule(job, [arguments], schedule_at=schedule_at, schedule_after=schedule_after,
                                     crontab_spec=crontab_spec, timezone=timezone, priority=priority,
                                     max_retries=max_retries, timeout=timeout, backoff_strategy=backoff_strategy,
                                     terminate_processor=terminate_processor, headers=headers)
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
        canceled; a sync one sees ``ctx.cancelled``) and ends CANCELED. A final one is left as it is.
        Canceling an occurrence of a schedule cancels that occurrence only (the schedule fires again at
        its next fire time); ``pause_schedule`` or ``remove_schedule`` stop a schedule. A cancel is
        final: no retry follows.

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
        inst = await self.store.cancel(uid, node=self.node_id)
        if inst is None:
            raise InstanceNotFoundError(uid)
        if inst.schedule_id is None and (inst.state is State.CANCELED or inst.cancel_requested):
            self._overrides.pop(uid, None)
        run = self._running.get(uid)
        if run is not None:
            run.stop("canceled")
        if inst.state is State.PROCESSING and limit > 0:
            inst = await self.store.wait_final(uid, limit) or inst
        if before.state in (State.CREATED, State.SCHEDULED) and inst.state is State.CANCELED:
            job = self._jobs.get(inst.kind)  # report the transition the store made
            if job is not None:
                inst._sink = self._log_sink
                if (aw := self._state_changed(inst, State.CANCELED, job)) is not None:
                    await aw
            if inst.schedule_id is not None:  # the schedule goes on: its next occurrence is chained
                await self._fire(inst, claimed=False)
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
        elif delta < 0:
            self._shrinks += 1  # claims out now may bring back more than the pool will take
            for _ in range(-delta):
                self._send.send_nowait(_RETIRE)

    # -- one attempt ---------------------------------------------------------------------------------
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
    # -- logs ----------------------------------------------------------------------------------------
    def _report(self, message: str) -> None:
        _log.warning("node %s: %s", self.node_id, message)


# -- helpers ---------------------------------------------------------------------------------------------


def _uuid_of(instance: Instance | str) -> str:
    if isinstance(instance, Instance):
        return instance.uuid
    if isinstance(instance, str):
        return instance
    raise TypeError(f"expected an Instance or a uuid string, got {instance!r}")


