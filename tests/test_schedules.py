"""Schedules on the memory store: each trigger's fire times (start, end, max_runs, jitter, DST), the
misfire rules after a "cluster" that could not run (no workers) for several fire times, the cancel of
one occurrence, bad input. The same scenarios across nodes and stores are in the conformance suite."""

from __future__ import annotations

import datetime as _dt
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import gojob_core as gojob
import pytest
from gojob_core import (
    BlockingManager,
    CronTrigger,
    DateTrigger,
    Instance,
    IntervalTrigger,
    Job,
    Manager,
    Query,
    ScheduleError,
    ScheduleNotFoundError,
    State,
)

pytestmark = pytest.mark.anyio

UTC = _dt.UTC


def _ts(*args: int, tz: _dt.tzinfo = UTC) -> float:
    return _dt.datetime(*args, tzinfo=tz).timestamp()


def _fires(trigger: gojob.Trigger, after: float, n: int) -> list[float]:
    out: list[float] = []
    cur = after
    for _ in range(n):
        nxt = trigger.next_after(cur)
        if nxt is None:
            break
        out.append(nxt)
        cur = nxt
    return out


async def _until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    with anyio.fail_after(timeout):
        while not (got := await check()):
            await anyio.sleep(0.02)
        return got


# -- triggers ------------------------------------------------------------------------------------------
def test_cron_five_fields_and_six_with_seconds_last() -> None:
    five = CronTrigger("*/15 * * * *", "UTC").bind(0, "k")
    assert _fires(five, _ts(2026, 1, 1, 0, 0, 1), 3) == [_ts(2026, 1, 1, 0, 15), _ts(2026, 1, 1, 0, 30),
                                                        _ts(2026, 1, 1, 0, 45)]
    six = CronTrigger("* * * * * */20", "UTC").bind(0, "k")  # the sixth field is seconds
    assert _fires(six, _ts(2026, 1, 1, 0, 0, 1), 3) == [_ts(2026, 1, 1, 0, 0, 20), _ts(2026, 1, 1, 0, 0, 40),
                                                       _ts(2026, 1, 1, 0, 1, 0)]


def test_cron_start_and_end() -> None:
    trig = CronTrigger("0 * * * *", "UTC", start=_dt.datetime(2026, 1, 1, 5, 30, tzinfo=UTC),
                       end=_dt.datetime(2026, 1, 1, 8, 0, tzinfo=UTC)).bind(0, "k")
    assert _fires(trig, _ts(2026, 1, 1), 10) == [_ts(2026, 1, 1, h) for h in (6, 7, 8)]


def test_cron_dst_rule_in_a_named_zone() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    trig = CronTrigger("30 2 * * *", "Europe/Paris").bind(0, "k")
    # 2026-03-29: 02:00 -> 03:00, 02:30 does not exist: fires at 03:00 once
    spring = trig.next_after(_ts(2026, 3, 29, 0, 0, tz=paris))
    assert spring == _ts(2026, 3, 29, 3, 0, tz=paris)
    # 2026-10-25: 03:00 -> 02:00, 02:30 happens twice: fires once, at the first
    fall = _fires(trig, _ts(2026, 10, 25, 0, 0, tz=paris), 2)
    assert fall[0] == _dt.datetime(2026, 10, 25, 2, 30, tzinfo=paris, fold=0).timestamp()
    assert fall[1] - fall[0] > 23 * 3600


def test_interval_anchored_at_start_with_an_end() -> None:
    trig = IntervalTrigger(_dt.timedelta(minutes=10), start=1000.0, end=3400.0).bind(0, "k")
    assert _fires(trig, 0.0, 10) == [1000.0, 1600.0, 2200.0, 2800.0, 3400.0]
    assert trig.next_after(1000.0) == 1600.0 and trig.latest_at_or_before(2500.0, 1000.0) == 2200.0
    unanchored = IntervalTrigger(30).bind(500.0, "k")  # first fire one interval after it is added
    assert unanchored.next_after(500.0) == 530.0


