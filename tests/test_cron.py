"""Crontab schedules: validation, next fire times (DST days included), and recurring instances in a Manager."""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from collections import Counter

import anyio
import gojob_core as gojob
import pytest
from croniter import croniter
from gojob_core import Instance, Job, Manager, MemoryStore, Query, ScheduleError, State
from gojob_core._cron import CronSchedule

NY = zoneinfo.ZoneInfo("America/New_York")
UTC = dt.UTC
#: croniter reads a sixth field as seconds; "* * * * * *" fires every second.
EVERY_SECOND = "* * * * * *"


def _fires(spec: str, start: dt.datetime, n: int, tz: str | dt.tzinfo | None = "America/New_York",
           ) -> list[dt.datetime]:
    """The next ``n`` fire times after ``start``, as aware datetimes in New York."""
    cron = CronSchedule(spec, tz, kind="k")
    ts = start.timestamp()
    out = []
    for _ in range(n):
        ts = cron.next_after(ts)
        out.append(dt.datetime.fromtimestamp(ts, NY))
    return out


def _wall(d: dt.datetime) -> tuple[str, str]:
    return d.strftime("%Y-%m-%d %H:%M:%S"), d.tzname() or ""


# -- validation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["not a spec", "61 * * * *", "* * * *", "", "* * 32 * *", "0 25 * * *"])
def test_invalid_spec_names_kind_and_spec(spec: str) -> None:
    with pytest.raises(ScheduleError) as info:
        CronSchedule(spec, None, kind="report.daily")
    message = str(info.value)
    assert "report.daily" in message
    assert repr(spec) in message


def test_non_string_spec_is_a_schedule_error() -> None:
    with pytest.raises(ScheduleError, match="report.daily"):
        CronSchedule(None, None, kind="report.daily")  # type: ignore[arg-type]


def test_schedule_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        CronSchedule("nope", None, kind="k")


def test_unknown_timezone_is_a_schedule_error() -> None:
    with pytest.raises(ScheduleError) as info:
        CronSchedule("0 * * * *", "Mars/Olympus_Mons", kind="report.daily")
    assert "report.daily" in str(info.value)
    assert "Mars/Olympus_Mons" in str(info.value)


def test_timezone_without_iana_name_is_a_schedule_error() -> None:
    with pytest.raises(ScheduleError, match="IANA"):
        CronSchedule("0 * * * *", dt.timezone(dt.timedelta(hours=2)), kind="k")


@pytest.mark.parametrize(("tz", "name"), [("Europe/Paris", "Europe/Paris"), (NY, "America/New_York"),
                                          (UTC, "UTC"), (None, None)])
def test_timezone_name_is_kept(tz: str | dt.tzinfo | None, name: str | None) -> None:
    assert CronSchedule("0 * * * *", tz, kind="k").tz_name == name


def test_spec_is_stripped() -> None:
    assert CronSchedule("  0 9 * * 1-5 ", "UTC", kind="k").spec == "0 9 * * 1-5"


# -- next fire times ----------------------------------------------------------------------------------------
def test_every_thirty_minutes() -> None:
    start = dt.datetime(2026, 1, 15, 10, 7, 12, tzinfo=UTC)
    got = _fires("*/30 * * * *", start, 4, "UTC")
    assert [d.astimezone(UTC) for d in got] == [
        dt.datetime(2026, 1, 15, 10, 30, tzinfo=UTC), dt.datetime(2026, 1, 15, 11, 0, tzinfo=UTC),
        dt.datetime(2026, 1, 15, 11, 30, tzinfo=UTC), dt.datetime(2026, 1, 15, 12, 0, tzinfo=UTC)]


def test_next_after_is_strictly_after() -> None:
    on_the_dot = dt.datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
    nxt = CronSchedule("*/30 * * * *", "UTC", kind="k").next_after(on_the_dot.timestamp())
    assert nxt == dt.datetime(2026, 1, 15, 11, 0, tzinfo=UTC).timestamp()


