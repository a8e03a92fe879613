"""The system jobs on the memory store (asyncio and trio) and on real Valkey, Redis and etcd servers (asyncio).

"Old" records are made without waiting days: instances run, a short pause, more instances run, and the
cleaner gets a ``max_age`` that falls in the pause (computed from the records' own timestamps).
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time
import uuid as _uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import anyio
import gojob_core as gojob
import pytest
from croniter import croniter
from gojob_core import Instance, Job, Query, State, Store
from gojob_core.testing.servers import Server
from gojob_store_etcd.store import EtcdStore
from gojob_store_redis import RedisStore
from gojob_store_valkey import ValkeyStore

import gojob_system_jobs
import gojob_system_jobs.plugin
from gojob_system_jobs import (
    DEFAULT_CRONTAB,
    HISTORY_CLEANER,
    LOG_CLEANER,
    history_cleaner_job,
    log_cleaner_job,
    schedule_system_jobs,
)

PAUSE = 0.3  # between "old" and "new" records


# -- helpers -------------------------------------------------------------------------------------------
class _Spy:
    """Records how many records each history/log store call returned or removed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.looked_up: list[int] = []
        self.cleared: list[int] = []

    async def lookup_history(self, query: Query) -> Any:
        found = await super().lookup_history(query)  # type: ignore[misc]
        self.looked_up.append(len(found))
        return found

    async def clear_history(self, query: Query) -> int:
        n = await super().clear_history(query)  # type: ignore[misc]
        self.cleared.append(n)
        return n

    async def lookup_logs(self, query: Query) -> Any:
        found = await super().lookup_logs(query)  # type: ignore[misc]
        self.looked_up.append(len(found))
        return found

    async def clear_logs(self, query: Query) -> int:
        n = await super().clear_logs(query)  # type: ignore[misc]
        self.cleared.append(n)
        return n


class SpyMemoryStore(_Spy, gojob.MemoryStore):
    pass


class SpyValkeyStore(_Spy, ValkeyStore):
    pass


class SpyRedisStore(_Spy, RedisStore):
    pass


class SpyEtcdStore(_Spy, EtcdStore):
    pass


async def _work(x: int) -> int:
    return x


WORK = Job(kind="work", executor=_work)


async def run(mgr: gojob.Manager, job: Job, *args: Any, **options: Any) -> Instance:
    inst = await mgr.wait(await mgr.schedule_job(job, arguments=args, **options), timeout=10)
    assert inst.state is State.COMPLETED, inst.error
    return inst


async def clean(mgr: gojob.Manager, cleaner: str = HISTORY_CLEANER, /, **arguments: Any) -> Instance:
    inst = await mgr.wait(await mgr.schedule_registered_job(cleaner, arguments=arguments), timeout=30)
    assert inst.state is State.COMPLETED, inst.error
    return inst


async def until_state(mgr: gojob.Manager, inst: Instance, state: State) -> None:
    with anyio.fail_after(10):
        while (await mgr.lookup_instance(inst)).state is not state:
            await anyio.sleep(0.005)


def age_between(old: list[Any], new: list[Any]) -> float:
    """A max_age that puts the cutoff halfway between the newest old record and the oldest new one."""
    t_old, t_new = max(r.ts for r in old), min(r.ts for r in new)
    assert t_new - t_old > PAUSE / 2
    return time.time() - (t_old + t_new) / 2


def of(records: list[Any], *insts: Instance) -> list[Any]:
    uuids = {i.uuid for i in insts}
    return [r for r in records if r.uuid in uuids]


async def cleaner_log(mgr: gojob.Manager, inst: Instance) -> str:
    return "\n".join(r.message for r in await mgr.lookup_instance_logs(Query(instance=inst)))


class Blocker:
    """A job whose instances log a line, then wait until released (so they stay PROCESSING)."""

    def __init__(self, kind: str = "block") -> None:
        self.gate = anyio.Event()
        self.job = Job(kind=kind, executor=self._run)

    async def _run(self, instance: Instance) -> None:
        instance.infof("waiting")
        await self.gate.wait()


