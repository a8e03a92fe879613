"""Checks every store shared by many nodes must pass across processes and failures (DESIGN.md §5: each
instance runs once; no job is lost when a node dies or the server restarts). A store's tests call them
with its URL; the Valkey, Redis and etcd stores do.
"""

from __future__ import annotations

import collections
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from .._job import Job
from .._manager import Manager
from .._records import Query
from .._state import State
from ..errors import StoreError
from .processes import Workers, block, record, wait_for

__all__ = ["check_each_instance_runs_once", "check_killed_worker_reruns", "check_restart_under_load"]


async def check_each_instance_runs_once(url: str, workers: Workers, *, n: int, n_procs: int,
                                        timeout: float = 100.0) -> None:
    """``n_procs`` worker processes on the store at ``url`` run ``n`` instances scheduled in one call:
    each exactly once, each COMPLETED after one attempt, with one PROCESSING record naming the node
    that ran it, and more than one process did work."""
    tag = uuid.uuid4().hex[:6]
    nodes = [f"w{k}-{tag}" for k in range(n_procs)]
    for node in nodes:
        workers.start(url, node, lease=10.0, num_workers=16)
    with anyio.fail_after(timeout):
        async with Manager(url, num_workers=0, node_id=f"scheduler-{tag}", lease_time=10.0) as mgr:
            await workers.wait_ready()
            insts = await mgr.schedule_many(Job(kind="record", executor=record), range(n))
            assert len({i.uuid for i in insts}) == n

            async def recorded() -> bool:
                return sum(len(v) for v in workers.ran().values()) >= n

            await wait_for(recorded, timeout * 0.6, lambda: f"runs recorded: {sum(map(len, workers.ran().values()))}\n"
                           + workers.logs(), interval=0.2)
            states: collections.Counter[State] = collections.Counter()

            async def all_completed() -> bool:
                nonlocal states
                found = await mgr.lookup_instances(Query(kind="record"))
                states = collections.Counter(i.state for i in found)
                return states[State.COMPLETED] == n

            await wait_for(all_completed, timeout * 0.2, lambda: f"instance states: {dict(states)}", interval=0.3)
            final = await mgr.lookup_instances(Query(kind="record"))
            processing = await mgr.lookup_instance_history(Query(kind="record", state=State.PROCESSING))
        codes = await workers.stop()

    assert codes == dict.fromkeys(nodes, 0), workers.logs()
    ran = workers.ran()
    counts = collections.Counter(i for runs in ran.values() for i in runs)
    assert sorted(counts) == list(range(n))
    assert [i for i, c in counts.items() if c != 1] == []
    assert len(final) == n
    assert {(i.state, i.attempts, i.abandoned) for i in final} == {(State.COMPLETED, 1, 0)}
    assert sorted(i.args[0] for i in final) == list(range(n))
    # one PROCESSING record per instance, naming the node that recorded the run
    assert len(processing) == n
    assert len({r.uuid for r in processing}) == n
    by_node = collections.Counter(r.node for r in processing)
    assert by_node == collections.Counter({node: len(v) for node, v in ran.items() if v})
    assert len(by_node) > 1, f"only one process did work: {dict(by_node)}"
    assert set(by_node) <= set(nodes)


