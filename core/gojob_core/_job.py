"""A job definition: a kind, the executor that does the work, and defaults for its instances."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._instance import DEFAULT_MAX_ABANDONS
from .errors import InvalidJobError

if TYPE_CHECKING:
    from ._arguments import ExecutorSignature
    from ._instance import Instance
    from ._state import State

__all__ = ["BackoffStrategy", "CompleteProcessor", "Job", "StateChangeProcessor", "TerminateProcessor"]

#: ``(instance) -> seconds or timedelta`` before the next attempt of a failed instance.
BackoffStrategy = Callable[["Instance"], "float | _dt.timedelta"]
#: ``(instance, results) -> None``; ``results`` is a list (a returned tuple's items, [value], or []).
CompleteProcessor = Callable[["Instance", list[Any]], Any]
#: ``(instance, error) -> error or None``; None turns the failure into success.
TerminateProcessor = Callable[["Instance", BaseException], "BaseException | None"]
#: ``(instance, state) -> None``, called on every transition this node makes.
StateChangeProcessor = Callable[["Instance", "State"], Any]


@dataclass(kw_only=True, eq=False)
class Job:
    """What to run for a kind, and the defaults each schedule call may override.

    ``executor`` is any callable, sync or async, of any signature. Sync executors run in a worker
    thread; async ones run on the event loop. Processors may be sync or async too.
    """

    kind: str
    executor: Callable[..., Any]
    priority: int = 0
    max_retries: int = 0
    timeout: float | _dt.timedelta | None = None
    #: abandoned attempts (the node running it died or lost the store) before an instance ends
    #: TERMINATED instead of re-queued; None: no limit. Abandons are not failures: they use no retry.
    max_abandons: int | None = DEFAULT_MAX_ABANDONS
    backoff_strategy: BackoffStrategy | None = None
    complete_processor: CompleteProcessor | None = None
    terminate_processor: TerminateProcessor | None = None
    state_change_processor: StateChangeProcessor | None = None
    crontab_spec: str | None = None
    timezone: str | _dt.tzinfo | None = None
    schedule_at: _dt.datetime | None = None
    schedule_after: float | _dt.timedelta | None = None
    description: str = ""
    _signature: ExecutorSignature | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind.strip():
            raise InvalidJobError(f"job kind must be a non-empty string, got {self.kind!r}")
        if not callable(self.executor):
            raise InvalidJobError(f"job {self.kind!r}: executor must be callable, got {self.executor!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise InvalidJobError(f"job {self.kind!r}: priority must be an integer, got {self.priority!r}")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise InvalidJobError(
                f"job {self.kind!r}: max_retries must be a non-negative integer, got {self.max_retries!r}")
        if self.max_abandons is not None and (not isinstance(self.max_abandons, int)
                                              or isinstance(self.max_abandons, bool) or self.max_abandons < 1):
            raise InvalidJobError(
                f"job {self.kind!r}: max_abandons must be a positive integer or None, got {self.max_abandons!r}")
        for name in ("backoff_strategy", "complete_processor", "terminate_processor", "state_change_processor"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidJobError(f"job {self.kind!r}: {name} must be callable, got {value!r}")
