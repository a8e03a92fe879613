#!/usr/bin/env python
"""SAQ on PostgreSQL (saq[postgres]: psycopg 3 and psycopg_pool).

Worker: ``saq.Worker(Queue.from_url(dsn, name=q), functions=[noop], concurrency=10)`` in a forked
process, framework defaults otherwise (dequeue woken by LISTEN/NOTIFY, completed jobs kept with SAQ's
default ttl, a pool of 4-20 connections). Producer: ``await queue.enqueue("noop", i=i)``, one call per
job, on a Queue of its own. The schema (SAQ's migrations) is applied once before the worker starts:
SAQ's ``init_db`` returns without migrating when another process holds its advisory lock, so two
processes connecting together could see no table.
"""
import asyncio

import pglib
from pglib import peerlib
from saq import Queue, Worker


async def noop(ctx, *, i):
    peerlib.mark(i)


def worker_proc(url, q, conc):
    async def main():
        queue = Queue.from_url(url, name=q)
        await queue.connect()
        try:
            await Worker(queue, functions=[noop], concurrency=conc).start()
        finally:
            await queue.disconnect()

    asyncio.run(main())


async def init_schema(url, q):
    queue = Queue.from_url(url, name=q)
    await queue.connect()
    await queue.disconnect()


async def producer(args, url, q, base):
    queue = Queue.from_url(url, name=q)
    await queue.connect()

    async def enqueue(i):
        await queue.enqueue("noop", i=i)

    try:
        return await pglib.run_async(args, base, enqueue)
    finally:
        await queue.disconnect()


def main():
    pglib.run_adapter("saq", "saq", init_schema, worker_proc,
                      lambda args, base, url, q: producer(args, url, q, base), queue=True)


if __name__ == "__main__":
    main()