async def check_killed_worker_reruns(url: str, workers: Workers, *, lease: float, max_wait: float) -> float:
    """A job running on one of two worker processes when that process is killed with SIGKILL runs again
    on the other once the lease expires: both attempts in the history (the first one recorded as
    abandoned), the re-run between half the lease and ``max_wait`` seconds after the kill (not before
    the lease could run out, and not a poll or a second lease later). Returns that delay."""
    tag = uuid.uuid4().hex[:6]
    nodes = [f"k{k}-{tag}" for k in range(2)]
    for node in nodes:
        workers.start(url, node, lease=lease, num_workers=2)
    with anyio.fail_after(60):
        async with Manager(url, num_workers=0, node_id=f"scheduler-{tag}", lease_time=lease) as mgr:
            await workers.wait_ready()
            inst = await mgr.schedule_job(Job(kind="block", executor=block))
            history: list[Any] = []

            async def started() -> bool:
                nonlocal history
                history = await mgr.lookup_instance_history(Query(instance=inst, state=State.PROCESSING))
                return bool(history)

            await wait_for(started, 15, lambda: "the block job did not start:\n" + workers.logs(), interval=0.02)
            victim = history[0].node
            assert victim in nodes
            [survivor] = [node for node in nodes if node != victim]
            t_kill = time.time()
            workers.kill(victim)
            assert workers.procs[victim].returncode == -signal.SIGKILL

            done = await mgr.wait(inst, timeout=max_wait + 10)
            records = await mgr.lookup_instance_history(Query(instance=inst))
        codes = await workers.stop()

    assert codes == {victim: -signal.SIGKILL, survivor: 0}, workers.logs()
    assert (done.state, done.attempts, done.abandoned, done.result) == (State.COMPLETED, 2, 1, survivor)
    assert [(r.state, r.attempt) for r in records] == [
        (State.CREATED, 0), (State.SCHEDULED, 0), (State.PROCESSING, 1), (State.SCHEDULED, 1),
        (State.PROCESSING, 2), (State.COMPLETED, 2)]
    first, abandoned, second, completed = records[2:]
    assert first.node == victim
    assert abandoned.detail is not None and "abandoned" in abandoned.detail and victim in abandoned.detail
    assert second.node == survivor and completed.node == survivor
    waited = second.ts - t_kill
    print(f"\nre-run on {survivor} {waited:.2f}s after {victim} was killed (lease {lease}s)")
    assert lease / 2 <= waited <= max_wait, (f"re-run {waited:.2f}s after the kill (lease {lease}s): "
                                             f"{[(r.state.value, r.node, round(r.ts - t_kill, 3)) for r in records]}")
    return waited


async def check_restart_under_load(url: str, restart: Callable[[], None], *, n: int = 1000,
                                   lease: float = 2.0) -> int:
    """A node runs ``n`` short instances while ``restart()`` (blocking; run in a thread) stops and starts
    the server with its data about a third of the way through: every instance completes, none runs
    more than twice, and a second run only follows an abandoned claim (the node's finish was lost with
    the connection and its lease expired). Returns how many ran twice."""
    ran: collections.Counter[int] = collections.Counter()

    async def short(i: int) -> None:
        ran[i] += 1
        await anyio.sleep(0.005)

    states: collections.Counter[State] = collections.Counter()
    last_error: list[str] = []
    with anyio.fail_after(90):
        async with Manager(url, num_workers=8, lease_time=lease) as mgr:
            await mgr.schedule_many(Job(kind="short", executor=short), range(n))

            async def midway() -> bool:
                return len(ran) >= n * 3 // 10

            await wait_for(midway, 30, lambda: f"{len(ran)} ran", interval=0.005)
            await anyio.to_thread.run_sync(restart)
            assert len(ran) < n, "the server restarted after the work was done, not under load"

            async def all_completed() -> bool:
                nonlocal states
                try:
                    found = await mgr.lookup_instances(Query(kind="short"))
                except StoreError as exc:  # the client may still be reconnecting
                    last_error[:] = [repr(exc)]
                    return False
                states = collections.Counter(i.state for i in found)
                return states[State.COMPLETED] == n

            await wait_for(all_completed, 45, lambda: f"states {dict(states)}; last error {last_error}",
                           interval=0.25)
            assert mgr.running
            final = await mgr.lookup_instances(Query(kind="short"))

    assert sorted(ran) == list(range(n)), "an instance never ran"
    assert max(ran.values()) <= 2, {i: c for i, c in ran.items() if c > 2}
    assert len(final) == n and {i.state for i in final} == {State.COMPLETED}
    for inst in final:
        i = inst.args[0]
        # exactly one claim was not abandoned (the one that completed)
        assert inst.attempts - inst.abandoned == 1, inst
        assert ran[i] <= inst.attempts, (ran[i], inst)
    return sum(1 for c in ran.values() if c == 2)
