"""The two system jobs, their defaults, and a helper that schedules both."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any, Literal

from gojob_core import ArgumentError, Instance, Job, Manager, Query, State

from ._cleaner import Cleaner

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CRONTAB",
    "DEFAULT_MAX_AGE",
    "DEFAULT_PRIORITY",
    "HISTORY_CLEANER",
    "LOG_CLEANER",
    "clean_history",
    "clean_logs",
    "history_cleaner_job",
    "log_cleaner_job",
    "schedule_system_jobs",
]

#: the kind of the state-history cleaner
HISTORY_CLEANER = "system.history.cleaner"
#: the kind of the log cleaner
LOG_CLEANER = "system.log.cleaner"
#: the age rule :func:`schedule_system_jobs` (and ``gojob serve --system-jobs``) uses unless told otherwise
DEFAULT_MAX_AGE = "7d"
#: when :func:`schedule_system_jobs` runs the cleaners: every day at 03:17 UTC (its default timezone, so
#: that nodes in different time zones agree; off the hour, so that many deployments do not hit their
#: stores at the same minute)
DEFAULT_CRONTAB = "17 3 * * *"
#: records read (and at most cleared) per store call
DEFAULT_BATCH_SIZE = 1000
#: housekeeping gives way to the application's jobs (a lower value runs first)
DEFAULT_PRIORITY = 10

_WAITING_OR_RUNNING = (State.CREATED, State.SCHEDULED, State.PROCESSING)


def _check_rules(kind: str, max_age: dt.timedelta | float | None, keep: int | None, batch_size: int = 1) -> None:
    """At least one rule, and sane values: the executor runs this first, :func:`schedule_system_jobs` too."""
    if max_age is None and keep is None:
        raise ArgumentError(f"job {kind!r}: give max_age (seconds or a duration such as '7d', '12h', '30m') "
                            "and/or keep (how many records to keep per instance, or per kind with per='kind'); "
                            "got neither", kind=kind, parameter="max_age")
    if max_age is not None:
        seconds = max_age.total_seconds() if isinstance(max_age, dt.timedelta) else max_age
        if not math.isfinite(seconds) or seconds < 0:
            raise ArgumentError(f"job {kind!r}: max_age must not be negative, got {max_age!r}",
                                kind=kind, parameter="max_age", value=max_age)
    if keep is not None and keep < 0:
        raise ArgumentError(f"job {kind!r}: keep must not be negative, got {keep!r}",
                            kind=kind, parameter="keep", value=keep)
    if batch_size < 1:
        raise ArgumentError(f"job {kind!r}: batch_size must be at least 1, got {batch_size!r}",
                            kind=kind, parameter="batch_size", value=batch_size)


def _describe(max_age: dt.timedelta | None, keep: int | None, per: str, kind: str | None) -> str:
    rules = []
    if max_age is not None:
        rules.append(f"older than {max_age}")
    if keep is not None:
        rules.append(f"beyond the newest {keep} per {per}")
    return " or ".join(rules) + (f", of kind {kind!r}" if kind is not None else "")


async def _clean(what: Literal["history", "logs"], job_kind: str, manager: Manager, instance: Instance,
                 max_age: dt.timedelta | None, keep: int | None, per: Literal["instance", "kind"],
                 kind: str | None, batch_size: int) -> dict[str, int]:
    _check_rules(job_kind, max_age, keep, batch_size)
    top = time.time()  # fixed before the protected set is read: newer instances' records are not walked
    cutoff = None if max_age is None else top - max_age.total_seconds()
    protected = {i.uuid for i in await manager.lookup_instances(Query(kind=kind, state=_WAITING_OR_RUNNING))}
    if what == "history":
        lookup, clear = manager.lookup_instance_history, manager.clear_instance_history
    else:
        lookup, clear = manager.lookup_instance_logs, manager.clear_instance_logs
    cleaner = Cleaner(lookup=lookup, clear=clear, protected=protected, top=top, cutoff=cutoff, keep=keep, per=per,
                      kind=kind, batch_size=batch_size, by_state=what == "history")
    stats = await cleaner.run()
    noun = "history records" if what == "history" else "log records"
    instance.infof("removed %d %s (%s); kept %d of waiting or running instances; scanned %d in %d batches",
                   stats.removed, noun, _describe(max_age, keep, per, kind), stats.kept_running, stats.scanned,
                   stats.batches)
    return stats.as_result()


async def clean_history(
    max_age: dt.timedelta | None = None,
    keep: int | None = None,
    per: Literal["instance", "kind"] = "instance",
    kind: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    manager: Manager,
    instance: Instance,
) -> dict[str, int]:
    """The executor of ``system.history.cleaner``: remove state-history records.

    :param max_age: remove records older than this (seconds, a timedelta, or a duration such as
        ``"7d"``, ``"12h"``, ``"30m"``, ``"90s"``, ``"1h30m"``).
    :param keep: keep only the newest ``keep`` records of each instance (``per="instance"``) or of
        each kind (``per="kind"``). With both rules, a record goes if either selects it.
    :param kind: clean only records of this job kind.
    :param batch_size: records read, and at most cleared, per store call.
    :returns: ``{"removed": N, "kept_running": M, "scanned": S, "batches": B}``; ``kept_running``
        counts records the rules selected but that stay because their instance is waiting or running.
    """
    return await _clean("history", HISTORY_CLEANER, manager, instance, max_age, keep, per, kind, batch_size)


async def clean_logs(
    max_age: dt.timedelta | None = None,
    keep: int | None = None,
    per: Literal["instance", "kind"] = "instance",
    kind: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    manager: Manager,
    instance: Instance,
) -> dict[str, int]:
    """The executor of ``system.log.cleaner``: remove instance log records (arguments as for
    :func:`clean_history`)."""
    return await _clean("logs", LOG_CLEANER, manager, instance, max_age, keep, per, kind, batch_size)


def history_cleaner_job() -> Job:
    """The ``system.history.cleaner`` job (the plugin registers it on every Manager)."""
    return Job(kind=HISTORY_CLEANER, executor=clean_history, priority=DEFAULT_PRIORITY,
               description="remove state-history records older than max_age and/or beyond the newest keep "
                           "per instance or kind; records of waiting or running instances stay")


def log_cleaner_job() -> Job:
    """The ``system.log.cleaner`` job (the plugin registers it on every Manager)."""
    return Job(kind=LOG_CLEANER, executor=clean_logs, priority=DEFAULT_PRIORITY,
               description="remove instance log records older than max_age and/or beyond the newest keep "
                           "per instance or kind; records of waiting or running instances stay")


async def schedule_system_jobs(
    manager: Manager,
    *,
    max_age: str | float | dt.timedelta | None = DEFAULT_MAX_AGE,
    keep: int | None = None,
    per: Literal["instance", "kind"] = "instance",
    crontab_spec: str = DEFAULT_CRONTAB,
    timezone: str | dt.tzinfo | None = "UTC",
    **options: Any,
) -> list[Instance]:
    """Schedule both cleaners on a crontab spec with the same rules (what ``--system-jobs`` does).

    Unlike scheduling the kinds directly, this checks at the call that at least one rule is given.
    The spec is read in UTC by default, so that nodes in different time zones sharing a store agree
    on one schedule.
    Scheduling again with the same rules does not double the schedules (a recurring schedule is
    identified by kind, spec, timezone and arguments). ``options`` go to ``schedule_registered_job``.

    :returns: the first occurrence of the history cleaner, then of the log cleaner.
    """
    arguments: dict[str, Any] = {}
    if max_age is not None:
        arguments["max_age"] = max_age
    if keep is not None:
        arguments.update(keep=keep, per=per)
    # the core checks each argument (a duration string is parsed then); the rules across them, here
    _check_rules(HISTORY_CLEANER, 0.0 if isinstance(max_age, str) else max_age, keep)
    if isinstance(max_age, str) and max_age.strip().startswith("-"):
        raise ArgumentError(f"job {HISTORY_CLEANER!r}: max_age must not be negative, got {max_age!r}",
                            kind=HISTORY_CLEANER, parameter="max_age", value=max_age)
    out = []
    for job_kind in (HISTORY_CLEANER, LOG_CLEANER):
        out.append(await manager.schedule_registered_job(job_kind, arguments=dict(arguments),
                                                         crontab_spec=crontab_spec, timezone=timezone, **options))
    return out
