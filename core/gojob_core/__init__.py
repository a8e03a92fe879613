"""gojob: register any function as a job, schedule its instances, run them on a pool of workers.

A Python port of go-job: priorities, retries with backoff, timeouts, cancel anywhere, a state history
and log for every instance, and a pluggable store (memory here; Valkey, Redis, etcd as plugins)
shared by many nodes, or any key-value backend through `KvStore`.
"""

from __future__ import annotations

from ._arguments import PLACEHOLDER as PLACEHOLDER
from ._blocking import BlockingManager as BlockingManager
from ._context import Context as Context
from ._instance import Instance as Instance
from ._job import Job as Job
from ._manager import Manager as Manager
from ._memory import MemoryStore as MemoryStore
from ._records import LogRecord as LogRecord
from ._records import Query as Query
from ._records import StateRecord as StateRecord
from ._schedules import Schedule as Schedule
from ._state import LogLevel as LogLevel
from ._state import State as State
from ._triggers import CronTrigger as CronTrigger
from ._triggers import DateTrigger as DateTrigger
from ._triggers import IntervalTrigger as IntervalTrigger
from ._triggers import Trigger as Trigger
from ._worker import Worker as Worker
from .abc import Outcome as Outcome
from .abc import Store as Store
from .errors import ArgumentError as ArgumentError
from .errors import CorruptRecordError as CorruptRecordError
from .errors import GojobError as GojobError
from .errors import InstanceNotFoundError as InstanceNotFoundError
from .errors import InvalidJobError as InvalidJobError
from .errors import JobCanceledError as JobCanceledError
from .errors import JobTimeoutError as JobTimeoutError
from .errors import ScheduleError as ScheduleError
from .errors import ScheduleNotFoundError as ScheduleNotFoundError
from .errors import StoreError as StoreError
from .errors import UnknownJobError as UnknownJobError
from .errors import UnknownStoreError as UnknownStoreError
from .errors import UnserializableArgumentError as UnserializableArgumentError
from .errors import WaitTimeoutError as WaitTimeoutError
from .hookspecs import hookimpl as hookimpl
from .kv import KvBackend as KvBackend
from .kv import KvStore as KvStore
from .kv import MemoryKvBackend as MemoryKvBackend

__all__ = [
    "PLACEHOLDER",
    "ArgumentError",
    "BlockingManager",
    "Context",
    "CorruptRecordError",
    "CronTrigger",
    "DateTrigger",
    "GojobError",
    "Instance",
    "InstanceNotFoundError",
    "IntervalTrigger",
    "InvalidJobError",
    "Job",
    "JobCanceledError",
    "JobTimeoutError",
    "KvBackend",
    "KvStore",
    "LogLevel",
    "LogRecord",
    "Manager",
    "MemoryKvBackend",
    "MemoryStore",
    "Outcome",
    "Query",
    "Schedule",
    "ScheduleError",
    "ScheduleNotFoundError",
    "State",
    "StateRecord",
    "Store",
    "StoreError",
    "Trigger",
    "UnknownJobError",
    "UnknownStoreError",
    "UnserializableArgumentError",
    "WaitTimeoutError",
    "hookimpl",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("gojob_core."):
        _obj.__module__ = "gojob_core"
del _name, _obj


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gojob-core")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    raise AttributeError(f"module 'gojob_core' has no attribute {name!r}")
