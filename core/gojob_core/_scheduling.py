"""Scheduling: the options of a schedule call checked before anything is written, instance and
occurrence ids, and the chain of a recurring schedule (the next occurrence, a canceled schedule re-opened).

A mixin of :class:`~gojob_core.Manager`: the public calls (``schedule_job``, ``schedule_many``) are on the
Manager; what they do is here.
"""

from __future__ import annotations

import dataclasses
import random
import uuid as _uuid
from collections.abc import Sequence
from typing import Any

from ._arguments import ExecutorSignature
from ._cron import CronSchedule
from ._instance import Instance
from ._job import BackoffStrategy, Job, TerminateProcessor
from ._state import State
from ._time import now, seconds, to_epoch
from .errors import InvalidJobError, ScheduleError

__all__: list[str] = []  # internal: the Manager is the public face


_getrandbits = random.getrandbits

_NAMESPACE = _uuid.UUID("6f1d3c2e-9a57-4d0b-8f43-3c1b7a9e5d21")

_UNSET: Any = object()


class Scheduling:
    """The Manager's scheduling: validate, build the instances, enqueue, report the new states."""

    async def _schedule(self, job: Job, items: list[Any], *, schedule_at: Any = None, schedule_after: Any = None,
                        crontab_spec: str | None = None, timezone: Any = None, priority: int | None = None,
                        max_retries: int | None = None, timeout: Any = _UNSET,
                        backoff_strategy: BackoffStrategy | None = None,
                        terminate_processor: TerminateProcessor | None = None,
                        headers: dict[str, str] | None = None) -> list[Instance]:
        self._require_started()
        if not isinstance(job, Job):
            raise InvalidJobError(f"schedule_job expects a gojob.Job, got {job!r}")
        kind = job.kind
        registered = self._jobs.get(kind)
        if registered is not None and not _same_definition(registered, job):
            raise InvalidJobError(f"another job is already registered under kind {kind!r}; "
                                  "schedule it with schedule_registered_job or unregister it first")
        sig = job._signature or ExecutorSignature.of(kind, job.executor, self._injectable)

        # -- options, validated before anything is written --
        if schedule_at is None and schedule_after is None and crontab_spec is None:
            schedule_at, schedule_after, crontab_spec = job.schedule_at, job.schedule_after, job.crontab_spec
        if timezone is None:
            timezone = job.timezone
        given = [n for n, v in (("schedule_at", schedule_at), ("schedule_after", schedule_after),
                                ("crontab_spec", crontab_spec)) if v is not None]
        if len(given) > 1:
            raise ScheduleError(f"job {kind!r}: give one of schedule_at, schedule_after, crontab_spec, "
                                f"not {' and '.join(given)}")
        ts = now()
        ready = ts
        cron: CronSchedule | None = None
        if schedule_at is not None:
            try:
                ready = to_epoch(schedule_at, what="schedule_at")
            except ValueError as exc:
                raise ScheduleError(f"job {kind!r}: {exc}") from None
        elif schedule_after is not None:
            delay = seconds_option(kind, schedule_after, "schedule_after")
            if delay < 0:
                raise ScheduleError(f"job {kind!r}: schedule_after must not be negative, got {schedule_after!r}")
            ready = ts + delay
        elif crontab_spec is not None:
            cron = CronSchedule(crontab_spec, timezone, kind=kind)
            ready = cron.next_after(ts)
        prio, retries, tmo_s, headers = _job_options(job, priority, max_retries, timeout, headers)
        for name, fn in (("backoff_strategy", backoff_strategy), ("terminate_processor", terminate_processor)):
            if fn is not None and not callable(fn):
                raise ScheduleError(f"job {kind!r}: {name} must be callable, got {fn!r}")

        # -- arguments, bound and coerced (raises ArgumentError naming kind, parameter, value) --
        bound = [sig.bind(*_split_arguments(a)) for a in items]

        # -- write --
        if registered is None:
            await self.register_job(job)
        else:
            job = registered
        if cron is not None:
            return [await self._schedule_crontab(job, cron, bound[0], ts, prio, retries, tmo_s, headers,
                                                 backoff_strategy, terminate_processor)]
        insts = []
        for args, kwargs in bound:
            insts.append(Instance(uuid=_new_uuid(), kind=kind, args=args, kwargs=kwargs, priority=prio,
                                  state=State.SCHEDULED, max_retries=retries, timeout=tmo_s, created_ts=ts,
                                  ready_ts=ready, max_abandons=job.max_abandons, headers=dict(headers or {})))
            insts[-1]._sink = self._log_sink
        self.plugins.scheduling(self, insts)
        if backoff_strategy is not None or terminate_processor is not None:
            ov = _Overrides(backoff_strategy, terminate_processor)
            for inst in insts:
                self._overrides[inst.uuid] = ov
        added = await self.store.enqueue(insts, node=self.node_id)
        out = []
        for inst, was_added in zip(insts, added):
            if not was_added:
                existing = await self.store.get_instance(inst.uuid)
                if existing is not None:
                    inst = existing
            else:
                if (aw := self._state_changed(inst, State.CREATED, job)) is not None:
                    await aw
                if (aw := self._state_changed(inst, State.SCHEDULED, job)) is not None:
                    await aw
            inst._sink = self._log_sink
            out.append(inst)
        return out

    async def _schedule_crontab(self, job: Job, cron: CronSchedule, bound: tuple[list[Any], dict[str, Any]],
                                ts: float, prio: int, retries: int, tmo_s: float | None,
                                headers: dict[str, str] | None, backoff_strategy: BackoffStrategy | None,
                                terminate_processor: TerminateProcessor | None) -> Instance:
        """``schedule_job(crontab_spec=)``: a Schedule on a CronTrigger, its id derived as it always was;
        returns its pending occurrence."""
        from ._schedules import Schedule, derived_schedule_id
        from ._triggers import CronTrigger

        args, kwargs = bound
        trigger = CronTrigger(cron.spec, cron.tz_name).bind(ts, job.kind)
        sched = Schedule(id=derived_schedule_id(job.kind, trigger, trigger, args, kwargs), kind=job.kind,
                         trigger=trigger, args=args, kwargs=kwargs, priority=prio, max_retries=retries,
                         timeout=tmo_s, headers=dict(headers or {}), created_ts=ts, max_abandons=job.max_abandons)
        sched, pending = await self._create_schedule(sched, ts, strict=False)
        if pending is None:
            raise ScheduleError(f"job {job.kind!r}: schedule {sched.id!r} of crontab_spec {cron.spec!r} is "
                                f"{sched.state}; resume_schedule({sched.id!r}) fires it again")
        if backoff_strategy is not None or terminate_processor is not None:
            self._overrides[sched.chain_id] = _Overrides(backoff_strategy, terminate_processor)
        return pending

    async def _chain_next_occurrence(self, inst: Instance) -> None:
        """Enqueue the next occurrence of a crontab instance without a schedule record (one enqueued
        before records existed): idempotent, its uuid is derived."""
        try:
            cron = CronSchedule(inst.crontab_spec or "", inst.timezone, kind=inst.kind)
        except ScheduleError as exc:
            inst.errorf("cannot compute the next occurrence: %s", exc)
            return
        base = max(inst.ready_ts, now())
        nxt = cron.next_after(base)
        assert inst.schedule_id is not None
        follow = Instance(uuid=_occurrence_uuid(inst.schedule_id, nxt), kind=inst.kind, args=inst.args,
                          kwargs=inst.kwargs, priority=inst.priority, state=State.SCHEDULED,
                          max_retries=inst.max_retries, timeout=inst.timeout, created_ts=now(), ready_ts=nxt,
                          crontab_spec=inst.crontab_spec, timezone=inst.timezone, schedule_id=inst.schedule_id,
                          max_abandons=inst.max_abandons, headers=dict(inst.headers))
        follow._sink = self._log_sink
        await self._enqueue_occurrence(follow, chained=True)


