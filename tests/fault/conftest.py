"""Fixtures of the fault suite (issue 19): the stores, clusters of nodes on them, dedicated servers.

Every scenario runs on every store it makes sense for: ``memory`` (several Managers sharing one
MemoryStore in this process; a kill is ``stop(abandon=True)``), ``valkey``, ``redis``, ``etcd``,
``postgres``, ``mysql`` (MariaDB) and ``sqlite`` (nodes are OS processes; a kill is SIGKILL). The network stores use the
session's servers (a key prefix per test; PostgreSQL: a schema per test) or, for the restart scenario, a
server of the test's own with persistence on (PostgreSQL: its data directory kept). SQLite has no server:
the nodes of a test share one database file in the test's directory, on this host. Servers and nodes
are stopped by PID.

asyncio only: redis-py's asyncio client does not run on trio, and the scenarios are about processes and
stores, not event loops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fault_support import LEASE, STORES, Cluster, MemoryCluster, ProcessCluster, store_url  # noqa: E402
from gojob_core.testing.servers import Server  # noqa: E402
from gojob_store_etcd.testing import find_etcd, start_etcd_server  # noqa: E402
from gojob_store_mysql.testing import MariadbServer, mysql_server, start_mariadb  # noqa: E402, F401
from gojob_store_postgres.testing import PostgresServer, postgres_server, start_postgres  # noqa: E402, F401
from gojob_store_resp.testing import find_redis_server, find_valkey_server, start_resp_server  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: a scenario of the fault suite (tests/fault, issue 19)")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dedicated_server(store: str, tmp_path: Path) -> Iterator[Server | PostgresServer | MariadbServer | None]:
    """A server of this test's own (Valkey/Redis with AOF, etcd and PostgreSQL with their data dirs), for
    restarts. ``restart()`` stops it and starts it again on the same port with the same data."""
    if store in ("memory", "sqlite"):
        yield None
        return
    if store == "mysql":
        my = start_mariadb()
        try:
            yield my
        finally:
            my.cleanup()
        return
    if store == "postgres":
        # in a directory of the system's temporary one, which the postgres user (root runs the server
        # as that user) can reach, unlike pytest's tmp_path
        pg = start_postgres()
        try:
            yield pg
        finally:
            pg.cleanup()
        return
    if store == "etcd":
        binary = find_etcd()
        if binary is None:
            raise RuntimeError("no etcd binary found; the fault suite needs a real server")
        server = start_etcd_server(binary, tmp_path / "etcd-own")
    else:
        binary = find_redis_server() if store == "redis" else find_valkey_server()
        if binary is None:
            raise RuntimeError(f"no {store} server binary found; the fault suite needs a real server")
        server = start_resp_server(binary, tmp_path / f"{store}-own", persist=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(store: str, request: pytest.FixtureRequest,
            tmp_path: Path) -> Iterator[Callable[..., contextlib.AbstractAsyncContextManager[Cluster]]]:
    """``async with cluster() as c``: a cluster on this test's store, its scheduling Manager started.

    The nodes and the client are stopped when the block ends (in the test's own task: a Manager must be
    stopped by the task that started it); any node process still alive at teardown is killed by PID."""
    made: list[Cluster] = []
    shared: Server | PostgresServer | MariadbServer | Path | None
    if store == "memory":
        shared = None
    elif store == "sqlite":
        shared = tmp_path  # the database file's directory: no server
    else:  # valkey_server, redis_server, etcd_server (the root conftest's plugins); postgres_server, mysql_server
        shared = request.getfixturevalue(f"{store}_server")

    @contextlib.asynccontextmanager
    async def open_cluster(*, server: Server | PostgresServer | MariadbServer | None = None,
                           lease: float | None = None) -> AsyncIterator[Cluster]:
        out = tmp_path / f"run{len(made)}"
        out.mkdir()
        lease = lease or LEASE[store]
        c: Cluster
        if store == "memory":
            c = MemoryCluster(out, lease)
        else:
            srv = server or shared
            assert srv is not None
            c = ProcessCluster(store, store_url(store, srv), out, lease)
        made.append(c)
        async with anyio.create_task_group() as tg:  # the in-process nodes' tasks
            c.tg = tg
            await c.open_client()
            try:
                yield c
            finally:
                try:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                        await c.close()
                finally:
                    await c.client.stop()

    yield open_cluster
    for c in made:
        for proc in getattr(c, "_all", []):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

