#!/usr/bin/env python
"""gojob on PostgreSQL beside the Python job frameworks users would otherwise pick there
(procrastinate, PgQueuer, SAQ's PostgreSQL queue), in one run on one PostgreSQL server.

Not a test: it prints (and writes) a markdown table. Run it with the interpreter of the peers'
virtualenv (``bash bench/peers_pg/setup.sh`` creates it):

    bench/peers_pg/.venv/bin/python bench/peers_pg/run_pg.py                  # 3 reps x N in {2000, 10000} + latency
    bench/peers_pg/.venv/bin/python bench/peers_pg/run_pg.py --ns 2000 --reps 1 --lat-n 50   # a quick look
    ... --configs gojob-seq pgqueuer --md /tmp/t.md --jsonl /tmp/t.jsonl

One server for the whole run (``gojob_store_postgres.testing.start_postgres``: the same settings as
bench_sql.py and the store's tests: fsync off, full_page_writes off, synchronous_commit off), each
run on a fresh database of its own on it (dropped and created again before the run, outside any
timing). Every run is one adapter program (``peer_<name>.py`` here), measured the way
../shared/bench-peers measures the Redis peers, with its peerlib: a worker in one forked process with
concurrency 10, a producer in the adapter's main process making N sequential single-job enqueue calls
with the framework's ordinary API while the worker consumes; a run is ok only if every job ran exactly
once. Repetitions alternate the frameworks (rep 1 of every configuration at N=2000, then at N=10000,
then rep 2 ...), so a change of the machine's load spreads over all of them. Latency: one run per
framework of --lat-n jobs, one at a time with a random 20-520 ms idle gap, enqueue -> job body start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent

#: label -> (adapter, extra arguments, takes part in latency, environment)
CONFIGS: dict[str, tuple[str, list[str], bool, dict[str, str]]] = {
    "gojob-seq": ("peer_gojob_pg.py", ["--variant", "seq"], True, {}),
    "procrastinate": ("peer_procrastinate.py", [], True, {}),
    "pgqueuer": ("peer_pgqueuer.py", [], True, {}),
    "saq-pg": ("peer_saq_pg.py", [], True, {}),
    "gojob-bulk": ("peer_gojob_pg.py", ["--variant", "bulk"], False, {}),
    # experiments (not run unless named in --configs): gojob-seq with some of the store's indexes dropped
    "x-gojob-seq-no-history-idx": ("peer_gojob_pg.py", ["--variant", "seq"], False,
                                   {"PEERS_PG_GOJOB_DROP_INDEXES": "history_uuid,history_ts,history_kind,"
                                                                   "history_state"}),
    "x-gojob-seq-lean-idx": ("peer_gojob_pg.py", ["--variant", "seq"], False,
                             {"PEERS_PG_GOJOB_DROP_INDEXES": "history_ts,history_kind,history_state,"
                                                             "instances_created,instances_kind"}),
}
DEFAULT_CONFIGS = ["gojob-seq", "procrastinate", "pgqueuer", "saq-pg", "gojob-bulk"]
PEERS = ("procrastinate", "pgqueuer", "saq-pg")


async def _recreate(admin_url: str, db: str, statements: bool) -> None:
    import asyncpg

    c = await asyncpg.connect(admin_url)
    try:
        await c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await c.execute(f'CREATE DATABASE "{db}"')
        if statements:
            await c.execute("SELECT pg_stat_statements_reset()")
    finally:
        await c.close()


async def _statements(admin_url: str, db: str, n: int, top: int = 8) -> list[dict[str, Any]]:
    """The database's statements by total execution time (pg_stat_statements), per job."""
    import asyncpg

    c = await asyncpg.connect(admin_url)
    try:
        rows = await c.fetch("SELECT s.calls, s.total_exec_time, s.mean_exec_time, s.rows, s.query "
                             "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                             "WHERE d.datname = $1 ORDER BY s.total_exec_time DESC LIMIT $2", db, top)
    finally:
        await c.close()
    return [{"calls": r["calls"], "us_per_job": round(r["total_exec_time"] * 1000 / n, 1),
             "mean_ms": round(r["mean_exec_time"], 3), "rows": r["rows"],
             "query": " ".join(r["query"].split())[:160]} for r in rows]


async def _enable_statements(server: Any) -> None:
    import asyncpg

    c = await asyncpg.connect(server.url())
    try:
        await c.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await c.close()
    server.restart()
    c = await asyncpg.connect(server.url())
    try:
        await c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await c.close()


def provenance() -> str:
    """Where gojob was imported from (this interpreter's path: a snapshot on PYTHONPATH, or the
    editable checkout) and that checkout's commit, + dirty if its gojob sources have changes."""
    import gojob_core
    import gojob_store_postgres
    import gojob_store_sql

    paths = [Path(m.__file__).resolve().parent for m in (gojob_core, gojob_store_sql, gojob_store_postgres)]
    where = ", ".join(str(p) for p in paths)
    root = BENCH.parent
    if all(root in p.parents for p in paths):
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *map(str, paths)],
                               capture_output=True, text=True).stdout.strip()
        return f"{where} (checkout at {head}{' +dirty' if dirty else ''})"
    return f"{where} (not the checkout: a snapshot on PYTHONPATH)"