def test_date_fires_once() -> None:
    trig = DateTrigger(_dt.datetime(2026, 5, 1, tzinfo=UTC)).bind(0, "k")
    assert _fires(trig, 0.0, 3) == [_ts(2026, 5, 1)]
    assert trig.first_fire(_ts(2027, 1, 1)) == _ts(2026, 5, 1)  # past: still its (late) fire


def test_trigger_bad_input_names_the_kind_parameter_and_value() -> None:
    cases: list[tuple[gojob.Trigger, str]] = [
        (CronTrigger("61 * * * *"), r"job 'k': invalid crontab_spec '61 \* \* \* \*'"),
        (CronTrigger("* * * * *", "Mars/Olympus"), r"job 'k': unknown timezone 'Mars/Olympus'"),
        (IntervalTrigger(0), r"job 'k': IntervalTrigger every must be positive, got 0"),
        (IntervalTrigger("soon"), r"job 'k': IntervalTrigger every must be seconds .* got 'soon'"),  # type: ignore[arg-type]
        (CronTrigger("* * * * *", start=10.0, end=5.0), r"job 'k': end .* is before start"),
        (DateTrigger("tomorrow"), r"job 'k': at must be a datetime or epoch seconds, got 'tomorrow'"),  # type: ignore[arg-type]
    ]
    for trig, message in cases:
        with pytest.raises(ScheduleError, match=message):
            trig.bind(0, "k")


# -- the Manager ------------------------------------------------------------------------------------------
async def test_add_schedule_bad_input_writes_nothing() -> None:
    job = Job(kind="sched.bad", executor=lambda n: n)
    async with Manager(num_workers=0, autoload_plugins=False) as mgr:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"trigger": "* * * * *"}, r"job 'sched.bad': trigger must be a CronTrigger.*got '\* \* \* \* \*'"),
            ({"misfire_grace_time": -1}, r"job 'sched.bad': misfire_grace_time must not be negative, got -1"),
            ({"coalesce": "some"}, r"job 'sched.bad': coalesce must be 'latest' or 'all', got 'some'"),
            ({"max_runs": 0}, r"job 'sched.bad': max_runs must be a positive integer or None, got 0"),
            ({"jitter": -2}, r"job 'sched.bad': jitter must not be negative, got -2"),
            ({"id": "a/b"}, r"job 'sched.bad': schedule id must be .* got 'a/b'"),
            ({"priority": "high"}, r"job 'sched.bad': priority must be an integer, got 'high'"),
        ]
        for options, message in cases:
            options = {"trigger": IntervalTrigger(60), "arguments": (1,), **options}
            trigger = options.pop("trigger")
            with pytest.raises(ScheduleError, match=message):
                await mgr.add_schedule(job, trigger, **options)
        with pytest.raises(gojob.ArgumentError, match=r"sched.bad"):
            await mgr.add_schedule(job, IntervalTrigger(60), arguments=(1, 2, 3))
        with pytest.raises(ScheduleError, match=r"no fire time left"):
            await mgr.add_schedule(job, CronTrigger("* * * * *", end=10.0), arguments=(1,))
        assert await mgr.list_schedules() == []
        assert await mgr.lookup_instances() == []
        with pytest.raises(ScheduleNotFoundError, match="'nope'"):
            await mgr.pause_schedule("nope")


async def test_add_is_idempotent_and_a_conflicting_id_is_refused() -> None:
    job = Job(kind="sched.same", executor=lambda: None)
    async with Manager(num_workers=0, autoload_plugins=False) as mgr:
        a = await mgr.add_schedule(job, CronTrigger("0 3 * * *", "UTC"))
        b = await mgr.add_schedule(job, CronTrigger("0 3 * * *", "UTC"))
        assert a.id == b.id and len(await mgr.lookup_instances()) == 1
        occ = await mgr.schedule_job(job, crontab_spec="0 3 * * *", timezone="UTC")  # the same schedule
        assert occ.schedule_id == a.id and len(await mgr.lookup_instances()) == 1
        i1 = await mgr.add_schedule(job, IntervalTrigger(60))  # anchored when added: a second add is the same
        await anyio.sleep(0.01)
        i2 = await mgr.add_schedule(job, IntervalTrigger(60))
        assert i1.id == i2.id and i1.trigger == i2.trigger
        await mgr.remove_schedule(i1.id)
        await mgr.add_schedule(job, IntervalTrigger(60), id="mine")
        with pytest.raises(ScheduleError, match="'mine' already exists with another definition"):
            await mgr.add_schedule(job, IntervalTrigger(120), id="mine")
        assert [s.id for s in await mgr.list_schedules()] == sorted([a.id, "mine"])
        assert await mgr.next_run_time() == min(s.next_fire_time for s in await mgr.list_schedules()
                                               if s.next_fire_time is not None)