def seconds_option(kind: str, value: Any, what: str) -> float:
    """Seconds from a number or a timedelta, or a ScheduleError naming the kind, the option and the value."""
    try:
        return seconds(value, what=what)
    except ValueError as exc:
        raise ScheduleError(f"job {kind!r}: {exc}") from None


def _job_options(job: Job, priority: int | None, max_retries: int | None, timeout: Any,
                 headers: dict[str, str] | None) -> tuple[int, int, float | None, dict[str, str] | None]:
    """:func:`_check_options` with the job's defaults for the options not given (None; timeout: unset)."""
    return _check_options(job.kind, job.priority if priority is None else priority,
                          job.max_retries if max_retries is None else max_retries,
                          job.timeout if timeout is _UNSET else timeout, headers)


def _check_options(kind: str, prio: Any, retries: Any, tmo: Any,
                   headers: dict[str, str] | None) -> tuple[int, int, float | None, dict[str, str] | None]:
    """An instance's options (the job's defaults already applied), checked: a ScheduleError names the
    kind, the option and the value. Returns (priority, max_retries, timeout seconds, headers)."""
    if not isinstance(prio, int) or isinstance(prio, bool):
        raise ScheduleError(f"job {kind!r}: priority must be an integer, got {prio!r}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ScheduleError(f"job {kind!r}: max_retries must be a non-negative integer, got {retries!r}")
    tmo_s: float | None = None
    if tmo is not None:
        tmo_s = seconds_option(kind, tmo, "timeout")
        if tmo_s <= 0:
            raise ScheduleError(f"job {kind!r}: timeout must be positive seconds or None, got {tmo!r}")
    if headers is not None:
        if not isinstance(headers, dict):
            raise ScheduleError(f"job {kind!r}: headers must be a dict of strings, got {headers!r}")
        for k, v in headers.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ScheduleError(f"job {kind!r}: headers must map strings to strings, got {k!r}: {v!r}")
    return prio, retries, tmo_s, headers


class _Overrides:
    """Per-instance callables given at schedule time; they live on the scheduling node only."""

    __slots__ = ("backoff", "terminate")

    def __init__(self, backoff: BackoffStrategy | None, terminate: TerminateProcessor | None) -> None:
        self.backoff = backoff
        self.terminate = terminate


def _timing_given(options: dict[str, Any]) -> bool:
    return any(options.get(k) is not None for k in ("schedule_at", "schedule_after", "crontab_spec"))


def _split_arguments(arguments: Any) -> tuple[Sequence[Any], dict[str, Any]]:
    if isinstance(arguments, (tuple, list)):
        return arguments, {}
    if isinstance(arguments, dict):
        return (), arguments
    return (arguments,), {}


def _new_uuid() -> str:
    """A random (version 4) UUID string, made faster than ``str(uuid.uuid4())``: one is made per
    instance. random's generator is seeded from os.urandom and reseeded in forked children."""
    n = (_getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC << 60) | (0x8 << 60)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _occurrence_uuid(schedule_id: str, fire_ts: float) -> str:
    return str(_uuid.uuid5(_NAMESPACE, f"{schedule_id}@{round(fire_ts)}"))


def _same_definition(a: Job, b: Job) -> bool:
    """Two Job objects define the same job if every field is equal (executors by identity)."""
    if a is b:
        return True
    return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(Job) if f.init)