# -- the suite, once per store ---------------------------------------------------------------------------
class CleanerSuite:
    anyio_backends: ClassVar[tuple[str, ...]] = ("asyncio",)
    pytestmark = pytest.mark.anyio

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "anyio_backend" in metafunc.fixturenames:
            metafunc.parametrize("anyio_backend", list(self.anyio_backends))

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        raise NotImplementedError

    @pytest.fixture
    async def mgr(self, make_store: Callable[[], Store]) -> AsyncIterator[gojob.Manager]:
        manager = gojob.Manager(store=make_store(), num_workers=4, autoload_plugins=False,
                                plugins=[gojob_system_jobs.plugin], shutdown_timeout=2)
        async with manager:
            yield manager

    @pytest.fixture
    async def blocker(self, mgr: gojob.Manager) -> AsyncIterator[Blocker]:
        b = Blocker()
        try:
            yield b
        finally:
            b.gate.set()

    async def test_max_age_removes_old_history_keeps_new_and_unfinished(self, mgr: gojob.Manager,
                                                                        blocker: Blocker) -> None:
        old = [await run(mgr, WORK, i) for i in range(3)]
        waiting = await mgr.schedule_job(WORK, arguments=(9,), schedule_after=3600)
        running = await mgr.schedule_job(blocker.job)
        await until_state(mgr, running, State.PROCESSING)
        await anyio.sleep(PAUSE)
        new = [await run(mgr, WORK, i) for i in range(2)]
        before = await mgr.lookup_instance_history()
        assert len(of(before, *old)) == 12 and len(of(before, waiting, running)) == 5

        inst = await clean(mgr, max_age=age_between(of(before, *old, waiting, running), of(before, *new)))

        assert inst.result == {"removed": 12, "kept_running": 5, "scanned": 17, "batches": inst.result["batches"]}
        after = await mgr.lookup_instance_history()
        assert of(after, *old) == []
        assert of(after, *new, waiting, running) == of(before, *new, waiting, running)
        assert "removed 12 history records" in await cleaner_log(mgr, inst)
        assert "kept 5 of waiting or running instances" in await cleaner_log(mgr, inst)

    async def test_keep_per_instance_keeps_the_newest(self, mgr: gojob.Manager) -> None:
        failed: list[int] = []

        def flaky(x: int) -> int:  # the first attempt of x=0 fails, then it is retried once
            if x == 0 and not failed:
                failed.append(x)
                raise RuntimeError("first attempt fails")
            return x

        work = Job(kind="work", executor=flaky, max_retries=1, backoff_strategy=lambda i: 0)
        retried = await run(mgr, work, 0)
        plain = [await run(mgr, work, i) for i in (1, 2)]
        waiting = await mgr.schedule_job(work, arguments=(9,), schedule_after=3600)
        before = await mgr.lookup_instance_history(Query(kind="work"))
        assert [len(of(before, i)) for i in (retried, *plain, waiting)] == [7, 4, 4, 2]

        first = await clean(mgr, keep=3, kind="work")
        assert (first.result["removed"], first.result["kept_running"]) == (4 + 1 + 1, 0)
        after = await mgr.lookup_instance_history(Query(kind="work"))
        for i in (retried, *plain):
            kept, gone = of(after, i), [r for r in of(before, i) if r not in of(after, i)]
            assert len(kept) == 3 and {State.COMPLETED, State.PROCESSING} <= {r.state for r in kept}
            assert min(r.ts for r in kept) >= max(r.ts for r in gone)  # the newest stay
        assert [r.state for r in of(after, retried)][-3:] == [State.SCHEDULED, State.PROCESSING, State.COMPLETED]

        second = await clean(mgr, keep=1, kind="work")
        assert (second.result["removed"], second.result["kept_running"]) == (6, 1)  # waiting: 2 records, kept
        after = await mgr.lookup_instance_history(Query(kind="work"))
        assert [r.state for r in of(after, retried, *plain)] == [State.COMPLETED] * 3
        assert of(after, waiting) == of(before, waiting)
        # the cleaner's own history is untouched (kind filter)
        assert len(await mgr.lookup_instance_history(Query(kind=HISTORY_CLEANER))) >= 8

    async def test_keep_per_kind_keeps_the_newest_of_each_kind(self, mgr: gojob.Manager) -> None:
        a, b = Job(kind="a", executor=_work), Job(kind="b", executor=_work)
        waiting = await mgr.schedule_job(a, arguments=(0,), schedule_after=3600)  # oldest records of kind a
        runs_a = [await run(mgr, a, i) for i in range(3)]
        run_b = await run(mgr, b, 0)
        before = await mgr.lookup_instance_history()

        inst = await clean(mgr, keep=5, per="kind")

        assert (inst.result["removed"], inst.result["kept_running"]) == (7, 2)
        after = await mgr.lookup_instance_history()
        done_a = of(before, *runs_a)
        assert of(after, *runs_a) == done_a[-5:]
        assert of(after, waiting) == of(before, waiting)
        assert of(after, run_b) == of(before, run_b)

    async def test_kind_filter_limits_the_cleaning(self, mgr: gojob.Manager) -> None:
        a, b = Job(kind="a", executor=_work), Job(kind="b", executor=_work)
        old_a, old_b = await run(mgr, a, 1), await run(mgr, b, 1)
        await anyio.sleep(PAUSE)
        new_a = await run(mgr, a, 2)
        before = await mgr.lookup_instance_history()

        inst = await clean(mgr, max_age=age_between(of(before, old_a, old_b), of(before, new_a)), kind="a")

        assert (inst.result["removed"], inst.result["kept_running"]) == (4, 0)
        after = await mgr.lookup_instance_history()
        assert of(after, old_a) == []
        assert of(after, old_b, new_a) == of(before, old_b, new_a)
        assert "of kind 'a'" in await cleaner_log(mgr, inst)

    async def test_log_cleaner(self, mgr: gojob.Manager, blocker: Blocker) -> None:
        async def talk(n: int, instance: Instance) -> None:
            for i in range(n):
                instance.infof("line %d", i)
                await anyio.sleep(0.002)  # distinct timestamps

        job = Job(kind="talk", executor=talk)
        old = [await run(mgr, job, 4) for _ in range(2)]
        running = await mgr.schedule_job(blocker.job)
        await until_state(mgr, running, State.PROCESSING)
        await anyio.sleep(PAUSE)
        new = [await run(mgr, job, 3) for _ in range(2)]
        before = await mgr.lookup_instance_logs()
        assert len(of(before, *old)) == 8 and [r.message for r in of(before, running)] == ["waiting"]

        by_age = await clean(mgr, LOG_CLEANER, max_age=age_between(of(before, *old, running), of(before, *new)))
        assert (by_age.result["removed"], by_age.result["kept_running"]) == (8, 1)
        after = await mgr.lookup_instance_logs()
        assert of(after, *old) == [] and of(after, *new, running) == of(before, *new, running)
        assert "removed 8 log records" in await cleaner_log(mgr, by_age)
        # the history is not the log cleaner's business
        assert len(of(await mgr.lookup_instance_history(), *old)) == 8

        by_count = await clean(mgr, LOG_CLEANER, keep=2, kind="talk")
        assert by_count.result["removed"] == 2
        after = await mgr.lookup_instance_logs(Query(kind="talk"))
        assert [r.message for r in after] == ["line 1", "line 2"] * 2

        per_kind = await clean(mgr, LOG_CLEANER, keep=1, per="kind", kind="talk")
        assert per_kind.result["removed"] == 3
        assert await mgr.lookup_instance_logs(Query(kind="talk")) == of(after, new[1])[-1:]
        assert [r.message for r in await mgr.lookup_instance_logs(Query(instance=running))] == ["waiting"]

    async def test_many_records_are_cleared_in_batches(self, mgr: gojob.Manager) -> None:
        store = mgr.store
        assert isinstance(store, _Spy)
        waiting = []
        for i in range(240):  # one enqueue each: distinct timestamps on every store
            ts = time.time()
            inst = Instance(uuid=str(_uuid.uuid4()), kind="bulk", state=State.SCHEDULED, created_ts=ts,
                            ready_ts=ts + 3600)
            await store.enqueue([inst])
            if i % 60 == 0:
                waiting.append(inst)
        waiting_ids = {i.uuid for i in waiting}
        gone = [i for i in await store.list_instances(Query(kind="bulk")) if i.uuid not in waiting_ids]
        for i in gone:  # their history stays behind, unprotected
            await store.clear_instances(Query(instance=i))
        store.looked_up.clear()
        store.cleared.clear()

        inst = await clean(mgr, max_age=0, kind="bulk", batch_size=32)

        assert inst.result["removed"] == 2 * len(gone) == 472 and inst.result["kept_running"] == 8
        assert inst.result["batches"] >= 472 // 32
        # a batch grows only to keep records of one timestamp together (two store calls a microsecond
        # apart can stamp records alike), so it stays near the batch size
        assert len(store.cleared) >= 472 // 32 and max(store.cleared) <= 2 * 32
        assert max(store.looked_up) <= 2 * 32
        left = await mgr.lookup_instance_history(Query(kind="bulk"))
        assert {r.uuid for r in left} == waiting_ids and len(left) == 8

    @pytest.mark.parametrize("rule", [
        {"max_age": 300}, {"keep": 3}, {"keep": 4, "per": "kind"}, {"max_age": 300, "keep": 2},
        {"keep": 2, "per": "kind", "kind": "k1"}, {"max_age": 300, "kind": "k2"},
    ], ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()))
    async def test_logs_match_a_model(self, mgr: gojob.Manager, rule: dict[str, Any]) -> None:
        """Log records can be written with any timestamp: bursts at one timestamp, clusters a microsecond
        apart (where Valkey/Redis round their bounds), two age bands; small batches. The cleaner must
        leave exactly what a straightforward model of the rules leaves."""
        rng = random.Random(7)
        now = time.time()
        uuids = [(str(_uuid.uuid4()), f"k{1 + n % 2}") for n in range(16)]
        protected = {u for u, _ in uuids[:4]}
        for u, k in uuids[:4]:
            await mgr.store.enqueue([Instance(uuid=u, kind=k, state=State.SCHEDULED, created_ts=now,
                                              ready_ts=now + 3600)])
        records: list[gojob.LogRecord] = []
        taken: set[tuple[str, float]] = set()

        def add(u: str, k: str, ts: float) -> None:
            if (u, ts) not in taken:
                taken.add((u, ts))
                records.append(gojob.LogRecord(u, k, gojob.LogLevel.INFO, f"m{len(records)}", ts))

        for u, k in uuids:
            for _ in range(rng.randrange(0, 9)):
                add(u, k, now - rng.uniform(500, 1000) if rng.random() < 0.6 else now - rng.uniform(50, 100))
        for base in (now - 700.0, now - 80.0):
            burst, cluster = round(base, 6), round(base + 1, 6)
            for n, (u, k) in enumerate(uuids):
                add(u, k, burst)  # every instance at one timestamp
                add(u, k, cluster + n * 1e-6)  # one microsecond apart
        rng.shuffle(records)
        await mgr.store.append_logs(records)

        inst = await clean(mgr, LOG_CLEANER, batch_size=7, **rule)

        cutoff = now - rule["max_age"] if "max_age" in rule else None
        kept, counts, kept_running = [], {}, 0
        for r in sorted(records, key=lambda r: r.ts, reverse=True):
            goes = False
            if rule.get("kind", r.kind) == r.kind:
                goes = cutoff is not None and r.ts <= cutoff
                if "keep" in rule:
                    group = r.kind if rule.get("per") == "kind" else r.uuid
                    goes = goes or counts.get(group, 0) >= rule["keep"]
                    if group == r.uuid or r.uuid not in protected:  # protected records do not count per kind
                        counts[group] = counts.get(group, 0) + 1
                if r.uuid in protected:
                    kept_running += goes
                    goes = False
            if not goes:
                kept.append(r)
        left = [r for r in await mgr.lookup_instance_logs() if r.kind in ("k1", "k2")]
        if rule.get("per") == "kind":  # records of one kind at one timestamp are interchangeable
            assert sorted((r.kind, r.ts) for r in left) == sorted((r.kind, r.ts) for r in kept)
        else:
            assert sorted(left) == sorted(kept)
        assert inst.result["removed"] == len(records) - len(kept)
        assert inst.result["kept_running"] == kept_running
        assert inst.result["batches"] > 2

    async def test_scheduled_on_a_crontab_spec(self, mgr: gojob.Manager) -> None:
        start = dt.datetime.now().astimezone()
        inst = await mgr.schedule_registered_job(HISTORY_CLEANER, arguments={"max_age": "7d"},
                                                 crontab_spec="0 3 * * *")
        assert inst.state is State.SCHEDULED and inst.crontab_spec == "0 3 * * *"
        assert inst.ready_ts == croniter("0 3 * * *", start).get_next(float)
        assert inst.kwargs == {"max_age": 7 * 86400.0}

        both = await schedule_system_jobs(mgr)  # DEFAULT_CRONTAB in UTC, whatever the node's local time
        expected = croniter(DEFAULT_CRONTAB, start.astimezone(dt.UTC)).get_next(float)
        assert [(i.kind, i.ready_ts, i.kwargs, i.timezone) for i in both] == [
            (HISTORY_CLEANER, expected, {"max_age": 7 * 86400.0}, "UTC"),
            (LOG_CLEANER, expected, {"max_age": 7 * 86400.0}, "UTC")]
        assert dt.datetime.fromtimestamp(expected, dt.UTC).strftime("%H:%M") == "03:17"
        again = await schedule_system_jobs(mgr)  # the same schedules, not doubled
        assert [i.uuid for i in again] == [i.uuid for i in both]
        waiting = await mgr.lookup_instances(Query(state=State.SCHEDULED))
        assert sorted(i.kind for i in waiting) == sorted([HISTORY_CLEANER, HISTORY_CLEANER, LOG_CLEANER])


