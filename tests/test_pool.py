"""Ordering on one worker, and resizing the pool under load without losing or doubling an instance."""

from __future__ import annotations

import random

import anyio
import pytest
from gojob_core import Job, Manager, Query, State

pytestmark = pytest.mark.anyio


async def test_one_thousand_instances_run_in_priority_then_fifo_order() -> None:
    ran: list[int] = []

    async def record(i: int) -> None:
        ran.append(i)

    rng = random.Random(7)
    priorities = [rng.choice([-10, 0, 0, 5, 100, 3]) for _ in range(1000)]
    # no workers while the queue fills (a pool shrunk to 0 would hand back what an in-flight claim brings)
    async with Manager(num_workers=0) as mgr:
        job = Job(kind="ordered", executor=record)
        half = await mgr.schedule_many(job, [(i,) for i in range(500)], priority=None)
        # per-instance priorities: one schedule call each, as a user would
        insts = []
        for i in range(1000):
            insts.append(await mgr.schedule_job(job, arguments=(i + 1000,), priority=priorities[i]))
        await mgr.resize_workers(1)
        for inst in [*half, *insts][-3:]:
            await mgr.wait(inst, timeout=30)
        with anyio.fail_after(30):
            while len(ran) < 1500:
                await anyio.sleep(0.01)
    expected = sorted([*range(500), *range(1000, 2000)],
                      key=lambda i: (priorities[i - 1000] if i >= 1000 else 0, i))
    assert ran == expected


async def test_resize_under_load_runs_every_instance_exactly_once() -> None:
    counts: dict[int, int] = {}
    running = 0
    peak = 0

    async def work(i: int) -> int:
        nonlocal running, peak
        counts[i] = counts.get(i, 0) + 1
        running += 1
        peak = max(peak, running)
        try:
            await anyio.sleep(0.002)
        finally:
            running -= 1
        return i

    n = 2000
    async with Manager(num_workers=2) as mgr:
        insts = await mgr.schedule_many(Job(kind="resize", executor=work), [(i,) for i in range(n)])
        # resize at known points of the run, so that work is still queued at each resize
        for size, after in ((16, 200), (1, 800), (8, 900)):
            with anyio.fail_after(60):
                while len(counts) < after:
                    await anyio.sleep(0.001)
            await mgr.resize_workers(size)
            assert mgr.num_workers == size
            assert len(counts) < n
        with anyio.fail_after(60):
            while len(counts) < n:
                await anyio.sleep(0.02)
        for inst in insts[-10:]:
            await mgr.wait(inst, timeout=10)
        done = await mgr.lookup_instances(Query(kind="resize", state=State.COMPLETED))
        assert len(done) == n
        assert all(i.attempts == 1 for i in done)
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}
    assert 2 < peak <= 16  # the pool did grow past its first size, and never past its largest


async def test_shrinking_lets_running_instances_finish() -> None:
    release = anyio.Event()
    started: list[int] = []

    async def hold(i: int) -> int:
        started.append(i)
        await release.wait()
        return i

    async with Manager(num_workers=4) as mgr:
        insts = await mgr.schedule_many(Job(kind="hold", executor=hold), [(i,) for i in range(4)])
        with anyio.fail_after(10):
            while len(started) < 4:
                await anyio.sleep(0.01)
        await mgr.resize_workers(1)
        release.set()
        results = [(await mgr.wait(i, timeout=10)) for i in insts]
        assert [r.state for r in results] == [State.COMPLETED] * 4
        assert all(r.attempts == 1 for r in results)
        with anyio.fail_after(5):
            while len(mgr.workers) != 1:
                await anyio.sleep(0.01)


async def test_graceful_stop_hands_back_unfinished_work() -> None:
    from gojob_core import MemoryStore

    store = MemoryStore()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await anyio.sleep(3600)
        return "never"

    mgr = Manager(store, num_workers=1, shutdown_timeout=0.2, node_id="leaving")
    async with mgr:
        inst = await mgr.schedule_job(Job(kind="slow", executor=slow))
        await mgr.schedule_job(Job(kind="slow", executor=slow))
        with anyio.fail_after(10):
            await started.wait()
    left = await store.get_instance(inst.uuid)
    assert left is not None and left.state is State.SCHEDULED and left.attempts == 0
    hist = await store.lookup_history(Query(instance=inst))
    assert hist[-1].state is State.SCHEDULED and "released" in (hist[-1].detail or "")
    assert [i.state for i in await store.list_instances(Query())] == [State.SCHEDULED] * 2


async def test_a_node_without_workers_subscribes_to_cancels_only_when_its_pool_grows() -> None:
    """A producer (no workers) runs nothing a cancel could stop, so it does not listen for cancels;
    once it gets workers it does, and a cancel from another node stops its running instance at once
    (well before the lease heartbeat, every lease_time / 3, would report it)."""
    from gojob_core import MemoryStore

    class CountingStore(MemoryStore):
        subscriptions = 0

        async def cancel_notifications(self):  # type: ignore[no-untyped-def]
            CountingStore.subscriptions += 1
            async for uuid in super().cancel_notifications():
                yield uuid

    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep(60)

    store = CountingStore()
    job = Job(kind="hang", executor=hang)
    async with Manager(store=store, num_workers=0, lease_time=60) as node, \
            Manager(store=store, num_workers=0, lease_time=60) as other:
        await anyio.sleep(0.1)
        assert CountingStore.subscriptions == 0
        inst = await node.schedule_job(job)
        await node.resize_workers(1)
        with anyio.fail_after(5):
            await started.wait()
            while CountingStore.subscriptions == 0:
                await anyio.sleep(0.01)
        assert CountingStore.subscriptions == 1
        await other.cancel_instance(inst)
        done = await node.wait(inst, timeout=5)
        assert done.state is State.CANCELED