def test_weekdays_at_nine_skip_the_weekend() -> None:
    friday_noon = dt.datetime(2026, 1, 16, 12, 0, tzinfo=NY)  # 2026-01-16 is a Friday
    assert friday_noon.weekday() == 4
    got = _fires("0 9 * * 1-5", friday_noon, 3)
    assert [_wall(d) for d in got] == [("2026-01-19 09:00:00", "EST"), ("2026-01-20 09:00:00", "EST"),
                                       ("2026-01-21 09:00:00", "EST")]
    assert [d.weekday() for d in got] == [0, 1, 2]


def test_weekdays_at_nine_same_day_before_nine() -> None:
    got = _fires("0 9 * * 1-5", dt.datetime(2026, 1, 19, 8, 59, tzinfo=NY), 1)
    assert _wall(got[0]) == ("2026-01-19 09:00:00", "EST")


def test_midnight_daily_in_the_timezone() -> None:
    got = _fires("0 0 * * *", dt.datetime(2026, 1, 30, 18, 0, tzinfo=NY), 3)
    assert [_wall(d) for d in got] == [("2026-01-31 00:00:00", "EST"), ("2026-02-01 00:00:00", "EST"),
                                       ("2026-02-02 00:00:00", "EST")]
    # midnight in New York is 05:00 UTC in winter
    assert got[0].astimezone(UTC) == dt.datetime(2026, 1, 31, 5, 0, tzinfo=UTC)


def test_same_spec_in_two_timezones_differs_by_the_offset() -> None:
    start = dt.datetime(2026, 1, 15, 12, 0, tzinfo=UTC).timestamp()
    paris = CronSchedule("0 9 * * *", "Europe/Paris", kind="k").next_after(start)
    tokyo = CronSchedule("0 9 * * *", "Asia/Tokyo", kind="k").next_after(start)
    assert dt.datetime.fromtimestamp(paris, UTC) == dt.datetime(2026, 1, 16, 8, 0, tzinfo=UTC)
    assert dt.datetime.fromtimestamp(tokyo, UTC) == dt.datetime(2026, 1, 16, 0, 0, tzinfo=UTC)


# -- DST: spring forward (2026-03-08 02:00 EST -> 03:00 EDT in New York) ---------------------------------------
def test_spring_forward_missing_time_fires_once_at_three() -> None:
    got = _fires("30 2 * * *", dt.datetime(2026, 3, 7, 12, 0, tzinfo=NY), 3)
    assert [_wall(d) for d in got] == [("2026-03-08 03:00:00", "EDT"), ("2026-03-09 02:30:00", "EDT"),
                                       ("2026-03-10 02:30:00", "EDT")]


def test_spring_forward_after_the_jump_goes_to_the_next_day() -> None:
    got = _fires("30 2 * * *", dt.datetime(2026, 3, 8, 3, 0, tzinfo=NY), 1)
    assert _wall(got[0]) == ("2026-03-09 02:30:00", "EDT")


def test_spring_forward_hourly_skips_the_missing_hour() -> None:
    got = _fires("0 * * * *", dt.datetime(2026, 3, 8, 0, 30, tzinfo=NY), 3)
    assert [_wall(d) for d in got] == [("2026-03-08 01:00:00", "EST"), ("2026-03-08 03:00:00", "EDT"),
                                       ("2026-03-08 04:00:00", "EDT")]
    # consecutive real hours
    assert got[1].timestamp() - got[0].timestamp() == 3600


# -- DST: fall back (2026-11-01 02:00 EDT -> 01:00 EST in New York) --------------------------------------------
def test_fall_back_repeated_time_fires_once() -> None:
    got = _fires("30 1 * * *", dt.datetime(2026, 10, 31, 12, 0, tzinfo=NY), 3)
    assert [_wall(d) for d in got] == [("2026-11-01 01:30:00", "EDT"), ("2026-11-02 01:30:00", "EST"),
                                       ("2026-11-03 01:30:00", "EST")]


def test_fall_back_from_the_first_pass_skips_the_repeat() -> None:
    first_pass = dt.datetime(2026, 11, 1, 1, 30, fold=0, tzinfo=NY)
    assert first_pass.tzname() == "EDT"
    got = _fires("30 1 * * *", first_pass, 1)
    assert _wall(got[0]) == ("2026-11-02 01:30:00", "EST")


