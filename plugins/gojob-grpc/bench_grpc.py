"""Benchmark of the gRPC API: unary calls per second from one client, sequential and 32 in flight.

    python plugins/gojob-grpc/bench_grpc.py [--calls N] [--concurrency 32]

Rows:
- the ceiling: a bare grpc.aio unary round trip in one process (no-op handler, no protobuf, no auth);
- Health against a ``gojob serve`` node (a process of its own) on the memory store: the API's own cost;
- Schedule against that node with 0 workers (each call validates, coerces and enqueues an instance)
  and with 4 workers (each instance also runs on the node, sharing its CPU with the API).

The server-side share of the time is measured, not inferred:
- "in handler": the node's own time inside the servicer's Health/Schedule method per call (the node
  imports this file as its jobs module and, with BENCH_GRPC_SPANS set, wraps those two methods to record
  each call's start and end on the system's monotonic clock, written to that file when it exits); the
  calls of a row are the spans within the row's window. For a sequential row the share is of the
  client's p50 latency; for 32 in flight, a call's handler time includes its waits on the node's loop.
- "node CPU" and "client CPU": CPU seconds (user + system, every thread) each process spent over the
  row, per call (the node's from /proc/PID/stat, so Linux only); "node share" is node / (node + client).

Client and node share the machine's cores, as they would on one host. Not a test: it prints a table.
The node imports this file as its jobs module (the Job below); the benchmark runs only as __main__.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gojob_core as gojob

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _add(a: int, b: int) -> int:
    return a + b


bench_add = gojob.Job(kind="bench.add", executor=_add)

HERE = Path(__file__).resolve().parent
_READY = re.compile(r"ready: grpc ([^\s,]+)")
_TIMED = ("Health", "Schedule")


def _record_handler_spans(path: str) -> None:
    """In the node: time every Health and Schedule call inside the servicer; write the spans at exit."""
    from gojob_grpc._server import JobServicer

    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in _TIMED}

    def timed(inner: Any, out: list[tuple[float, float]]) -> Any:
        @functools.wraps(inner)
        async def method(self: Any, request: Any, context: Any) -> Any:
            t0 = time.monotonic()  # CLOCK_MONOTONIC: comparable with the client's clock on this host
            try:
                return await inner(self, request, context)
            finally:
                out.append((t0, time.monotonic()))
        return method

    for name in _TIMED:
        setattr(JobServicer, name, timed(getattr(JobServicer, name), spans[name]))
    atexit.register(lambda: Path(path).write_text(json.dumps(spans)))


if __name__ != "__main__" and os.environ.get("BENCH_GRPC_SPANS"):
    _record_handler_spans(os.environ["BENCH_GRPC_SPANS"])


def _proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) of process ``pid`` so far, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass
class Row:
    what: str
    in_flight: int
    rate: float
    p50: float | None  # ms, sequential rows
    window: tuple[float, float]  # monotonic start and end of the timed calls
    client_cpu: float  # CPU seconds per call of this process
    node_cpu: float | None  # of the node process, None in-process
    method: str | None = None  # the servicer method timed in the node
    handler: list[float] | None = None  # seconds inside it, per call of the row


async def measure(what: str, call: Callable[[], Awaitable[object]], calls: int, concurrency: int,
                  node_pid: int | None = None, method: str | None = None) -> Row:
    """One row: rate, median latency (sequential) and CPU per call over ``calls`` calls after a warm-up."""
    for _ in range(min(200, calls)):  # warm up: connection, caches
        await call()
    cpu0, node0 = time.process_time(), _proc_cpu(node_pid)
    lat = []
    t0 = time.perf_counter()
    m0 = time.monotonic()
    if concurrency == 1:
        for _ in range(calls):
            s = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - s)
    else:
        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await call()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    m1 = time.monotonic()
    elapsed = time.perf_counter() - t0
    client_cpu = (time.process_time() - cpu0) / calls
    node1 = _proc_cpu(node_pid)
    node_cpu = None if node0 is None or node1 is None else (node1 - node0) / calls
    return Row(what, concurrency, calls / elapsed, statistics.median(lat) * 1e3 if lat else None, (m0, m1),
               client_cpu, node_cpu, method)


async def bare_ceiling(calls: int, concurrency: int) -> list[Row]:
    import grpc
    import grpc.aio

    async def ping(request: bytes, context: object) -> bytes:
        return b""

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    rows = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary("/bench.Echo/Ping")
            for c in (1, concurrency):
                rows.append(await measure("bare grpc.aio round trip, in-process (ceiling)", lambda: method(b""),
                                          calls, c))
    finally:
        await server.stop(None)
    return rows


def start_node(workers: int, spans: Path) -> tuple[subprocess.Popen[bytes], str]:
    gojob_cmd = Path(sys.executable).parent / "gojob"
    argv = [str(gojob_cmd)] if gojob_cmd.exists() else [sys.executable, "-m", "gojob_grpc.cli"]
    argv += ["serve", "--store", "memory://", "--jobs", "bench_grpc", "--app-dir", str(HERE),
             "--listen", "127.0.0.1:0", "--workers", str(workers), "--log-level", "WARNING"]
    env = {**os.environ, "BENCH_GRPC_SPANS": str(spans)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        m = _READY.search(line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the node did not start")


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def against_node(calls: int, concurrency: int) -> list[Row]:
    from gojob_grpc import Client

    rows: list[Row] = []
    for workers in (0, 4):
        node_rows: list[Row] = []
        with tempfile.TemporaryDirectory() as tmp:
            spans_file = Path(tmp) / "spans.json"
            proc, target = start_node(workers, spans_file)
            try:
                async with Client(target) as c:
                    if workers == 0:
                        for conc in (1, concurrency):
                            node_rows.append(await measure("Health, node on memory://", c.health, calls, conc,
                                                           proc.pid, "Health"))
                    for conc in (1, concurrency):
                        what = "queued only (0 workers)" if workers == 0 else "and run (4 workers)"
                        node_rows.append(await measure(f"Schedule, node on memory://, {what}",
                                                       lambda: c.schedule("bench.add", (1, 2)), calls, conc,
                                                       proc.pid, "Schedule"))
            finally:
                stop_node(proc)
            spans = json.loads(spans_file.read_text())  # written by the node as it exits
        for row in node_rows:
            lo, hi = row.window
            row.handler = [end - start for start, end in spans[row.method] if lo <= start and end <= hi]
            if len(row.handler) != calls:
                raise RuntimeError(f"{row.what}: {len(row.handler)} handler spans in the window, not {calls}")
        rows += node_rows
    return rows


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f} ms"


def print_table(rows: list[Row]) -> None:
    print("| call | in flight | calls/s | p50 latency (sequential) | in handler, p50 (share of latency) "
          "| node CPU per call | client CPU per call | node share of CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        handler = ""
        if r.handler:
            h = statistics.median(r.handler)
            handler = f"{h * 1e3:.3f} ms" + (f" ({h * 1e3 / r.p50:.0%})" if r.p50 else "")
        share = ("" if r.node_cpu is None or r.node_cpu + r.client_cpu == 0
                 else f"{r.node_cpu / (r.node_cpu + r.client_cpu):.0%}")
        client = _ms(r.client_cpu) + (" (both sides)" if r.node_cpu is None else "")
        print(f"| {r.what} | {r.in_flight} | {r.rate:,.0f} | {'' if r.p50 is None else f'{r.p50:.2f} ms'} "
              f"| {handler} | {_ms(r.node_cpu)} | {client} | {share} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per row (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight for the concurrent rows")
    args = parser.parse_args()
    rows = asyncio.run(bare_ceiling(args.calls, args.concurrency))
    rows += asyncio.run(against_node(args.calls, args.concurrency))
    import grpc

    print(f"gojob-grpc unary calls, one client, {args.calls} calls per row; Python {sys.version.split()[0]}, "
          f"grpcio {grpc.__version__}, {os.cpu_count()} cores shared by client and node\n")
    print_table(rows)


if __name__ == "__main__":
    main()
