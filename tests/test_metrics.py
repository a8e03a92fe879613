"""Prometheus metrics with go-job's names, checked through the text exposition after a known sequence."""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import pytest
from gojob_core import Instance, Job, Manager, State
from prometheus_client.parser import text_string_to_metric_families

KINDS = ("m.ok", "m.fail", "m.slow", "m.later")
#: the go-job families that carry a ``kind`` label (a histogram's buckets add ``le``)
BY_KIND = ("go_job_executed", "go_job_completed", "go_job_terminated", "go_job_timedout", "go_job_canceled",
           "go_job_retried", "go_job_queued", "go_job_duration_seconds", "go_job_wait_seconds",
           "go_job_oldest_ready_age_seconds", "go_job_running")


class Boom(Exception):
    pass


def _fail() -> None:
    raise Boom("always")


async def _slow() -> None:
    await anyio.sleep(30)


def _parse(text: bytes) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name -> {(sample name, sorted labels): value}"""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(text.decode()):
        samples = out.setdefault(fam.name, {})
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _by_kind(families: dict, family: str, sample: str) -> dict[str, float]:  # type: ignore[type-arg]
    return {dict(labels)["kind"]: value for (name, labels), value in families.get(family, {}).items()
            if name == sample}


def _get(values: dict[str, float], kind: str) -> float:
    return values.get(kind, 0.0)


async def _run_known_sequence(mgr: Manager) -> dict[str, Instance]:
    ok = Job(kind="m.ok", executor=lambda x: x * 2)
    fail = Job(kind="m.fail", executor=_fail, max_retries=1, backoff_strategy=lambda inst: 0.0)
    slow = Job(kind="m.slow", executor=_slow, timeout=0.2)
    later = Job(kind="m.later", executor=lambda: None)
    ok1, ok2 = await mgr.schedule_many(ok, [1, 2])
    failed = await mgr.schedule_job(fail)
    timed = await mgr.schedule_job(slow)
    queued = await mgr.schedule_job(later, schedule_after=60)
    canceled = await mgr.cancel_instance(queued)
    assert canceled.state is State.CANCELED
    done = {}
    for name, inst in (("ok1", ok1), ("ok2", ok2), ("failed", failed), ("timed", timed), ("queued", queued)):
        done[name] = await mgr.wait(inst, timeout=15)
    assert [done[n].state for n in ("ok1", "ok2", "failed", "timed", "queued")] == [
        State.COMPLETED, State.COMPLETED, State.TERMINATED, State.TIMED_OUT, State.CANCELED]
    assert done["failed"].attempts == 2
    return done


@pytest.fixture
async def exposition() -> bytes:
    async with Manager(num_workers=3, autoload_plugins=False) as mgr:
        await _run_known_sequence(mgr)
        return mgr.metrics.exposition()


async def test_exposition_is_the_prometheus_text_format(exposition: bytes) -> None:
    text = exposition.decode()
    assert "# HELP go_job_executed_total Total number of executed jobs by kind" in text
    assert "# TYPE go_job_executed_total counter" in text
    assert "# TYPE go_job_duration_seconds histogram" in text
    assert "# TYPE go_job_registered gauge" in text


async def test_executed_counts_every_attempt(exposition: bytes) -> None:
    executed = _by_kind(_parse(exposition), "go_job_executed", "go_job_executed_total")
    assert [_get(executed, k) for k in KINDS] == [2, 2, 1, 0]


async def test_final_state_counters(exposition: bytes) -> None:
    fams = _parse(exposition)
    completed = _by_kind(fams, "go_job_completed", "go_job_completed_total")
    terminated = _by_kind(fams, "go_job_terminated", "go_job_terminated_total")
    timedout = _by_kind(fams, "go_job_timedout", "go_job_timedout_total")
    canceled = _by_kind(fams, "go_job_canceled", "go_job_canceled_total")
    assert [_get(completed, k) for k in KINDS] == [2, 0, 0, 0]
    # counters follow the state history: each failed attempt is one TERMINATED transition
    assert [_get(terminated, k) for k in KINDS] == [0, 2, 0, 0]
    assert [_get(timedout, k) for k in KINDS] == [0, 0, 1, 0]
    assert [_get(canceled, k) for k in KINDS] == [0, 0, 0, 1]


async def test_retried_counts_scheduled_retries(exposition: bytes) -> None:
    retried = _by_kind(_parse(exposition), "go_job_retried", "go_job_retried_total")
    assert [_get(retried, k) for k in KINDS] == [0, 1, 0, 0]


async def test_duration_histogram_counts_finished_attempts(exposition: bytes) -> None:
    fams = _parse(exposition)
    count = _by_kind(fams, "go_job_duration_seconds", "go_job_duration_seconds_count")
    total = _by_kind(fams, "go_job_duration_seconds", "go_job_duration_seconds_sum")
    assert [_get(count, k) for k in KINDS] == [2, 2, 1, 0]
    assert _get(total, "m.slow") >= 0.2  # it ran until its timeout
    assert _get(total, "m.slow") < 10
    buckets = {(dict(labels)["kind"], dict(labels)["le"]): v
               for (name, labels), v in fams["go_job_duration_seconds"].items()
               if name == "go_job_duration_seconds_bucket"}
    for kind in ("m.ok", "m.fail", "m.slow"):
        assert buckets[(kind, "+Inf")] == _get(count, kind)
        ordered = sorted(((float(le), v) for (k, le), v in buckets.items() if k == kind))
        assert [v for _, v in ordered] == sorted(v for _, v in ordered)  # cumulative


async def test_gauges(exposition: bytes) -> None:
    fams = _parse(exposition)
    assert fams["go_job_registered"] == {("go_job_registered", ()): 4}
    assert fams["go_job_workers"] == {("go_job_workers", ()): 3}


async def test_nothing_left_running(exposition: bytes) -> None:
    running = _by_kind(_parse(exposition), "go_job_running", "go_job_running")
    assert all(v == 0 for v in running.values()), running


async def test_only_the_kind_label(exposition: bytes) -> None:
    fams = _parse(exposition)
    for family in BY_KIND:
        for (name, labels), _ in fams.get(family, {}).items():
            keys = {k for k, _ in labels}
            allowed = {"kind", "le"} if name.endswith("_bucket") else {"kind"}
            assert keys <= allowed, (name, labels)
            assert "kind" in keys, (name, labels)
    for family in ("go_job_registered", "go_job_workers"):
        assert all(labels == () for (_, labels) in fams[family])
    # no label anywhere carries an argument or a result (go_job_schedules: a schedule state, a fixed set)
    for family, samples in fams.items():
        for (_, labels) in samples:
            if family == "go_job_schedules":
                assert [k for k, _ in labels] == ["state"]
                assert dict(labels)["state"] in ("active", "paused", "finished")
                continue
            assert {k for k, _ in labels} <= {"kind", "le"}, (family, labels)


async def test_workers_gauge_follows_resize() -> None:
    async with Manager(num_workers=2, autoload_plugins=False) as mgr:
        await mgr.resize_workers(5)
        assert _parse(mgr.metrics.exposition())["go_job_workers"] == {("go_job_workers", ()): 5}
        await mgr.resize_workers(1)
        assert _parse(mgr.metrics.exposition())["go_job_workers"] == {("go_job_workers", ()): 1}


async def test_queued_gauge_counts_waiting_instances() -> None:
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        job = Job(kind="m.wait", executor=lambda: None)
        insts = await mgr.schedule_many(job, [(), (), ()], schedule_after=60)
        mgr.metrics.set_queued(await mgr.store.queue_counts())  # the node refreshes it every few seconds
        queued = _by_kind(_parse(mgr.metrics.exposition()), "go_job_queued", "go_job_queued")
        assert _get(queued, "m.wait") == 3
        await mgr.cancel_instance(insts[0])
        mgr.metrics.set_queued(await mgr.store.queue_counts())
        queued = _by_kind(_parse(mgr.metrics.exposition()), "go_job_queued", "go_job_queued")
        assert _get(queued, "m.wait") == 2
        for inst in insts[1:]:
            await mgr.cancel_instance(inst)
        mgr.metrics.set_queued(await mgr.store.queue_counts())
        queued = _by_kind(_parse(mgr.metrics.exposition()), "go_job_queued", "go_job_queued")
        assert _get(queued, "m.wait") == 0  # a kind that emptied drops to 0


async def test_two_managers_have_separate_registries() -> None:
    async with Manager(num_workers=1, autoload_plugins=False) as one, \
            Manager(num_workers=2, autoload_plugins=False) as two:
        assert one.metrics.registry is not two.metrics.registry
        inst = await one.schedule_job(Job(kind="m.only-one", executor=lambda: None))
        await one.wait(inst, timeout=10)
        first = _by_kind(_parse(one.metrics.exposition()), "go_job_executed", "go_job_executed_total")
        second = _by_kind(_parse(two.metrics.exposition()), "go_job_executed", "go_job_executed_total")
        assert first == {"m.only-one": 1}
        assert "m.only-one" not in second
        assert _parse(one.metrics.exposition())["go_job_workers"] == {("go_job_workers", ()): 1}
        assert _parse(two.metrics.exposition())["go_job_workers"] == {("go_job_workers", ()): 2}
        assert _parse(two.metrics.exposition())["go_job_registered"] == {("go_job_registered", ()): 0}


async def test_metrics_survive_many_kinds_without_cross_talk() -> None:
    async with Manager(num_workers=4, autoload_plugins=False) as mgr:
        jobs = [Job(kind=f"m.k{i}", executor=lambda: None) for i in range(5)]
        insts: list[Instance] = []
        for i, job in enumerate(jobs):
            insts.extend(await mgr.schedule_many(job, [()] * (i + 1)))
        for inst in insts:
            await mgr.wait(inst, timeout=10)
        completed = _by_kind(_parse(mgr.metrics.exposition()), "go_job_completed", "go_job_completed_total")
    assert completed == {f"m.k{i}": i + 1 for i in range(5)}


async def test_canceling_twice_counts_once() -> None:
    seen: list[State] = []
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        job = Job(kind="m.twice", executor=lambda: None, state_change_processor=lambda inst, st: seen.append(st))
        inst = await mgr.schedule_job(job, schedule_after=60)
        await mgr.cancel_instance(inst)
        again = await mgr.cancel_instance(inst)
        assert again.state is State.CANCELED
        canceled = _by_kind(_parse(mgr.metrics.exposition()), "go_job_canceled", "go_job_canceled_total")
        assert seen.count(State.CANCELED) == 1
        assert _get(canceled, "m.twice") == 1


def _names(families: Iterable[str]) -> set[str]:
    return set(families)


async def test_go_job_families_are_all_there(exposition: bytes) -> None:
    names = _names(_parse(exposition))
    assert {"go_job_registered", "go_job_workers", "go_job_queued", "go_job_executed", "go_job_completed",
            "go_job_terminated", "go_job_canceled", "go_job_timedout", "go_job_duration_seconds"} <= names


async def test_wait_histogram_measures_ready_to_start(exposition: bytes) -> None:
    fams = _parse(exposition)
    count = _by_kind(fams, "go_job_wait_seconds", "go_job_wait_seconds_count")
    assert [_get(count, k) for k in KINDS] == [2, 2, 1, 0]  # one per attempt, like go_job_executed
    total = _by_kind(fams, "go_job_wait_seconds", "go_job_wait_seconds_sum")
    assert 0 <= _get(total, "m.ok") < 5


async def test_oldest_ready_age_reports_how_long_the_queue_waits() -> None:
    async with Manager(num_workers=1, autoload_plugins=False) as mgr:
        await mgr.resize_workers(0)  # nothing runs: the queue only ages
        job = Job(kind="m.age", executor=lambda: None)
        await mgr.schedule_job(job)
        await mgr.schedule_job(job, schedule_after=60)  # not due: not counted as waiting
        await anyio.sleep(0.3)
        mgr.metrics.set_queued(await mgr.store.queue_counts(), await mgr.store.oldest_ready())
        fams = _parse(mgr.metrics.exposition())
        age = _by_kind(fams, "go_job_oldest_ready_age_seconds", "go_job_oldest_ready_age_seconds")
        assert 0.25 <= _get(age, "m.age") < 10
        assert _get(_by_kind(fams, "go_job_queued", "go_job_queued"), "m.age") == 2
        await mgr.resize_workers(1)
        with anyio.fail_after(10):
            while (await mgr.store.queue_counts()).get("m.age", 0) > 1:
                await anyio.sleep(0.01)
        mgr.metrics.set_queued(await mgr.store.queue_counts(), await mgr.store.oldest_ready())
        age = _by_kind(_parse(mgr.metrics.exposition()), "go_job_oldest_ready_age_seconds",
                       "go_job_oldest_ready_age_seconds")
        assert _get(age, "m.age") == 0  # only the delayed one is left