def test_fall_back_from_inside_the_second_pass_goes_to_the_next_day() -> None:
    second_pass = dt.datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=NY)
    assert second_pass.tzname() == "EST"
    got = _fires("30 1 * * *", second_pass, 1)
    assert _wall(got[0]) == ("2026-11-02 01:30:00", "EST")


def test_fall_back_hourly_fires_on_both_one_oclocks() -> None:
    got = _fires("0 * * * *", dt.datetime(2026, 11, 1, 0, 30, tzinfo=NY), 4)
    assert [_wall(d) for d in got] == [("2026-11-01 01:00:00", "EDT"), ("2026-11-01 01:00:00", "EST"),
                                       ("2026-11-01 02:00:00", "EST"), ("2026-11-01 03:00:00", "EST")]
    stamps = [d.timestamp() for d in got]
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [3600, 3600, 3600]


def test_fall_back_every_thirty_minutes_fires_on_each_real_half_hour() -> None:
    got = _fires("*/30 * * * *", dt.datetime(2026, 11, 1, 0, 45, tzinfo=NY), 5)
    stamps = [d.timestamp() for d in got]
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [1800] * 4
    assert [d.tzname() for d in got] == ["EDT", "EDT", "EST", "EST", "EST"]


def test_fall_back_hourly_macro_fires_on_both_one_oclocks() -> None:
    got = _fires("@hourly", dt.datetime(2026, 11, 1, 0, 30, tzinfo=NY), 2)
    assert [_wall(d) for d in got] == [("2026-11-01 01:00:00", "EDT"), ("2026-11-01 01:00:00", "EST")]


# -- six fields: croniter's last field is seconds ------------------------------------------------------------
def test_croniter_reads_the_sixth_field_as_seconds() -> None:
    it = croniter(EVERY_SECOND, dt.datetime(2026, 1, 1, 0, 0, 0))
    assert [it.get_next(dt.datetime).second for _ in range(3)] == [1, 2, 3]


def test_six_field_spec_fires_every_second() -> None:
    start = dt.datetime(2026, 1, 15, 10, 0, 0, 250000, tzinfo=UTC)
    got = _fires(EVERY_SECOND, start, 5, "UTC")
    assert [d.astimezone(UTC) for d in got] == [
        dt.datetime(2026, 1, 15, 10, 0, s, tzinfo=UTC) for s in range(1, 6)]


def test_six_field_spec_every_fifteen_seconds() -> None:
    got = _fires("* * * * * */15", dt.datetime(2026, 1, 15, 10, 0, 1, tzinfo=UTC), 4, "UTC")
    assert [d.second for d in got] == [15, 30, 45, 0]


# -- recurring instances in a Manager -------------------------------------------------------------------------
async def _wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await anyio.sleep(interval)


async def test_invalid_spec_is_refused_at_schedule_time() -> None:
    job = Job(kind="cron.bad", executor=lambda: None)
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        with pytest.raises(ScheduleError) as info:
            await mgr.schedule_job(job, crontab_spec="every tuesday")
        assert "cron.bad" in str(info.value)
        assert "'every tuesday'" in str(info.value)
        with pytest.raises(ScheduleError, match="Nowhere/Land"):
            await mgr.schedule_job(job, crontab_spec="0 * * * *", timezone="Nowhere/Land")
        assert await mgr.lookup_instances(Query(kind="cron.bad")) == []


async def test_recurring_instance_is_scheduled_for_the_next_fire_time() -> None:
    job = Job(kind="cron.daily", executor=lambda: None)
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        before = time.time()
        inst = await mgr.schedule_job(job, crontab_spec="0 9 * * 1-5", timezone="America/New_York")
        expected = CronSchedule("0 9 * * 1-5", "America/New_York", kind="k").next_after(before)
        assert inst.state is State.SCHEDULED
        assert inst.is_recurring
        assert inst.crontab_spec == "0 9 * * 1-5"
        assert inst.timezone == "America/New_York"
        assert inst.schedule_id is not None
        assert inst.ready_ts == expected
        local = inst.ready_at.astimezone(NY)
        assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
        # scheduling the same (kind, spec, timezone, arguments) again does not double it
        again = await mgr.schedule_job(job, crontab_spec="0 9 * * 1-5", timezone="America/New_York")
        assert again.uuid == inst.uuid
        assert len(await mgr.lookup_instances(Query(kind="cron.daily"))) == 1
        await mgr.cancel_instance(inst)