class TestMemoryStore(CleanerSuite):
    anyio_backends = ("asyncio", "trio")

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        return SpyMemoryStore


class TestValkeyStore(CleanerSuite):
    @pytest.fixture
    def make_store(self, valkey_server: Server) -> Callable[[], Store]:
        prefix = f"sj{_uuid.uuid4().hex[:8]}:"
        return lambda: SpyValkeyStore.from_url(valkey_server.url("valkey"), prefix=prefix)


class TestRedisStore(CleanerSuite):
    @pytest.fixture
    def make_store(self, redis_server: Server) -> Callable[[], Store]:
        prefix = f"sj{_uuid.uuid4().hex[:8]}:"
        return lambda: SpyRedisStore.from_url(redis_server.url("redis"), prefix=prefix)


class TestEtcdStore(CleanerSuite):
    @pytest.fixture
    def make_store(self, etcd_server: Server) -> Callable[[], Store]:
        prefix = f"/sj{_uuid.uuid4().hex[:8]}/"
        return lambda: SpyEtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix)


# -- registration and argument checks (the store plays no part) ------------------------------------------
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_installed_plugin_registers_both_jobs_on_every_manager() -> None:
    async with gojob.Manager() as first, gojob.Manager() as second:  # found through the entry point
        for mgr in (first, second):
            assert mgr.lookup_job(HISTORY_CLEANER).executor is gojob_system_jobs.clean_history
            assert mgr.lookup_job(LOG_CLEANER).executor is gojob_system_jobs.clean_logs
    async with gojob.Manager(autoload_plugins=False) as bare:
        with pytest.raises(gojob.UnknownJobError):
            bare.lookup_job(HISTORY_CLEANER)
        await bare.register_job(history_cleaner_job())
        await bare.register_job(log_cleaner_job())
        assert history_cleaner_job().kind == HISTORY_CLEANER and log_cleaner_job().kind == LOG_CLEANER
    assert gojob_system_jobs.__all__ == sorted(gojob_system_jobs.__all__)
    assert (gojob_system_jobs.DEFAULT_MAX_AGE, gojob_system_jobs.DEFAULT_CRONTAB) == ("7d", "17 3 * * *")


