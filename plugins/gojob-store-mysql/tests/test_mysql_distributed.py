"""The MySQL store across processes and failures, on a real MariaDB server.

- several worker processes (gojob_core.testing.worker) on one database run 5,000 instances, each once;
- a worker process killed with SIGKILL mid-job: the other one re-runs the job after the lease;
- the server restarted under load: nothing is lost, nothing runs more than twice.

asyncio only (asyncmy). Every process and server started here is stopped by PID.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from gojob_core.testing.checks import (
    check_each_instance_runs_once,
    check_killed_worker_reruns,
    check_restart_under_load,
)
from gojob_core.testing.processes import Workers
from gojob_store_mysql.testing import MariadbServer, start_mariadb

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _database() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


@pytest.fixture
def shared_url(mysql_server: MariadbServer) -> str:
    """The session's server, with a database of this test's own."""
    return mysql_server.url(_database())


@pytest.fixture
def dedicated() -> Iterator[Callable[[], MariadbServer]]:
    """Start servers of this test's own (stopped by PID at teardown)."""
    started: list[MariadbServer] = []

    def start() -> MariadbServer:
        server = start_mariadb()
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()


N_MANY = 5000


@pytest.mark.slow
@pytest.mark.parametrize("n_procs", [2, 3])
async def test_worker_processes_run_each_instance_exactly_once(shared_url: str, workers: Workers,
                                                               n_procs: int) -> None:
    await check_each_instance_runs_once(shared_url, workers, n=N_MANY, n_procs=n_procs)


@pytest.mark.slow
async def test_killed_worker_process_job_reruns_on_another_after_lease(shared_url: str, workers: Workers) -> None:
    await check_killed_worker_reruns(shared_url, workers, lease=1.5, max_wait=1.5 * 1.5 + 1.0)


N_RESTART = 1000


@pytest.mark.slow
async def test_server_restart_under_load_loses_nothing(dedicated: Callable[[], MariadbServer],
                                                       record_property: Callable[[str, object], None]) -> None:
    server = dedicated()
    twice = await check_restart_under_load(server.url(_database()), server.restart, n=N_RESTART)
    record_property("ran_twice", twice)
    print(f"\n[mysql] restarted under load: {twice} of {N_RESTART} instances ran twice")
