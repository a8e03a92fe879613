"""The core's own plugins, registered like any third-party one: memory store, runners, backoff."""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import TYPE_CHECKING

from ._memory import MemoryStore
from ._runners import AsyncRunner, ExecutorRunner, ThreadRunner
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from ._instance import Instance
    from ._job import Job
    from ._manager import Manager
    from .abc import Store

__all__ = ["BackoffPlugin", "MemoryStorePlugin", "RunnerPlugin"]


class MemoryStorePlugin:
    """Provides the ``memory://`` store."""

    @hookimpl(trylast=True)
    def gojob_register_stores(self) -> list[type[Store]]:
        return [MemoryStore]


class RunnerPlugin:
    """Runs async executors on the event loop and sync ones in worker threads (one pool per Manager)."""

    def __init__(self) -> None:
        self.async_runner = AsyncRunner()
        self.thread_runner = ThreadRunner()

    @hookimpl(trylast=True)
    def gojob_executor_runner(self, manager: Manager, job: Job) -> ExecutorRunner:
        sig = job._signature
        is_async = sig.is_async if sig is not None else (
            inspect.iscoroutinefunction(job.executor) or asyncio.iscoroutinefunction(job.executor))
        return self.async_runner if is_async else self.thread_runner


class BackoffPlugin:
    """Default backoff: exponential (base * 2^(attempt-1), capped), with +/-20% jitter."""

    base = 0.5
    cap = 300.0

    @hookimpl(trylast=True)
    def gojob_backoff_delay(self, instance: Instance) -> float:
        delay = min(self.cap, self.base * 2 ** max(0, instance.attempts - 1))
        return delay * random.uniform(0.8, 1.2)
