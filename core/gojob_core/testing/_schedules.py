"""Schedule scenarios of the store conformance suite: schedules kept in the store and changed from any
node, each fire run once across nodes, a misfire skipped with its history record. Mixed into
:class:`~gojob_core.testing.StoreConformance`, so that every store runs them through two Managers.
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid as _uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from .._instance import Instance
from .._job import Job
from .._manager import Manager
from .._records import Query
from .._schedules import Schedule
from .._state import State
from .._triggers import DateTrigger, IntervalTrigger
from ..abc import Store
from ..errors import ScheduleNotFoundError

__all__ = ["ScheduleScenarios"]


def _node(make_store: Callable[[], Store], name: str, workers: int = 0, **options: Any) -> Manager:
    return Manager(make_store(), num_workers=workers, node_id=name, autoload_plugins=False, **options)


async def _poll(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Wait until ``check()`` (awaited) returns something true; returns it (a polled state, never a sleep
    that stands for an event)."""
    with anyio.fail_after(timeout):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.02)


class ScheduleScenarios:
    """Schedules through the Manager on the store under test (needs the ``make_store`` fixture)."""

    async def test_schedules_change_from_any_node(self, make_store: Callable[[], Store]) -> None:
        kind = f"conformance.sched.{_uuid.uuid4().hex[:8]}"
        job = Job(kind=kind, executor=lambda n: n)
        async with _node(make_store, "node-a") as a, _node(make_store, "node-b") as b:
            await b.register_job(Job(kind=kind, executor=lambda n: n))
            added = await a.add_schedule(job, IntervalTrigger(_dt.timedelta(hours=1)), id=f"s-{kind}",
                                         arguments=(7,), max_retries=2)
            assert added.state == "active" and added.next_fire_ts is not None and added.runs == 1
            seen = await b.get_schedule(added.id)
            assert (seen.kind, seen.args, seen.max_retries, seen.next_fire_ts) == (kind, [7], 2, added.next_fire_ts)
            assert added.id in {s.id for s in await b.list_schedules(kind=kind)}
            [pending] = await a.lookup_instances(Query(kind=kind))
            assert (pending.state, pending.schedule_id, pending.ready_ts) == (State.SCHEDULED, added.id,
                                                                              added.next_fire_ts)

            paused = await b.pause_schedule(added.id)
            assert paused.state == "paused" and paused.next_fire_ts is None
            assert (await a.get_schedule(added.id)).state == "paused"
            assert (await a.lookup_instance(pending)).state is State.CANCELED  # the pending fire goes

            resumed = await a.resume_schedule(added.id)
            assert resumed.state == "active" and resumed.next_fire_ts is not None
            waiting = await b.lookup_instances(Query(kind=kind, state=State.SCHEDULED))
            assert [w.ready_ts for w in waiting] == [resumed.next_fire_ts]

            updated = await b.update_schedule(added.id, trigger=IntervalTrigger(_dt.timedelta(hours=2)),
                                              arguments=(8,))
            assert isinstance(updated.trigger, IntervalTrigger) and updated.trigger.every == _dt.timedelta(hours=2)
            assert (await a.get_schedule(added.id)).args == [8]
            [new_pending] = await a.lookup_instances(Query(kind=kind, state=State.SCHEDULED))
            assert new_pending.args == [8] and new_pending.ready_ts == updated.next_fire_ts
            assert waiting[0].uuid != new_pending.uuid
            assert (await a.lookup_instance(waiting[0])).state is State.CANCELED  # replaced by the new one

            await a.remove_schedule(added.id)
            with pytest.raises(ScheduleNotFoundError, match=added.id):
                await b.get_schedule(added.id)
            assert await b.lookup_instances(Query(kind=kind, state=State.SCHEDULED)) == []
            with pytest.raises(ScheduleNotFoundError):
                await b.remove_schedule(added.id)

    async def test_each_fire_runs_once_across_two_nodes(self, make_store: Callable[[], Store]) -> None:
        kind = f"conformance.fires.{_uuid.uuid4().hex[:8]}"
        ran: list[tuple[str, str]] = []

        async def tick(instance: Instance, manager: Manager) -> None:
            ran.append((instance.uuid, manager.node_id))

        runs = 5
        job_a = Job(kind=kind, executor=tick)
        job_b = Job(kind=kind, executor=tick)
        trigger = IntervalTrigger(0.2, start=time.time() + 0.2)
        async with _node(make_store, "node-a", 2) as a, _node(make_store, "node-b", 2) as b:
            sa = await a.add_schedule(job_a, trigger, max_runs=runs, coalesce="all")
            sb = await b.add_schedule(job_b, trigger, max_runs=runs, coalesce="all")
            assert sa.id == sb.id  # one schedule, whoever added it

            async def finished() -> Schedule | None:
                s = await a.get_schedule(sa.id)
                done = await a.lookup_instances(Query(kind=kind, state=State.COMPLETED))
                return s if s.state == "finished" and len(done) == runs else None

            final = await _poll(finished)
            assert final.runs == runs and final.next_fire_ts is None
            insts = await a.lookup_instances(Query(kind=kind))
            assert len(insts) == runs and {i.state for i in insts} == {State.COMPLETED}
            assert sorted(u for u, _ in ran) == sorted(i.uuid for i in insts)  # each fire ran exactly once
            ready = sorted(i.ready_ts for i in insts)
            assert all(abs((q - p) - 0.2) < 1e-6 for p, q in zip(ready, ready[1:]))  # one per fire time

    async def test_misfire_is_skipped_with_its_history_record(self, make_store: Callable[[], Store]) -> None:
        kind = f"conformance.misfire.{_uuid.uuid4().hex[:8]}"
        ran: list[str] = []
        job = Job(kind=kind, executor=lambda: ran.append("ran"))
        async with _node(make_store, "node-a", 1) as a:
            sched = await a.add_schedule(job, DateTrigger(time.time() - 60), misfire_grace_time=1)
            [occ] = await a.lookup_instances(Query(kind=kind))
            done = await a.wait(occ, timeout=30)
            assert done.state is State.CANCELED and ran == []
            history = await a.lookup_instance_history(Query(instance=occ))
            states = [r.state for r in history]
            assert states == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.CANCELED], history
            detail = history[-1].detail or ""
            assert detail.startswith("skipped: misfired") and "misfire_grace_time 1 s" in detail
            assert (await a.get_schedule(sched.id)).state == "finished"