def run_one(server: Any, label: str, mode: str, n: int, rep: int, timeout: float, raw: Path,
            statements: bool = False) -> dict[str, Any]:
    script, extra, _, env_extra = CONFIGS[label]
    db = "bench_" + label.replace("-", "_")
    asyncio.run(_recreate(server.url(), db, statements))
    env = dict(os.environ, PEERS_PG_DSN=server.url(database=db), PEERS_PG_SERVER_PID=str(server.pid), **env_extra)
    cmd = [sys.executable, str(HERE / script), "--mode", mode, "--n", str(n), "--label", label, "--rep", str(rep),
           "--timeout", str(max(30.0, timeout - 60)), *extra]
    log = raw / f"{label}-{mode}-n{n}-r{rep}.log"
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, rc = f"timed out after {timeout} s", -1
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    lines = [line for line in out.splitlines() if line.startswith('{"framework"')]
    if lines:
        rec = json.loads(lines[-1])
    else:
        rec = {"mode": mode, "n": n, "ok": False, "error": f"no result line; rc={rc}; see {log}"}
    rec.update(label=label, rep=rep)
    if statements:
        rec["statements"] = asyncio.run(_statements(server.url(), db, n))
    return rec


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(records: list[dict[str, Any]], labels: list[str], ns: list[int], reps: int) -> str:
    versions = {r["label"]: r.get("version", "?") for r in records if "version" in r}
    out = ["| framework | mode | N | jobs/s median [min-max] | ok runs | enqueue s | total s "
           "| CPU µs/job producer / worker / server |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    best: dict[int, tuple[float, str]] = {}
    medians: dict[tuple[str, int], float] = {}
    for n in ns:
        for label in labels:
            runs = [r for r in records if r["label"] == label and r["mode"] == "throughput" and r["n"] == n]
            if not runs:
                continue
            good = [r for r in runs if r.get("ok")]
            mode = "bulk: schedule_many x1000" if label == "gojob-bulk" else "seq: 1 enqueue call per job"
            if label.startswith("x-"):
                mode += f" (experiment: dropped {CONFIGS[label][3]['PEERS_PG_GOJOB_DROP_INDEXES']})"
            if not good:
                err = runs[0].get("error", "not ok")
                out.append(f"| {label} {versions.get(label, '')} | {mode} | {n} | - | 0/{len(runs)} | | | {err} |")
                continue

            def med(key: str, good: list[dict[str, Any]] = good) -> float | None:
                vals = [r[key] for r in good if r.get(key) is not None]
                return statistics.median(vals) if vals else None

            jps = [r["jobs_per_s"] for r in good]
            m = statistics.median(jps)
            medians[(label, n)] = m
            if label in PEERS and m > best.get(n, (0.0, ""))[0]:
                best[n] = (m, label)
            cpu = " / ".join(_fmt(med(k)) for k in ("cpu_producer_us", "cpu_worker_us", "cpu_server_us"))
            spread = f"{m:,.0f} [{min(jps):,.0f}-{max(jps):,.0f}]"
            out.append(f"| {label} {versions.get(label, '')} | {mode} | {n} | {spread} | {len(good)}/{len(runs)} "
                       f"| {_fmt(med('enqueue_s'), '.2f')} | {_fmt(med('total_s'), '.2f')} "
                       f"| {cpu} |")
    lat = [r for r in records if r["mode"] == "latency"]
    out += ["", "| framework | idle latency p50 ms | p95 ms | p99 ms | jobs | ok |", "|---|---:|---:|---:|---:|---|"]
    p50: dict[str, float] = {}
    for label in labels:
        for r in (r for r in lat if r["label"] == label):
            if r.get("ok") and r.get("p50_ms") is not None:
                p50[label] = r["p50_ms"]
                out.append(f"| {label} {versions.get(label, '')} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
                           f"| {r['p99_ms']:.2f} | {r['n']} | yes |")
            else:
                out.append(f"| {label} | - | - | - | {r.get('n')} | no: {r.get('error', 'lost or duplicated jobs')} |")
    out += ["", "Targets (issue 14): gojob on PostgreSQL >= 1.5x the best peer's throughput in the same run, "
            "idle p50 no higher than the best peer's.", ""]
    for n, (b, who) in sorted(best.items()):
        for label in [x for x in labels if "gojob" in x]:
            if (label, n) in medians:
                ratio = medians[(label, n)] / b
                out.append(f"- N={n}: {label} {medians[(label, n)]:,.0f} jobs/s = {ratio:.2f}x the best peer "
                           f"({who}, {b:,.0f}): {'holds' if ratio >= 1.5 else 'does not hold'}")
    peers_p50 = {k: v for k, v in p50.items() if k in PEERS}
    if "gojob-seq" in p50 and peers_p50:
        who = min(peers_p50, key=lambda k: peers_p50[k])
        ok = p50["gojob-seq"] <= peers_p50[who]
        out.append(f"- idle p50: gojob {p50['gojob-seq']:.2f} ms, best peer {who} {peers_p50[who]:.2f} ms: "
                   f"{'holds' if ok else 'does not hold'}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=DEFAULT_CONFIGS)
    ap.add_argument("--ns", nargs="+", type=int, default=[2000, 10000], help="jobs per throughput run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lat-n", type=int, default=200, help="jobs of the latency run (0: none)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it counts as failed")
    ap.add_argument("--jsonl", type=Path, default=None, help="every run's record (default: none written)")
    ap.add_argument("--md", type=Path, default=None, help="write the header and tables here too")
    ap.add_argument("--statements", action="store_true",
                    help="diagnosis, not for the table: load pg_stat_statements and list each run's costliest "
                         "statements (server execution time per job)")
    ap.add_argument("--note", action="append", default=[], help="a line for the header (repeatable)")
    ap.add_argument("--raw", type=Path, default=BENCH / "results" / "raw" / "peers-pg",
                    help="each run's output (git-ignored)")
    a = ap.parse_args()

    from gojob_store_postgres.testing import start_postgres

    a.raw.mkdir(parents=True, exist_ok=True)
    server = start_postgres()
    version = subprocess.run([os.path.join(server.bindir, "postgres"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    started = dt.datetime.now(dt.UTC)
    load0 = os.getloadavg()
    records: list[dict[str, Any]] = []
    sink = None

    def keep(rec: dict[str, Any]) -> None:
        records.append(rec)
        if sink:
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
        what = (f"{rec['jobs_per_s']:,.0f} jobs/s" if rec.get("jobs_per_s") else
                f"p50 {rec['p50_ms']} ms p99 {rec['p99_ms']} ms" if rec.get("p50_ms") else rec.get("error", ""))
        print(f"{time.strftime('%H:%M:%S')} {rec['label']:<14} {rec['mode']:<10} n={rec['n']:<6} rep={rec['rep']} "
              f"ok={rec.get('ok')} {what}", file=sys.stderr, flush=True)

    try:
        if a.statements:
            asyncio.run(_enable_statements(server))
        sink = a.jsonl.open("w") if a.jsonl else None
        for rep in range(1, a.reps + 1):
            for n in a.ns:
                for label in a.configs:
                    keep(run_one(server, label, "throughput", n, rep, a.timeout, a.raw, a.statements))
        if a.lat_n:
            for label in a.configs:
                if CONFIGS[label][2]:
                    keep(run_one(server, label, "latency", a.lat_n, 1, a.timeout, a.raw, a.statements))
    finally:
        server.cleanup()
        if sink:
            sink.close()
    from importlib.metadata import version as dist_version

    head = [f"# gojob on PostgreSQL beside procrastinate, PgQueuer and SAQ ({started:%Y-%m-%d %H:%M} UTC)", "",
            f"- server: {version}, one server for the run (fsync=off, full_page_writes=off, synchronous_commit=off, "
            "shared_buffers=64MB), a fresh database per run",
            f"- gojob: {provenance()}",
            f"- machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
            f"load {load0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
            f"- drivers: asyncpg {dist_version('asyncpg')} (gojob, PgQueuer), psycopg {dist_version('psycopg')} "
            "(procrastinate, SAQ)",
            f"- worker: 1 forked process, concurrency 10; producer: the adapter's main process; "
            f"{a.reps} reps per N, interleaved; latency: 1 run of {a.lat_n} jobs, 20-520 ms idle gaps",
            "- CPU µs/job: from just before the first measured enqueue to the end of the run (incl. peerlib's "
            "0.3 s wait for duplicates); server = all PostgreSQL processes",
            *(f"- {note}" for note in a.note), "", ""]
    text = "\n".join(head) + summarize(records, a.configs, a.ns, a.reps) + "\n"
    if a.statements:
        text += "\n## Costliest statements per run (pg_stat_statements: server execution µs per job)\n"
        for r in records:
            text += f"\n### {r['label']} {r['mode']} N={r['n']} rep {r['rep']}\n\n"
            text += "| calls | µs/job | mean ms | rows | query |\n"
            text += "|---:|---:|---:|---:|---|\n"
            for st in r.get("statements", []):
                q = st["query"].replace("|", "\\|")
                text += f"| {st['calls']} | {st['us_per_job']} | {st['mean_ms']} | {st['rows']} | `{q}` |\n"
    print(text)
    if a.md:
        a.md.write_text(text)
    return 0 if all(r.get("ok") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