async def test_bad_arguments() -> None:
    async with gojob.Manager(autoload_plugins=False, plugins=[gojob_system_jobs.plugin]) as mgr:
        # what the core checks per argument fails at the call, naming the job, the parameter and the value
        for arguments, parameter in (({"per": "week", "keep": 1}, "per"), ({"max_age": "soon"}, "max_age"),
                                     ({"keep": "many"}, "keep"), ({"max_ages": "7d"}, "max_ages")):
            with pytest.raises(gojob.ArgumentError, match=parameter) as err:
                await mgr.schedule_registered_job(HISTORY_CLEANER, arguments=arguments)
            assert HISTORY_CLEANER in str(err.value)
        # a rule across arguments cannot be checked by the core at schedule time: the run fails clearly
        for arguments, message in (({}, "give max_age .* and/or keep .* got neither"),
                                   ({"kind": "work"}, "got neither"),
                                   ({"keep": -1}, "keep must not be negative"),
                                   ({"max_age": "-1d"}, "max_age must not be negative")):
            inst = await mgr.wait(await mgr.schedule_registered_job(LOG_CLEANER, arguments=arguments), timeout=10)
            assert inst.state is State.TERMINATED and inst.attempts == 1
            assert inst.error is not None and inst.error.startswith(f"ArgumentError: job {LOG_CLEANER!r}: ")
            assert re.search(message, inst.error)
        # the helper checks it at the call, and writes nothing
        count = len(await mgr.lookup_instances())
        with pytest.raises(gojob.ArgumentError, match="got neither"):
            await schedule_system_jobs(mgr, max_age=None)
        with pytest.raises(gojob.ArgumentError, match="must not be negative"):
            await schedule_system_jobs(mgr, max_age="-7d")
        with pytest.raises(gojob.ArgumentError, match="must not be negative"):
            await schedule_system_jobs(mgr, max_age=None, keep=-3)
        assert len(await mgr.lookup_instances()) == count
        # positional arguments work too: (max_age, keep, per, kind)
        inst = await mgr.wait(await mgr.schedule_registered_job(HISTORY_CLEANER, arguments=("12h", 5, "kind")),
                              timeout=10)
        assert inst.state is State.COMPLETED and set(inst.result) == {"removed", "kept_running", "scanned",
                                                                     "batches"}
