"""The PostgreSQL store across processes and failures, on a real server.

- several worker processes (gojob_core.testing.worker) on one database run 5,000 instances, each once;
- a worker process killed with SIGKILL mid-job: the other one re-runs the job after the lease;
- the server restarted under load: nothing is lost, nothing runs more than twice;
- LISTEN comes back after a restart: an idle node (its poll a minute away) hears of new work again.

asyncio only (asyncpg). Every process and server started here is stopped by PID.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from gojob_core import Job, Manager
from gojob_core.testing.checks import (
    check_each_instance_runs_once,
    check_killed_worker_reruns,
    check_restart_under_load,
)
from gojob_core.testing.processes import Workers, wait_for
from gojob_store_postgres.testing import PostgresServer, start_postgres

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _schema() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


@pytest.fixture
def shared_url(postgres_server: PostgresServer) -> str:
    """The session's server, with a schema of this test's own."""
    return postgres_server.url(schema=_schema())


@pytest.fixture
def dedicated() -> Iterator[Callable[[], PostgresServer]]:
    """Start servers of this test's own (stopped by PID at teardown)."""
    started: list[PostgresServer] = []

    def start() -> PostgresServer:
        server = start_postgres()
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()


# -- several worker processes, one database ---------------------------------------------------------------
N_MANY = 5000


@pytest.mark.slow
@pytest.mark.parametrize("n_procs", [2, 3])
async def test_worker_processes_run_each_instance_exactly_once(shared_url: str, workers: Workers,
                                                               n_procs: int) -> None:
    await check_each_instance_runs_once(shared_url, workers, n=N_MANY, n_procs=n_procs)


# -- a worker process killed mid-job ------------------------------------------------------------------------
@pytest.mark.slow
async def test_killed_worker_process_job_reruns_on_another_after_lease(shared_url: str, workers: Workers) -> None:
    # within the lease plus one reclaim interval (lease/2 at most) plus scheduling slack
    await check_killed_worker_reruns(shared_url, workers, lease=1.5, max_wait=1.5 * 1.5 + 1.0)


# -- the server restarted under load --------------------------------------------------------------------------
N_RESTART = 1000


@pytest.mark.slow
async def test_server_restart_under_load_loses_nothing(dedicated: Callable[[], PostgresServer],
                                                       record_property: Callable[[str, object], None]) -> None:
    server = dedicated()
    twice = await check_restart_under_load(server.url(schema=_schema()), server.restart, n=N_RESTART)
    record_property("ran_twice", twice)
    print(f"\n[postgres] restarted under load: {twice} of {N_RESTART} instances ran twice")


async def test_listen_comes_back_after_a_server_restart(dedicated: Callable[[], PostgresServer]) -> None:
    """An idle node (its safety-net poll a minute away) hears of new work through LISTEN again once
    its listener has reconnected by itself after a restart."""
    server = dedicated()
    url = server.url(schema=_schema())

    async def echo(i: int) -> int:
        return i

    job = Job(kind="echo", executor=echo)
    with anyio.fail_after(60):
        async with Manager(url, num_workers=1, lease_time=5.0, poll_interval=60.0) as mgr, \
                Manager(url, num_workers=0, lease_time=5.0) as producer:
            await mgr.register_job(job)
            first = await producer.schedule_job(job, arguments=[1])
            assert (await mgr.wait(first, timeout=5)).result == 1
            backend: Any = mgr.store.backend  # type: ignore[attr-defined]
            old = backend._listener
            await anyio.to_thread.run_sync(server.restart)

            async def relistening() -> bool:
                conn = backend._listener
                return conn is not None and conn is not old and not conn.is_closed()

            await wait_for(relistening, 20, lambda: "the listener did not come back after the restart", interval=0.05)
            # the dispatcher's own claim may still be failing on a dead pooled connection: let it settle
            await anyio.sleep(1.0)
            t = time.monotonic()
            second = await producer.schedule_job(job, arguments=[2])
            assert (await mgr.wait(second, timeout=10)).result == 2
            assert time.monotonic() - t < 3.0
            assert mgr.running
