"""The Manager's side of the reliability rules (issue 19), on the memory store: a node that cannot renew
its leases stops its attempts itself, a re-claimed instance stops its stale attempt first, a suspect
instance runs with no neighbour claimed beside it, the abandon limit ends a crash-looping instance,
and a canceled sync executor's record says whether its thread may still be running."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import anyio
import pytest
from gojob_core import Context, Instance, Job, Manager, MemoryStore, Query, State
from gojob_core.abc import CorruptRecord, LeaseReport, abandon_limit_message

pytestmark = pytest.mark.anyio


class _CutOffStore(MemoryStore):
    """A memory store whose lease renewals from one node hang while ``cut`` is set: that node is cut
    off from the store (a network partition, a store server down) while the others are not."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self.cut = False

    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        if node == self.node and self.cut:
            await anyio.sleep_forever()
        return await super().extend_leases(node, uuids, lease)


async def test_a_node_cut_off_from_the_store_stops_its_attempt_before_the_lease_lapses() -> None:
    store = _CutOffStore("cut")
    lease = 1.0
    started, stopped = anyio.Event(), anyio.Event()
    runs: list[tuple[str, int, float]] = []

    async def body(inst: Instance, mgr: Manager) -> str:
        runs.append((mgr.node_id, inst.attempts, time.monotonic()))
        if mgr.node_id == "cut":
            started.set()
            try:
                await anyio.sleep(3600)
            finally:
                runs.append(("stopped", inst.attempts, time.monotonic()))
                stopped.set()
        return mgr.node_id

    job = Job(kind="rel.cut", executor=body)
    async with Manager(store, num_workers=1, node_id="cut", lease_time=lease, autoload_plugins=False) as cut:
        inst = await cut.schedule_job(job)
        with anyio.fail_after(10):
            await started.wait()
        await cut.resize_workers(0)  # the running attempt goes on; this node claims nothing more
        store.cut = True
        with anyio.fail_after(10):
            await stopped.wait()
        t_stop = runs[-1][2]
        # the attempt stopped before the store's lease lapsed: no other node could have started it yet
        cur = await store.get_instance(inst.uuid)
        assert cur is not None and cur.state is State.PROCESSING and cur.attempts == 1
        assert t_stop - runs[0][2] < lease + 0.1
        assert b"go_job_lease_lost_total 1.0" in cut.metrics.exposition()
        store.cut = False
        async with Manager(store, num_workers=1, node_id="other", lease_time=lease, autoload_plugins=False) as other:
            await other.register_job(job)
            done = await other.wait(inst, timeout=10)
    assert done.state is State.COMPLETED and done.result == "other" and done.attempts == 2
    assert [r[:2] for r in runs] == [("cut", 1), ("stopped", 1), ("other", 2)]
    hist = await store.lookup_history(Query(instance=inst))
    assert [(h.state, h.attempt) for h in hist] == [
        (State.CREATED, 0), (State.SCHEDULED, 0), (State.PROCESSING, 1), (State.SCHEDULED, 1),
        (State.PROCESSING, 2), (State.COMPLETED, 2)]


async def test_an_instance_claimed_again_by_its_own_node_stops_the_stale_attempt() -> None:
    # the store handed this node an instance whose earlier attempt still runs here (its lease lapsed
    # while the node could not renew it): the old attempt stops, and its outcome is not written
    store = MemoryStore()
    first_started, release_first = anyio.Event(), anyio.Event()
    seen: list[tuple[int, str]] = []

    async def body(inst: Instance) -> int:
        if inst.attempts == 1:
            first_started.set()
            try:
                await release_first.wait()
            except BaseException:
                seen.append((1, "stopped"))
                raise
            seen.append((1, "finished"))
        else:
            seen.append((inst.attempts, "ran"))
        return inst.attempts

    async with Manager(store, num_workers=2, node_id="n1", lease_time=60, autoload_plugins=False) as mgr:
        inst = await mgr.schedule_job(Job(kind="rel.again", executor=body))
        with anyio.fail_after(10):
            await first_started.wait()
        # the lease lapses in the store and the instance is re-queued, as after a partition
        store._running[inst.uuid].lease_ts = 0.0
        assert [i.uuid for i in await store.reclaim_expired("n1")] == [inst.uuid]
        mgr._wake_dispatcher()
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED and done.result == 2 and done.attempts == 2
    assert seen[0] == (1, "stopped") and (2, "ran") in seen


