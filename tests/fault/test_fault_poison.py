"""Poison jobs: one that hangs past its timeout, one that always raises, one that kills its node.

- ``hang`` (timeout 0.5 s, one retry): TIMED_OUT after two attempts that ran to their timeout;
- ``boom`` (two retries): TERMINATED after three attempts, its error in the record;
- ``crash`` (``max_abandons=2``) kills the node running it (``os._exit`` in a node process; in process, the
  node is abandoned) 300 ms after it starts, beside 14 neighbours of 800 ms claimed in the same batch. The
  nodes are restarted as a service manager would. After its second abandoned attempt it ends TERMINATED,
  error and history detail ``AbandonedError: attempt 2 abandoned: node X lost its lease; 2 attempts
  abandoned (max_abandons), not re-queued``; once suspect (abandoned before) it is claimed alone and its
  node starts nothing else while it runs, so its neighbours die at most once: each runs at most twice,
  and completes.
"""

from __future__ import annotations

import collections
import datetime as dt
import time

import pytest
from fault_support import Cluster, Event, Verdict, check_runs, lookup_all, until
from gojob_core import Instance, Query, State

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.slow]

MAX_ABANDONS = 2
NEIGHBOURS = 14


def _starts(events: list[Event], uid: str) -> list[Event]:
    return [ev for ev in events if ev.uuid == uid and ev.e == "s"]


async def test_poison_jobs(store: str, cluster) -> None:
    t0 = time.time()
    timeouts: list[str] = []
    async with cluster() as c:
        await c.start(["a", "b"], workers=8)
        client = c.client
        assert client.lookup_job("crash").max_abandons == MAX_ABANDONS
        hang = await client.schedule_job(client.lookup_job("hang"), arguments=(0,))
        boom = await client.schedule_job(client.lookup_job("boom"), arguments=(0,))
        # the crasher and its neighbours come due together, the crasher first in line: one claim batch
        due = dt.datetime.fromtimestamp(time.time() + 2.0, dt.UTC)
        crasher = await client.schedule_job(client.lookup_job("crash"), arguments=(0, 300), schedule_at=due,
                                            priority=-1)
        neighbours = [i.uuid for i in await client.schedule_many(
            "work", [(i, 800) for i in range(NEIGHBOURS)], schedule_at=due)]
        watched = [hang.uuid, boom.uuid, crasher.uuid, *neighbours]
        finals: dict[str, Instance] = {}

        async def settled() -> bool:
            nonlocal finals
            if len(_starts(c.events(), crasher.uuid)) > MAX_ABANDONS + 1:
                return True  # crash-looping: no limit applied; the checks below report it
            finals = {u: i for u, i in (await lookup_all(client)).items() if u in watched}
            return len(finals) == len(watched) and all(i.state.is_final for i in finals.values())

        await until(settled, 30 + 3 * c.lease * MAX_ABANDONS, lambda: "not final: " + str(
            {u[:8]: (i.kind, i.state.value, i.attempts, i.abandoned) for u, i in finals.items()
             if not i.state.is_final}) + "\n" + c.logs(), cluster=c, interval=0.1, timeouts=timeouts)
        finals = {u: i for u, i in (await lookup_all(client)).items() if u in watched}
        crash_history = await client.lookup_instance_history(Query(instance=crasher.uuid))
        events = c.events()
    v = Verdict("poison jobs", store, faults=3, fault_kind=f"poison instances ({len(c.deaths)} node crashes)")
    v.instances = len(watched)
    v.problems += timeouts
    _check_hang(v, finals[hang.uuid], _starts(events, hang.uuid), events, c)
    _check_boom(v, finals[boom.uuid], _starts(events, boom.uuid))
    _check_crasher(v, finals[crasher.uuid], crash_history, events, c)
    check_runs(v, neighbours, events, c.deaths, finals=finals, t0=t0, max_runs=2)
    v.instances = len(watched)
    v.wall = time.time() - t0
    v.report()


def _check_hang(v: Verdict, inst: Instance, starts: list[Event], events: list[Event], c: Cluster) -> None:
    """TIMED_OUT after its retry; every attempt ran to its timeout (interrupted), or its node died."""
    failed = inst.attempts - inst.abandoned
    if (inst.state, failed) != (State.TIMED_OUT, 2):
        v.problems.append(f"hang: {inst.state.value} after {inst.attempts} attempts ({inst.abandoned} abandoned), "
                          f"expected TIMED_OUT after 2 timed-out attempts; error {inst.error!r}")
    if len(starts) != inst.attempts:
        v.problems.append(f"hang: {len(starts)} executor starts for {inst.attempts} attempts")
    for s in starts:
        ended = [ev for ev in events if ev.uuid == s.uuid and ev.inc == s.inc and ev.attempt == s.attempt
                 and ev.e == "x"]
        died = any(d.inc == s.inc and d.t >= s.t for d in c.deaths)
        if not ended and not died:
            v.problems.append(f"hang: attempt {s.attempt} was never interrupted by its timeout")
        elif ended and not died and not 0.4 <= ended[0].t - s.t <= 5.0:
            v.problems.append(f"hang: attempt {s.attempt} interrupted {ended[0].t - s.t:.2f}s after it started "
                              "(timeout 0.5 s)")


