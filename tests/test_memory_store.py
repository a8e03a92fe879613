"""The memory store passes the store conformance suite unchanged (also with finishes written the way
the Manager writes them for etcd, and for Valkey and Redis); how a lingering finish write behaves."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import anyio
import pytest
from gojob_core import Instance, Job, Manager, MemoryStore, Store
from gojob_core.abc import Outcome
from gojob_core.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = MemoryStore()  # one object: every "node" in a test shares it
        return lambda: shared


class _HandoffMemoryStore(MemoryStore):
    FINISH_MODE = "handoff"


class _SplitMemoryStore(MemoryStore):
    FINISH_MODE = "split"
    FINISH_LINGER = 0.001  # as Valkey and Redis


class TestMemoryStoreHandoffFinishes(StoreConformance):
    """The suite again with the Manager writing finishes the way it does for etcd (a writer task)."""

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = _HandoffMemoryStore()
        return lambda: shared


class TestMemoryStoreSplitFinishes(StoreConformance):
    """The suite again with the Manager writing finishes the way it does for Valkey and Redis."""

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = _SplitMemoryStore()
        return lambda: shared


class _LingeringStore(MemoryStore):
    """Finish writes as for Valkey and Redis, with a long linger; counts the outcomes in each write."""

    FINISH_MODE = "split"
    FINISH_LINGER = 0.2

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    async def finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                               lease: float) -> tuple[list[bool], list[Instance]]:
        self.writes.append(len(outcomes))
        return await super().finish_and_claim(node, outcomes, limit, lease)


async def test_a_node_the_queue_has_nothing_for_lingers_and_writes_close_finishes_together() -> None:
    store = _LingeringStore()
    async with Manager(store, num_workers=10) as mgr:
        job = Job(kind="echo", executor=lambda i: i)
        insts = []
        for i in range(5):  # one at a time, 10 ms apart: each ends before the next is scheduled
            insts.append(await mgr.schedule_job(job, arguments=(i,)))
            await anyio.sleep(0.01)
        done = [await mgr.wait(inst, timeout=5) for inst in insts]
    assert [d.result for d in done] == [0, 1, 2, 3, 4]
    assert sum(store.writes) == 5 and len(store.writes) <= 2, store.writes


async def test_a_node_with_work_waiting_writes_its_finishes_without_lingering() -> None:
    store = _LingeringStore()
    async with Manager(store, num_workers=1) as mgr:
        job = Job(kind="echo", executor=lambda i: i)
        insts = await mgr.schedule_many(job, [(i,) for i in range(5)])
        t = time.monotonic()
        done = [await mgr.wait(inst, timeout=5) for inst in insts]
        elapsed = time.monotonic() - t
    assert [d.result for d in done] == [0, 1, 2, 3, 4]
    assert elapsed < 0.5, f"5 queued instances on one worker took {elapsed:.2f} s: finishes lingered (0.2 s each)"
