#!/usr/bin/env python
"""gojob adapter for the peer job-framework harness (bench-peers).

Same shape as peer_apscheduler.py's ``--variant memory --topology inproc``:
gojob ``Manager(store="memory://", num_workers=concurrency)`` in-process, on the
same asyncio loop as the producer; the store's queue, leases and state history
live in process memory (no Redis in the job path: an in-memory figure, like
apscheduler-memory-inproc, not a distributed queue).  The history is always on:
every instance gets CREATED, SCHEDULED, PROCESSING, COMPLETED records.

Producer: one ``await mgr.schedule_job(job, arguments=(i,))`` per job (no
schedule_many).  Job body: ``async def noop(i): peerlib.mark(i)``.

peerlib is imported from the harness directory, not copied: ``--peers-dir DIR``
or ``$GOJOB_PEERS_DIR`` (default: this file's directory if it holds peerlib.py,
else /work/peers/bench-peers).  Every other argument is peerlib's
(``--mode throughput|latency``, ``--n``, ``--concurrency``, ...).

    .venv/bin/python peer_gojob.py --n 10000
    .venv/bin/python peer_gojob.py --mode latency
"""
import asyncio
import os
import sys

DEFAULT_PEERS_DIR = "/work/peers/bench-peers"


def _peers_dir() -> str:
    """Take --peers-dir out of argv (peerlib's parser does not know it); else env; else default."""
    argv = sys.argv
    for k, a in enumerate(argv[1:], start=1):
        if a == "--peers-dir" and k + 1 < len(argv):
            d = argv[k + 1]
            del argv[k:k + 2]
            return d
        if a.startswith("--peers-dir="):
            del argv[k]
            return a.split("=", 1)[1]
    env = os.environ.get("GOJOB_PEERS_DIR")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "peerlib.py")):
        return here
    return DEFAULT_PEERS_DIR


sys.path.insert(0, os.path.abspath(_peers_dir()))
import peerlib  # noqa: E402
from gojob_core import Job, Manager  # noqa: E402


async def noop(i):
    peerlib.mark(i)


def _store_url(args, url):
    """memory: in process; redis: gojob-store-redis (redis-py); valkey: gojob-store-valkey (glide) on the
    harness's redis-server (glide speaks to Redis 7 too)."""
    if args.variant == "memory":
        return "memory://"
    return url.replace("redis://", "valkey://", 1) if args.variant == "valkey" else url


def worker_proc(url, prefix, conc):
    """--topology proc: the worker node, a Manager with `conc` slots in a forked child."""
    async def run():
        async with Manager(store=url, num_workers=conc, store_options={"prefix": prefix}) as mgr:
            await mgr.register_job(Job(kind="noop", executor=noop))
            await asyncio.Event().wait()
    asyncio.run(run())


async def producer(args, base, url, prefix):
    opts = {} if url == "memory://" else {"store_options": {"prefix": prefix}}
    workers = args.concurrency if args.topology == "inproc" else 0
    async with Manager(store=url, num_workers=workers, **opts) as mgr:
        job = await mgr.register_job(Job(kind="noop", executor=noop))

        async def enqueue(i):
            await mgr.schedule_job(job, arguments=(i,))

        rec = await peerlib.run_async(args, base, enqueue)
    # the Manager stopped gracefully (outside the timing); then report
    peerlib.emit(rec)
    peerlib.finish(0 if rec["ok"] else 1)


def main():
    args = peerlib.parse_args(default_concurrency=10, topologies=("inproc", "proc"),
                              variants=("memory", "redis", "valkey"))
    base = peerlib.base_record("gojob", "gojob-core", args, store=args.variant)
    try:
        url = _store_url(args, peerlib.start_redis() if args.variant != "memory" else "")
        peerlib.init_shared(args.n, args.mode == "latency")
        prefix = peerlib.queue_name() + ":"
        if args.topology == "proc":
            if url == "memory://":
                raise SystemExit("the memory store lives in one process: use --topology inproc")
            peerlib.start_worker_process(worker_proc, url, prefix, args.concurrency)
        asyncio.run(producer(args, base, url, prefix))
    except BaseException as e:  # noqa: BLE001
        peerlib.fail(base, args, e)
        peerlib.finish(2)


if __name__ == "__main__":
    main()