def _check_boom(v: Verdict, inst: Instance, starts: list[Event]) -> None:
    failed = inst.attempts - inst.abandoned
    if (inst.state, failed) != (State.TERMINATED, 3):
        v.problems.append(f"boom: {inst.state.value} after {inst.attempts} attempts ({inst.abandoned} abandoned), "
                          "expected TERMINATED after 3 failed attempts")
    if not (inst.error or "").startswith("RuntimeError: boom 0 on attempt"):
        v.problems.append(f"boom: error {inst.error!r}")
    if len(starts) != inst.attempts:
        v.problems.append(f"boom: {len(starts)} executor starts for {inst.attempts} attempts")


def _check_crasher(v: Verdict, inst: Instance, history: list, events: list[Event], c: Cluster) -> None:
    starts = _starts(events, inst.uuid)
    crashes = [ev for ev in events if ev.uuid == inst.uuid and ev.e == "c"]
    if len(starts) != MAX_ABANDONS or len(crashes) != MAX_ABANDONS:
        v.problems.append(f"crash: started {len(starts)} times, killed its node {len(crashes)} times; "
                          f"expected {MAX_ABANDONS} (max_abandons) then no more: "
                          + ", ".join(f"a{s.attempt}@{s.node}" for s in starts))
    last = max(starts, key=lambda s: s.attempt) if starts else None
    node = last.node if last else "?"
    expected = (f"AbandonedError: attempt {MAX_ABANDONS} abandoned: node {node} lost its lease; "
                f"{MAX_ABANDONS} attempts abandoned (max_abandons), not re-queued")
    got = (inst.state, inst.attempts, inst.abandoned, inst.error)
    if got != (State.TERMINATED, MAX_ABANDONS, MAX_ABANDONS, expected):
        v.problems.append(f"crash: ended {inst.state.value}, attempts {inst.attempts}, abandoned {inst.abandoned}, "
                          f"error {inst.error!r}; expected TERMINATED, {MAX_ABANDONS}, {MAX_ABANDONS}, {expected!r}")
    final = history[-1] if history else None
    if final is None or (final.state, final.detail) != (State.TERMINATED, expected):
        v.problems.append(f"crash: last history record {final!r}, expected TERMINATED with detail {expected!r}")
    abandons = [r for r in history if r.state is State.SCHEDULED and r.detail and "abandoned" in r.detail]
    if len(abandons) != MAX_ABANDONS - 1:
        v.notes.append(f"crash: {len(abandons)} re-queue record(s) for {MAX_ABANDONS} abandons")
    # a suspect (abandoned before) is claimed alone: its node starts nothing else until it ends
    for s in starts:
        if s.attempt < 2:
            continue
        death = min((d.t for d in c.deaths if d.inc == s.inc and d.t >= s.t), default=float("inf"))
        beside = [ev for ev in events if ev.e == "s" and ev.inc == s.inc and ev.node == s.node
                  and ev.uuid != s.uuid and s.t <= ev.t <= death]
        if beside:
            v.problems.append(f"crash: node {s.node} started {len(beside)} other instance(s) while running the "
                              f"suspect's attempt {s.attempt}: {[ev.uuid[:8] for ev in beside]}")
    died_with: collections.Counter[int] = collections.Counter()
    for s in starts:
        death = min((d.t for d in c.deaths if d.inc == s.inc and d.t >= s.t), default=None)
        if death is None:
            continue
        for uid in {ev.uuid for ev in events if ev.e == "s" and ev.inc == s.inc and ev.uuid != s.uuid
                    and ev.t <= death}:
            if any(ev.e == "s" and ev.uuid == uid and ev.t > death for ev in events):
                died_with[s.attempt] += 1
    v.notes.append(f"instances that died with the crasher and ran again, by its attempt: {dict(died_with)}")
    for prev, nxt in zip(starts, starts[1:]):  # its re-run after each crash (neighbours: from check_runs)
        death = min((d.t for d in c.deaths if d.inc == prev.inc and prev.t <= d.t <= nxt.t), default=None)
        if death is not None:
            v.recovery.append(nxt.t - death)