async def test_every_second_schedule_runs_then_remove_stops_it() -> None:
    ran: list[tuple[str, float]] = []

    async def tick(instance: Instance) -> str:
        ran.append((instance.uuid, instance.ready_ts))
        return "tick"

    job = Job(kind="cron.tick", executor=tick)
    async with Manager(num_workers=2, autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(job, crontab_spec=EVERY_SECOND)
        assert first.is_recurring
        assert first.ready_ts == int(first.ready_ts)  # a whole second

        async def two_done() -> list[Instance]:
            done = await mgr.lookup_instances(Query(kind="cron.tick", state=State.COMPLETED))
            return done if len(done) >= 2 else []

        done = await _wait_for(two_done)
        ready = sorted(i.ready_ts for i in done)
        assert len(set(ready)) == len(ready)  # one instance per fire time
        assert all(b - a >= 1.0 for a, b in zip(ready, ready[1:]))
        assert first.uuid in {i.uuid for i in done}
        for occ in done:
            assert occ.schedule_id == first.schedule_id
            assert occ.crontab_spec == EVERY_SECOND
            assert occ.result == "tick"
            assert occ.attempts == 1
            history = await mgr.lookup_instance_history(Query(instance=occ))
            assert [r.state for r in history] == [State.CREATED, State.SCHEDULED, State.PROCESSING,
                                                  State.COMPLETED]
            assert all(r.uuid == occ.uuid and r.kind == "cron.tick" for r in history)
            assert history[2].ts >= occ.ready_ts  # never runs before its fire time

        # canceling the first occurrence (already COMPLETED) changes nothing: not it, not the schedule
        canceled = await mgr.cancel_instance(first)
        assert canceled.uuid == first.uuid
        assert canceled.state is State.COMPLETED  # a final instance stays as it was
        assert (await mgr.get_schedule(first.schedule_id)).state == "active"
        assert not [i for i in await mgr.lookup_instances(Query(kind="cron.tick")) if i.state is State.CANCELED]
        # removing the schedule stops it
        await mgr.remove_schedule(first.schedule_id)
        t_cancel = time.time()
        before = {i.uuid: i.state for i in await mgr.lookup_instances(Query(kind="cron.tick"))}
        await anyio.sleep(2.5)
        after = await mgr.lookup_instances(Query(kind="cron.tick"))
        assert {i.uuid for i in after} == set(before)  # no new occurrence was enqueued
        assert not [i for i in after if i.state in (State.SCHEDULED, State.PROCESSING, State.CREATED)]
        assert all(i.started_ts is None or i.started_ts <= t_cancel for i in after)
        pending = [i for i in after if i.state is State.CANCELED]
        assert pending, "the pending occurrence should be CANCELED"
        last_done = max(i.ready_ts for i in after if i.state is State.COMPLETED)
        assert max(i.ready_ts for i in pending) > last_done
        assert not [r for r in ran if r[1] > t_cancel + 0.5]


async def test_cancel_recurring_schedule_fires_hooks_for_the_canceled_occurrence() -> None:
    seen: list[tuple[str, State]] = []

    def on_state(instance: Instance, state: State) -> None:
        seen.append((instance.uuid, state))

    job = Job(kind="cron.watch", executor=lambda: None, state_change_processor=on_state)
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(job, crontab_spec="0 0 1 1 *")  # far away: stays pending
        canceled = await mgr.cancel_instance(first)
        assert canceled.state is State.CANCELED
        assert (first.uuid, State.CANCELED) in seen
        assert [s for u, s in seen if u == first.uuid] == [State.CREATED, State.SCHEDULED, State.CANCELED]


async def test_remove_schedule_fires_hooks_for_the_pending_occurrence() -> None:
    seen: list[tuple[str, State]] = []

    def on_state(instance: Instance, state: State) -> None:
        seen.append((instance.uuid, state))

    async def once(manager: Manager) -> None:
        await manager.resize_workers(0)  # the next occurrence stays queued: nothing races the cancel

    job = Job(kind="cron.watch2", executor=once, state_change_processor=on_state)
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(job, crontab_spec=EVERY_SECOND)
        assert (await mgr.wait(first, timeout=10)).state is State.COMPLETED
        pending = await mgr.lookup_instances(Query(kind="cron.watch2", state=State.SCHEDULED))
        assert len(pending) == 1
        nxt = pending[0]
        await mgr.cancel_instance(first)  # final: nothing happens
        assert (await mgr.lookup_instance(nxt)).state is State.SCHEDULED
        await mgr.remove_schedule(first.schedule_id)
        assert (await mgr.lookup_instance(nxt)).state is State.CANCELED
        assert (nxt.uuid, State.CANCELED) in seen  # the hooks and the processor were told


async def test_every_occurrence_reports_all_its_transitions() -> None:
    seen: list[tuple[str, State]] = []

    def on_state(instance: Instance, state: State) -> None:
        seen.append((instance.uuid, state))

    job = Job(kind="cron.watch3", executor=lambda: None, state_change_processor=on_state)
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(job, crontab_spec=EVERY_SECOND)

        async def two_done() -> list[Instance]:
            done = await mgr.lookup_instances(Query(kind="cron.watch3", state=State.COMPLETED))
            return done if len(done) >= 2 else []

        done = await _wait_for(two_done)
        await mgr.remove_schedule(first.schedule_id)
        second = next(i for i in done if i.uuid != first.uuid)
        history = [r.state for r in await mgr.lookup_instance_history(Query(instance=second))]
        assert history == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
        assert [s for u, s in seen if u == first.uuid] == history
        assert [s for u, s in seen if u == second.uuid] == history


async def test_two_managers_sharing_a_store_run_each_fire_time_once() -> None:
    store = MemoryStore()
    runs: list[tuple[str, float]] = []

    async def tick(instance: Instance, manager: Manager) -> None:
        runs.append((manager.node_id, instance.ready_ts))
        await anyio.sleep(0.05)

    async with Manager(store, num_workers=2, node_id="node-a", autoload_plugins=False) as a, \
            Manager(store, num_workers=2, node_id="node-b", autoload_plugins=False) as b:
        ia = await a.schedule_job(Job(kind="cron.shared", executor=tick), crontab_spec=EVERY_SECOND,
                                  arguments=())
        ib = await b.schedule_job(Job(kind="cron.shared", executor=tick), crontab_spec=EVERY_SECOND,
                                  arguments=())
        assert ia.schedule_id == ib.schedule_id  # one schedule, whoever scheduled it
        await anyio.sleep(3.2)
        await a.remove_schedule(ia.schedule_id)
        await anyio.sleep(0.3)

        per_fire = Counter(ts for _, ts in runs)
        assert len(per_fire) >= 2, runs
        doubled = {ts: n for ts, n in per_fire.items() if n != 1}
        assert not doubled, f"fire times run more than once: {doubled} (runs: {runs})"
        insts = await a.lookup_instances(Query(kind="cron.shared"))
        by_ready = Counter(i.ready_ts for i in insts)
        assert all(n == 1 for n in by_ready.values()), by_ready
        completed = {i.ready_ts for i in insts if i.state is State.COMPLETED}
        assert completed <= set(per_fire)  # every completed occurrence is one that ran (once)
        assert len(completed) >= len(per_fire) - 1  # only one may have been running when canceled


def test_every_second_spec_is_valid_for_the_manager() -> None:
    # the Manager's own validation accepts the six-field form used above
    CronSchedule(EVERY_SECOND, None, kind="k")
    assert gojob.ScheduleError is ScheduleError


async def test_a_canceled_schedule_can_be_scheduled_again() -> None:
    job = Job(kind="cron.reopen", executor=lambda: None)
    async with Manager(num_workers=0, autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(job, crontab_spec="0 0 * * *", timezone="UTC")
        await mgr.cancel_instance(first)
        assert (await mgr.lookup_instance(first)).state is State.CANCELED
        again = await mgr.schedule_job(job, crontab_spec="0 0 * * *", timezone="UTC")
        assert again.state is State.SCHEDULED and again.uuid != first.uuid
        assert again.ready_ts > first.ready_ts and again.schedule_id == first.schedule_id
        assert (await mgr.lookup_instance(again)).state is State.SCHEDULED
