"""The SQLite store across processes: several worker processes share one database file (WAL).

- worker processes (gojob_core.testing.worker) on one file run 3,000 instances, each exactly once;
- a worker process killed with SIGKILL mid-job: the other one re-runs the job after the lease.

SQLite has no server to restart; a process that dies mid-transaction leaves nothing behind (SQLite
rolls it back), which the killed worker covers. Every process started here is stopped by PID.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gojob_core.testing.checks import check_each_instance_runs_once, check_killed_worker_reruns
from gojob_core.testing.processes import Workers

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'shared' / 'jobs.db'}?poll_interval=0.02"


@pytest.fixture(autouse=True)
def _directory(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()


@pytest.mark.slow
@pytest.mark.parametrize("n_procs", [2, 3])
async def test_worker_processes_run_each_instance_exactly_once(url: str, workers: Workers, n_procs: int) -> None:
    await check_each_instance_runs_once(url, workers, n=3000, n_procs=n_procs)


@pytest.mark.slow
async def test_killed_worker_process_job_reruns_on_another_after_lease(url: str, workers: Workers) -> None:
    await check_killed_worker_reruns(url, workers, lease=1.5, max_wait=1.5 * 1.5 + 1.0)
