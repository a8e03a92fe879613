"""A per-second crontab on three nodes, the node running a fire killed in the middle of it.

Invariants: one occurrence per fire time; each fire ran once, except the one whose node was killed
mid-fire, which ran again after the kill (once its lease expired) on a live node; the schedule kept
firing on the other nodes; no fire that came due before the schedule was canceled was skipped.
"""

from __future__ import annotations

import collections
import time

import pytest
from fault_support import Cluster, Event, Verdict, check_fires, lookup_all, until
from gojob_core import State

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.slow]

NODES = ["a", "b", "c"]


def _ticks(c: Cluster) -> list[Event]:
    return [ev for ev in c.events() if ev.fire is not None]


def _running_fire(c: Cluster) -> Event | None:
    """A fire running now on a live node incarnation (started, not ended), from the records."""
    open_runs: dict[tuple[str, int, int], Event] = {}
    for ev in _ticks(c):
        key = (ev.uuid, ev.inc, ev.attempt)
        if ev.e == "s":
            open_runs[key] = ev
        else:
            open_runs.pop(key, None)
    dead = {d.inc for d in c.deaths}
    live = [ev for ev in open_runs.values() if ev.inc not in dead and time.time() - ev.t < 0.25]
    return max(live, key=lambda ev: ev.t) if live else None


async def test_cron_across_nodes_with_a_kill_mid_fire(store: str, cluster) -> None:
    t0 = time.time()
    timeouts: list[str] = []
    async with cluster() as c:
        await c.start(NODES, workers=2)
        first = await c.client.schedule_job(c.client.lookup_job("tick"), crontab_spec="* * * * * *")

        async def fires_done(n: int) -> bool:
            return sum(1 for ev in _ticks(c) if ev.e == "f") >= n

        await until(lambda: fires_done(3), 20, lambda: "the schedule did not fire 3 times\n" + c.logs(), cluster=c)
        victim: Event | None = None

        async def mid_fire() -> bool:
            nonlocal victim
            victim = _running_fire(c)
            return victim is not None

        await until(mid_fire, 10, lambda: "no fire running to kill", cluster=c, interval=0.01)
        assert victim is not None
        death = await c.kill(victim.node)
        await c.restart(victim.node)
        done_at_kill = sum(1 for ev in _ticks(c) if ev.e == "f")

        async def recovered() -> bool:
            ticks = _ticks(c)
            rerun = any(ev.e == "f" and ev.uuid == victim.uuid for ev in ticks)
            return rerun and sum(1 for ev in ticks if ev.e == "f") >= done_at_kill + 3

        await until(recovered, c.lease * 2 + 15, lambda: f"fire {victim.uuid} killed on {victim.node} not re-run, "
                    "or the schedule stopped firing\n" + c.logs(), cluster=c, interval=0.05, timeouts=timeouts)
        canceled_at = time.time()
        await c.client.remove_schedule(first.schedule_id)  # stops the schedule

        finals: dict[str, object] = {}

        async def settled() -> bool:
            nonlocal finals
            finals = await lookup_all(c.client, "tick")
            return all(i.state.is_final for i in finals.values())

        await until(settled, c.lease * 2 + 10, lambda: "occurrences not final after the schedule's cancel: " + str(
            collections.Counter(i.state.value for i in finals.values())), cluster=c, interval=0.1,
                    timeouts=timeouts)
        events = c.events()
    v = Verdict("cron across nodes, kill mid-fire", store, faults=1,
                fault_kind="stop(abandon)" if store == "memory" else "SIGKILL")
    v.problems += timeouts
    check_fires(v, events, c.deaths, finals, canceled_at, t0=t0)
    runs = [ev for ev in events if ev.uuid == victim.uuid and ev.e == "s"]
    if len(runs) < 2 or not runs[-1].t > death.t:
        v.problems.append(f"the fire killed mid-run ({victim.uuid}) was not re-run after the kill: "
                          f"{[(ev.node, ev.attempt, round(ev.t - death.t, 3)) for ev in runs]}")
    by_node = collections.Counter(ev.node for ev in events if ev.e == "s" and ev.fire is not None)
    after = [ev.t - death.t for ev in events if ev.e == "s" and ev.t > death.t and ev.uuid != victim.uuid]
    v.notes.append(f"fires per node {dict(sorted(by_node.items()))}; next fire {min(after):.2f}s after the kill"
                   if after else f"fires per node {dict(by_node)}")
    v.instances = len(finals)
    canceled = sum(1 for i in finals.values() if i.state is State.CANCELED)
    v.notes.append(f"{canceled} occurrence(s) canceled with the schedule")
    v.wall = time.time() - t0
    v.report()
