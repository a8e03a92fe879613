"""A job instance: one scheduled run of a job, with its arguments, state, attempts and result.

The same record travels through every store (as a JSON-compatible dict), so everything on it is plain
data. Callables (executor, processors, backoff) live in the job registry of each node, keyed by kind.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

from ._state import LogLevel, State
from ._time import from_epoch

__all__ = ["Instance"]

_new = object.__new__
LogSink = Callable[["Instance", LogLevel, str], None]

_FIELDS = (
    "uuid", "kind", "args", "kwargs", "priority", "state", "attempts", "max_retries", "timeout",
    "created_ts", "ready_ts", "started_ts", "finished_ts", "result", "error", "node", "lease_ts",
    "cancel_requested", "crontab_spec", "timezone", "schedule_id", "seq", "abandoned", "max_abandons", "headers",
)

#: How many abandoned attempts (its node died or lost the store while running it) an instance may have
#: before it ends TERMINATED instead of being re-queued: the default of ``Job.max_abandons``, and the
#: limit of records written before the field existed.
DEFAULT_MAX_ABANDONS = 5


class Instance:
    """One run of a job. Read its state, attempts, result and error; log with ``infof/warnf/errorf``.

    Instances handed out by a Manager are snapshots: ``await manager.lookup_instance(inst)`` or
    ``await manager.wait(inst)`` returns a fresh one. Inside an executor the injected Instance is the
    running one, and its log calls go to the store (buffered, flushed before the instance finishes).
    """

    __slots__ = (*_FIELDS, "_sink")

    uuid: str
    kind: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    state: State
    attempts: int
    max_retries: int
    timeout: float | None
    created_ts: float
    ready_ts: float
    started_ts: float | None
    finished_ts: float | None
    result: Any
    error: str | None
    node: str | None
    lease_ts: float | None
    cancel_requested: bool
    crontab_spec: str | None
    timezone: str | None
    schedule_id: str | None
    seq: int
    abandoned: int
    max_abandons: int | None
    headers: dict[str, str]

    def __init__(
        self,
        *,
        uuid: str,
        kind: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        state: State = State.CREATED,
        attempts: int = 0,
        max_retries: int = 0,
        timeout: float | None = None,
        created_ts: float = 0.0,
        ready_ts: float = 0.0,
        started_ts: float | None = None,
        finished_ts: float | None = None,
        result: Any = None,
        error: str | None = None,
        node: str | None = None,
        lease_ts: float | None = None,
        cancel_requested: bool = False,
        crontab_spec: str | None = None,
        timezone: str | None = None,
        schedule_id: str | None = None,
        seq: int = 0,
        abandoned: int = 0,
        max_abandons: int | None = DEFAULT_MAX_ABANDONS,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.uuid = uuid
        self.kind = kind
        self.args = args if args is not None else []
        self.kwargs = kwargs if kwargs is not None else {}
        self.priority = priority
        self.state = state
        self.attempts = attempts
        self.max_retries = max_retries
        self.timeout = timeout
        self.created_ts = created_ts
        self.ready_ts = ready_ts
        self.started_ts = started_ts
        self.finished_ts = finished_ts
        self.result = result
        self.error = error
        self.node = node
        self.lease_ts = lease_ts
        self.cancel_requested = cancel_requested
        self.crontab_spec = crontab_spec
        self.timezone = timezone
        self.schedule_id = schedule_id
        self.seq = seq
        #: attempts cut short because their node lost its lease; they do not use up retries
        self.abandoned = abandoned
        #: after this many abandoned attempts the instance ends TERMINATED (None: no limit)
        self.max_abandons = max_abandons
        #: string metadata carried with the instance through every store, set when it is scheduled: for
        #: plugins (an OpenTelemetry trace context) and applications (a tenant, a request id)
        self.headers = headers if headers is not None else {}
        self._sink: LogSink | None = None

    # -- reading ---------------------------------------------------------------------------------
    @property
    def arguments(self) -> tuple[Any, ...]:
        """The stored positional arguments (JSON-compatible form; injected parameters left out)."""
        return tuple(self.args)

    @property
    def created_at(self) -> _dt.datetime:
        return from_epoch(self.created_ts)  # type: ignore[return-value]

    @property
    def ready_at(self) -> _dt.datetime:
        """When the instance is (or was) due to run."""
        return from_epoch(self.ready_ts)  # type: ignore[return-value]

    @property
    def started_at(self) -> _dt.datetime | None:
        return from_epoch(self.started_ts)

    @property
    def finished_at(self) -> _dt.datetime | None:
        return from_epoch(self.finished_ts)

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    @property
    def is_recurring(self) -> bool:
        return self.crontab_spec is not None

    # -- logging ---------------------------------------------------------------------------------
    def _log(self, level: LogLevel, fmt: str, args: tuple[Any, ...]) -> None:
        message = (fmt % args) if args else str(fmt)
        if self._sink is None:
            raise RuntimeError(
                f"instance {self.uuid} of job {self.kind!r} is not attached to a manager; "
                "log through the instance given to the executor or processors"
            )
        self._sink(self, level, message)

    def infof(self, fmt: str, *args: Any) -> None:
        """Log an informational line for this instance (``%`` formatting, like go-job's Infof)."""
        self._log(LogLevel.INFO, fmt, args)

    def warnf(self, fmt: str, *args: Any) -> None:
        """Log a warning line for this instance."""
        self._log(LogLevel.WARN, fmt, args)

    def errorf(self, fmt: str, *args: Any) -> None:
        """Log an error line for this instance."""
        self._log(LogLevel.ERROR, fmt, args)

    # -- plumbing --------------------------------------------------------------------------------
    def copy(self) -> Instance:
        """A shallow copy (stores hand out copies so callers never alias stored records)."""
        new = _new(Instance)
        new.uuid = self.uuid
        new.kind = self.kind
        new.args = self.args
        new.kwargs = self.kwargs
        new.priority = self.priority
        new.state = self.state
        new.attempts = self.attempts
        new.max_retries = self.max_retries
        new.timeout = self.timeout
        new.created_ts = self.created_ts
        new.ready_ts = self.ready_ts
        new.started_ts = self.started_ts
        new.finished_ts = self.finished_ts
        new.result = self.result
        new.error = self.error
        new.node = self.node
        new.lease_ts = self.lease_ts
        new.cancel_requested = self.cancel_requested
        new.crontab_spec = self.crontab_spec
        new.timezone = self.timezone
        new.schedule_id = self.schedule_id
        new.seq = self.seq
        new.abandoned = self.abandoned
        new.max_abandons = self.max_abandons
        new.headers = self.headers
        new._sink = None
        return new

    def to_dict(self) -> dict[str, Any]:
        """The JSON-compatible record a store keeps."""
        d = {name: getattr(self, name) for name in _FIELDS}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        """Rebuild an instance from ``to_dict()`` output; raises KeyError/ValueError on a corrupt record."""
        new = cls(uuid=str(d["uuid"]), kind=str(d["kind"]))
        for name in _FIELDS:
            if name in d and name not in ("uuid", "kind"):
                object.__setattr__(new, name, d[name])
        new.state = State(d.get("state", "CREATED"))
        if new.args is None:
            new.args = []
        if new.kwargs is None:
            new.kwargs = {}
        if new.headers is None:
            new.headers = {}
        elif not isinstance(new.headers, dict):
            raise ValueError(f"headers must be an object, got {type(new.headers).__name__}")
        new.abandoned = int(new.abandoned or 0)
        if new.max_abandons is not None:
            new.max_abandons = int(new.max_abandons)
        return new

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instance) and other.uuid == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return (f"<Instance {self.kind!r} {self.uuid} {self.state.value} attempts={self.attempts} "
                f"priority={self.priority}>")
