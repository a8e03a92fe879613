"""A cancel storm: another node cancels 300 of 400 instances while some run and the others wait.

The cancels aim at the claim frontier (instances in queue order, from a few already started to some not
claimed yet), where a claimed instance is about to start. Invariants (issue 19, defect 2): once
``cancel_instance`` has returned the instance final (CANCELED) or not running, its executor never starts
and no run of it goes on; a return of PROCESSING carries ``cancel_requested`` (the Manager could not
confirm the stop within its wait; the executor may then still start, which is counted in the notes);
the store's final states agree. The instances not canceled run once each. The stop latency (call to the
executor's end) of the executors running when their cancel was called is the recovery column.
"""

from __future__ import annotations

import collections
import random
import time

import anyio
import pytest
from fault_support import CancelCall, Verdict, check_cancels, check_runs, lookup_all, until

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.slow]

N = 400
N_CANCEL = 300
CANCELLERS = 8
#: how long cancel_instance may wait for the holding node to stop a claimed instance
WAIT = 5.0


async def test_cancel_storm_from_another_node(store: str, cluster) -> None:
    rng = random.Random(2)
    t0 = time.time()
    timeouts: list[str] = []
    async with cluster() as c:
        await c.start(["a", "b"], workers=8)
        insts = await c.client.schedule_many("work", [(i, rng.randint(20, 200)) for i in range(N)])
        uuids = [i.uuid for i in insts]
        targets = rng.sample(uuids, N_CANCEL)

        async def some_started() -> bool:
            return sum(1 for ev in c.events() if ev.e == "s") >= N // 10

        await until(some_started, 30, lambda: "nothing started\n" + c.logs(), cluster=c, interval=0.01)
        calls: list[CancelCall] = []
        errors: list[str] = []
        index = {u: k for k, u in enumerate(uuids)}
        todo = sorted(targets, key=index.__getitem__, reverse=True)  # pop() takes them in queue order
        frontier = 0  # the highest queue position started so far

        async def track() -> None:
            nonlocal frontier
            while todo:
                started = [index[ev.uuid] for ev in c.events() if ev.e == "s" and ev.uuid in index]
                frontier = max(started, default=0)
                await anyio.sleep(0.005)

        async def canceller(seed: int) -> None:
            lead = random.Random(seed)
            while todo:
                uid = todo.pop()
                # aim at the claim frontier: instances just claimed, about to be, or just started
                ahead = lead.randint(-4, 16)
                with anyio.move_on_after(0.05):
                    while index[uid] > frontier + ahead:
                        await anyio.sleep(0.002)
                called = time.time()
                try:
                    got = await c.client.cancel_instance(uid, wait=WAIT)
                except Exception as exc:  # every error is a finding, reported below
                    errors.append(f"{uid}: cancel_instance raised {exc!r}")
                    continue
                calls.append(CancelCall(uid, called, time.time(), got.state, bool(got.cancel_requested), WAIT))

        t_storm = time.time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(track)
            for k in range(CANCELLERS):
                tg.start_soon(canceller, k)
        storm = time.time() - t_storm
        finals: dict[str, object] = {}

        async def all_final() -> bool:
            nonlocal finals
            finals = await lookup_all(c.client, "work")
            return len(finals) == N and all(i.state.is_final for i in finals.values())

        await until(all_final, 60, lambda: "not final: " + str(collections.Counter(
            i.state.value for i in finals.values())) + "\n" + c.logs(), cluster=c, interval=0.2,
                    timeouts=timeouts)
        await anyio.sleep(0.3)  # an executor that (wrongly) starts after its instance is final shows up
        events = c.events()
    v = Verdict("cancel storm", store, faults=len(calls), fault_kind="cancels")
    v.problems += timeouts
    v.problems += errors
    check_cancels(v, calls, events, finals, t0=t0)
    rest = sorted(set(uuids) - set(targets))
    check_runs(v, rest, events, [], finals=finals, t0=t0, max_runs=1)
    v.instances = N
    starts = collections.Counter(ev.uuid for ev in events if ev.e == "s")
    twice = [u for u in targets if starts[u] > 1]
    v.unexpected += [f"{u}: canceled instance started {starts[u]} times (no node died)" for u in twice]
    returned = collections.Counter(
        f"{cc.state.value}{'+cancel_requested' if cc.cancel_requested else ''}" for cc in calls)
    ran = sum(1 for u in targets if starts[u])
    v.notes.append(f"cancel returned {dict(returned)}; {ran} of the canceled had started; storm {storm:.2f}s")
    v.wall = time.time() - t0
    v.report()
