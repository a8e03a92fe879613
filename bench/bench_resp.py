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
import json
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from _store_bench import add_common_arguments, print_table, run_modes
from gojob_store_resp.testing import find_redis_server, find_valkey_server, start_resp_server


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


def run(store: str, modes: list[str], n: int, reps: int, lat_n: int, workers: int) -> list[dict[str, Any]]:
    binary = find_redis_server() if store == "redis" else find_valkey_server()
    if binary is None:
        raise SystemExit(f"no {store} server binary")
    server = start_resp_server(binary, Path(tempfile.mkdtemp(prefix="gojob-bench-")))
    infos = 0  # INFO calls made so far: each counts in the totals read after it

    def counters() -> dict[str, int]:
        nonlocal infos
        total, scripts = _commandstats(server.port)
        infos += 1
        return {"server_calls_per_job": total - (infos - 1), "round_trips_per_job": scripts}

    try:
        rows = run_modes(server.url(store), server.pid, modes, n, reps, lat_n, workers,
                         lambda: f"bench{uuid.uuid4().hex[:6]}:", counters)
    finally:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["redis", "valkey"], default="redis")
    add_common_arguments(ap, n=10_000)
    a = ap.parse_args()
    rows = run(a.store, a.modes, a.n, a.reps, a.lat_n, a.workers)
    print(f"\n# gojob on {a.store}: 1 worker process x {a.workers} slots, no-op jobs, history on")
    print(f"- machine: {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}; "
          f"median of {a.reps} reps (latency: one run of {a.lat_n})\n")
    print_table(rows, [("server calls/job", "server_calls_per_job", ".1f"),
                       ("script calls (round trips)/job", "round_trips_per_job", ".2f")], "server",
                first=("store", a.store))
    if a.json:
        Path(a.json).write_text(json.dumps([{"store": a.store, **r} for r in rows], indent=1))


if __name__ == "__main__":
    sys.exit(main())
