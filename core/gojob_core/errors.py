"""Every exception gojob raises, under one base so callers can catch them all.

::

    GojobError
    ├── InvalidJobError (ValueError)        a Job definition that cannot work
    ├── ArgumentError (ValueError)          arguments that do not fit the executor
    │   └── UnserializableArgumentError     a value the store cannot hold
    ├── ScheduleError (ValueError)          bad time, delay, crontab spec or option
    ├── UnknownJobError (LookupError)       no job registered under that kind
    ├── InstanceNotFoundError (LookupError) no instance with that uuid
    ├── ScheduleNotFoundError (LookupError) no schedule with that id
    ├── UnknownStoreError (ValueError)      no installed store plugin for a URL scheme
    ├── StoreError                          the store failed (connection, protocol, lease lost)
    │   └── CorruptRecordError              a stored record that cannot be decoded
    ├── JobTimeoutError (TimeoutError)      an attempt ran past its timeout (given to terminate processors)
    ├── JobCanceledError                    an instance was canceled (given to terminate processors never:
    │                                       a cancel is final; raised by Context.raise_if_cancelled)
    └── WaitTimeoutError (TimeoutError)     Manager.wait gave up before the instance finished
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentError",
    "CorruptRecordError",
    "GojobError",
    "InstanceNotFoundError",
    "InvalidJobError",
    "JobCanceledError",
    "JobTimeoutError",
    "ScheduleError",
    "ScheduleNotFoundError",
    "StoreError",
    "UnknownJobError",
    "UnknownStoreError",
    "UnserializableArgumentError",
    "WaitTimeoutError",
]


class GojobError(Exception):
    """Base of every error raised by gojob."""


class InvalidJobError(GojobError, ValueError):
    """A job definition that cannot work (no kind, an executor that is not callable, ...)."""


class ArgumentError(GojobError, ValueError):
    """Arguments that do not fit a job's executor: wrong arity, a value that cannot be coerced."""

    def __init__(self, message: str, *, kind: str = "", parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.parameter = parameter
        self.value = value


class UnserializableArgumentError(ArgumentError):
    """An argument the store cannot serialize (only JSON-compatible values travel between nodes)."""


class ScheduleError(GojobError, ValueError):
    """A schedule option that cannot work: a negative delay, an invalid crontab spec, a bad time."""


class UnknownJobError(GojobError, LookupError):
    """No job is registered under the given kind."""

    def __init__(self, kind: str, registered: list[str] | None = None) -> None:
        names = ", ".join(sorted(registered or [])) or "none"
        super().__init__(f"unknown job kind {kind!r} (registered: {names})")
        self.kind = kind


class InstanceNotFoundError(GojobError, LookupError):
    """No instance with the given uuid is in the store."""

    def __init__(self, uuid: str) -> None:
        super().__init__(f"no job instance with uuid {uuid!r}")
        self.uuid = uuid


class ScheduleNotFoundError(GojobError, LookupError):
    """No schedule with the given id is in the store."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"no schedule with id {schedule_id!r}")
        self.schedule_id = schedule_id


class UnknownStoreError(GojobError, ValueError):
    """No installed store plugin handles the URL scheme."""

    def __init__(self, url: str, scheme: str, installed: list[str]) -> None:
        names = ", ".join(sorted(installed)) or "none"
        super().__init__(
            f"no store plugin for scheme {scheme!r} in {url!r} (installed schemes: {names}); "
            f"is the plugin distribution (e.g. gojob-store-{scheme}) installed?"
        )
        self.url = url
        self.scheme = scheme
        self.installed = installed


class StoreError(GojobError):
    """The store failed: a connection, a protocol error, or a lease that was lost."""


class CorruptRecordError(StoreError):
    """A stored record that cannot be decoded. It is reported and set aside, never deleted."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"corrupt record {key!r}: {reason}")
        self.key = key
        self.reason = reason


class JobTimeoutError(GojobError, TimeoutError):
    """An attempt ran past its timeout. Terminate processors receive it; returning None clears it."""


class JobCanceledError(GojobError):
    """The instance was canceled. Raised by ``Context.raise_if_cancelled()`` inside a sync executor."""


class WaitTimeoutError(GojobError, TimeoutError):
    """``Manager.wait`` gave up before the instance reached a final state."""
