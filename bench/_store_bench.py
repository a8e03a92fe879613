"""What the store benchmarks (bench_resp.py, bench_etcd.py) share: the worker process, the timed
modes, the repetitions and their medians, the CPU per job of each process, and the table.

Not a test. A store's benchmark supplies its server (URL and PID), a key prefix per run, and a
function reading the server's own counters (each is reported per job).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import random
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import gojob_core as gojob

MODES = ("seq", "many", "latency")


def worker_main(url: str, prefix: str, workers: int, hits: Any, counter: Any, starts: Any, ready: Any,
                 stop: Any) -> None:
    """The worker process: a Manager with ``workers`` slots running the no-op job until told to stop."""

    async def body(i: int) -> None:
        starts[i % len(starts)] = time.monotonic()
        hits[i] += 1
        counter.value += 1

    async def main() -> None:
        async with gojob.Manager(store=url, num_workers=workers, store_options={"prefix": prefix},
                                 node_id="bench-worker") as mgr:
            await mgr.register_job(gojob.Job(kind="bench.noop", executor=body))
            ready.set()
            while not stop.is_set():
                await anyio.sleep(0.05)

    anyio.run(main)


async def run_mode(url: str, prefix: str, mode: str, n: int, counter: Any, hits: Any, starts: Any) -> dict[str, Any]:
    async def body(i: int) -> None:  # never runs here (num_workers=0): the worker process runs it
        pass

    job = gojob.Job(kind="bench.noop", executor=body)
    async with gojob.Manager(store=url, num_workers=0, store_options={"prefix": prefix},
                             node_id="bench-producer") as mgr:
        await mgr.register_job(job)
        if mode == "latency":
            rng = random.Random(1)
            lat, call = [], []
            for k in range(n):
                before_count = counter.value
                slot = k % len(starts)
                starts[slot] = 0.0
                await anyio.sleep(rng.uniform(0.02, 0.1))
                t0 = time.monotonic()
                await mgr.schedule_job(job, arguments=(k,))
                call.append((time.monotonic() - t0) * 1000)
                while counter.value == before_count:
                    await anyio.sleep(0.0002)
                lat.append((starts[slot] - t0) * 1000)
            lat.sort()
            call.sort()
            return {"p50_ms": lat[len(lat) // 2], "p95_ms": lat[int(len(lat) * 0.95)],
                    "p99_ms": lat[int(len(lat) * 0.99)], "call_p50_ms": call[len(call) // 2]}
        start_count = counter.value
        t0 = time.perf_counter()
        if mode == "seq":
            for i in range(n):
                await mgr.schedule_job(job, arguments=(i,))
        else:
            for lo in range(0, n, 1000):
                await mgr.schedule_many(job, [(i,) for i in range(lo, min(n, lo + 1000))])
        t_enq = time.perf_counter() - t0
        while counter.value - start_count < n:
            await anyio.sleep(0.001)
        total = time.perf_counter() - t0
    return {"jobs_per_s": n / total, "enqueue_s": t_enq, "total_s": total}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_modes(url: str, server_pid: int, modes: Sequence[str], n: int, reps: int, lat_n: int, workers: int,
              new_prefix: Callable[[], str], counters: Callable[[], dict[str, int]]) -> list[dict[str, Any]]:
    """Each mode ``reps`` times (latency once) with a fresh worker process and key prefix; one row of
    medians per mode. ``counters()`` reads the server's counters; their change is reported per job."""
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")
    for mode in modes:
        results = []
        size = lat_n if mode == "latency" else n
        for _ in range(1 if mode == "latency" else reps):
            prefix = new_prefix()
            hits = ctx.RawArray(ctypes.c_int, size)
            counter = ctx.RawValue(ctypes.c_long, 0)
            starts = ctx.RawArray(ctypes.c_double, 64)
            ready, stop = ctx.Event(), ctx.Event()
            proc = ctx.Process(target=worker_main, args=(url, prefix, workers, hits, counter, starts, ready, stop))
            proc.start()
            try:
                if not ready.wait(30):
                    raise RuntimeError("worker process did not start")
                before = counters()
                cpu0 = (time.process_time(), proc_cpu(proc.pid), proc_cpu(server_pid))
                res = anyio.run(run_mode, url, prefix, mode, size, counter, hits, starts)
                cpu1 = (time.process_time(), proc_cpu(proc.pid), proc_cpu(server_pid))
                after = counters()
                for key in before:
                    res[key] = (after[key] - before[key]) / size
                for key, a, b in zip(("cpu_producer_us", "cpu_worker_us", "cpu_server_us"), cpu0, cpu1):
                    res[key] = (b - a) / size * 1e6
                res["ok"] = all(h == 1 for h in hits)
                results.append(res)
            finally:
                stop.set()
                proc.join(15)
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.join()
        row: dict[str, Any] = {"mode": mode, "n": size, "ok": all(r["ok"] for r in results)}
        for key in results[0]:
            if key != "ok":
                row[key] = statistics.median(r[key] for r in results)
        rows.append(row)
    return rows


def print_table(rows: Sequence[dict[str, Any]], counter_columns: Sequence[tuple[str, str, str]], server: str,
                first: tuple[str, str] | None = None) -> None:
    """The rows as a markdown table; ``counter_columns``: (heading, row key, format) of the server's
    counters; ``first``: an extra leading column (heading, value)."""
    heads = ["mode", "N", "jobs/s", "enqueue s", "total s", "p50 ms", "p95 ms", "p99 ms", "schedule call p50 ms",
             *(h for h, _, _ in counter_columns), f"CPU µs/job producer / worker / {server}", "ok"]
    if first is not None:
        heads.insert(0, first[0])
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join(["---"] * (2 if first else 1) + ["---:"] * (len(heads) - (3 if first else 2))) + "|---|")
    for r in rows:
        def f(k: str, fmt: str) -> str:
            return format(r[k], fmt) if k in r else ""
        cells = [r["mode"], str(r["n"]), f("jobs_per_s", ",.0f"), f("enqueue_s", ".2f"), f("total_s", ".2f"),
                 f("p50_ms", ".2f"), f("p95_ms", ".2f"), f("p99_ms", ".2f"), f("call_p50_ms", ".2f"),
                 *(f(k, fmt) for _, k, fmt in counter_columns),
                 f"{f('cpu_producer_us', '.0f')} / {f('cpu_worker_us', '.0f')} / {f('cpu_server_us', '.0f')}",
                 str(r["ok"])]
        if first is not None:
            cells.insert(0, first[1])
        print("| " + " | ".join(cells) + " |")


def add_common_arguments(ap: argparse.ArgumentParser, *, n: int) -> None:
    """The options every store benchmark takes: modes, N, repetitions, latency samples, slots, --json."""
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lat-n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--json", help="also write the rows to this file")
