#!/usr/bin/env python
"""gojob on PostgreSQL (gojob-store-postgres, asyncpg), full history on (it always is: CREATED,
SCHEDULED, PROCESSING, COMPLETED records per instance).

Worker: ``Manager(store=dsn, num_workers=10)`` in a forked process with the job ``noop`` registered.
Producer: a ``Manager(store=dsn, num_workers=0)`` in this process.

  --variant seq  : ``await mgr.schedule_job(job, arguments=(i,))``, one call per job (the peers' way)
  --variant bulk : ``await mgr.schedule_many(job, [(i,) ...])`` in batches of 1,000 (throughput only;
                   not the peers' way, reported as an extra row)

``$PEERS_PG_GOJOB_DROP_INDEXES`` (comma-separated short names, e.g. ``history_ts,history_kind``): an
experiment, never the store as shipped: those of the store's indexes are dropped before the run, to see
what their upkeep costs.

The store creates its schema on first use; a Manager opened and closed before the worker process
starts creates it, as the other adapters apply their frameworks' schemas first.
"""
import asyncio
import os
import time

import pglib
from gojob_core import Job, Manager
from pglib import peerlib

BATCH = 1000


async def noop(i):
    peerlib.mark(i)


def worker_proc(url, conc):
    async def run():
        async with Manager(store=url, num_workers=conc, node_id="bench-worker") as mgr:
            await mgr.register_job(Job(kind="noop", executor=noop))
            await asyncio.Event().wait()

    asyncio.run(run())


async def bulk(args, base, mgr, job):
    """peerlib.run_async's throughput run with schedule_many in place of the one-job calls."""
    dl = time.perf_counter() + 120
    for k in range(args.warmup):
        await mgr.schedule_job(job, arguments=(-1 - k,))
    await peerlib._wait_async(args.warmup, dl, get=peerlib.warm_count)
    await asyncio.sleep(0.2)
    n = args.n
    before = pglib.snapshot()
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        await mgr.schedule_many(job, [(i,) for i in range(lo, min(n, lo + BATCH))])
    t_enq = time.perf_counter()
    t_done = await peerlib._wait_async(n, t0 + args.timeout)
    rec = peerlib.throughput_record(base, n, t0, t_enq, t_done)
    await asyncio.sleep(0.3)
    return pglib.add_cpu(peerlib._verify(rec, n), before, n)


async def init_schema(url):
    async with Manager(store=url, num_workers=0, node_id="bench-setup"):
        pass
    drop = [x for x in os.environ.get("PEERS_PG_GOJOB_DROP_INDEXES", "").split(",") if x]
    if drop:  # an experiment, never gojob as shipped: what the store's index upkeep costs
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            for short in drop:
                await conn.execute(f'DROP INDEX "gojob_{short}"')
        finally:
            await conn.close()


async def producer(args, base, url):
    async with Manager(store=url, num_workers=0, node_id="bench-producer") as mgr:
        job = await mgr.register_job(Job(kind="noop", executor=noop))
        if args.variant == "bulk":
            if args.mode != "throughput":
                raise SystemExit("--variant bulk is a throughput mode")
            rec = await bulk(args, base, mgr, job)
        else:

            async def enqueue(i):
                await mgr.schedule_job(job, arguments=(i,))

            rec = await pglib.run_async(args, base, enqueue)
    return rec


def main():
    pglib.run_adapter("gojob", "gojob-store-postgres", init_schema, worker_proc,
                      lambda args, base, url: producer(args, base, url), variants=("seq", "bulk"))


if __name__ == "__main__":
    main()
