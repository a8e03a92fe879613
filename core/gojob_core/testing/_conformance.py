"""The store conformance suite: every rule of the store contract as a test (see the package docstring)."""

from __future__ import annotations

import time
import uuid as _uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, ClassVar

import anyio
import pytest

from .._instance import Instance
from .._job import Job
from .._manager import Manager
from .._records import LogRecord, Query
from .._state import LogLevel, State
from ..abc import Outcome, Store, abandon_limit_message
from ._schedules import ScheduleScenarios

__all__ = ["StoreConformance"]


def _inst(kind: str = "k", *, priority: int = 0, delay: float = 0.0, args: list[Any] | None = None,
          schedule_id: str | None = None, uid: str | None = None, ts: float | None = None,
          max_abandons: int | None = 5) -> Instance:
    now = time.time() if ts is None else ts
    return Instance(uuid=uid or str(_uuid.uuid4()), kind=kind, args=args if args is not None else [],
                    priority=priority, state=State.SCHEDULED, created_ts=now, ready_ts=now + delay,
                    schedule_id=schedule_id, crontab_spec="* * * * *" if schedule_id else None,
                    max_abandons=max_abandons)


async def _claim_all(store: Store, node: str, lease: float = 30.0) -> list[Instance]:
    out: list[Instance] = []
    while True:
        got = await store.claim(node, 100, lease)
        if not got:
            return out
        out.extend(got)


def _states(records: list[Any]) -> list[State]:
    return [r.state for r in records]


