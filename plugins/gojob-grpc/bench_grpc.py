"""Benchmark of the gRPC API: unary calls per second from one client, sequential and 32 in flight.

    python plugins/gojob-grpc/bench_grpc.py [--calls N] [--concurrency 32]

Rows:
- the ceiling: a bare grpc.aio unary round trip in one process (no-op handler, no protobuf, no auth);
- Health against a ``gojob serve`` node (a process of its own) on the memory store: the API's own cost;
- Schedule against that node with 0 workers (each call validates, coerces and enqueues an instance)
  and with 4 workers (each instance also runs on the node, sharing its CPU with the API).

Client and node share the machine's cores, as they would on one host. Not a test: it prints a table.
The node imports this file as its jobs module (the Job below); the benchmark runs only as __main__.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import gojob_core as gojob

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _add(a: int, b: int) -> int:
    return a + b


bench_add = gojob.Job(kind="bench.add", executor=_add)

HERE = Path(__file__).resolve().parent
_READY = re.compile(r"ready: grpc ([^\s,]+)")


async def measure(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> tuple[float, float | None]:
    """(calls per second, median latency in ms for the sequential run) over ``calls`` calls."""
    for _ in range(min(200, calls)):  # warm up: connection, caches
        await call()
    if concurrency == 1:
        lat = []
        t0 = time.perf_counter()
        for _ in range(calls):
            s = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - s)
        return calls / (time.perf_counter() - t0), statistics.median(lat) * 1e3
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - t0), None


async def bare_ceiling(calls: int, concurrency: int) -> list[tuple[str, int, float, float | None]]:
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
                rate, p50 = await measure(lambda: method(b""), calls, c)
                rows.append(("bare grpc.aio round trip, in-process (ceiling)", c, rate, p50))
    finally:
        await server.stop(None)
    return rows


def start_node(workers: int) -> tuple[subprocess.Popen[bytes], str]:
    gojob_cmd = Path(sys.executable).parent / "gojob"
    argv = [str(gojob_cmd)] if gojob_cmd.exists() else [sys.executable, "-m", "gojob_grpc.cli"]
    argv += ["serve", "--store", "memory://", "--jobs", "bench_grpc", "--app-dir", str(HERE),
             "--listen", "127.0.0.1:0", "--workers", str(workers), "--log-level", "WARNING"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
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


async def against_node(calls: int, concurrency: int) -> list[tuple[str, int, float, float | None]]:
    from gojob_grpc import Client

    rows = []
    for workers in (0, 4):
        proc, target = start_node(workers)
        try:
            async with Client(target) as c:
                if workers == 0:
                    for conc in (1, concurrency):
                        rate, p50 = await measure(c.health, calls, conc)
                        rows.append(("Health, node on memory://", conc, rate, p50))
                for conc in (1, concurrency):
                    rate, p50 = await measure(lambda: c.schedule("bench.add", (1, 2)), calls, conc)
                    what = "queued only (0 workers)" if workers == 0 else "and run (4 workers)"
                    rows.append((f"Schedule, node on memory://, {what}", conc, rate, p50))
        finally:
            stop_node(proc)
    return rows


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
    print("| call | in flight | calls/s | p50 latency (sequential) |")
    print("|---|---:|---:|---:|")
    for what, conc, rate, p50 in rows:
        print(f"| {what} | {conc} | {rate:,.0f} | {'' if p50 is None else f'{p50:.2f} ms'} |")


if __name__ == "__main__":
    main()