async def test_max_runs_and_jitter() -> None:
    job = Job(kind="sched.count", executor=lambda: None)
    async with Manager(num_workers=2, autoload_plugins=False) as mgr:
        sched = await mgr.add_schedule(job, IntervalTrigger(0.1, start=time.time() + 0.1), max_runs=3,
                                       jitter=0.05, coalesce="all")

        async def finished() -> bool:
            return (await mgr.get_schedule(sched.id)).state == "finished" and all(
                i.state is State.COMPLETED for i in await mgr.lookup_instances(Query(kind="sched.count")))

        await _until(finished)
        insts = sorted(await mgr.lookup_instances(Query(kind="sched.count")), key=lambda i: i.ready_ts)
        assert len(insts) == 3
        start = sched.trigger.start.timestamp()  # type: ignore[union-attr]
        for n, inst in enumerate(insts):
            assert start + 0.1 * n <= inst.ready_ts <= start + 0.1 * n + 0.05  # jitter bounds
        assert (await mgr.get_schedule(sched.id)).runs == 3


async def _downtime(coalesce: str, grace: float | None) -> tuple[list[Instance], list[Any], gojob.Schedule]:
    """An every-0.2 s schedule whose node has no worker for about a second (five fire times), then gets one."""
    kind = f"sched.down.{coalesce}.{grace}"
    job = Job(kind=kind, executor=lambda: None)
    async with Manager(num_workers=0, autoload_plugins=False) as mgr:
        sched = await mgr.add_schedule(job, IntervalTrigger(0.2), coalesce=coalesce,  # type: ignore[arg-type]
                                       misfire_grace_time=grace)
        first = sched.next_fire_ts
        assert first is not None
        await _until(lambda: _after(first + 1.05))  # several fire times pass with nobody to run them
        await mgr.resize_workers(1)

        async def caught_up() -> list[Instance] | None:
            insts = await mgr.lookup_instances(Query(kind=kind))
            done = [i for i in insts if i.state.is_final]
            return insts if len(done) >= 2 and any(i.state is State.COMPLETED for i in done) else None

        await _until(caught_up)
        await mgr.pause_schedule(sched.id)
        insts = sorted(await mgr.lookup_instances(Query(kind=kind)), key=lambda i: i.ready_ts)
        history = [await mgr.lookup_instance_history(Query(instance=i)) for i in insts]
        return insts, history, await mgr.get_schedule(sched.id)


async def _after(ts: float) -> bool:
    return time.time() > ts


async def test_cluster_down_coalesce_latest_runs_the_latest_once() -> None:
    insts, history, _ = await _downtime("latest", None)
    first = insts[0]
    assert first.state is State.CANCELED  # the pending fire, passed by later ones: skipped, and says why
    detail = history[0][-1].detail or ""
    assert [r.state for r in history[0]][-2:] == [State.PROCESSING, State.CANCELED]
    assert detail.startswith("skipped: ") and "coalesce='latest' runs the latest only" in detail
    latest = insts[1]
    assert latest.state is State.COMPLETED and latest.ready_ts - first.ready_ts >= 1.0  # jumped to the latest