async def test_a_suspect_instance_runs_with_no_neighbour_claimed_beside_it() -> None:
    store = MemoryStore()
    suspect_running, let_go = anyio.Event(), anyio.Event()
    order: list[str] = []

    async def body(inst: Instance, name: str) -> None:
        order.append(name)
        if name == "suspect":
            suspect_running.set()
            await let_go.wait()

    job = Job(kind="rel.suspect", executor=body)
    async with Manager(store, num_workers=0, node_id="producer", autoload_plugins=False) as producer:
        [s] = await producer.schedule_many(job, [{"name": "suspect"}])
        [claimed] = await store.claim("crashed", 1, 0.05)  # a node took it, then died
        assert claimed.uuid == s.uuid
        await anyio.sleep(0.1)
        await store.reclaim_expired("producer")
        others = await producer.schedule_many(job, [{"name": f"n{i}"} for i in range(6)])
        async with Manager(store, num_workers=4, node_id="worker", autoload_plugins=False) as worker:
            await worker.register_job(job)
            with anyio.fail_after(10):
                await suspect_running.wait()
            # the worker has three free slots and six instances wait, yet it claims nothing beside it
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.2)
            assert order == ["suspect"]
            assert len(await store.list_instances(Query(kind="rel.suspect", state=State.SCHEDULED))) == 6
            let_go.set()
            for inst in others:
                assert (await worker.wait(inst, timeout=10)).state is State.COMPLETED
    assert order[0] == "suspect" and sorted(order[1:]) == [f"n{i}" for i in range(6)]


async def test_a_job_that_keeps_killing_its_node_ends_terminated_after_max_abandons() -> None:
    store = MemoryStore()
    lease = 0.3
    started = anyio.Event()

    async def crash() -> None:
        started.set()
        await anyio.sleep(3600)

    job = Job(kind="rel.crash", executor=crash, max_abandons=3)
    async with Manager(store, num_workers=0, node_id="producer", autoload_plugins=False) as producer:
        inst = await producer.schedule_job(job)
    for k in range(3):
        started = anyio.Event()
        node = Manager(store, num_workers=1, node_id=f"victim{k}", lease_time=lease, autoload_plugins=False)
        await node.start()
        await node.register_job(job)
        with anyio.fail_after(10):
            await started.wait()
        await node.stop(abandon=True)  # the job "killed" its node
        with anyio.fail_after(10):
            while (cur := await store.get_instance(inst.uuid)) is not None and cur.state is State.PROCESSING:
                await anyio.sleep(lease / 2)
                await store.reclaim_expired("reaper")
    final = await store.get_instance(inst.uuid)
    assert final is not None and final.state is State.TERMINATED and final.attempts == 3
    assert final.error == abandon_limit_message(3, "victim2", 3)
    assert "3 attempts abandoned (max_abandons)" in final.error


def test_max_abandons_is_checked_at_the_call() -> None:
    with pytest.raises(Exception, match=r"job 'rel.bad': max_abandons must be a positive integer or None, got 0"):
        Job(kind="rel.bad", executor=print, max_abandons=0)
    assert Job(kind="rel.none", executor=print, max_abandons=None).max_abandons is None


