#!/usr/bin/env python
"""gojob core benchmark: no-op jobs on the memory store, state history on (it always is).

Prints a markdown table (targets beside measured figures); not a test.

    python bench/bench_core.py                      # N=100,000, 10 workers, 3 reps, asyncio
    python bench/bench_core.py --n 20000 --reps 1   # quick look
    python bench/bench_core.py --backend trio --json /tmp/core.json
    python bench/bench_core.py --ceiling            # also time a bare anyio heap-and-waiters loop

Throughput: one ``Manager(store="memory://", num_workers=W)`` per run; 20 warm-up jobs (not timed);
t0; N no-op jobs scheduled sequentially, either one ``await mgr.schedule_job(job, arguments=(i,))``
per job (the peers' way) or one ``await mgr.schedule_many(job, [(i,) ...])``; t_end = when the N-th
job body ran (the body counts; the N-th run sets an ``anyio.Event``). jobs/s = N / (t_end - t0).
Every job must have run exactly once (per-index hit counter) and the store must hold a COMPLETED
history record for every instance: that is ``ok``.

Executors: ``async def`` (runs on the event loop) and plain ``def`` (runs in a worker thread).

Latency: --lat-n jobs one at a time on an idle pool (seeded random 1-20 ms gap after the previous
instance finished); latency = ``time.perf_counter()`` first thing in the body minus
``time.perf_counter()`` just before the ``schedule_job`` call.

Each figure is the median of --reps repetitions (modes interleaved within a repetition).
"""

from __future__ import annotations

import argparse
import array
import gc
import heapq
import itertools
import json
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from collections import deque
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import gojob_core
from gojob_core import Job, Manager, Query, State

WARMUP = 20
AUTOLOAD = [False]  # entry-point plugins are not loaded unless --autoload-plugins: the core alone

# The issue's numbers (bare anyio heap-and-waiters loop on the reference machine) and targets.
ISSUE_CEILING = {"async": 76_000, "sync": 8_000, "lat_p50": 0.07}
TARGET = {"async": 25_000, "sync": 6_000, "lat_p50": 0.3}


# -- helpers ---------------------------------------------------------------------------------------------
def _pct(sorted_vals: list[float], p: float) -> float:
    """Nearest-rank percentile (same definition as the peer harness)."""
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024


def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "gojob_core": gojob_core.__version__,
        "gojob_core_path": os.path.dirname(os.path.abspath(gojob_core.__file__)),
        "gojob_core_git": _git_rev(os.path.dirname(os.path.abspath(gojob_core.__file__))),
    }


def _git_rev(path: str) -> str:
    """HEAD of the checkout holding gojob_core, plus '+dirty' if core/ has uncommitted changes."""
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


class _Counter:
    """Counts body runs: warm-up bodies (i < 0) and measured ones (hit counter per index)."""

    def __init__(self, n: int, threaded: bool) -> None:
        self.n = n
        self.hits = array.array("i", bytes(4 * n))
        self.warm_hits = array.array("i", bytes(4 * WARMUP))
        self.count = 0
        self.warm = 0
        self.done = anyio.Event()
        self.warm_done = anyio.Event()
        self.lock = threading.Lock() if threaded else None

    def mark(self, i: int) -> anyio.Event | None:
        """Record one run; return the event to set if this run completed a batch."""
        if i < 0:
            self.warm_hits[-1 - i] += 1
            self.warm += 1
            return self.warm_done if self.warm == WARMUP else None
        self.hits[i] += 1
        self.count += 1
        return self.done if self.count == self.n else None

    def verify(self) -> dict[str, Any]:
        hits = self.hits
        completed = sum(1 for h in hits if h > 0)
        dup = sum(h - 1 for h in hits if h > 1) + sum(h - 1 for h in self.warm_hits if h > 1)
        return {"completed": completed, "dup": dup}


def _make_job(kind: str, executor: str, c: _Counter) -> Job:
    if executor == "async":
        async def abody(i):  # noqa: ANN001 -- unannotated, like the peers' no-op
            ev = c.mark(i)
            if ev is not None:
                ev.set()

        return Job(kind=kind, executor=abody)

    lock = c.lock
    assert lock is not None

    def sbody(i):  # noqa: ANN001
        with lock:
            ev = c.mark(i)
        if ev is not None:
            anyio.from_thread.run_sync(ev.set)

    return Job(kind=kind, executor=sbody)


