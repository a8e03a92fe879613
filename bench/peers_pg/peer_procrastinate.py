#!/usr/bin/env python
"""procrastinate (psycopg 3 connector).

Worker: ``app.run_worker_async(concurrency=10)`` in a forked process, the function its CLI's
``procrastinate worker`` runs; framework defaults otherwise (LISTEN/NOTIFY with a 5 s polling
fallback, finished jobs kept: ``delete_jobs="never"``, plus procrastinate's own events table).
Producer: ``await noop.defer_async(i=i)``, one call per job, on an App of its own. The schema
(``procrastinate schema --apply``) is applied once before the worker starts.
"""
import asyncio

import pglib
from pglib import peerlib
from procrastinate import App, PsycopgConnector


def make_app(url):
    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(i):
        peerlib.mark(i)

    return app, noop


def worker_proc(url, conc):
    async def main():
        app, _ = make_app(url)
        async with app.open_async():
            await app.run_worker_async(concurrency=conc)

    asyncio.run(main())


async def init_schema(url):
    app, _ = make_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def producer(args, url, base):
    app, noop = make_app(url)
    async with app.open_async():

        async def enqueue(i):
            await noop.defer_async(i=i)

        return await pglib.run_async(args, base, enqueue)


def main():
    pglib.run_adapter("procrastinate", "procrastinate", init_schema, worker_proc,
                      lambda args, base, url: producer(args, url, base))


if __name__ == "__main__":
    main()