async def test_a_canceled_sync_executor_that_ignores_its_context_is_recorded_as_maybe_running() -> None:
    store = MemoryStore()
    entered, leave = threading.Event(), threading.Event()

    def stubborn() -> None:  # never looks at its Context
        entered.set()
        leave.wait(30)

    def polite(ctx: Context) -> None:
        entered.set()
        while not ctx.cancelled:
            time.sleep(0.005)

    async with Manager(store, num_workers=1, node_id="n", autoload_plugins=False) as mgr:
        for executor, expect in ((polite, "canceled while running"),
                                 (stubborn, "canceled while running; its thread had not returned 1 s later "
                                            "and may still be running")):
            entered.clear()
            inst = await mgr.schedule_job(Job(kind=f"rel.sync.{executor.__name__}", executor=executor))
            with anyio.fail_after(10):
                while not entered.is_set():
                    await anyio.sleep(0.005)
            done = await mgr.cancel_instance(inst)
            assert done.state is State.CANCELED
            hist = await mgr.lookup_instance_history(Query(instance=inst, state=State.CANCELED))
            assert [h.detail for h in hist] == [expect]
        leave.set()


async def test_cancel_wait_is_checked() -> None:
    async with Manager(MemoryStore(), num_workers=0, autoload_plugins=False) as mgr:
        inst = await mgr.schedule_job(Job(kind="rel.w", executor=print), schedule_after=60)
        with pytest.raises(ValueError, match="wait must not be negative"):
            await mgr.cancel_instance(inst, wait=-1)
        assert (await mgr.cancel_instance(inst, wait=0)).state is State.CANCELED


class _SetAsideStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.aside = [CorruptRecord("inst:a", "not a hash", "xx"), CorruptRecord("inst:b", "bad JSON", "{")]

    async def corrupt_records(self) -> list[CorruptRecord]:
        return list(self.aside)


async def test_records_set_aside_are_a_gauge() -> None:
    store = _SetAsideStore()
    async with Manager(store, num_workers=0, metrics_interval=0.05, autoload_plugins=False) as mgr:
        with anyio.fail_after(10):
            while b"go_job_corrupt_records 2.0" not in mgr.metrics.exposition():
                await anyio.sleep(0.02)
        store.aside.pop()
        with anyio.fail_after(10):
            while b"go_job_corrupt_records 1.0" not in mgr.metrics.exposition():
                await anyio.sleep(0.02)


class _SlowClaimStore(MemoryStore):
    """A memory store whose claims wait for a signal after taking the instances: the pool is resized while
    a claim is out."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = anyio.Event()
        self.go_on = anyio.Event()
        self.hold = False

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        got = await super().claim(node, limit, lease)
        if got and self.hold:
            self.claimed.set()
            await self.go_on.wait()
        return got


async def test_instances_claimed_while_the_pool_shrinks_go_back_to_the_queue() -> None:
    store = _SlowClaimStore()
    async with Manager(store, num_workers=0, node_id="producer", autoload_plugins=False) as producer:
        job = Job(kind="rel.shrink", executor=lambda: None)
        insts = await producer.schedule_many(job, [(), (), ()])
        store.hold = True
        async with Manager(store, num_workers=3, node_id="shrinking", autoload_plugins=False) as node:
            await node.register_job(job)
            with anyio.fail_after(10):
                await store.claimed.wait()  # three claimed, the reply not yet back
            await node.resize_workers(0)
            store.hold = False
            store.go_on.set()
            with anyio.fail_after(10):
                while len(await store.list_instances(Query(kind="rel.shrink", state=State.SCHEDULED))) < 3:
                    await anyio.sleep(0.01)
            assert node._running == {}
        hist = await store.lookup_history(Query(kind="rel.shrink", state=State.SCHEDULED))
        assert sorted(h.detail or "" for h in hist).count("released by node shrinking") == 3
        async with Manager(store, num_workers=3, node_id="other", autoload_plugins=False) as other:
            await other.register_job(job)
            for inst in insts:
                assert (await other.wait(inst, timeout=10)).state is State.COMPLETED