async def test_cluster_down_coalesce_all_runs_each_missed_fire() -> None:
    insts, _, _ = await _downtime("all", None)
    done = [i for i in insts if i.state is State.COMPLETED]
    assert len(done) >= 2
    ready = [i.ready_ts for i in insts]
    assert all(abs((b - a) - 0.2) < 1e-6 for a, b in zip(ready, ready[1:]))  # none skipped


async def test_cluster_down_past_the_grace_time_skips_with_a_record() -> None:
    insts, history, _ = await _downtime("all", 0.5)
    late = insts[0]
    assert late.state is State.CANCELED
    detail = history[0][-1].detail or ""
    assert detail.startswith("skipped: misfired") and "(misfire_grace_time 0.5 s)" in detail


async def test_cancel_of_an_occurrence_cancels_that_occurrence_only() -> None:
    ran: list[str] = []
    job = Job(kind="sched.cancel1", executor=lambda: ran.append("x"))
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(job, crontab_spec="* * * * * *")
        done = await mgr.wait(first, timeout=10)
        assert done.state is State.COMPLETED
        again = await mgr.cancel_instance(first)  # final: says so, and does nothing
        assert again.state is State.COMPLETED
        sched = await mgr.get_schedule(first.schedule_id or "")
        assert sched.state == "active"
        await mgr.resize_workers(0)
        pending = await _until(lambda: _pending(mgr, "sched.cancel1"))
        canceled = await mgr.cancel_instance(pending)  # waiting: this one goes, the schedule goes on
        assert canceled.state is State.CANCELED
        follow = await _until(lambda: _pending(mgr, "sched.cancel1"))
        assert follow.uuid != pending.uuid and follow.ready_ts > pending.ready_ts
        assert (await mgr.get_schedule(sched.id)).state == "active"


async def _pending(mgr: Manager, kind: str) -> Instance | None:
    found = await mgr.lookup_instances(Query(kind=kind, state=State.SCHEDULED))
    return found[0] if found else None


def test_blocking_manager_schedules() -> None:
    with BlockingManager(num_workers=0, autoload_plugins=False) as mgr:
        sched = mgr.add_schedule(Job(kind="sched.sync", executor=lambda: None), IntervalTrigger(3600), id="sync")
        assert mgr.get_schedule("sync").id == sched.id and [s.id for s in mgr.list_schedules()] == ["sync"]
        assert mgr.pause_schedule("sync").state == "paused"
        assert mgr.next_run_time() is None
        assert mgr.resume_schedule("sync").state == "active"
        assert mgr.update_schedule("sync", max_runs=5).max_runs == 5
        mgr.remove_schedule("sync")
        assert mgr.list_schedules() == []


async def test_two_nodes_scheduling_one_crontab_at_once_both_get_its_occurrence() -> None:
    """Node a has written the schedule's record but not yet enqueued its first occurrence when node b
    schedules the same crontab (two nodes starting together, each scheduling its system jobs): b enqueues
    that occurrence itself (its uuid is derived), instead of finding the schedule "active with nothing
    pending"; a, resuming, finds it there. One occurrence, both calls answered with it."""
    store = gojob.MemoryStore()
    job = Job(kind="nightly", executor=lambda: None)
    async with Manager(store, num_workers=0, node_id="a") as a, Manager(store, num_workers=0, node_id="b") as b:
        written, go = anyio.Event(), anyio.Event()
        enqueue = a._enqueue_occurrence

        async def stalled(occ: Instance, *, chained: bool) -> bool:
            written.set()  # the record is written; the first occurrence is not enqueued yet
            await go.wait()
            return await enqueue(occ, chained=chained)

        a._enqueue_occurrence = stalled  # type: ignore[method-assign]
        got: dict[str, Instance] = {}

        async def schedule(m: Manager) -> None:
            got[m.node_id] = await m.schedule_job(job, crontab_spec="0 12 29 2 *", timezone="UTC")

        async with anyio.create_task_group() as tg:
            tg.start_soon(schedule, a)
            await written.wait()
            await schedule(b)
            go.set()
        assert got["a"].uuid == got["b"].uuid
        assert [i.uuid for i in await b.lookup_instances(Query(kind="nightly"))] == [got["a"].uuid]