async def _await_history(mgr: Manager, kind: str, expected: int, timeout: float = 60.0) -> int:
    """Wait until the store holds `expected` COMPLETED records of `kind` (all instances finished)."""
    q = Query(kind=kind, state=State.COMPLETED)
    got = 0
    with anyio.move_on_after(timeout):
        while True:
            got = len(await mgr.lookup_instance_history(q))
            if got >= expected:
                break
            await anyio.sleep(0.05)
    return got


# -- throughput --------------------------------------------------------------------------------------------
async def run_throughput(n: int, workers: int, executor: str, sched: str, profiler: Any = None) -> dict[str, Any]:
    c = _Counter(n, threaded=executor == "sync")
    kind = f"noop-{executor}"
    job = _make_job(kind, executor, c)
    async with Manager(store="memory://", num_workers=workers, autoload_plugins=AUTOLOAD[0]) as mgr:
        for k in range(WARMUP):
            await mgr.schedule_job(job, arguments=(-1 - k,))
        with anyio.fail_after(60):
            await c.warm_done.wait()
        await anyio.sleep(0.2)  # let the warm-up instances finish; the pool is idle at t0
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        if sched == "one":
            for i in range(n):
                await mgr.schedule_job(job, arguments=(i,))
        else:
            await mgr.schedule_many(job, [(i,) for i in range(n)])
        t_enq = time.perf_counter()
        await c.done.wait()
        t_end = time.perf_counter()
        if profiler is not None:
            profiler.disable()
        # outside the timing: every instance finished, history written, nothing ran twice
        history = await _await_history(mgr, kind, n + WARMUP)
        await anyio.sleep(0.3)
        rss_held = _rss_now_mb()
        all_records = len(await mgr.lookup_instance_history(Query(kind=kind)))
    rec = {
        "mode": "throughput", "executor": executor, "schedule": sched, "n": n, "workers": workers,
        "enqueue_s": round(t_enq - t0, 4), "drain_s": round(t_end - t_enq, 4), "total_s": round(t_end - t0, 4),
        "jobs_per_s": round(n / (t_end - t0), 1),
        "history_completed": history, "history_records": all_records,
        "rss_held_mb": round(rss_held, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    rec.update(c.verify())
    rec["ok"] = rec["completed"] == n and rec["dup"] == 0 and history == n + WARMUP
    return rec


# -- latency -------------------------------------------------------------------------------------------
async def run_latency(n: int, workers: int, executor: str, seed: int) -> dict[str, Any]:
    starts = [0.0] * n
    events: list[anyio.Event | None] = [None]
    hits = array.array("i", bytes(4 * n))
    kind = f"lat-{executor}"

    if executor == "async":
        async def abody(i):  # noqa: ANN001
            t = time.perf_counter()
            starts[i] = t
            hits[i] += 1
            ev = events[0]
            if ev is not None:
                ev.set()

        job = Job(kind=kind, executor=abody)
    else:
        def sbody(i):  # noqa: ANN001
            t = time.perf_counter()
            starts[i] = t
            hits[i] += 1
            ev = events[0]
            if ev is not None:
                anyio.from_thread.run_sync(ev.set)

        job = Job(kind=kind, executor=sbody)

    rng = random.Random(seed)
    before = [0.0] * n
    async with Manager(store="memory://", num_workers=workers, autoload_plugins=AUTOLOAD[0]) as mgr:
        for _ in range(WARMUP):  # warm the path (and the thread pool); not measured
            events[0] = None
            await mgr.wait(await mgr.schedule_job(job, arguments=(0,)), timeout=30)
        hits[0] = 0
        for i in range(n):
            await anyio.sleep(rng.uniform(1.0, 20.0) / 1000.0)
            ev = events[0] = anyio.Event()
            before[i] = time.perf_counter()
            inst = await mgr.schedule_job(job, arguments=(i,))
            with anyio.fail_after(30):
                await ev.wait()
            await mgr.wait(inst, timeout=30)  # idle again before the next gap
    lat = sorted((s - b) * 1000.0 for s, b in zip(starts, before))
    ok = all(h == 1 for h in hits)
    return {
        "mode": "latency", "executor": executor, "n": n, "workers": workers,
        "p50_ms": round(_pct(lat, 50), 4), "p95_ms": round(_pct(lat, 95), 4), "p99_ms": round(_pct(lat, 99), 4),
        "mean_ms": round(statistics.fmean(lat), 4), "min_ms": round(lat[0], 4), "max_ms": round(lat[-1], 4),
        "ok": ok, "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# -- ceiling: a bare anyio heap-and-waiters loop doing the same work ----------------------------------------
async def run_ceiling(n: int, workers: int, executor: str) -> dict[str, Any]:
    """No store records, no history, no leases: a heap, a deque of waiting workers, the same bodies."""
    c = _Counter(n, threaded=executor == "sync")
    heap: list[tuple[int, int, int]] = []
    waiters: deque[anyio.Event] = deque()
    seq = itertools.count()

    if executor == "async":
        async def call(i: int) -> None:
            ev = c.mark(i)
            if ev is not None:
                ev.set()
    else:
        lock = c.lock
        assert lock is not None

        def body(i: int) -> None:
            with lock:
                ev = c.mark(i)
            if ev is not None:
                anyio.from_thread.run_sync(ev.set)

        async def call(i: int) -> None:
            await anyio.to_thread.run_sync(body, i)

    async def worker() -> None:
        while True:
            while not heap:
                ev = anyio.Event()
                waiters.append(ev)
                await ev.wait()
            _, _, i = heapq.heappop(heap)
            await anyio.lowlevel.checkpoint()  # one scheduling point per job, as any real pool has
            await call(i)

    async def submit(i: int) -> None:
        heapq.heappush(heap, (0, next(seq), i))
        if waiters:
            waiters.popleft().set()

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
        for k in range(WARMUP):
            await submit(-1 - k)
        await c.warm_done.wait()
        await anyio.sleep(0.2)
        t0 = time.perf_counter()
        for i in range(n):
            await submit(i)
        t_enq = time.perf_counter()
        await c.done.wait()
        t_end = time.perf_counter()
        tg.cancel_scope.cancel()
    rec = {"mode": "ceiling", "executor": executor, "n": n, "workers": workers,
           "enqueue_s": round(t_enq - t0, 4), "total_s": round(t_end - t0, 4),
           "jobs_per_s": round(n / (t_end - t0), 1)}
    rec.update(c.verify())
    rec["ok"] = rec["completed"] == n and rec["dup"] == 0
    return rec


# -- driver ------------------------------------------------------------------------------------------------
THROUGHPUT_MODES = [("async", "one"), ("async", "many"), ("sync", "one"), ("sync", "many")]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": [], "rss_baseline_mb": round(_rss_now_mb(), 1)}
    for rep in range(1, args.reps + 1):
        for executor, sched in THROUGHPUT_MODES:
            if args.only and executor not in args.only:
                continue
            gc.collect()
            rec = await run_throughput(args.n, args.workers, executor, sched)
            rec["rep"] = rep
            out["runs"].append(rec)
            _progress(rec)
            if "peak_rss_after_first_mb" not in out:
                out["peak_rss_after_first_mb"] = rec["peak_rss_mb"]
        if args.ceiling:
            for executor in ("async", "sync"):
                if args.only and executor not in args.only:
                    continue
                gc.collect()
                rec = await run_ceiling(args.n, args.workers, executor)
                rec["rep"] = rep
                out["runs"].append(rec)
                _progress(rec)
        if args.lat_n > 0:
            for executor in ("async", "sync"):
                if args.only and executor not in args.only:
                    continue
                rec = await run_latency(args.lat_n, args.workers, executor, args.seed + rep)
                rec["rep"] = rep
                out["runs"].append(rec)
                _progress(rec)
    out["peak_rss_end_mb"] = round(_peak_rss_mb(), 1)
    if args.profile:
        out["profiled"] = await profile_runs(args)
    return out


async def profile_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One extra run per throughput mode under cProfile (timed window only); not in the medians."""
    import cProfile
    import pstats

    os.makedirs(args.profile, exist_ok=True)
    done = []
    for executor, sched in THROUGHPUT_MODES:
        if args.only and executor not in args.only:
            continue
        gc.collect()
        prof = cProfile.Profile()
        rec = await run_throughput(args.n, args.workers, executor, sched, profiler=prof)
        path = os.path.join(args.profile, f"{executor}-{sched}.prof")
        prof.dump_stats(path)
        rec.update(rep=0, profile=path)
        done.append(rec)
        print(f"  profiled {executor} {sched}: {rec['jobs_per_s']:,.0f} jobs/s under cProfile -> {path}",
              file=sys.stderr, flush=True)
        stats = pstats.Stats(prof)
        total = stats.total_tt  # type: ignore[attr-defined]
        entries = stats.stats.items()  # type: ignore[attr-defined]
        rows = sorted(entries, key=lambda kv: kv[1][2], reverse=True)[:args.profile_top]
        print(f"    top {args.profile_top} by own time (us per job under cProfile; share of profiled time):",
              file=sys.stderr)
        for (fname, line, func), (_cc, nc, tt, ct, _callers) in rows:
            where = f"{os.path.basename(fname)}:{line}({func})" if line else func
            print(f"    {tt / args.n * 1e6:7.2f} us  {100 * tt / total:5.1f}%  calls/job {nc / args.n:5.2f}  "
                  f"cum {ct / args.n * 1e6:7.2f} us  {where}", file=sys.stderr)
    return done


def _progress(rec: dict[str, Any]) -> None:
    if rec["mode"] == "latency":
        what = f"p50={rec['p50_ms']:.3f} ms p99={rec['p99_ms']:.3f} ms"
    else:
        what = f"{rec['jobs_per_s']:,.0f} jobs/s (total {rec['total_s']:.2f} s)"
    extra = f" held RSS {rec['rss_held_mb']:.0f} MB" if "rss_held_mb" in rec else ""
    print(f"  rep {rec['rep']} {rec['mode']:<10} {rec['executor']:<5} {rec.get('schedule', ''):<4} "
          f"{what}  ok={rec['ok']}{extra}  load={os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)


def _med(runs: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def render(args: argparse.Namespace, machine: dict[str, Any], res: dict[str, Any],
           load_before: tuple[float, ...], load_after: tuple[float, ...], wall: float) -> str:
    runs = res["runs"]
    lines = [
        f"# gojob core benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})",
        "",
        f"- machine: {machine['cores']} cores ({machine['cpu'] or '?'}), {machine['implementation']} "
        f"{machine['python']}, {machine['platform']}",
        f"- gojob-core {machine['gojob_core']} from `{machine['gojob_core_path']}` "
        f"(git: {machine['gojob_core_git']}); anyio backend {args.backend}; memory store; "
        f"{args.workers} workers; state history on; entry-point plugins "
        f"{'loaded' if args.autoload_plugins else 'not loaded'}",
        f"- load average before: {' '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{' '.join(f'{x:.2f}' for x in load_after)}; wall time {wall:.0f} s",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- throughput N = {args.n:,}; latency N = {args.lat_n}; median of {args.reps} repetition(s) "
        f"(min-max in brackets)",
        "",
        "| measure | target | ceiling (issue) | measured | met | ok runs |",
        "|---|---:|---:|---:|:---:|---:|",
    ]

    def tp_row(label: str, sel: list[dict[str, Any]], target: float | None, ceiling: str) -> None:
        m = _med(sel, "jobs_per_s")
        if m is None:
            return
        ok = sum(1 for r in sel if r["ok"])
        met = "—" if target is None else ("yes" if m[0] >= target else "**no**")
        tgt = "—" if target is None else f">= {target:,}"
        lines.append(f"| {label} | {tgt} | {ceiling} | {m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f}) | {met} "
                     f"| {ok}/{len(sel)} |")

    def pick(mode: str, executor: str, sched: str | None = None) -> list[dict[str, Any]]:
        return [r for r in runs if r["mode"] == mode and r["executor"] == executor
                and (sched is None or r.get("schedule") == sched)]

    tp_row("jobs/s, async executor, schedule_job x N", pick("throughput", "async", "one"),
           TARGET["async"], f"~{ISSUE_CEILING['async']:,}")
    tp_row("jobs/s, async executor, schedule_many", pick("throughput", "async", "many"),
           None, f"~{ISSUE_CEILING['async']:,}")
    tp_row("jobs/s, sync executor (thread), schedule_job x N", pick("throughput", "sync", "one"),
           TARGET["sync"], f"~{ISSUE_CEILING['sync']:,}")
    tp_row("jobs/s, sync executor (thread), schedule_many", pick("throughput", "sync", "many"),
           None, f"~{ISSUE_CEILING['sync']:,}")
    for executor in ("async", "sync"):
        sel = pick("latency", executor)
        if not sel:
            continue
        ok = sum(1 for r in sel if r["ok"])
        for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
            m = _med(sel, key)
            assert m is not None
            if key == "p50_ms" and executor == "async":
                tgt, ceil = f"< {TARGET['lat_p50']}", f"{ISSUE_CEILING['lat_p50']}"
                met = "yes" if m[0] < TARGET["lat_p50"] else "**no**"
            else:
                tgt, ceil, met = "—", "—", "—"
            lines.append(f"| idle latency {label} ms, {executor} executor | {tgt} | {ceil} | "
                         f"{m[0]:.3f} ({m[1]:.3f}-{m[2]:.3f}) | {met} | {ok}/{len(sel)} |")
    for executor in ("async", "sync"):
        sel = pick("ceiling", executor)
        m = _med(sel, "jobs_per_s")
        if m is not None:
            lines.append(f"| bare loop measured here (--ceiling; see README), {executor} | — | "
                         f"~{ISSUE_CEILING[executor]:,} | {m[0]:,.0f} ({m[1]:,.0f}-{m[2]:,.0f}) | — | "
                         f"{sum(1 for r in sel if r['ok'])}/{len(sel)} |")
    tps = [r for r in runs if r["mode"] == "throughput"]
    if tps:
        held = _med(tps, "rss_held_mb")
        lines.append(f"| peak RSS MB after the first N={args.n:,} run (ru_maxrss) | — | — | "
                     f"{res['peak_rss_after_first_mb']:,.0f} | — | — |")
        lines.append(f"| peak RSS MB at the end (ru_maxrss) | — | — | {res['peak_rss_end_mb']:,.0f} | — | — |")
        if held is not None:
            lines.append(f"| RSS MB held with N finished instances + history (baseline "
                         f"{res['rss_baseline_mb']:.0f}) | — | — | {held[0]:,.0f} ({held[1]:,.0f}-{held[2]:,.0f}) "
                         f"| — | — |")
    if tps:
        lines += ["", "Throughput phases (median s): enqueue = t0 .. last schedule call returned; "
                  "drain = .. N-th body ran.", "",
                  "| executor | schedule | enqueue_s | drain_s | total_s | history records / run |",
                  "|---|---|---:|---:|---:|---:|"]
        for executor, sched in THROUGHPUT_MODES:
            sel = pick("throughput", executor, sched)
            if not sel:
                continue
            e, d, t = (_med(sel, k) for k in ("enqueue_s", "drain_s", "total_s"))
            hist = _med(sel, "history_records")
            assert e and d and t and hist
            lines.append(f"| {executor} | {'schedule_job x N' if sched == 'one' else 'schedule_many'} | "
                         f"{e[0]:.3f} | {d[0]:.3f} | {t[0]:.3f} | {hist[0]:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="jobs per throughput run (default 100000)")
    ap.add_argument("--workers", type=int, default=10, help="worker pool size (default 10)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default 3)")
    ap.add_argument("--lat-n", type=int, default=200, help="jobs per latency run; 0 skips latency (default 200)")
    ap.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    ap.add_argument("--json", metavar="FILE", help="also write every run's record to FILE")
    ap.add_argument("--seed", type=int, default=12345, help="latency gaps seed (default 12345)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also time a bare anyio heap-and-waiters loop doing the same work (same N)")
    ap.add_argument("--profile", metavar="DIR",
                    help="after the measured runs, one extra run per throughput mode under cProfile "
                         "(timed window only) -> DIR/<executor>-<schedule>.prof, top costs on stderr")
    ap.add_argument("--profile-top", type=int, default=15, help="functions listed per profile (default 15)")
    ap.add_argument("--autoload-plugins", action="store_true",
                    help="let each Manager load the installed entry-point plugins (default: core only)")
    ap.add_argument("--only", choices=("async", "sync"), action="append",
                    help="run only this executor kind (repeatable)")
    args = ap.parse_args()
    AUTOLOAD[0] = args.autoload_plugins

    machine = _machine()
    load_before = os.getloadavg()
    t = time.perf_counter()
    res = anyio.run(main_async, args, backend=args.backend)
    wall = time.perf_counter() - t
    table = render(args, machine, res, load_before, os.getloadavg(), wall)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "load_before": load_before,
                       "load_after": os.getloadavg(), **res}, f, indent=1)
    bad = [r for r in res["runs"] if not r["ok"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
