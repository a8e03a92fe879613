"""How an executor is run: on the event loop (async) or in a worker thread (sync)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from ._context import Context

__all__ = ["AsyncRunner", "ExecutorRunner", "ThreadRunner"]


@runtime_checkable
class ExecutorRunner(Protocol):
    """Runs one call of an executor; the Manager wraps it in the attempt's cancel scope."""

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  ctx: Context) -> Any: ...


class AsyncRunner:
    """Awaits an async executor on the event loop; cancel and timeout interrupt it for real."""

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  ctx: Context) -> Any:
        return await fn(*args, **kwargs)


class ThreadRunner:
    """Runs a sync executor in a worker thread.

    A thread cannot be interrupted: on cancel or timeout the Context tells the function to stop, and
    the thread runs until the function returns. A timed-out attempt ends at once (the worker is
    freed); a canceled one waits up to a second for the function to return, so that its CANCELED
    record can say whether the executor may still be running. The Context's ``_thread_done`` is set
    when the function returns.
    The pool's size bounds how many run at once, so the limiter itself is unbounded: an abandoned
    thread never takes a token that a new attempt needs.
    """

    def __init__(self) -> None:
        self.limiter = anyio.CapacityLimiter(math.inf)

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  ctx: Context) -> Any:
        done = ctx._thread_done = threading.Event()

        def call() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                done.set()

        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self.limiter)
