"""Schedules as stored objects: add, list, pause, resume, update, remove from any node, and the fire of
each occurrence (its next one chained, the misfire rules applied).

How a schedule fires (the design, in short):

- The schedule is a record in the store (:meth:`Store.put_schedule_record`, compare-and-set by version):
  the trigger, the arguments, the options, its state, ``next_fire`` and the count of occurrences made.
- Its fires are an *occurrence chain*, as crontab schedules always were: one pending instance at a time,
  whose uuid derives from (chain id, fire time). When a node claims an occurrence, it chains the next
  one (record first, by compare-and-set; then the enqueue, idempotent by the derived uuid), so each fire
  time is enqueued once however many nodes run, and a node killed mid-fire leaves an occurrence that
  another node re-runs and chains again to the same uuid.
- The chain id is the schedule id, then ``{id}#{generation}`` after each resume or update: a new
  generation starts a new chain, and :meth:`Store.cancel_schedule` stops the old one atomically with
  respect to a chained enqueue racing it (the store refuses a chained enqueue of a canceled chain).
- Misfires are decided when an occurrence is claimed: behind its successor's fire time, ``coalesce``
  says whether it runs; later than ``misfire_grace_time``, it is skipped. A skipped occurrence ends
  CANCELED with a history detail that says why.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import random
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ._arguments import ExecutorSignature
from ._instance import Instance
from ._job import Job
from ._scheduling import _NAMESPACE, _UNSET, _check_options, _job_options, _split_arguments, seconds_option
from ._state import State
from ._time import from_epoch, now
from ._triggers import CronTrigger, IntervalTrigger, Trigger, trigger_from_dict
from .abc import ScheduleRecord
from .errors import InvalidJobError, ScheduleError, ScheduleNotFoundError, StoreError

__all__ = ["COALESCE_DEFAULT", "MAX_CATCH_UP", "MISFIRE_GRACE_DEFAULT", "Schedule"]

#: ``misfire_grace_time`` by default: None, a late fire runs however late it is (as crontab schedules did)
MISFIRE_GRACE_DEFAULT: float | None = None
#: ``coalesce`` by default: of several fire times that passed while no node could run them, the latest runs
COALESCE_DEFAULT = "latest"
#: with ``coalesce="all"``, at most this many missed fire times run one after another; when more are
#: behind, the chain jumps to the latest
MAX_CATCH_UP = 100

ScheduleState = Literal["active", "paused", "finished"]
_STATES = ("active", "paused", "finished")
_ID_MAX = 200
_CAS_TRIES = 20


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A schedule as the store holds it (a snapshot: ``get_schedule`` reads it afresh).

    ``state`` is ``"active"`` (firing), ``"paused"`` or ``"finished"`` (its trigger, ``end`` or
    ``max_runs`` left no fire time). ``runs`` counts the occurrences it made; ``next_fire_time`` is the
    pending occurrence's fire time (None when paused or finished).
    """

    id: str
    kind: str
    trigger: Trigger
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    state: ScheduleState = "active"
    priority: int = 0
    max_retries: int = 0
    timeout: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    misfire_grace_time: float | None = MISFIRE_GRACE_DEFAULT
    coalesce: Literal["latest", "all"] = "latest"
    max_runs: int | None = None
    jitter: float = 0.0
    runs: int = 0
    next_fire_ts: float | None = None
    generation: int = 0
    created_ts: float = 0.0
    max_abandons: int | None = None
    #: the store's version of the record (changes on every write)
    version: int = 0

    @property
    def next_fire_time(self) -> _dt.datetime | None:
        """When the pending occurrence fires (aware UTC), or None."""
        return from_epoch(self.next_fire_ts)

    @property
    def chain_id(self) -> str:
        """The ``schedule_id`` of the instances of its current generation."""
        return _chain_id(self.id, self.generation)

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "trigger": self.trigger.to_dict(), "args": list(self.args),
                "kwargs": dict(self.kwargs), "state": self.state, "priority": self.priority,
                "max_retries": self.max_retries, "timeout": self.timeout, "headers": dict(self.headers),
                "misfire_grace_time": self.misfire_grace_time, "coalesce": self.coalesce,
                "max_runs": self.max_runs, "jitter": self.jitter, "runs": self.runs, "next_fire": self.next_fire_ts,
                "generation": self.generation, "created_ts": self.created_ts, "max_abandons": self.max_abandons}

    @classmethod
    def from_record(cls, rec: ScheduleRecord) -> Schedule:
        d = rec.data
        try:
            state = d["state"]
            if state not in _STATES:
                raise ValueError(f"unknown state {state!r}")
            return cls(id=rec.id, kind=str(d["kind"]), trigger=trigger_from_dict(d["trigger"]),
                       args=list(d.get("args") or []), kwargs=dict(d.get("kwargs") or {}), state=state,
                       priority=int(d.get("priority", 0)), max_retries=int(d.get("max_retries", 0)),
                       timeout=d.get("timeout"), headers=dict(d.get("headers") or {}),
                       misfire_grace_time=d.get("misfire_grace_time"), coalesce=d.get("coalesce", "latest"),
                       max_runs=d.get("max_runs"), jitter=float(d.get("jitter") or 0.0), runs=int(d.get("runs", 0)),
                       next_fire_ts=d.get("next_fire"), generation=int(d.get("generation", 0)),
                       created_ts=float(d.get("created_ts", 0.0)), max_abandons=d.get("max_abandons"),
                       version=rec.version)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"schedule record {rec.id!r} cannot be read: {type(exc).__name__}: {exc}") from None

    def _definition(self, any_start: bool = False) -> dict[str, Any]:
        """What add_schedule compares to decide that a second add of the same id is the same schedule
        (``any_start``: whatever the trigger's start)."""
        d = self.to_record()
        for k in ("state", "runs", "next_fire", "generation", "created_ts"):
            d.pop(k)
        if any_start:
            d["trigger"] = {k: v for k, v in d["trigger"].items() if k != "start"}
        return d


