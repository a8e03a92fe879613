"""The PostgreSQL store's own rules, on a real server: its URL, the schema (created once when nodes
start together, in the schema and with the prefix the user names, a newer one refused), rows that
cannot be decoded, a refused connection and a wrong password (one clear error each), the query plans."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import asyncpg
import pytest
from gojob_core import Job, Manager, StoreError
from gojob_store_postgres import PostgresStore, parse_postgres_url
from gojob_store_postgres.testing import PostgresServer, start_postgres
from gojob_store_sql.testing import (
    Raw,
    _inst,
    check_concurrent_first_start,
    check_corrupt_history_row,
    check_corrupt_instance_rows,
    check_newer_schema_refused,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def schema() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(postgres_server: PostgresServer, schema: str) -> str:
    return postgres_server.url(schema=schema)


@pytest.fixture
def make_store(url: str) -> Callable[[], PostgresStore]:
    return lambda: PostgresStore.from_url(url)


@pytest.fixture
async def raw(postgres_server: PostgresServer) -> AsyncIterator[Raw]:
    conn = await asyncpg.connect(postgres_server.url())

    async def fetch(sql: str, args: Sequence[Any]) -> list[Any]:
        return list(await conn.fetch(sql, *args))

    async def execute(sql: str, args: Sequence[Any]) -> None:
        await conn.execute(sql, *args)

    try:
        yield Raw(fetch, execute)
    finally:
        await conn.close()


async def test_newer_schema_is_refused(make_store: Callable[[], PostgresStore], raw: Raw) -> None:
    await check_newer_schema_refused(make_store, raw)


async def test_nodes_starting_together_create_the_schema_once(make_store: Callable[[], PostgresStore]) -> None:
    await check_concurrent_first_start(make_store, n=8)


async def test_corrupt_instance_rows(make_store: Callable[[], PostgresStore], raw: Raw) -> None:
    await check_corrupt_instance_rows(make_store, raw, garbage=b"\xff\xfe\x00{garbage \x80 not json")


async def test_corrupt_history_row(make_store: Callable[[], PostgresStore], raw: Raw) -> None:
    await check_corrupt_history_row(make_store, raw)


async def test_tables_live_in_the_named_schema_with_the_prefix(postgres_server: PostgresServer, schema: str,
                                                               raw: Raw) -> None:
    async with PostgresStore.from_url(postgres_server.url(schema=schema, prefix="app_")) as a, \
            PostgresStore.from_url(postgres_server.url(schema=schema, prefix="other_")) as b:
        await a.enqueue([_inst(1)])
        assert await b.claim("n", 10, 30.0) == []
        assert len(await a.claim("n", 10, 30.0)) == 1
    rows = await raw.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", [schema])
    names = {r[0] for r in rows}
    assert {"app_instances", "app_history", "app_logs", "app_meta", "app_schedules", "app_corrupt"} <= names
    assert {"other_instances", "other_history"} <= names
    assert all(n.startswith(("app_", "other_")) for n in names), names


async def test_a_job_through_a_manager_by_url(url: str) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    for scheme in ("postgresql", "postgres"):
        async with Manager(url.replace("postgresql://", f"{scheme}://"), num_workers=2) as mgr:
            assert type(mgr.store).__name__ == "PostgresStore"
            inst = await mgr.schedule_job(Job(kind="add", executor=add), arguments=(2, 3))
            assert (await mgr.wait(inst, timeout=10)).result == 5


async def test_cancel_reaches_the_running_node_by_notify(url: str) -> None:
    """A cancel from another node stops a running instance at once (NOTIFY), not at the next heartbeat."""
    import anyio

    started = anyio.Event()

    async def body() -> None:
        started.set()
        await anyio.sleep(3600)

    async with Manager(url, num_workers=1, node_id="runner", lease_time=60.0) as runner, \
            Manager(url, num_workers=0, node_id="operator") as operator:
        inst = await runner.schedule_job(Job(kind="sleepy", executor=body))
        with anyio.fail_after(10):
            await started.wait()
        t = time.monotonic()
        await operator.cancel_instance(inst)
        done = await operator.wait(inst, timeout=10)
        assert done.state.value == "CANCELED"
        assert time.monotonic() - t < 2.0  # the heartbeat would take 20 s


# -- URLs, connections -------------------------------------------------------------------------------------
def test_url_forms() -> None:
    o = parse_postgres_url("postgresql://u:secret@db.example:6543/jobs?schema=gj&prefix=x_&pool_size=3"
                           "&timeout=2.5&sslmode=require")
    assert (o.schema, o.prefix, o.pool_size, o.timeout) == ("gj", "x_", 3, 2.5)
    assert o.address == "db.example:6543/jobs" and "secret" not in o.address
    assert o.dsn == "postgresql://u:secret@db.example:6543/jobs?sslmode=require"
    assert parse_postgres_url("postgres://h/db", schema="other").schema == "other"
    assert parse_postgres_url("postgresql://h1:5432,h2:5433/db").address == "h1:5432,h2:5433/db"


@pytest.mark.parametrize(("url", "words"), [
    ("postgresql://127.0.0.1:notaport/db", "is not a number"),
    ("postgresql://127.0.0.1:99999/db", "out of range"),
    ("postgresql://127.0.0.1/db/more", "just the database name"),
    ("postgresql://127.0.0.1/db?schema=1abc", "schema must be letters"),
    ("postgresql://127.0.0.1/db?prefix=a-b", "prefix must be letters"),
    ("postgresql://127.0.0.1/db?pool_size=1", "pool_size must be an integer between 2 and 1000, got '1'"),
    ("postgresql://127.0.0.1/db?timeout=soon", "timeout must be a positive number of seconds, got 'soon'"),
    ("postgresql://127.0.0.1/db?bogus=1", "unknown parameter(s) ['bogus']"),
])
def test_bad_url_is_a_value_error_naming_it(url: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        Manager(store=url)
    assert repr(url) in str(err.value) and words in str(err.value), str(err.value)


def test_bad_option_names_it() -> None:
    with pytest.raises(ValueError, match=re.escape("unknown option(s) ['poll']")):
        Manager(store="postgresql://127.0.0.1/db", store_options={"poll": 1})
    with pytest.raises(ValueError, match="connect_timeout"):
        Manager(store="postgresql://127.0.0.1/db", store_options={"connect_timeout": 0})


async def test_refused_connection_fails_fast_naming_the_address() -> None:
    from gojob_core.testing.servers import free_port

    port = free_port()  # nothing listens there
    t = time.monotonic()
    with pytest.raises(StoreError) as err:
        async with Manager(store=f"postgresql://u:pw-secret@127.0.0.1:{port}/db?connect_timeout=2", num_workers=1):
            pytest.fail("the Manager started without a server")
    assert time.monotonic() - t < 10
    assert f"127.0.0.1:{port}/db" in str(err.value) and "postgres" in str(err.value)
    assert "pw-secret" not in str(err.value)


@pytest.fixture
def password_server() -> Iterator[PostgresServer]:
    """A server of its own that asks TCP clients for a password (scram-sha-256)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.cleanup()


PASSWORD = "pw-Zq81x-secret"


async def test_wrong_password_is_an_authentication_error(password_server: PostgresServer) -> None:
    conn = await asyncpg.connect(password_server.url())
    try:
        await conn.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")
    finally:
        await conn.close()
    hba = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    (password_server.datadir / "pg_hba.conf").write_text(hba)
    os.kill(password_server.pid, signal.SIGHUP)
    time.sleep(0.5)
    address = f"127.0.0.1:{password_server.port}"
    for creds in ("postgres:wrong-password@", "postgres@"):
        with pytest.raises(StoreError) as err:
            async with Manager(store=f"postgresql://{creds}{address}/postgres", num_workers=1):
                pytest.fail("the Manager started with a wrong password")
        message = str(err.value)
        assert address in message and "authentication" in message.lower(), message
        assert "wrong-password" not in message and PASSWORD not in message
    async with Manager(store=f"postgresql://postgres:{PASSWORD}@{address}/postgres", num_workers=0) as mgr:
        assert await mgr.lookup_instances() == []
