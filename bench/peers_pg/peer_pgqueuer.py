#!/usr/bin/env python
"""PgQueuer (asyncpg driver).

Worker: ``PgQueuer.from_asyncpg_connection(conn)`` with an entrypoint ``noop`` and
``await pgq.run(batch_size=5, max_concurrent_tasks=10)`` (what ``pgq run ... --batch-size 5
--max-concurrent-tasks 10`` runs) in a forked process: at most 10 jobs in flight, as the other
frameworks' concurrency 10 (PgQueuer wants max_concurrent_tasks >= 2 x batch_size, so its default
batch of 10 would allow 20); LISTEN/NOTIFY wake-ups, finished jobs moved to its log table.
Producer: ``await queries.enqueue("noop", payload)``, one call per job, on a connection of its own.
The schema (``pgq install``) is installed once before the worker starts.
"""
import asyncio

import asyncpg
import pglib
from pglib import peerlib
from pgqueuer import PgQueuer, Queries


def worker_proc(url, conc):
    async def main():
        conn = await asyncpg.connect(url)
        pgq = PgQueuer.from_asyncpg_connection(conn)

        @pgq.entrypoint("noop")
        async def noop(job):
            peerlib.mark(int(job.payload))

        await pgq.run(batch_size=max(1, conc // 2), max_concurrent_tasks=conc)

    asyncio.run(main())


async def init_schema(url):
    conn = await asyncpg.connect(url)
    try:
        await Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


async def producer(args, url, base):
    conn = await asyncpg.connect(url)
    queries = Queries.from_asyncpg_connection(conn)

    async def enqueue(i):
        await queries.enqueue("noop", str(i).encode())

    try:
        return await pglib.run_async(args, base, enqueue)
    finally:
        await conn.close()


def main():
    pglib.run_adapter("pgqueuer", "pgqueuer", init_schema, worker_proc,
                      lambda args, base, url: producer(args, url, base))


if __name__ == "__main__":
    main()
