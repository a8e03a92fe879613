"""SQL store benchmark (PostgreSQL, MySQL/MariaDB, SQLite): one worker process with 10 slots, a producer in
this process, the same workload as bench/bench_resp.py.

Not a test: it prints a table. Full history is on (it always is). Modes:

- ``seq``:  one ``schedule_job`` call per job from a sequential producer (the peers' way);
- ``many``: ``schedule_many`` in batches of 1,000; the worker claims several ready instances per
  transaction and its finishes are group-committed (finish and claim in one transaction);
- ``latency``: one job at a time with the worker idle; schedule call -> executor start (p50/p95/p99).
  On PostgreSQL the worker hears of the job through LISTEN/NOTIFY; on SQLite (no notification, and the
  worker is another process) through its poll of ``PRAGMA data_version`` every ``poll_interval``.

MariaDB runs on a server started for the run (``gojob_store_mysql.testing``: Debian's mariadb-server, the
log flushed once a second, no binary log); on MySQL (no notification, and the worker is another process)
an idle worker hears of a job through its poll of the queue's index every ``poll_interval``.
PostgreSQL runs on a server started for the run (``gojob_store_postgres.testing``: Debian's binaries,
fsync off, synchronous_commit off); its CPU per job is that of all its processes (the postmaster, the
backends serving both nodes, those that exited), from /proc. SQLite runs on a file in a temporary
directory (WAL, synchronous=NORMAL); it has no server.

    python bench/bench_sql.py --store postgres mysql sqlite --n 5000 --reps 3
    python bench/bench_sql.py --store sqlite --modes latency --sqlite-poll 0.005
    python bench/bench_sql.py --drivers      # asyncpg beside psycopg 3 (needs psycopg[binary] installed)

``--drivers`` measures the two PostgreSQL drivers on the shapes the store runs, on the same server,
interleaved: a one-statement insert of arrays (an enqueue) and a claim transaction (BEGIN; SELECT ...
FOR UPDATE SKIP LOCKED; UPDATE ... FROM unnest; COMMIT), psycopg in pipeline mode (two round trips for
the transaction where asyncpg makes four). Why the store uses asyncpg.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from _store_bench import add_common_arguments, print_table, run_modes


def _tree_cpu_us(root: int) -> float:
    """CPU µs used by ``root`` (with its reaped children) and its live children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == root:
            total += int(fields[11]) + int(fields[12])
    return total / tick * 1e6