class StoreConformance(ScheduleScenarios):
    """The store contract as tests. Subclass it and override :meth:`make_store` (see module docs)."""

    #: anyio backends the store runs on; the suite runs on each of them.
    anyio_backends: ClassVar[tuple[str, ...]] = ("asyncio", "trio")
    #: seconds of lease used where a test lets a lease expire (raise it for a slow store)
    short_lease: ClassVar[float] = 0.4

    pytestmark = pytest.mark.anyio

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # run each test on exactly the backends the store declares: no skips for the others
        if "anyio_backend" in metafunc.fixturenames:
            metafunc.parametrize("anyio_backend", list(self.anyio_backends))

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        """Return a callable making a new, unstarted store on the same data. Subclasses override it."""
        raise NotImplementedError("override the make_store fixture in your StoreConformance subclass")

    @pytest.fixture
    async def store(self, make_store: Callable[[], Store]) -> AsyncIterator[Store]:
        s = make_store()
        await s.start()
        try:
            await s.clear_instances(Query())
            await s.clear_history(Query())
            await s.clear_logs(Query())
            yield s
        finally:
            await s.stop()

    # -- enqueue ---------------------------------------------------------------------------------------
    async def test_enqueue_then_get(self, store: Store) -> None:
        inst = _inst(args=[1, "two", {"three": [3.0, None, True]}, "ünïcode"])
        assert await store.enqueue([inst], node="n1") == [True]
        got = await store.get_instance(inst.uuid)
        assert got is not None
        assert got.uuid == inst.uuid and got.kind == "k" and got.state is State.SCHEDULED
        assert got.args == [1, "two", {"three": [3.0, None, True]}, "ünïcode"]
        assert got.attempts == 0
        hist = await store.lookup_history(Query(instance=inst))
        assert _states(hist) == [State.CREATED, State.SCHEDULED]
        assert await store.get_instance(str(_uuid.uuid4())) is None

    async def test_enqueue_is_idempotent_by_uuid(self, store: Store) -> None:
        inst = _inst()
        assert await store.enqueue([inst]) == [True]
        assert await store.enqueue([inst, _inst()]) == [False, True]
        assert len(await store.list_instances(Query())) == 2
        assert len(await store.lookup_history(Query(instance=inst))) == 2

    async def test_enqueue_many_in_one_call(self, store: Store) -> None:
        insts = [_inst(args=[i]) for i in range(250)]
        assert await store.enqueue(insts) == [True] * 250
        claimed = await _claim_all(store, "n1")
        assert sorted(i.args[0] for i in claimed) == list(range(250))

    # -- claim -----------------------------------------------------------------------------------------
    async def test_claim_orders_by_priority_then_fifo(self, store: Store) -> None:
        t = time.time()
        order = [(5, 0), (0, 1), (5, 2), (-3, 3), (0, 4), (9, 5), (-3, 6)]
        insts = [_inst(priority=p, args=[i], ts=t - 1 + i * 1e-4) for p, i in order]
        await store.enqueue(insts)
        got = [(i.priority, i.args[0]) for i in await _claim_all(store, "n1")]
        assert got == sorted(order)

    async def test_claim_orders_within_priority_by_ready_time(self, store: Store) -> None:
        t = time.time()
        late = _inst(args=["late"], ts=t - 1.0)
        late.ready_ts = t - 0.1
        early = _inst(args=["early"], ts=t)
        early.ready_ts = t - 0.5
        await store.enqueue([late, early])
        got = [i.args[0] for i in await _claim_all(store, "n1")]
        assert got == ["early", "late"]

    async def test_claim_sets_processing_attempt_and_lease(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        before = time.time()
        [got] = await store.claim("n1", 10, 30.0)
        assert got.uuid == inst.uuid and got.state is State.PROCESSING
        assert got.attempts == 1 and got.node == "n1"
        assert got.lease_ts is not None and got.lease_ts >= before + 29
        assert got.started_ts is not None and got.started_ts >= before - 1
        stored = await store.get_instance(inst.uuid)
        assert stored is not None and stored.state is State.PROCESSING
        hist = await store.lookup_history(Query(instance=inst))
        assert _states(hist) == [State.CREATED, State.SCHEDULED, State.PROCESSING]
        assert hist[-1].attempt == 1 and hist[-1].node == "n1"
        assert await store.claim("n2", 10, 30.0) == []

    async def test_claim_respects_limit(self, store: Store) -> None:
        await store.enqueue([_inst(args=[i]) for i in range(5)])
        assert len(await store.claim("n1", 2, 30.0)) == 2
        assert len(await store.claim("n1", 0, 30.0)) == 0
        assert len(await store.claim("n1", 10, 30.0)) == 3

    async def test_delayed_instance_is_not_claimed_before_its_time(self, store: Store) -> None:
        inst = _inst(delay=0.6)
        await store.enqueue([inst])
        assert await store.claim("n1", 10, 30.0) == []
        start = time.monotonic()
        got: list[Instance] = []
        with anyio.fail_after(5):
            while not got:
                await store.wait_ready(2.0)
                got = await store.claim("n1", 10, 30.0)
        waited = time.monotonic() - start
        assert [i.uuid for i in got] == [inst.uuid]
        assert 0.4 <= waited < 2.0, waited  # woke for the due time, not for the 2 s timeout

    async def test_wait_ready_wakes_on_enqueue(self, store: Store, make_store: Callable[[], Store]) -> None:
        other = make_store()
        if other is not store:
            await other.start()
        try:
            woke_after: list[float] = []

            async def waiter() -> None:
                start = time.monotonic()
                await store.wait_ready(5.0)
                woke_after.append(time.monotonic() - start)

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.2)
                await other.enqueue([_inst()])
            assert woke_after and woke_after[0] < 2.0, woke_after
        finally:
            if other is not store:
                await other.stop()

    async def test_wait_ready_returns_at_once_when_work_is_ready(self, store: Store) -> None:
        await store.enqueue([_inst()])
        with anyio.fail_after(1.0):
            await store.wait_ready(10.0)

    async def test_concurrent_claims_never_share_an_instance(self, store: Store,
                                                             make_store: Callable[[], Store]) -> None:
        other = make_store()
        if other is not store:
            await other.start()
        try:
            n = 300
            await store.enqueue([_inst(args=[i]) for i in range(n)])
            seen: list[tuple[str, str]] = []

            async def claimer(s: Store, node: str) -> None:
                while True:
                    got = await s.claim(node, 3, 30.0)
                    if not got:
                        return
                    seen.extend((node, i.uuid) for i in got)
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                for k in range(4):
                    tg.start_soon(claimer, store, f"a{k}")
                    tg.start_soon(claimer, other, f"b{k}")
            uuids = [u for _, u in seen]
            assert len(uuids) == n and len(set(uuids)) == n
        finally:
            if other is not store:
                await other.stop()

    # -- leases ----------------------------------------------------------------------------------------
    async def test_extend_leases_reports_lost_and_cancel(self, store: Store) -> None:
        a, b = _inst(), _inst()
        await store.enqueue([a, b])
        await store.claim("n1", 10, 30.0)
        unknown = str(_uuid.uuid4())
        report = await store.extend_leases("n1", [a.uuid, b.uuid, unknown], 60.0)
        assert report.lost == {unknown} and report.cancel_requested == frozenset()
        assert (await store.extend_leases("n2", [a.uuid], 60.0)).lost == {a.uuid}
        got = await store.get_instance(a.uuid)
        assert got is not None and got.lease_ts is not None and got.lease_ts > time.time() + 50
        await store.cancel(b.uuid)
        report = await store.extend_leases("n1", [a.uuid, b.uuid], 60.0)
        assert report.cancel_requested == {b.uuid} and report.lost == frozenset()

    async def test_expired_lease_is_reclaimed_and_rerun(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("dead", 10, self.short_lease)
        assert await store.reclaim_expired("live") == []
        await anyio.sleep(self.short_lease + 0.3)
        reclaimed = await store.reclaim_expired("live")
        assert [i.uuid for i in reclaimed] == [inst.uuid]
        assert await store.reclaim_expired("live") == []
        [again] = await store.claim("live", 10, 30.0)
        assert again.uuid == inst.uuid and again.attempts == 2 and again.node == "live"
        assert again.abandoned == 1
        assert await store.finish("dead", [Outcome(inst.uuid, State.COMPLETED)]) == [False]
        assert await store.finish("live", [Outcome(inst.uuid, State.COMPLETED, result=7)]) == [True]
        hist = await store.lookup_history(Query(instance=inst))
        assert _states(hist) == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.SCHEDULED,
                                 State.PROCESSING, State.COMPLETED]
        assert hist[3].detail and "dead" in hist[3].detail  # the abandoned attempt names the lost node
        assert [h.attempt for h in hist if h.state is State.PROCESSING] == [1, 2]

    async def test_expired_lease_with_cancel_asked_ends_canceled(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("dead", 10, self.short_lease)
        await store.cancel(inst.uuid)
        await anyio.sleep(self.short_lease + 0.3)
        assert await store.reclaim_expired("live") == []
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.CANCELED
        assert await store.claim("live", 10, 30.0) == []

    # -- exact histories: every store writes the same records, details included ------------------------
    async def _history(self, store: Store, inst: Instance) -> list[tuple[State, int, str | None, str | None]]:
        return [(h.state, h.attempt, h.node, h.detail) for h in await store.lookup_history(Query(instance=inst))]

    async def _claimed(self, store: Store, *insts: Instance, node: str = "w", lease: float = 30.0) -> None:
        await store.enqueue(list(insts), node="n0")
        got = await store.claim(node, len(insts), lease)
        assert sorted(i.uuid for i in got) == sorted(i.uuid for i in insts)

    async def test_exact_history_of_a_completed_instance(self, store: Store) -> None:
        inst = _inst()
        await self._claimed(store, inst)
        assert await store.finish("w", [Outcome(inst.uuid, State.COMPLETED, result=1, attempt=1)]) == [True]
        assert await self._history(store, inst) == [
            (State.CREATED, 0, "n0", None), (State.SCHEDULED, 0, "n0", None),
            (State.PROCESSING, 1, "w", None), (State.COMPLETED, 1, "w", None)]

    async def test_exact_history_of_a_retried_then_timed_out_instance(self, store: Store) -> None:
        inst = _inst()
        inst.max_retries = 1
        await self._claimed(store, inst)
        past = time.time() - 60  # due at once: the detail's delay is 0.000 s on every clock
        failed = Outcome(inst.uuid, State.TERMINATED, error="ValueError: boom", retry_at=past, attempt=1)
        assert await store.finish("w", [failed]) == [True]
        [again] = await store.claim("w", 10, 30.0)
        assert again.attempts == 2 and again.error == "ValueError: boom"
        timed_out = Outcome(inst.uuid, State.TIMED_OUT, error="JobTimeoutError: late", attempt=2)
        assert await store.finish("w", [timed_out]) == [True]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.TIMED_OUT and got.error == "JobTimeoutError: late"
        assert await self._history(store, inst) == [
            (State.CREATED, 0, "n0", None), (State.SCHEDULED, 0, "n0", None),
            (State.PROCESSING, 1, "w", None), (State.TERMINATED, 1, "w", "ValueError: boom"),
            (State.SCHEDULED, 1, "w", "retry 1 of 1 in 0.000 s"),
            (State.PROCESSING, 2, "w", None), (State.TIMED_OUT, 2, "w", "JobTimeoutError: late")]

    async def test_exact_history_of_a_retry_with_its_delay(self, store: Store) -> None:
        inst = _inst()
        inst.max_retries = 3
        await self._claimed(store, inst)
        retry_at = time.time() + 30
        failed = Outcome(inst.uuid, State.TERMINATED, error="E: x", retry_at=retry_at, attempt=1)
        assert await store.finish("w", [failed]) == [True]
        hist = await store.lookup_history(Query(instance=inst))
        assert [(h.state, h.attempt, h.node) for h in hist][-2:] == [(State.TERMINATED, 1, "w"),
                                                                    (State.SCHEDULED, 1, "w")]
        detail = hist[-1].detail or ""
        prefix, _, rest = detail.partition("retry 1 of 3 in ")
        assert prefix == "" and rest.endswith(" s"), detail  # the delay in seconds, as every store writes it
        assert abs(float(rest[:-2]) - (retry_at - hist[-1].ts)) < 0.01, detail
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.SCHEDULED and abs(got.ready_ts - retry_at) < 1e-3

    async def test_exact_history_of_cancels(self, store: Store) -> None:
        queued, running, retried = _inst(), _inst(), _inst()
        await self._claimed(store, running, retried)
        await store.enqueue([queued], node="n0")
        for inst in (queued, running, retried):
            await store.cancel(inst.uuid, node="op")
        assert await store.finish("w", [Outcome(running.uuid, State.CANCELED, detail="canceled while running",
                                                attempt=1)]) == [True]
        assert await store.finish("w", [Outcome(retried.uuid, State.TERMINATED, error="E: x",
                                                retry_at=time.time(), attempt=1)]) == [True]
        created = [(State.CREATED, 0, "n0", None), (State.SCHEDULED, 0, "n0", None)]
        assert await self._history(store, queued) == [*created, (State.CANCELED, 0, "op", "canceled before it ran")]
        assert await self._history(store, running) == [
            *created, (State.PROCESSING, 1, "w", None), (State.CANCELED, 1, "w", "canceled while running")]
        assert await self._history(store, retried) == [
            *created, (State.PROCESSING, 1, "w", None), (State.TERMINATED, 1, "w", "E: x"),
            (State.CANCELED, 1, "w", "canceled")]
        for inst in (queued, running, retried):
            got = await store.get_instance(inst.uuid)
            assert got is not None and got.state is State.CANCELED, inst.uuid

    async def test_exact_history_of_a_hand_back_and_of_reclaims(self, store: Store) -> None:
        handed, lost, lost_canceled = _inst(), _inst(), _inst()
        await self._claimed(store, handed)
        await store.release("w", [handed.uuid])
        assert await self._history(store, handed) == [
            (State.CREATED, 0, "n0", None), (State.SCHEDULED, 0, "n0", None),
            (State.PROCESSING, 1, "w", None), (State.SCHEDULED, 0, "w", "released by node w")]
        await store.clear_instances(Query())
        await self._claimed(store, lost, lost_canceled, node="dead", lease=self.short_lease)
        await store.cancel(lost_canceled.uuid, node="op")
        await anyio.sleep(self.short_lease + 0.3)
        assert [i.uuid for i in await store.reclaim_expired("live")] == [lost.uuid]
        created = [(State.CREATED, 0, "n0", None), (State.SCHEDULED, 0, "n0", None),
                   (State.PROCESSING, 1, "dead", None)]
        assert await self._history(store, lost) == [
            *created, (State.SCHEDULED, 1, "live", "attempt 1 abandoned: node dead lost its lease; re-queued")]
        assert await self._history(store, lost_canceled) == [
            *created, (State.CANCELED, 1, "live", "canceled; node dead lost its lease")]

    async def _abandon(self, store: Store, uid: str, node: str = "dead") -> list[Instance]:
        """Claim ``uid`` (it must be first in the queue) for ``node``, let the lease lapse, reclaim."""
        [got] = await store.claim(node, 1, self.short_lease)
        assert got.uuid == uid
        await anyio.sleep(self.short_lease + 0.3)
        return await store.reclaim_expired("live")

    async def test_finish_of_a_stale_attempt_writes_nothing(self, store: Store) -> None:
        # the node lost its lease (cut off from the store), the instance was re-queued and the same node
        # claimed it again: the first attempt's outcome must not be taken as the second's
        inst = _inst()
        await store.enqueue([inst])
        assert [i.uuid for i in await self._abandon(store, inst.uuid, node="n1")] == [inst.uuid]
        [again] = await store.claim("n1", 10, 30.0)
        assert again.attempts == 2
        stale = Outcome(inst.uuid, State.COMPLETED, result="from attempt 1", attempt=1)
        assert await store.finish("n1", [stale]) == [False]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.PROCESSING and got.result is None
        oks, _ = await store.finish_and_claim("n1", [stale], 0, 30.0)
        assert oks == [False]
        fresh = Outcome(inst.uuid, State.COMPLETED, result="from attempt 2", attempt=2)
        assert await store.finish("n1", [fresh]) == [True]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.COMPLETED and got.result == "from attempt 2"
        hist = await store.lookup_history(Query(instance=inst))
        assert [(h.state, h.attempt, h.node) for h in hist] == [
            (State.CREATED, 0, None), (State.SCHEDULED, 0, None), (State.PROCESSING, 1, "n1"),
            (State.SCHEDULED, 1, "live"), (State.PROCESSING, 2, "n1"), (State.COMPLETED, 2, "n1")]

    async def test_headers_round_trip(self, store: Store) -> None:
        plain, marked = _inst(), _inst()
        marked.headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                          "tenant": "ünï", "empty": ""}
        await store.enqueue([plain, marked])
        got = {i.uuid: i.headers for i in await store.list_instances(Query())}
        assert got == {plain.uuid: {}, marked.uuid: marked.headers}
        claimed = {i.uuid: i.headers for i in await _claim_all(store, "n1")}
        assert claimed == got
        assert await store.finish("n1", [Outcome(marked.uuid, State.COMPLETED, attempt=1)]) == [True]
        final = await store.get_instance(marked.uuid)
        assert final is not None and final.headers == marked.headers

    async def test_max_abandons_round_trips(self, store: Store) -> None:
        a, b, c = _inst(max_abandons=None), _inst(max_abandons=7), _inst()
        await store.enqueue([a, b, c])
        got = {i.uuid: i.max_abandons for i in await store.list_instances(Query())}
        assert got == {a.uuid: None, b.uuid: 7, c.uuid: 5}
        claimed = {i.uuid: i.max_abandons for i in await _claim_all(store, "n1")}
        assert claimed == got

    async def test_abandon_limit_ends_terminated(self, store: Store) -> None:
        inst = _inst(max_abandons=2)
        await store.enqueue([inst])
        assert [i.uuid for i in await self._abandon(store, inst.uuid)] == [inst.uuid]
        assert await self._abandon(store, inst.uuid) == []  # the second abandon is the last
        message = abandon_limit_message(2, "dead", 2)
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.TERMINATED and got.error == message
        assert got.abandoned == 2 and got.finished_ts is not None
        assert await store.claim("live", 10, 30.0) == []
        assert (await store.queue_counts()).get("k", 0) == 0
        hist = await store.lookup_history(Query(instance=inst))
        assert [(h.state, h.attempt, h.node) for h in hist] == [
            (State.CREATED, 0, None), (State.SCHEDULED, 0, None), (State.PROCESSING, 1, "dead"),
            (State.SCHEDULED, 1, "live"), (State.PROCESSING, 2, "dead"), (State.TERMINATED, 2, "live")]
        assert hist[-1].detail == message
        assert await store.wait_final(inst.uuid, 1.0) is not None

    async def test_no_abandon_limit_requeues_for_ever(self, store: Store) -> None:
        inst = _inst(max_abandons=None)
        await store.enqueue([inst])
        for _ in range(3):
            assert [i.uuid for i in await self._abandon(store, inst.uuid)] == [inst.uuid]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.SCHEDULED and got.abandoned == 3

    async def test_suspect_instance_is_claimed_alone(self, store: Store) -> None:
        suspect = _inst(priority=1)
        await store.enqueue([suspect])
        await self._abandon(store, suspect.uuid)
        first, second, later = _inst(priority=0), _inst(priority=1), _inst(priority=1)
        await store.enqueue([first, second, later])
        # order: first (priority 0), then the suspect (priority 1, ready earliest), then second, later
        assert [i.uuid for i in await store.claim("n1", 10, 30.0)] == [first.uuid]
        [alone] = await store.claim("n1", 10, 30.0)
        assert alone.uuid == suspect.uuid and alone.abandoned == 1
        assert [i.uuid for i in await store.claim("n1", 10, 30.0)] == [second.uuid, later.uuid]
        # finish_and_claim keeps the rule too
        other = _inst(priority=5)
        await store.enqueue([other])
        await self._abandon(store, other.uuid, node="n2")
        tail = _inst(priority=5)
        await store.enqueue([tail])
        _, claimed = await store.finish_and_claim("n1", [Outcome(first.uuid, State.COMPLETED, attempt=1)], 10, 30.0)
        assert [i.uuid for i in claimed] == [other.uuid]

    async def test_release_hands_back_without_counting_the_attempt(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        await store.release("n2", [inst.uuid])  # not n2's: nothing happens
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.PROCESSING
        await store.release("n1", [inst.uuid])
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.SCHEDULED and got.attempts == 0
        [again] = await store.claim("n2", 10, 30.0)
        assert again.attempts == 1

    # -- finish ----------------------------------------------------------------------------------------
    async def test_finish_completed_keeps_result(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        result = {"sum": 42, "items": [1, 2.5, "x", None], "nested": {"ok": True}}
        assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, result=result)]) == [True]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.COMPLETED and got.result == result
        assert got.finished_ts is not None and got.lease_ts is None
        assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED)]) == [False]

    async def test_finish_by_another_node_writes_nothing(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        assert await store.finish("n2", [Outcome(inst.uuid, State.TERMINATED, error="x")]) == [False]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.PROCESSING and got.error is None
        assert _states(await store.lookup_history(Query(instance=inst)))[-1] is State.PROCESSING

    async def test_finish_many_at_once(self, store: Store) -> None:
        insts = [_inst(args=[i]) for i in range(20)]
        await store.enqueue(insts)
        claimed = await _claim_all(store, "n1")
        oks = await store.finish("n1", [Outcome(i.uuid, State.COMPLETED, result=i.args[0]) for i in claimed])
        assert oks == [True] * 20
        done = await store.list_instances(Query(state=State.COMPLETED))
        assert sorted(i.result for i in done) == list(range(20))

    async def test_finish_with_retry_requeues_after_backoff(self, store: Store) -> None:
        inst = _inst()
        inst.max_retries = 1
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        retry_at = time.time() + 0.5
        oc = Outcome(inst.uuid, State.TERMINATED, error="ValueError: boom", retry_at=retry_at)
        assert await store.finish("n1", [oc]) == [True]
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.SCHEDULED and got.error == "ValueError: boom"
        assert abs(got.ready_ts - retry_at) < 0.01
        assert await store.claim("n1", 10, 30.0) == []
        got2: list[Instance] = []
        with anyio.fail_after(5):
            while not got2:
                await store.wait_ready(1.0)
                got2 = await store.claim("n1", 10, 30.0)
        assert time.time() >= retry_at - 0.05
        assert got2[0].attempts == 2
        await store.finish("n1", [Outcome(inst.uuid, State.TIMED_OUT, error="JobTimeoutError: slow")])
        hist = await store.lookup_history(Query(instance=inst))
        assert _states(hist) == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.TERMINATED,
                                 State.SCHEDULED, State.PROCESSING, State.TIMED_OUT]
        assert hist[3].detail == "ValueError: boom"
        final = await store.get_instance(inst.uuid)
        assert final is not None and final.state is State.TIMED_OUT and final.attempts == 2

    async def test_retry_after_cancel_asked_is_canceled(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        await store.cancel(inst.uuid)
        await store.finish("n1", [Outcome(inst.uuid, State.TERMINATED, error="E: x", retry_at=time.time())])
        got = await store.get_instance(inst.uuid)
        assert got is not None and got.state is State.CANCELED
        assert await store.claim("n1", 10, 30.0) == []

    async def test_wait_final(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        got = await store.wait_final(inst.uuid, 0.2)
        assert got is not None and got.state is State.SCHEDULED
        result: list[Instance | None] = []

        async def waiter() -> None:
            result.append(await store.wait_final(inst.uuid, 10.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            await store.claim("n1", 10, 30.0)
            await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, result="r")])
        assert result[0] is not None and result[0].state is State.COMPLETED and result[0].result == "r"
        assert await store.wait_final(str(_uuid.uuid4()), 0.1) is None

    # -- cancel ----------------------------------------------------------------------------------------
    async def test_cancel_waiting_instance_is_final_at_once(self, store: Store) -> None:
        now_i, later = _inst(), _inst(delay=60)
        await store.enqueue([now_i, later])
        for inst in (now_i, later):
            got = await store.cancel(inst.uuid)
            assert got is not None and got.state is State.CANCELED
            assert _states(await store.lookup_history(Query(instance=inst)))[-1] is State.CANCELED
        assert await store.claim("n1", 10, 30.0) == []
        assert await store.cancel(str(_uuid.uuid4())) is None

    async def test_cancel_final_instance_changes_nothing(self, store: Store) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED)])
        got = await store.cancel(inst.uuid)
        assert got is not None and got.state is State.COMPLETED

    async def test_cancel_running_instance_notifies(self, store: Store, make_store: Callable[[], Store]) -> None:
        inst = _inst()
        await store.enqueue([inst])
        await store.claim("n1", 10, 30.0)
        heard: list[str] = []

        async def listen() -> None:
            async with aclosing(store.cancel_notifications()) as notes:
                async for uid in notes:
                    heard.append(uid)
                    return

        other = make_store()
        if other is not store:
            await other.start()
        try:
            with anyio.move_on_after(3.0):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listen)
                    await anyio.sleep(0.2)
                    got = await other.cancel(inst.uuid)
                    assert got is not None and got.state is State.PROCESSING and got.cancel_requested
            report = await store.extend_leases("n1", [inst.uuid], 30.0)
            assert inst.uuid in report.cancel_requested  # the heartbeat carries it in any case
            if heard:
                assert heard == [inst.uuid]
        finally:
            if other is not store:
                await other.stop()
        await store.finish("n1", [Outcome(inst.uuid, State.CANCELED)])
        final = await store.get_instance(inst.uuid)
        assert final is not None and final.state is State.CANCELED

    @staticmethod
    async def _chain(store: Store) -> tuple[str, Instance, Instance]:
        """A chain (its id) whose first occurrence runs and whose second waits, chained."""
        sid = str(_uuid.uuid4())
        await store.enqueue([_inst(schedule_id=sid)])
        [running] = await store.claim("n1", 10, 30.0)
        second = _inst(schedule_id=sid, delay=60)
        assert await store.enqueue([second], chained=True) == [True]
        return sid, running, second

    async def test_cancel_of_an_occurrence_cancels_it_only(self, store: Store) -> None:
        sid, running, second = await self._chain(store)
        got = await store.cancel(running.uuid)
        assert got is not None and got.state is State.PROCESSING and got.cancel_requested
        got2 = await store.get_instance(second.uuid)
        assert got2 is not None and got2.state is State.SCHEDULED  # the other occurrence is untouched
        canceled = await store.cancel(second.uuid)
        assert canceled is not None and canceled.state is State.CANCELED
        assert await store.enqueue([_inst(schedule_id=sid, delay=120)], chained=True) == [True]  # not cut

    async def test_cancel_schedule_stops_the_chain(self, store: Store) -> None:
        sid, running, second = await self._chain(store)
        other = _inst(schedule_id=str(_uuid.uuid4()), delay=60)
        await store.enqueue([other])
        canceled = await store.cancel_schedule(sid, node="op")
        assert [(i.uuid, i.state) for i in canceled] == [(second.uuid, State.CANCELED)]
        assert await self._history(store, second) == [(State.CREATED, 0, None, None), (State.SCHEDULED, 0, None, None),
                                                      (State.CANCELED, 0, "op", "canceled before it ran")]
        still = await store.get_instance(running.uuid)  # a running occurrence is left to finish
        assert still is not None and still.state is State.PROCESSING and not still.cancel_requested
        untouched = await store.get_instance(other.uuid)
        assert untouched is not None and untouched.state is State.SCHEDULED
        third = _inst(schedule_id=sid, delay=120)
        assert await store.enqueue([third], chained=True) == [False]  # the chain is cut
        assert await store.get_instance(third.uuid) is None
        assert await store.cancel_schedule(str(_uuid.uuid4())) == []  # an unknown chain: nothing to cancel
        fresh = _inst(schedule_id=sid, delay=180)
        assert await store.enqueue([fresh]) == [True]  # scheduling it anew re-opens it
        assert await store.enqueue([_inst(schedule_id=sid, delay=240)], chained=True) == [True]

    async def test_schedule_records_compare_and_set(self, store: Store, make_store: Callable[[], Store]) -> None:
        sid = f"conformance-{_uuid.uuid4()}"
        assert await store.get_schedule_record(sid) is None
        data = {"kind": "k", "n": [1, "two", None], "nested": {"ü": 1.5}}
        v1 = await store.put_schedule_record(sid, data, version=None)
        assert v1 is not None
        assert await store.put_schedule_record(sid, {"other": 1}, version=None) is None  # create-only
        other = make_store()
        if other is not store:
            await other.start()
        try:
            got = await other.get_schedule_record(sid)  # another node sees it
            assert got is not None and (got.id, got.data, got.version) == (sid, data, v1)
            v2 = await other.put_schedule_record(sid, {**data, "n": 2}, version=v1)
            assert v2 is not None and v2 != v1
        finally:
            if other is not store:
                await other.stop()
        assert await store.put_schedule_record(sid, {"stale": True}, version=v1) is None  # lost the race
        got = await store.get_schedule_record(sid)
        assert got is not None and got.data["n"] == 2 and got.version == v2
        assert sid in {r.id for r in await store.list_schedule_records()}
        assert not await store.delete_schedule_record(sid, version=v1)
        assert await store.delete_schedule_record(sid, version=v2)
        assert await store.get_schedule_record(sid) is None
        assert sid not in {r.id for r in await store.list_schedule_records()}

    # -- listing and clearing ----------------------------------------------------------------------------
    async def test_list_instances_by_query(self, store: Store) -> None:
        t = time.time()
        a = _inst("alpha", ts=t - 100)
        b = _inst("beta", ts=t - 50)
        c = _inst("alpha", ts=t)
        await store.enqueue([a, b, c])
        await store.claim("n1", 1, 30.0)  # takes a (oldest ready)
        assert [i.uuid for i in await store.list_instances(Query())] == [a.uuid, b.uuid, c.uuid]
        assert [i.uuid for i in await store.list_instances(Query(kind="alpha"))] == [a.uuid, c.uuid]
        assert [i.uuid for i in await store.list_instances(Query(state=State.PROCESSING))] == [a.uuid]
        assert [i.uuid for i in await store.list_instances(Query(state=[State.SCHEDULED]))] == [b.uuid, c.uuid]
        assert [i.uuid for i in await store.list_instances(Query(since=t - 60))] == [b.uuid, c.uuid]
        assert [i.uuid for i in await store.list_instances(Query(until=t - 60))] == [a.uuid]
        assert [i.uuid for i in await store.list_instances(Query(instance=b))] == [b.uuid]
        assert [i.uuid for i in await store.list_instances(Query(limit=2))] == [b.uuid, c.uuid]

    async def test_clear_instances_keeps_running_ones(self, store: Store) -> None:
        a, b = _inst(), _inst()
        await store.enqueue([a, b])
        await store.claim("n1", 1, 30.0)
        assert await store.clear_instances(Query()) == 1
        left = await store.list_instances(Query())
        assert [i.uuid for i in left] == [a.uuid]
        assert await store.claim("n1", 10, 30.0) == []

    async def test_queue_counts_and_oldest_ready(self, store: Store) -> None:
        t = time.time()
        a, b = _inst("alpha", ts=t - 5), _inst("alpha", ts=t - 2)
        c, d = _inst("beta", ts=t - 1), _inst("beta", delay=60)
        await store.enqueue([a, b, c, d])
        assert await store.queue_counts() == {"alpha": 2, "beta": 2}
        oldest = await store.oldest_ready()
        assert set(oldest) == {"alpha", "beta"}
        assert abs(oldest["alpha"] - (t - 5)) < 0.01 and abs(oldest["beta"] - (t - 1)) < 0.01
        [got] = await store.claim("n1", 1, 30.0)
        assert got.uuid == a.uuid
        await store.cancel(c.uuid)
        assert await store.queue_counts() == {"alpha": 1, "beta": 1}
        oldest = await store.oldest_ready()
        assert set(oldest) == {"alpha"} and abs(oldest["alpha"] - (t - 2)) < 0.01  # d is not due yet
        assert await store.queue_stats() == ({"alpha": 1, "beta": 1}, oldest)

    # -- history and logs --------------------------------------------------------------------------------
    async def test_history_query_and_clear(self, store: Store) -> None:
        a, b = _inst("alpha"), _inst("beta")
        await store.enqueue([a])
        mid = time.time()
        await anyio.sleep(0.01)
        await store.enqueue([b])
        hist = await store.lookup_history(Query())
        assert [h.ts for h in hist] == sorted(h.ts for h in hist)
        assert {h.uuid for h in await store.lookup_history(Query(kind="beta"))} == {b.uuid}
        assert {h.uuid for h in await store.lookup_history(Query(since=mid))} == {b.uuid}
        assert {h.uuid for h in await store.lookup_history(Query(until=mid))} == {a.uuid}
        assert _states(await store.lookup_history(Query(state=State.CREATED))) == [State.CREATED] * 2
        assert len(await store.lookup_history(Query(limit=1))) == 1
        assert await store.clear_history(Query(instance=a)) == 2
        assert await store.lookup_history(Query(instance=a)) == []
        assert len(await store.lookup_history(Query(instance=b))) == 2

    async def test_logs_append_query_clear(self, store: Store) -> None:
        t = time.time()
        recs = [LogRecord("u1", "alpha", LogLevel.INFO, "one", t - 2, 1, "n1"),
                LogRecord("u1", "alpha", LogLevel.WARN, "two ünï", t - 1, 1, "n1"),
                LogRecord("u2", "beta", LogLevel.ERROR, "three", t, 2, "n2")]
        await store.append_logs(recs[2:])
        await store.append_logs(recs[:2])
        got = await store.lookup_logs(Query())
        assert [(r.message, r.level, r.attempt, r.node) for r in got] == [
            ("one", LogLevel.INFO, 1, "n1"), ("two ünï", LogLevel.WARN, 1, "n1"), ("three", LogLevel.ERROR, 2, "n2")]
        assert [r.message for r in await store.lookup_logs(Query(instance="u1"))] == ["one", "two ünï"]
        assert [r.message for r in await store.lookup_logs(Query(kind="beta"))] == ["three"]
        assert [r.message for r in await store.lookup_logs(Query(since=t - 1.5, until=t - 0.5))] == ["two ünï"]
        assert await store.clear_logs(Query(until=t - 0.5)) == 2
        assert [r.message for r in await store.lookup_logs(Query())] == ["three"]

    async def test_a_store_of_good_records_reports_none_corrupt(self, store: Store) -> None:
        # (each store's own tests corrupt its records by hand: only they know its layout)
        await store.enqueue([_inst(), _inst("beta")])
        assert await store.claim("n1", 1, 30) != []
        assert await store.corrupt_records() == []

    # -- two nodes on one store, through the Manager --------------------------------------------------
    async def test_two_managers_run_each_instance_once(self, make_store: Callable[[], Store]) -> None:
        ran: dict[int, int] = {}
        done = anyio.Event()
        n = 400

        async def body(i: int) -> int:
            ran[i] = ran.get(i, 0) + 1
            if len(ran) == n:
                done.set()
            await anyio.sleep(0)
            return i

        job = Job(kind="conformance.once", executor=body)
        async with Manager(make_store(), num_workers=4, node_id="node-a", autoload_plugins=False) as a, \
                Manager(make_store(), num_workers=4, node_id="node-b", autoload_plugins=False) as b:
            await a.clear_instance_history(Query())
            await b.register_job(Job(kind="conformance.once", executor=body))
            insts = await a.schedule_many(job, [(i,) for i in range(n)])
            with anyio.fail_after(30):
                await done.wait()
                for inst in insts[-5:]:
                    await a.wait(inst, timeout=10)
            assert sorted(ran) == list(range(n)) and set(ran.values()) == {1}
            nodes = {h.node for h in await a.lookup_instance_history(Query(state=State.PROCESSING))}
            assert nodes == {"node-a", "node-b"}

    async def test_dead_node_instance_reruns_elsewhere(self, make_store: Callable[[], Store]) -> None:
        started = anyio.Event()
        attempts: list[str] = []

        async def body(mgr: Manager) -> str:
            attempts.append(mgr.node_id)
            if mgr.node_id == "doomed":
                started.set()
                await anyio.sleep(3600)
            return mgr.node_id

        lease = self.short_lease * 2
        doomed = Manager(make_store(), num_workers=1, node_id="doomed", lease_time=lease, autoload_plugins=False)
        await doomed.start()
        stopped = False
        try:
            inst = await doomed.schedule_job(Job(kind="conformance.dead", executor=body))
            with anyio.fail_after(10):
                await started.wait()
            await doomed.stop(abandon=True)
            stopped = True
            async with Manager(make_store(), num_workers=1, node_id="survivor", lease_time=lease,
                               autoload_plugins=False) as survivor:
                await survivor.register_job(Job(kind="conformance.dead", executor=body))
                done = await survivor.wait(inst, timeout=lease * 4 + 10)
                assert done.state is State.COMPLETED and done.result == "survivor" and done.attempts == 2
                hist = await survivor.lookup_instance_history(Query(instance=inst))
                states = [(h.state, h.node) for h in hist]
                assert states[:3] == [(State.CREATED, "doomed"), (State.SCHEDULED, "doomed"),
                                      (State.PROCESSING, "doomed")]
                assert states[-2:] == [(State.PROCESSING, "survivor"), (State.COMPLETED, "survivor")]
                abandoned = [h for h in hist if h.state is State.SCHEDULED and h.detail]
                assert abandoned and "doomed" in (abandoned[0].detail or "")
            assert attempts == ["doomed", "survivor"]
        finally:
            if not stopped:
                await doomed.stop(abandon=True)

    async def test_cancel_from_another_node_stops_running_instance(self, make_store: Callable[[], Store]) -> None:
        started = anyio.Event()

        async def body() -> None:
            started.set()
            await anyio.sleep(3600)

        async with Manager(make_store(), num_workers=1, node_id="runner", autoload_plugins=False) as runner, \
                Manager(make_store(), num_workers=0, node_id="operator", autoload_plugins=False) as operator:
            inst = await runner.schedule_job(Job(kind="conformance.cancel", executor=body))
            with anyio.fail_after(10):
                await started.wait()
            t0 = time.monotonic()
            await operator.cancel_instance(inst)
            done = await operator.wait(inst, timeout=runner.lease_time)
            assert done.state is State.CANCELED
            assert time.monotonic() - t0 < runner.lease_time / 3 + 5
            # the store holds CANCELED as soon as the runner's finish is written; the worker lets go of
            # the instance when that write returns, a moment later (a body still sleeping never would)
            with anyio.fail_after(5):
                while (cur := runner.workers[0].current) is not None and cur.uuid == inst.uuid:
                    await anyio.sleep(0.01)

    async def test_cancel_of_a_claimed_instance_returns_once_it_cannot_start(
            self, make_store: Callable[[], Store]) -> None:
        # claimed by the runner (PROCESSING in the store) but held before its executor starts, by a slow
        # state-change processor: the cancel from another node returns only when the runner has
        # stopped it, and the executor never starts
        claimed, release = anyio.Event(), anyio.Event()
        ran: list[str] = []

        async def hold(inst: Instance, state: State) -> None:
            if state is State.PROCESSING:
                claimed.set()
                await release.wait()

        async def body() -> None:
            ran.append("started")

        job = Job(kind="conformance.cancel-claimed", executor=body, state_change_processor=hold)
        async with Manager(make_store(), num_workers=1, node_id="runner", autoload_plugins=False) as runner, \
                Manager(make_store(), num_workers=0, node_id="operator", autoload_plugins=False) as operator:
            inst = await runner.schedule_job(job)
            with anyio.fail_after(10):
                await claimed.wait()
            returned: list[Instance] = []

            async def cancel() -> None:
                returned.append(await operator.cancel_instance(inst, wait=30))

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel)
                with anyio.fail_after(10):
                    while not ((cur := await operator.store.get_instance(inst.uuid)) and cur.cancel_requested):
                        await anyio.sleep(0.01)
                # the runner learns of the cancel (notification or heartbeat) while its processor holds on
                with anyio.fail_after(runner.lease_time):
                    while runner._running.get(inst.uuid) is None or \
                            runner._running[inst.uuid].stop_reason != "canceled":
                        await anyio.sleep(0.01)
                assert not returned  # still waiting for the runner to confirm
                release.set()
            [done] = returned
            assert done.state is State.CANCELED and ran == []
            hist = await operator.lookup_instance_history(Query(instance=inst))
            assert [(h.state, h.attempt, h.node, h.detail) for h in hist] == [
                (State.CREATED, 0, "runner", None), (State.SCHEDULED, 0, "runner", None),
                (State.PROCESSING, 1, "runner", None), (State.CANCELED, 1, "runner", "canceled before it started")]

    async def test_cancel_that_cannot_be_confirmed_says_so(self, make_store: Callable[[], Store]) -> None:
        # the node holding the instance is gone (crashed, its lease not expired yet): the cancel returns
        # after its wait with the instance still PROCESSING and cancel_requested, not as CANCELED
        started = anyio.Event()

        async def body() -> None:
            started.set()
            await anyio.sleep(3600)

        doomed = Manager(make_store(), num_workers=1, node_id="doomed", lease_time=60, autoload_plugins=False)
        await doomed.start()
        try:
            inst = await doomed.schedule_job(Job(kind="conformance.cancel-lost", executor=body))
            with anyio.fail_after(10):
                await started.wait()
        finally:
            await doomed.stop(abandon=True)
        async with Manager(make_store(), num_workers=0, node_id="operator", autoload_plugins=False) as operator:
            got = await operator.cancel_instance(inst, wait=0.3)
            assert got.state is State.PROCESSING and got.cancel_requested

