"""The Context an executor may ask for: its deadline and whether it was canceled.

Async executors are canceled for real (anyio cancellation) when their instance times out or is
canceled. A sync executor runs in a thread, which Python cannot interrupt: it must look at its
Context (``ctx.cancelled``, ``ctx.remaining()``, ``ctx.sleep()``, ``ctx.raise_if_cancelled()``) to
stop early. If it does not, the instance is still marked TIMED_OUT or CANCELED at once and the
worker moves on, but the thread runs until the function returns.
"""

from __future__ import annotations

import threading
import time

from .errors import JobCanceledError, JobTimeoutError

__all__ = ["Context"]

_LOCK = threading.Lock()


class Context:
    """Cancellation and deadline of one attempt, safe to read from any thread."""

    __slots__ = ("_done", "_reason", "_thread_done", "deadline", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        #: ``time.monotonic()`` value at which the attempt times out, or None.
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self._done: threading.Event | None = None  # made on first wait: most attempts never wait
        self._reason: str | None = None
        #: set by a runner that calls the executor in a thread, once the function has returned
        self._thread_done: threading.Event | None = None

    def _event(self) -> threading.Event:
        ev = self._done
        if ev is None:
            with _LOCK:
                if self._done is None:
                    self._done = threading.Event()
                    if self._reason is not None:
                        self._done.set()
                ev = self._done
        return ev

    @property
    def cancelled(self) -> bool:
        """True once the attempt was canceled or timed out: the executor should stop."""
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """Why the attempt must stop: "canceled", "timed out", or None while it may go on."""
        return self._reason

    def remaining(self) -> float | None:
        """Seconds left before the timeout (never negative), or None without a timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def sleep(self, seconds: float) -> bool:
        """Sleep in a sync executor, waking early on cancel or timeout; True if woken by them."""
        limit = seconds
        rem = self.remaining()
        if rem is not None:
            limit = min(limit, rem)
        woke = self._event().wait(limit)
        return woke or (rem is not None and rem <= seconds)

    def raise_if_cancelled(self) -> None:
        """Raise JobTimeoutError or JobCanceledError if the attempt must stop."""
        if self._reason == "timed out" or (self.deadline is not None and time.monotonic() >= self.deadline):
            raise JobTimeoutError(f"attempt timed out after {self.timeout}s")
        if self._reason is not None:
            raise JobCanceledError("instance canceled")

    def _stop(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
        with _LOCK:
            ev = self._done
        if ev is not None:
            ev.set()
