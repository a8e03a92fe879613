"""Schedules at scale: N schedules that all fire at the same instants (every ``--every`` seconds from a
common start: the "10,000 schedules every minute" load, each fire time hit by all of them at once), on
one node or several nodes sharing one store. Prints a table; not a test.

Per fire of one schedule, it reports the CPU time the process spent (every node is in this process:
the whole cluster's CPU, divided by the fires), and the fire lateness: from the fire time to the claim
of the occurrence (``started_ts``), p50 and p99 over every fire.

    python bench/bench_schedules.py --schedules 10000 --nodes 1 --every 30 --fires 2
    python bench/bench_schedules.py --store redis://127.0.0.1:6379/0 --nodes 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import gojob_core as gojob


async def noop() -> None:
    return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> dict[str, float]:
    shared: gojob.Store | str = gojob.MemoryStore() if args.store == "memory://" else args.store
    kind = "bench.sched"
    nodes = [gojob.Manager(shared, num_workers=args.workers, node_id=f"n{i}", autoload_plugins=args.store != "memory://",
                           metrics_interval=3600) for i in range(args.nodes)]
    for mgr in nodes:
        await mgr.start()
    try:
        first = nodes[0]
        await first.store.clear_instances(gojob.Query(kind=kind))
        for s in await first.list_schedules(kind=kind):
            await first.remove_schedule(s.id)
        for mgr in nodes:
            await mgr.register_job(gojob.Job(kind=kind, executor=noop))
        add_started = time.perf_counter()
        start = time.time() + args.lead
        trigger = gojob.IntervalTrigger(args.every, start=start)
        for i in range(args.schedules):
            await nodes[i % len(nodes)].add_schedule(kind, trigger, id=f"bench-{i}", max_runs=args.fires,
                                                     coalesce="all")
        add_s = time.perf_counter() - add_started
        if time.time() > start - 0.5:
            raise SystemExit(f"adding took {add_s:.1f} s, past the first fire: raise --lead")
        await anyio.sleep(max(0.0, start - time.time() - 0.2))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        want = args.schedules * args.fires
        done: list[gojob.Instance] = []
        with anyio.fail_after(args.every * args.fires + 120):
            while True:
                done = await first.lookup_instances(gojob.Query(kind=kind, state=gojob.State.COMPLETED))
                if len(done) >= want:
                    break
                await anyio.sleep(0.5)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        late = [i.started_ts - i.ready_ts for i in done if i.started_ts is not None]
        skipped = len(await first.lookup_instances(gojob.Query(kind=kind, state=gojob.State.CANCELED)))
        for s in await first.list_schedules(kind=kind):
            await first.remove_schedule(s.id)
        return {"fires": len(done), "skipped": skipped, "add_s": add_s, "cpu_ms_per_fire": 1000 * cpu / len(done),
                "wall_s": wall, "p50_ms": 1000 * _pct(late, 0.5), "p99_ms": 1000 * _pct(late, 0.99),
                "max_ms": 1000 * max(late), "mean_ms": 1000 * statistics.fmean(late)}
    finally:
        for mgr in reversed(nodes):  # each Manager's task group nests in the one started before it
            await mgr.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="memory://")
    p.add_argument("--schedules", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--workers", type=int, default=32, help="per node")
    p.add_argument("--every", type=float, default=60.0, help="seconds between two fires")
    p.add_argument("--fires", type=int, default=2, help="fires per schedule")
    p.add_argument("--lead", type=float, default=20.0, help="seconds from the start to the first fire")
    args = p.parse_args()
    r = anyio.run(run, args)
    print("| store | nodes | schedules | fires | skipped | add s | CPU ms/fire | lateness p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.store} | {args.nodes} | {args.schedules} | {r['fires']:.0f} | {r['skipped']:.0f} "
          f"| {r['add_s']:.1f} | {r['cpu_ms_per_fire']:.3f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
          f"| {r['max_ms']:.1f} |")


if __name__ == "__main__":
    main()