def _chain_id(schedule_id: str, generation: int) -> str:
    return schedule_id if generation == 0 else f"{schedule_id}#{generation}"


def _split_chain(chain_id: str) -> tuple[str, int]:
    sid, sep, gen = chain_id.rpartition("#")
    if sep and gen.isdigit():
        return sid, int(gen)
    return chain_id, 0


def occurrence_uuid(chain_id: str, fire_ts: float) -> str:
    """The uuid of a chain's occurrence at a fire time (whole seconds as crontab schedules always had)."""
    key = f"{round(fire_ts)}" if fire_ts == round(fire_ts) else f"{fire_ts:.6f}"
    return str(_uuid.uuid5(_NAMESPACE, f"{chain_id}@{key}"))


def derived_schedule_id(kind: str, given: Trigger, bound: Trigger, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The id of a schedule added without one: the same (kind, trigger, arguments) give the same id, on
    any node (a crontab trigger gets the id ``schedule_job(crontab_spec=)`` always gave). ``given`` is
    the trigger as the caller made it, ``bound`` as checked (an interval's start is anchored then)."""
    if isinstance(bound, CronTrigger) and bound.start is None and bound.end is None:
        parts: list[Any] = [kind, bound.spec, bound.timezone, args, kwargs]
    else:
        d = bound.to_dict()
        if isinstance(given, IntervalTrigger) and given.start is None:
            d["start"] = None
        parts = [kind, d, args, kwargs]
    return str(_uuid.uuid5(_NAMESPACE, json.dumps(parts, sort_keys=True, default=str)))


def _check_id(schedule_id: Any, kind: str) -> str:
    if (not isinstance(schedule_id, str) or not schedule_id or len(schedule_id) > _ID_MAX
            or any(c in schedule_id for c in "/#") or schedule_id != schedule_id.strip()):
        raise ScheduleError(f"job {kind!r}: schedule id must be a non-empty string of at most {_ID_MAX} characters "
                            f"without '/', '#' or surrounding spaces, got {schedule_id!r}")
    return schedule_id


def _check_policy(kind: str, misfire_grace_time: Any, coalesce: Any, max_runs: Any,
                  jitter: Any) -> tuple[float | None, Literal["latest", "all"], int | None, float]:
    grace: float | None = None
    if misfire_grace_time is not None:
        grace = seconds_option(kind, misfire_grace_time, "misfire_grace_time")
        if grace < 0:
            raise ScheduleError(f"job {kind!r}: misfire_grace_time must not be negative, got {misfire_grace_time!r}")
    if coalesce not in ("latest", "all"):
        raise ScheduleError(f"job {kind!r}: coalesce must be 'latest' or 'all', got {coalesce!r}")
    if max_runs is not None and (not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1):
        raise ScheduleError(f"job {kind!r}: max_runs must be a positive integer or None, got {max_runs!r}")
    jit = 0.0 if jitter is None else seconds_option(kind, jitter, "jitter")
    if jit < 0:
        raise ScheduleError(f"job {kind!r}: jitter must not be negative, got {jitter!r}")
    return grace, coalesce, max_runs, jit


def _fmt(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


class Schedules:
    """The Manager's schedules: the public calls, the fire of each occurrence, and the repair loop."""

    # -- the public calls --------------------------------------------------------------------------
    async def add_schedule(self, job: Job | str, trigger: Trigger, *, id: str | None = None,  # noqa: A002
                           arguments: Any = (), priority: int | None = None, max_retries: int | None = None,
                           timeout: float | _dt.timedelta | None = _UNSET, headers: dict[str, str] | None = None,
                           misfire_grace_time: float | _dt.timedelta | None = MISFIRE_GRACE_DEFAULT,
                           coalesce: Literal["latest", "all"] = "latest", max_runs: int | None = None,
                           jitter: float | _dt.timedelta | None = None, paused: bool = False) -> Schedule:
        """Add a schedule: ``job`` (a Job, registered first if new, or a registered kind) fires on
        ``trigger`` with ``arguments``, on whichever node sharing the store claims each occurrence.

        ``id`` is the caller's name for it (default: derived from kind, trigger and arguments, so that
        adding the same schedule again, from any node, does not double it). Adding an id that exists
        returns the stored schedule if its definition is the same, and raises ScheduleError otherwise
        (``update_schedule`` changes one). ``priority``, ``max_retries``, ``timeout`` and ``headers``
        override the job's defaults for every occurrence.

        ``misfire_grace_time`` (seconds; default None: no limit): an occurrence that starts later than
        this after its fire time is skipped. ``coalesce`` (default ``"latest"``): when several fire
        times passed while no node ran the schedule, ``"latest"`` runs only the latest, ``"all"`` runs
        each in turn (at most :data:`MAX_CATCH_UP`). ``max_runs``: how many occurrences the schedule
        makes. ``jitter``: each occurrence is delayed by a random 0 to ``jitter`` seconds. ``paused``:
        add it without firing. Bad input raises before anything is written.
        """
        self._require_started()
        job = self._schedule_job_arg(job)
        kind = job.kind
        if not isinstance(trigger, Trigger):
            raise ScheduleError(f"job {kind!r}: trigger must be a CronTrigger, IntervalTrigger or DateTrigger, "
                                f"got {trigger!r}")
        ts = now()
        bound = trigger.bind(ts, kind)
        prio, retries, tmo_s, hdrs = _job_options(job, priority, max_retries, timeout, headers)
        grace, coal, runs_max, jit = _check_policy(kind, misfire_grace_time, coalesce, max_runs, jitter)
        sig = job._signature or ExecutorSignature.of(kind, job.executor, self._injectable)
        args, kwargs = sig.bind(*_split_arguments(arguments))
        sid = _check_id(id, kind) if id is not None else derived_schedule_id(kind, trigger, bound, args, kwargs)
        if not isinstance(paused, bool):
            raise ScheduleError(f"job {kind!r}: paused must be True or False, got {paused!r}")
        if kind not in self._jobs:
            await self.register_job(job)
        sched = Schedule(id=sid, kind=kind, trigger=bound, args=args, kwargs=kwargs,
                         state="paused" if paused else "active", priority=prio, max_retries=retries, timeout=tmo_s,
                         headers=dict(hdrs or {}), misfire_grace_time=grace, coalesce=coal, max_runs=runs_max,
                         jitter=jit, created_ts=ts, max_abandons=job.max_abandons)
        # an interval without a start is anchored when added: a second add of it (another node's start-up)
        # is the same schedule whatever its anchor
        loose = isinstance(trigger, IntervalTrigger) and trigger.start is None
        sched, _ = await self._create_schedule(sched, ts, any_start=loose)
        return sched

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule as the store has it now; raises ScheduleNotFoundError."""
        rec = await self.store.get_schedule_record(schedule_id)
        if rec is None:
            raise ScheduleNotFoundError(schedule_id)
        return Schedule.from_record(rec)

    async def list_schedules(self, *, kind: str | None = None,
                             state: ScheduleState | None = None) -> list[Schedule]:
        """Every schedule in the store (optionally of one kind, or in one state), by id."""
        out = []
        for rec in await self.store.list_schedule_records():
            try:
                s = Schedule.from_record(rec)
            except StoreError as exc:
                self._report(str(exc))
                continue
            if (kind is None or s.kind == kind) and (state is None or s.state == state):
                out.append(s)
        return out

    async def next_run_time(self) -> _dt.datetime | None:
        """The earliest next fire time over every active schedule (goscheduler's GetNextRunTime), or None."""
        times = [s.next_fire_ts for s in await self.list_schedules(state="active") if s.next_fire_ts is not None]
        return from_epoch(min(times)) if times else None

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """Stop firing, on every node: the pending occurrence is canceled (a running one finishes).
        Pausing a paused or finished schedule changes nothing."""
        for _ in range(_CAS_TRIES):
            cur = await self.get_schedule(schedule_id)
            if cur.state != "active":
                return cur
            new = _replace(cur, state="paused", next_fire_ts=None,
                           runs=max(0, cur.runs - (1 if cur.next_fire_ts is not None else 0)))
            version = await self.store.put_schedule_record(cur.id, new.to_record(), version=cur.version)
            if version is not None:
                await self._stop_chain(cur.chain_id)
                return _replace(new, version=version)
        raise StoreError(f"schedule {schedule_id!r}: changed by others {_CAS_TRIES} times while pausing it")

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire again from the next fire time after now (those that passed while paused are not run).
        Resuming an active schedule changes nothing."""
        for _ in range(_CAS_TRIES):
            cur = await self.get_schedule(schedule_id)
            if cur.state != "paused":
                return cur
            new, version = await self._restart(cur, cur.trigger, now())
            if version is not None:
                return _replace(new, version=version)
        raise StoreError(f"schedule {schedule_id!r}: changed by others {_CAS_TRIES} times while resuming it")

    async def update_schedule(self, schedule_id: str, *, trigger: Trigger | None = None, arguments: Any = _UNSET,
                              priority: int | None = _UNSET, max_retries: int | None = _UNSET,
                              timeout: float | _dt.timedelta | None = _UNSET,
                              headers: dict[str, str] | None = _UNSET, misfire_grace_time: Any = _UNSET,
                              coalesce: Any = _UNSET, max_runs: Any = _UNSET, jitter: Any = _UNSET) -> Schedule:
        """Change a schedule: the options given replace the stored ones, from the next fire on (the
        pending occurrence is replaced by one of the new definition; a running one finishes as it was).
        ``arguments`` are bound with the job registered on this node. A paused schedule stays paused."""
        for _ in range(_CAS_TRIES):
            cur = await self.get_schedule(schedule_id)
            kind = cur.kind
            ts = now()
            trig = cur.trigger
            if trigger is not None:
                if not isinstance(trigger, Trigger):
                    raise ScheduleError(f"job {kind!r}: trigger must be a CronTrigger, IntervalTrigger or "
                                        f"DateTrigger, got {trigger!r}")
                trig = trigger.bind(ts, kind)
            args, kwargs = cur.args, cur.kwargs
            if arguments is not _UNSET:
                job = self.lookup_job(kind)
                sig = job._signature or ExecutorSignature.of(kind, job.executor, self._injectable)
                args, kwargs = sig.bind(*_split_arguments(arguments))
            prio, retries, tmo_s, hdrs = _check_options(
                kind, cur.priority if priority is _UNSET else priority,
                cur.max_retries if max_retries is _UNSET else max_retries,
                cur.timeout if timeout is _UNSET else timeout, cur.headers if headers is _UNSET else headers)
            grace, coal, runs_max, jit = _check_policy(
                kind, cur.misfire_grace_time if misfire_grace_time is _UNSET else misfire_grace_time,
                cur.coalesce if coalesce is _UNSET else coalesce, cur.max_runs if max_runs is _UNSET else max_runs,
                cur.jitter if jitter is _UNSET else jitter)
            changed = _replace(cur, trigger=trig, args=args, kwargs=kwargs, priority=prio, max_retries=retries,
                               timeout=tmo_s, headers=dict(hdrs or {}), misfire_grace_time=grace, coalesce=coal,
                               max_runs=runs_max, jitter=jit)
            if cur.state == "paused":
                version = await self.store.put_schedule_record(cur.id, changed.to_record(), version=cur.version)
                new = changed
            else:
                if cur.state == "active" and cur.next_fire_ts is not None:
                    changed = _replace(changed, runs=max(0, cur.runs - 1))
                new, version = await self._restart(changed, trig, ts, old_chain=cur.chain_id)
            if version is not None:
                return _replace(new, version=version)
        raise StoreError(f"schedule {schedule_id!r}: changed by others {_CAS_TRIES} times while updating it")

    async def remove_schedule(self, schedule_id: str) -> None:
        """Remove a schedule from the store: it fires no more, its pending occurrence is canceled (a
        running one finishes). Its past occurrences and their history stay."""
        for _ in range(_CAS_TRIES):
            rec = await self.store.get_schedule_record(schedule_id)
            if rec is None:
                raise ScheduleNotFoundError(schedule_id)
            if await self.store.delete_schedule_record(schedule_id, version=rec.version):
                gen = rec.data.get("generation", 0)
                await self._stop_chain(_chain_id(schedule_id, gen if isinstance(gen, int) else 0))
                return
        raise StoreError(f"schedule {schedule_id!r}: changed by others {_CAS_TRIES} times while removing it")

    # -- internals ---------------------------------------------------------------------------------
    def _schedule_job_arg(self, job: Job | str) -> Job:
        if isinstance(job, str):
            return self.lookup_job(job)
        if not isinstance(job, Job):
            raise InvalidJobError(f"add_schedule expects a gojob.Job or a registered kind, got {job!r}")
        registered = self._jobs.get(job.kind)
        if registered is not None and registered is not job:
            from ._scheduling import _same_definition

            if not _same_definition(registered, job):
                raise InvalidJobError(f"another job is already registered under kind {job.kind!r}; "
                                      "schedule it by its kind or unregister it first")
        return job

    async def _create_schedule(self, sched: Schedule, ts: float, *, strict: bool = True,
                               any_start: bool = False) -> tuple[Schedule, Instance | None]:
        """Write a new schedule and its first occurrence; an identical one already stored (any one, if not
        ``strict``) is returned as it is. Returns the schedule and its pending occurrence (None if paused
        or finished)."""
        first = sched.trigger.first_fire(ts) if sched.state == "active" else None
        if sched.state == "active" and first is None:
            raise ScheduleError(f"job {sched.kind!r}: trigger {sched.trigger.describe()} has no fire time left")
        sched = _replace(sched, next_fire_ts=first, runs=1 if first is not None else 0)
        version = await self.store.put_schedule_record(sched.id, sched.to_record(), version=None)
        if version is None:
            existing = await self.get_schedule(sched.id)
            if strict and existing._definition(any_start) != sched._definition(any_start):
                raise ScheduleError(f"job {sched.kind!r}: a schedule with id {sched.id!r} already exists with "
                                    "another definition (update_schedule changes it)")
            pending = await self._pending(existing)
            if pending is None and existing.state == "active" and existing.next_fire_ts is not None:
                # the node that wrote the record (starting beside this one, say) may not have enqueued the
                # first occurrence yet: enqueue it here too; its uuid is derived, so one of the two is kept
                occ = self._occurrence(existing, existing.next_fire_ts)
                pending = occ if await self._enqueue_occurrence(occ, chained=True) else await self._pending(existing)
            return existing, pending
        sched = _replace(sched, version=version)
        if first is None:
            return sched, None
        for _ in range(_CAS_TRIES):
            occ = self._occurrence(sched, first)
            if await self._enqueue_occurrence(occ, chained=False):
                return sched, occ
            old = await self.store.get_instance(occ.uuid)
            if old is not None and not old.state.is_final:
                return sched, old
            # a removed schedule of the same id left a final occurrence at this fire time: a new generation
            bumped = _replace(sched, generation=sched.generation + 1)
            v = await self.store.put_schedule_record(sched.id, bumped.to_record(), version=sched.version)
            if v is None:
                return await self.get_schedule(sched.id), None
            sched = _replace(bumped, version=v)
        raise StoreError(f"schedule {sched.id!r}: could not enqueue its first occurrence")

    async def _pending(self, sched: Schedule) -> Instance | None:
        if sched.next_fire_ts is None:
            return None
        inst = await self.store.get_instance(occurrence_uuid(sched.chain_id, sched.next_fire_ts))
        if inst is not None:
            inst._sink = self._log_sink
        return inst

    async def _restart(self, sched: Schedule, trigger: Trigger, ts: float, *,
                       old_chain: str | None = None) -> tuple[Schedule, int | None]:
        """Start a new generation (a new chain) from the next fire time after ``ts``: write the record
        (compare-and-set), stop the old chain, enqueue the first occurrence of the new one."""
        first = trigger.first_fire(ts) if trigger.TYPE == "date" else trigger.next_after(ts)
        left = sched.max_runs is None or sched.runs < sched.max_runs
        new = _replace(sched, state="active" if first is not None and left else "finished",
                       generation=sched.generation + 1, next_fire_ts=first if left else None,
                       runs=sched.runs + (1 if first is not None and left else 0))
        version = await self.store.put_schedule_record(sched.id, new.to_record(), version=sched.version)
        if version is None:
            return new, None
        if old_chain is not None:
            await self._stop_chain(old_chain)
        if new.next_fire_ts is not None:
            await self._enqueue_occurrence(self._occurrence(new, new.next_fire_ts), chained=False)
        return new, version

    async def _stop_chain(self, chain_id: str) -> None:
        for inst in await self.store.cancel_schedule(chain_id, node=self.node_id):
            job = self._jobs.get(inst.kind)
            if job is not None:
                inst._sink = self._log_sink
                if (aw := self._state_changed(inst, State.CANCELED, job)) is not None:
                    await aw

    def _occurrence(self, sched: Schedule, fire: float) -> Instance:
        chain = sched.chain_id
        ready = fire + (random.uniform(0.0, sched.jitter) if sched.jitter else 0.0)
        cron = sched.trigger if isinstance(sched.trigger, CronTrigger) else None
        inst = Instance(uuid=occurrence_uuid(chain, fire), kind=sched.kind, args=list(sched.args),
                        kwargs=dict(sched.kwargs), priority=sched.priority, state=State.SCHEDULED,
                        max_retries=sched.max_retries, timeout=sched.timeout, created_ts=now(), ready_ts=ready,
                        crontab_spec=cron.spec if cron else None, timezone=cron.timezone if cron else None,
                        schedule_id=chain, max_abandons=sched.max_abandons, headers=dict(sched.headers))
        inst._sink = self._log_sink
        return inst

    async def _enqueue_occurrence(self, occ: Instance, *, chained: bool) -> bool:
        self.plugins.scheduling(self, [occ])
        [added] = await self.store.enqueue([occ], node=self.node_id, chained=chained)
        job = self._jobs.get(occ.kind)
        if added and job is not None:
            occ._sink = self._log_sink
            if (aw := self._state_changed(occ, State.CREATED, job)) is not None:
                await aw
            if (aw := self._state_changed(occ, State.SCHEDULED, job)) is not None:
                await aw
        if added:
            self.metrics.schedule_fired(occ.kind)
        return added

    async def _fire(self, inst: Instance, *, claimed: bool = True) -> str | None:
        """An occurrence was claimed (or canceled while waiting, ``claimed=False``): chain the next one and
        decide whether this one runs. Returns why it is skipped, or None if it runs."""
        assert inst.schedule_id is not None
        sid, gen = _split_chain(inst.schedule_id)
        for _ in range(_CAS_TRIES):
            rec = await self.store.get_schedule_record(sid)
            if rec is None:
                if gen == 0 and inst.crontab_spec is not None:
                    # a crontab chain from before schedule records (or of a schedule just removed: the store
                    # refuses the chained enqueue then, its chain being canceled)
                    await self._chain_next_occurrence(inst)
                return None
            sched = Schedule.from_record(rec)
            if sched.generation != gen or sched.state != "active":
                return None  # paused, finished or changed since: this chain ends here
            if sched.next_fire_ts is None or occurrence_uuid(sched.chain_id, sched.next_fire_ts) != inst.uuid:
                # not the pending one: the chain moved past it already (a re-run after its node died, or a
                # repair); make sure the pending one exists
                if sched.next_fire_ts is not None:
                    await self._enqueue_occurrence(self._occurrence(sched, sched.next_fire_ts), chained=True)
                return None
            ts = now()
            fire = sched.next_fire_ts
            skip, nxt = self._misfire(sched, inst, fire, ts) if claimed else (None, sched.trigger.next_after(fire))
            left = sched.max_runs is None or sched.runs < sched.max_runs
            if not left:
                nxt = None
            new = _replace(sched, next_fire_ts=nxt, runs=sched.runs + (1 if nxt is not None else 0),
                           state="active" if nxt is not None else "finished")
            if await self.store.put_schedule_record(sid, new.to_record(), version=sched.version) is None:
                continue  # changed meanwhile (an update, a pause): read it again
            if nxt is not None:
                await self._enqueue_occurrence(self._occurrence(new, nxt), chained=True)
            if skip is not None:
                self.metrics.schedule_misfired(inst.kind)
            elif claimed:
                self.metrics.schedule_lateness(inst.kind, max(0.0, ts - inst.ready_ts))
            return skip
        inst.errorf("could not chain the next occurrence: the schedule changed %d times meanwhile", _CAS_TRIES)
        return None

    @staticmethod
    def _misfire(sched: Schedule, inst: Instance, fire: float, ts: float) -> tuple[str | None, float | None]:
        """Whether the claimed occurrence at ``fire`` is skipped (why), and the next fire time to chain."""
        trig = sched.trigger
        nxt = trig.next_after(fire)
        skip: str | None = None
        if nxt is not None and nxt <= ts:  # later fire times passed while this one waited
            if sched.coalesce == "latest":
                latest = trig.latest_at_or_before(ts, fire) or nxt
                missed = _count(trig, fire, latest)
                skip = (f"skipped: {missed} later fire time(s) passed before it could run, up to {_fmt(latest)}; "
                        "coalesce='latest' runs the latest only")
                return skip, latest
            behind = _count(trig, fire, ts, limit=MAX_CATCH_UP + 1)
            if behind > MAX_CATCH_UP:
                latest = trig.latest_at_or_before(ts, fire) or nxt
                inst.warnf("more than %d fire times are behind; coalesce='all' runs the last %s and skips the "
                           "others after %s", MAX_CATCH_UP, _fmt(latest), _fmt(fire))
                nxt = latest
        grace = sched.misfire_grace_time
        late = ts - inst.ready_ts
        if grace is not None and late > grace:
            skip = f"skipped: misfired, {late:.3f} s after its fire time (misfire_grace_time {grace:g} s)"
        return skip, nxt

    # -- the repair loop -------------------------------------------------------------------------------
    async def _schedule_repair_loop(self) -> None:
        """Every lease time: an active schedule whose pending occurrence is overdue by a lease time and
        missing (a node died between writing the record and enqueueing) gets it, idempotently."""
        while True:
            await anyio.sleep(self.lease_time)
            try:
                await self._repair_schedules(now() - self.lease_time)
            except (StoreError, OSError) as exc:
                self._report(f"schedule repair failed: {exc!r}")

    async def _repair_schedules(self, overdue: float) -> int:
        repaired = 0
        by_state: dict[str, int] = {}
        for sched in await self.list_schedules():
            by_state[sched.state] = by_state.get(sched.state, 0) + 1
            if sched.state != "active" or sched.next_fire_ts is None or sched.next_fire_ts > overdue:
                continue
            occ = self._occurrence(sched, sched.next_fire_ts)
            found = await self.store.get_instance(occ.uuid)
            if found is None:
                repaired += await self._enqueue_occurrence(occ, chained=True)
            elif found.state is State.CANCELED and found.started_ts is None:
                # canceled by a user while waiting, and its node died before it chained the next one
                await self._fire(found, claimed=False)
                repaired += 1
        self.metrics.set_schedules(by_state)
        return repaired


def _count(trig: Trigger, after: float, until: float, limit: int = 10_000) -> int:
    """How many fire times lie in ``(after, until]`` (counting stops at ``limit``)."""
    n = 0
    cur: float | None = after
    while n < limit:
        assert cur is not None
        cur = trig.next_after(cur)
        if cur is None or cur > until:
            break
        n += 1
    return n


def _replace(s: Schedule, **changes: Any) -> Schedule:
    return dataclasses.replace(s, **changes)
