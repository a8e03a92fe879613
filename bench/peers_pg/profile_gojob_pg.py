#!/usr/bin/env python
"""Where gojob's time goes in run_pg.py's ``gojob-seq`` configuration: cProfile of the producer
(N sequential ``schedule_job`` calls) and of the worker process (10 slots) on a server of its own, plus
wall time per call of the producer's phases, measured by wrapping (at run time, in this process only)
the store's ``enqueue`` and its backend's ``enqueue``:

- manager: ``Manager.schedule_job`` less the store's ``enqueue`` (validation, binding the arguments,
  the Instance, plugins, state-change callbacks);
- store: ``SqlStore.enqueue`` less its backend's (copying the instance, its history records);
- backend: the backend's ``enqueue`` (the arrays, a pooled connection, one statement's round trip).

Not a test; prints tables. ``--n`` jobs (5000), ``--top`` rows per profile (25), ``--dir`` to keep
the .prof files (``python -m pstats FILE``).

    bench/peers_pg/.venv/bin/python bench/peers_pg/profile_gojob_pg.py --n 5000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import multiprocessing as mp
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gojob_core import Job, Manager

CTX = mp.get_context("fork")
COUNT = CTX.RawValue(ctypes.c_long, 0)
WARMUP = 50


async def noop(i: int) -> None:
    COUNT.value += 1


def worker_main(url: str, n: int, out: str, ready: object) -> None:
    async def run() -> None:
        prof = cProfile.Profile()
        async with Manager(store=url, num_workers=10, node_id="bench-worker") as mgr:
            await mgr.register_job(Job(kind="noop", executor=noop))
            ready.set()  # type: ignore[attr-defined]
            while COUNT.value < WARMUP:
                await asyncio.sleep(0.001)
            prof.enable()
            while COUNT.value < WARMUP + n:
                await asyncio.sleep(0.001)
            prof.disable()
        prof.dump_stats(out)

    asyncio.run(run())


def _timed(fn, into: list[float]):
    async def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return await fn(*a, **kw)
        finally:
            into.append(time.perf_counter() - t)

    return wrapper


async def producer(url: str, n: int, out: str) -> dict[str, float]:
    job = Job(kind="noop", executor=noop)
    async with Manager(store=url, num_workers=0, node_id="bench-producer") as mgr:
        await mgr.register_job(job)
        for k in range(WARMUP):
            await mgr.schedule_job(job, arguments=(-1 - k,))
        while COUNT.value < WARMUP:
            await asyncio.sleep(0.001)
        # phases: one pass timed by wrappers, no profiler (its overhead would distort the split)
        store_t: list[float] = []
        back_t: list[float] = []
        total: list[float] = []
        store, backend = mgr.store, mgr.store.backend
        store_enqueue, backend_enqueue = store.enqueue, backend.enqueue
        store.enqueue = _timed(store_enqueue, store_t)
        backend.enqueue = _timed(backend_enqueue, back_t)
        half = n // 2
        t0 = os.times()
        for i in range(half):
            t = time.perf_counter()
            await mgr.schedule_job(job, arguments=(i,))
            total.append(time.perf_counter() - t)
        t1 = os.times()
        user, system = (t1.user - t0.user) / half, (t1.system - t0.system) / half
        store.enqueue, backend.enqueue = store_enqueue, backend_enqueue
        # a bare round trip on the store's pool, for scale
        pool = backend._pool_or_fail()
        rt: list[float] = []
        for _ in range(500):
            async with pool.acquire() as conn:
                t = time.perf_counter()
                await conn.fetchval("SELECT 1")
                rt.append(time.perf_counter() - t)
        prof = cProfile.Profile()
        prof.enable()
        for i in range(half, n):
            await mgr.schedule_job(job, arguments=(i,))
        prof.disable()
        prof.dump_stats(out)
        while COUNT.value < WARMUP + n:
            await asyncio.sleep(0.001)
    med = statistics.median
    return {"schedule_job": med(total) * 1e6, "manager": (med(total) - med(store_t)) * 1e6,
            "store": (med(store_t) - med(back_t)) * 1e6, "backend": med(back_t) * 1e6,
            "select1": med(rt) * 1e6, "user": user * 1e6, "system": system * 1e6}


def show(path: str, title: str, top: int) -> None:
    print(f"\n## {title}: top {top} by own time\n")
    print("```")
    st = pstats.Stats(path, stream=sys.stdout)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    print("```")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    from gojob_store_postgres.testing import start_postgres

    d = a.dir or Path(tempfile.mkdtemp(prefix="gojob-pgprof-"))
    d.mkdir(parents=True, exist_ok=True)
    server = start_postgres()
    url = server.url()
    ready = CTX.Event()
    w = CTX.Process(target=worker_main, args=(url, a.n, str(d / "worker.prof"), ready))
    try:
        asyncio.run(_setup(url))
        w.start()
        if not ready.wait(60):
            raise RuntimeError("worker did not start")
        phases = asyncio.run(producer(url, a.n, str(d / "producer.prof")))
        w.join(60)
    finally:
        if w.is_alive():
            os.kill(w.pid, signal.SIGKILL)
            w.join()
        server.cleanup()
    print(f"# gojob-seq on PostgreSQL, profiled: N={a.n} (half timed by phase, half under cProfile); "
          f"load {os.getloadavg()[0]:.2f}\n")
    print("| per schedule_job call (median, µs wall) | |\n|---|---:|")
    for k, label in (("schedule_job", "schedule_job, total"), ("manager", "manager (before the store)"),
                     ("store", "SqlStore.enqueue less the backend"), ("backend", "backend enqueue (statement)"),
                     ("select1", "for scale: SELECT 1 on the store's pool"), ("user", "producer CPU per call, user"),
                     ("system", "producer CPU per call, system")):
        print(f"| {label} | {phases[k]:.0f} |")
    show(str(d / "producer.prof"), "producer (schedule_job)", a.top)
    show(str(d / "worker.prof"), "worker process (10 slots)", a.top)
    print(f"\nprofiles kept in {d}")
    return 0


async def _setup(url: str) -> None:
    async with Manager(store=url, num_workers=0, node_id="bench-setup"):
        pass


if __name__ == "__main__":
    sys.exit(main())
