"""What the PostgreSQL adapters (peer_*.py here) add to the Redis harness's peerlib.

peerlib itself is imported from the harness directory, not copied (``$GOJOB_PEERS_DIR``, else
``../shared/bench-peers`` beside this checkout): the shared-memory counter, ``mark(i)``, the
throughput and latency loops, the worker process, the JSON line and the cleanup by PID are the
ones the Redis peers were measured with. This module adds:

* the database: ``$PEERS_PG_DSN`` (``postgresql://postgres@127.0.0.1:PORT/DB``), a fresh database
  that ``run_pg.py`` created for this one run on the server it started (``$PEERS_PG_SERVER_PID``);
* CPU per job of the producer (this process), the worker process and the PostgreSQL server (all
  its processes: the postmaster, live backends, and exited ones through the postmaster's
  cutime/cstime), from /proc, taken from just before the first measured enqueue to the end of the
  run (which includes peerlib's 0.3 s wait for late duplicates).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
PEERS_DIR = Path(os.environ.get("GOJOB_PEERS_DIR") or _HERE.parents[2] / "shared" / "bench-peers")
sys.path.insert(0, str(PEERS_DIR))
import peerlib  # noqa: E402

__all__ = ["dsn", "peerlib", "run_async", "snapshot", "add_cpu"]

_TICK = os.sysconf("SC_CLK_TCK")


def dsn() -> str:
    url = os.environ.get("PEERS_PG_DSN")
    if not url:
        raise SystemExit("PEERS_PG_DSN is not set: run the adapters through run_pg.py (or set it to a "
                         "postgresql:// URL of an empty database)")
    return url


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def server_cpu_s() -> float:
    """CPU seconds of the PostgreSQL server: the postmaster (with the backends it reaped) and its
    live children. 0 if ``$PEERS_PG_SERVER_PID`` is not set."""
    root = int(os.environ.get("PEERS_PG_SERVER_PID") or 0)
    if not root:
        return 0.0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:
            continue
        if int(entry) == root:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _worker_cpu_s() -> float:
    total = 0
    for kind, p in peerlib._CHILDREN:
        if kind == "worker" and p.pid is not None:
            try:
                fields = _stat(p.pid)
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


def snapshot() -> tuple[float, float, float]:
    """(producer, worker, server) CPU seconds so far."""
    return time.process_time(), _worker_cpu_s(), server_cpu_s()


def add_cpu(rec: dict, before: tuple[float, float, float] | None, n: int) -> dict:
    """Put the CPU µs per job since ``before`` into the record (throughput runs)."""
    if before is not None and rec.get("mode") == "throughput":
        after = snapshot()
        for key, a, b in zip(("cpu_producer_us", "cpu_worker_us", "cpu_server_us"), before, after):
            rec[key] = round((b - a) / n * 1e6, 1)
    return rec


async def run_async(args, base: dict, enqueue) -> dict:
    """peerlib.run_async, with the CPU per job of the measured part added to the record: the
    snapshot is taken when the first measured job (i == 0) is about to be enqueued."""
    first: list[tuple[float, float, float]] = []

    async def measured(i: int) -> None:
        if i == 0 and not first:
            first.append(snapshot())
        await enqueue(i)

    rec = await peerlib.run_async(args, base, measured)
    return add_cpu(rec, first[0] if first else None, args.n)


def run_adapter(framework: str, library: str, init, worker, produce, *, variants=None, queue: bool = False) -> None:
    """An adapter's whole program, the same for every framework: parse the harness's arguments, set the
    framework's schema up before its worker starts (SAQ skips its migration when another process holds
    its lock), start the worker process, run the producer, print the record, exit with its verdict.
    ``init(url[, queue])``, ``worker(url[, queue], concurrency)`` and ``produce(args, base, url[, queue])``
    are the framework's; ``queue``: the framework takes a queue name of this run's own."""
    extra = {"variants": variants} if variants else {}
    args = peerlib.parse_args(default_concurrency=10, topologies=("proc",), **extra)
    base = peerlib.base_record(framework, library, args, store="postgres")
    try:
        url = dsn()
        peerlib.init_shared(args.n, args.mode == "latency")
        named = (peerlib.queue_name(),) if queue else ()
        asyncio.run(init(url, *named))
        peerlib.start_worker_process(worker, url, *named, args.concurrency)
        rec = asyncio.run(produce(args, base, url, *named))
        peerlib.emit(rec)
        code = 0 if rec["ok"] else 1
    except BaseException as e:  # noqa: BLE001
        peerlib.fail(base, args, e)
        code = 2
    peerlib.finish(code)