def run_postgres(modes: list[str], n: int, reps: int, lat_n: int, workers: int) -> tuple[list[dict[str, Any]], str]:
    from gojob_store_postgres.testing import start_postgres

    server = start_postgres()
    version = subprocess.run([os.path.join(server.bindir, "postgres"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    try:
        url = server.url(schema="bench")
        rows = run_modes(url, server.pid, modes, n, reps, lat_n, workers, lambda: f"b{uuid.uuid4().hex[:8]}_",
                         lambda: {"server_cpu_us": int(_tree_cpu_us(server.pid))})
    finally:
        server.cleanup()
    return rows, version


def run_mysql(modes: list[str], n: int, reps: int, lat_n: int, workers: int,
              poll: float) -> tuple[list[dict[str, Any]], str]:
    from gojob_store_mysql.testing import start_mariadb

    server = start_mariadb()
    version = subprocess.run([server.argv[0], "--version"], capture_output=True, text=True).stdout.strip()
    try:
        url = server.url("bench", poll_interval=poll)
        rows = run_modes(url, server.pid, modes, n, reps, lat_n, workers, lambda: f"b{uuid.uuid4().hex[:8]}_",
                         lambda: {"server_cpu_us": int(_tree_cpu_us(server.pid))})
    finally:
        server.cleanup()
    return rows, version


def run_sqlite(modes: list[str], n: int, reps: int, lat_n: int, workers: int, poll: float) -> list[dict[str, Any]]:
    directory = Path(tempfile.mkdtemp(prefix="gojob-bench-sqlite-"))
    idle = subprocess.Popen(["sleep", "86400"])  # stands in for the server the table has a column for
    try:
        url = f"sqlite://{directory / 'jobs.db'}?poll_interval={poll}"
        return run_modes(url, idle.pid, modes, n, reps, lat_n, workers, lambda: f"b{uuid.uuid4().hex[:8]}_",
                         lambda: {})
    finally:
        idle.kill()
        idle.wait()
        shutil.rmtree(directory, ignore_errors=True)


_SETUP = ("DROP TABLE IF EXISTS t; CREATE TABLE t (id bigint PRIMARY KEY, state text NOT NULL, lease float8, "
          "node text, payload bytea); CREATE INDEX t_q ON t (id) WHERE state = 'q'")
_SEL = "SELECT id, state, lease, node, payload FROM t WHERE state = 'q' ORDER BY id LIMIT 5 FOR UPDATE SKIP LOCKED"
_UPD = "UPDATE t SET state = v.s, lease = v.l FROM unnest({0}::int8[], {1}::text[], {2}::float8[]) AS v(i, s, l) " \
       "WHERE t.id = v.i"
_INS = "INSERT INTO t (id, state, payload) SELECT * FROM unnest({0}::int8[], {1}::text[], {2}::bytea[])"


async def _asyncpg_shapes(dsn: str, n: int, base: int) -> tuple[float, float, float, float]:
    import time

    import asyncpg

    c = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
    ins, upd = _INS.format("$1", "$2", "$3"), _UPD.format("$1", "$2", "$3")
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await c.execute(ins, [base + i], ["q"], [b"x" * 200])
    out = [(time.perf_counter() - t) / n * 1e6, (time.process_time() - cpu) / n * 1e6]
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(n // 5):
        async with c.transaction():
            rows = await c.fetch(_SEL)
            await c.execute(upd, [r[0] for r in rows], ["r"] * len(rows), [1.0] * len(rows))
    out += [(time.perf_counter() - t) / (n // 5) * 1e6, (time.process_time() - cpu) / (n // 5) * 1e6]
    await c.close()
    return out[0], out[1], out[2], out[3]


async def _psycopg_shapes(dsn: str, n: int, base: int) -> tuple[float, float, float, float]:
    import time

    import psycopg

    c = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0)
    await c.execute("SET plan_cache_mode = force_generic_plan")
    ins, upd = _INS.format("%s", "%s", "%s"), _UPD.format("%s", "%s", "%s")
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await c.execute(ins, ([base + i], ["q"], [b"x" * 200]))
    out = [(time.perf_counter() - t) / n * 1e6, (time.process_time() - cpu) / n * 1e6]
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(n // 5):
        async with c.pipeline(), c.transaction():
            cur = await c.execute(_SEL)
            rows = await cur.fetchall()
            await c.execute(upd, ([r[0] for r in rows], ["r"] * len(rows), [1.0] * len(rows)))
    out += [(time.perf_counter() - t) / (n // 5) * 1e6, (time.process_time() - cpu) / (n // 5) * 1e6]
    await c.close()
    return out[0], out[1], out[2], out[3]


def compare_drivers(n: int = 3000, reps: int = 3) -> None:
    import asyncio
    import statistics

    import asyncpg
    import psycopg
    from gojob_store_postgres.testing import start_postgres

    server = start_postgres()
    try:
        dsn = server.url()

        async def run() -> dict[str, list[tuple[float, float, float, float]]]:
            res: dict[str, list[tuple[float, float, float, float]]] = {"asyncpg": [], "psycopg": []}
            for rep in range(reps):
                for name, fn in (("asyncpg", _asyncpg_shapes), ("psycopg", _psycopg_shapes)):
                    c = await asyncpg.connect(dsn)
                    await c.execute(_SETUP)
                    await c.close()
                    res[name].append(await fn(dsn, n, rep * 10 * n))
            return res

        res = asyncio.run(run())
    finally:
        server.cleanup()
    print(f"\n## PostgreSQL drivers (asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__}); "
          f"median of {reps}, load {os.getloadavg()[0]:.2f}\n")
    print("| driver | insert µs/call | client CPU µs | claim transaction µs | client CPU µs |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in res.items():
        cells = [statistics.median(r[k] for r in runs) for k in range(4)]
        print(f"| {name} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", nargs="+", choices=["postgres", "mysql", "sqlite"],
                    default=["postgres", "mysql", "sqlite"])
    ap.add_argument("--mysql-poll", type=float, default=0.05, help="the MySQL store's poll_interval (seconds)")
    ap.add_argument("--sqlite-poll", type=float, default=0.02, help="the SQLite store's poll_interval (seconds)")
    ap.add_argument("--drivers", action="store_true", help="compare asyncpg and psycopg 3 instead")
    add_common_arguments(ap, n=5_000)
    a = ap.parse_args()
    if a.drivers:
        compare_drivers(reps=a.reps)
        return
    out: dict[str, Any] = {}
    print(f"\n# gojob on SQL stores: 1 worker process x {a.workers} slots, no-op jobs, history on")
    print(f"- machine: {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f} "
          f"at the start; median of {a.reps} reps (latency: one run of {a.lat_n})")
    if "postgres" in a.store:
        rows, version = run_postgres(a.modes, a.n, a.reps, a.lat_n, a.workers)
        out["postgres"] = {"rows": rows, "server": version}
        print(f"\n## PostgreSQL ({version}; fsync=off, synchronous_commit=off; asyncpg)\n")
        print_table(rows, [("server CPU µs/job (all its processes)", "server_cpu_us", ".0f")], "postmaster",
                    first=("store", "postgres"))
    if "mysql" in a.store:
        rows, version = run_mysql(a.modes, a.n, a.reps, a.lat_n, a.workers, a.mysql_poll)
        out["mysql"] = {"rows": rows, "server": version, "poll_interval": a.mysql_poll}
        print(f"\n## MySQL store on {version} (innodb_flush_log_at_trx_commit=0, no binary log; asyncmy; "
              f"poll_interval={a.mysql_poll} s)\n")
        print_table(rows, [("server CPU µs/job", "server_cpu_us", ".0f")], "mariadbd", first=("store", "mysql"))
    if "sqlite" in a.store:
        import sqlite3

        rows = run_sqlite(a.modes, a.n, a.reps, a.lat_n, a.workers, a.sqlite_poll)
        out["sqlite"] = {"rows": rows, "sqlite": sqlite3.sqlite_version, "poll_interval": a.sqlite_poll}
        print(f"\n## SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL, poll_interval={a.sqlite_poll} s; "
              "no server: the last CPU column is empty)\n")
        print_table(rows, [], "(none)", first=("store", "sqlite"))
    print(f"\n- load at the end: {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
