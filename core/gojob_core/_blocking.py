"""BlockingManager: the Manager's API without ``await``, for scripts, Django, Flask.

The Manager runs on an event loop in a background thread (an anyio blocking portal); every method
call is handed to that loop and waits for its answer.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._instance import Instance
from ._job import Job
from ._manager import Manager
from ._records import LogRecord, Query, StateRecord
from ._schedules import Schedule
from ._triggers import Trigger
from .abc import Store

__all__ = ["BlockingManager"]


class BlockingManager:
    """The same methods as :class:`Manager`, called without ``await``.

    ``with BlockingManager(store="memory://", num_workers=4) as mgr: mgr.schedule_job(job)``. Takes
    every keyword :class:`Manager` takes, plus ``backend`` ("asyncio" or "trio").
    """

    def __init__(self, store: str | Store = "memory://", *, backend: str = "asyncio", **options: Any) -> None:
        self.manager = Manager(store, **options)
        self._backend = backend
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._stop_event: anyio.Event | None = None
        self._runner: Any = None

    def __enter__(self) -> BlockingManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the event-loop thread and the Manager in it."""
        if self._portal is not None:
            raise RuntimeError("BlockingManager is already started")
        self._portal_cm = start_blocking_portal(self._backend)
        self._portal = self._portal_cm.__enter__()
        try:
            self._runner, _ = self._portal.start_task(self._serve)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None
            raise

    async def _serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop_event = anyio.Event()
        async with self.manager:
            task_status.started()
            await self._stop_event.wait()

    def stop(self) -> None:
        """Stop the Manager (gracefully) and the event-loop thread."""
        if self._portal is None or self._portal_cm is None:
            return
        portal, cm = self._portal, self._portal_cm
        try:
            if self._stop_event is not None:
                portal.call(self._stop_event.set)
            self._runner.result()
        finally:
            self._portal = self._portal_cm = None
            cm.__exit__(None, None, None)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._portal is None:
            raise RuntimeError("BlockingManager is not started; use 'with BlockingManager(...)' or call start()")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    # -- the Manager's API ---------------------------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self.manager.node_id

    @property
    def num_workers(self) -> int:
        return self.manager.num_workers

    @property
    def workers(self) -> list[Any]:
        return self.manager.workers

    @property
    def store(self) -> Store:
        return self.manager.store

    @property
    def metrics(self) -> Any:
        """The Manager's metrics (``.exposition()`` gives the Prometheus text)."""
        return self.manager.metrics

    def register_job(self, job: Job) -> Job:
        return self._call(self.manager.register_job, job)  # type: ignore[no-any-return]

    def unregister_job(self, job: Job | str) -> None:
        self._call(self.manager.unregister_job, job)

    def registered_jobs(self) -> list[Job]:
        return self.manager.registered_jobs()

    def lookup_job(self, kind: str) -> Job:
        return self.manager.lookup_job(kind)

    def schedule_job(self, job: Job, **options: Any) -> Instance:
        return self._call(self.manager.schedule_job, job, **options)  # type: ignore[no-any-return]

    def schedule_registered_job(self, kind: str, **options: Any) -> Instance:
        return self._call(self.manager.schedule_registered_job, kind, **options)  # type: ignore[no-any-return]

    def schedule_many(self, job: Job | str, arguments: Iterable[Any], **options: Any) -> list[Instance]:
        return self._call(self.manager.schedule_many, job, list(arguments), **options)  # type: ignore[no-any-return]

    def lookup_instances(self, query: Query | None = None) -> list[Instance]:
        return self._call(self.manager.lookup_instances, query)  # type: ignore[no-any-return]

    def lookup_instance(self, instance: Instance | str) -> Instance:
        return self._call(self.manager.lookup_instance, instance)  # type: ignore[no-any-return]

    def lookup_instance_history(self, query: Query | None = None) -> list[StateRecord]:
        return self._call(self.manager.lookup_instance_history, query)  # type: ignore[no-any-return]

    def lookup_instance_logs(self, query: Query | None = None) -> list[LogRecord]:
        return self._call(self.manager.lookup_instance_logs, query)  # type: ignore[no-any-return]

    def clear_instance_history(self, query: Query) -> int:
        return self._call(self.manager.clear_instance_history, query)  # type: ignore[no-any-return]

    def clear_instance_logs(self, query: Query) -> int:
        return self._call(self.manager.clear_instance_logs, query)  # type: ignore[no-any-return]

    def wait(self, instance: Instance | str, timeout: float | _dt.timedelta | None = None) -> Instance:
        return self._call(self.manager.wait, instance, timeout)  # type: ignore[no-any-return]

    def cancel_instance(self, instance: Instance | str) -> Instance:
        return self._call(self.manager.cancel_instance, instance)  # type: ignore[no-any-return]

    def resize_workers(self, num_workers: int) -> None:
        self._call(self.manager.resize_workers, num_workers)

    def add_schedule(self, job: Job | str, trigger: Trigger, **options: Any) -> Schedule:
        return self._call(self.manager.add_schedule, job, trigger, **options)  # type: ignore[no-any-return]

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self._call(self.manager.get_schedule, schedule_id)  # type: ignore[no-any-return]

    def list_schedules(self, **filters: Any) -> list[Schedule]:
        return self._call(self.manager.list_schedules, **filters)  # type: ignore[no-any-return]

    def pause_schedule(self, schedule_id: str) -> Schedule:
        return self._call(self.manager.pause_schedule, schedule_id)  # type: ignore[no-any-return]

    def resume_schedule(self, schedule_id: str) -> Schedule:
        return self._call(self.manager.resume_schedule, schedule_id)  # type: ignore[no-any-return]

    def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        return self._call(self.manager.update_schedule, schedule_id, **changes)  # type: ignore[no-any-return]

    def remove_schedule(self, schedule_id: str) -> None:
        self._call(self.manager.remove_schedule, schedule_id)

    def next_run_time(self) -> _dt.datetime | None:
        return self._call(self.manager.next_run_time)  # type: ignore[no-any-return]
