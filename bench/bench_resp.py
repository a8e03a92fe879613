"""Valkey/Redis store benchmark: one worker process with 10 slots, a producer in this process.

Not a test: it prints a table. Full history is on (it always is). Modes:

- ``seq``:  one ``schedule_job`` call per job from a sequential producer (the peers' way);
- ``many``: ``schedule_many`` in batches of 1,000; the worker claims several ready instances per call
  and its finishes are group-committed;
- ``latency``: one job at a time with the worker idle; schedule call -> executor start (p50/p95/p99).

The job body is a no-op that records its run in shared memory (no store call), so completion is
exact: every one of N ran, none twice. From the server's own ``INFO commandstats``, divided by N:
every command it ran (those inside scripts included), and the script calls, which are the round trips
(every store step is one script; this workload makes no other calls). CPU per job of the producer,
the worker process and the server comes from /proc.

    python bench/bench_resp.py --store redis --n 10000 --reps 3
    python bench/bench_resp.py --store valkey --modes seq many latency
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import gojob_core as gojob
from gojob_core.testing.servers import find_redis_server, find_valkey_server, start_resp_server


def _worker_main(url: str, prefix: str, workers: int, hits: Any, counter: Any, starts: Any, ready: Any,
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


async def _run_mode(url: str, prefix: str, mode: str, n: int, counter: Any, hits: Any, starts: Any) -> dict[str, Any]:
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


def _commandstats(port: int) -> tuple[int, int]:
    """(every command the server ran, those inside scripts included; script calls, i.e. round trips)."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") and b"\r\n" in data[:20] or len(data) < 5:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n")
            if head.startswith(b"$") and len(rest) >= int(head[1:]):
                break
    total = scripts = 0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            calls = int(line.split(":", 1)[1].split(",")[0].split("=")[1])
            total += calls
            if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
                scripts += calls
    return total, scripts


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(store: str, modes: list[str], n: int, reps: int, lat_n: int, workers: int) -> list[dict[str, Any]]:
    binary = find_redis_server() if store == "redis" else find_valkey_server()
    if binary is None:
        raise SystemExit(f"no {store} server binary")
    server = start_resp_server(binary, Path(tempfile.mkdtemp(prefix="gojob-bench-")))
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")
    try:
        url = server.url(store)
        for mode in modes:
            results = []
            for _ in range(1 if mode == "latency" else reps):
                prefix = f"bench{uuid.uuid4().hex[:6]}:"
                size = lat_n if mode == "latency" else n
                hits = ctx.RawArray(ctypes.c_int, size)
                counter = ctx.RawValue(ctypes.c_long, 0)
                starts = ctx.RawArray(ctypes.c_double, 64)
                ready, stop = ctx.Event(), ctx.Event()
                proc = ctx.Process(target=_worker_main, args=(url, prefix, workers, hits, counter, starts, ready, stop))
                proc.start()
                try:
                    if not ready.wait(30):
                        raise RuntimeError("worker process did not start")
                    calls0 = _commandstats(server.port)
                    cpu0 = (time.process_time(), _proc_cpu(proc.pid), _proc_cpu(server.pid))
                    res = anyio.run(_run_mode, url, prefix, mode, size, counter, hits, starts)
                    cpu1 = (time.process_time(), _proc_cpu(proc.pid), _proc_cpu(server.pid))
                    calls1 = _commandstats(server.port)
                    res["server_calls_per_job"] = (calls1[0] - calls0[0] - 1) / size
                    res["round_trips_per_job"] = (calls1[1] - calls0[1]) / size
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
            row: dict[str, Any] = {"store": store, "mode": mode, "n": lat_n if mode == "latency" else n,
                                   "ok": all(r["ok"] for r in results)}
            for key in results[0]:
                if key != "ok":
                    row[key] = statistics.median(r[key] for r in results)
            rows.append(row)
    finally:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["redis", "valkey"], default="redis")
    ap.add_argument("--modes", nargs="+", default=["seq", "many", "latency"], choices=["seq", "many", "latency"])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lat-n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    rows = run(a.store, a.modes, a.n, a.reps, a.lat_n, a.workers)
    print(f"\n# gojob on {a.store}: 1 worker process x {a.workers} slots, no-op jobs, history on")
    print(f"- machine: {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}; "
          f"median of {a.reps} reps (latency: one run of {a.lat_n})\n")
    print("| store | mode | N | jobs/s | enqueue s | total s | p50 ms | p95 ms | p99 ms | schedule call p50 ms "
          "| server calls/job | script calls (round trips)/job | CPU µs/job producer / worker / server | ok |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        def f(k: str, fmt: str) -> str:
            return format(r[k], fmt) if k in r else ""
        print(f"| {r['store']} | {r['mode']} | {r['n']} | {f('jobs_per_s', ',.0f')} | {f('enqueue_s', '.2f')} | "
              f"{f('total_s', '.2f')} | {f('p50_ms', '.2f')} | {f('p95_ms', '.2f')} | {f('p99_ms', '.2f')} | "
              f"{f('call_p50_ms', '.2f')} | "
              f"{f('server_calls_per_job', '.1f')} | {f('round_trips_per_job', '.2f')} | "
              f"{f('cpu_producer_us', '.0f')} / {f('cpu_worker_us', '.0f')} / {f('cpu_server_us', '.0f')} | "
              f"{r['ok']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
