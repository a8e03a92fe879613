"""The MySQL store's own rules, on a real MariaDB server: its URL, the tables (created once when nodes
start together, in the database and with the prefix the user names, a newer schema refused), rows that
cannot be decoded, a refused connection and a wrong password (one clear error each), the query plans."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import asyncmy
import pytest
from gojob_core import Job, Manager, Query, StoreError
from gojob_store_mysql import MysqlStore, parse_mysql_url
from gojob_store_mysql.testing import MariadbServer
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
def database() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(mysql_server: MariadbServer, database: str) -> str:
    return mysql_server.url(database)


@pytest.fixture
def make_store(url: str) -> Callable[[], MysqlStore]:
    return lambda: MysqlStore.from_url(url)


@pytest.fixture
async def raw(mysql_server: MariadbServer, database: str) -> AsyncIterator[Raw]:
    """Statements on the test's database, outside the store (created first if missing)."""
    async with MysqlStore.from_url(mysql_server.url(database)):
        pass  # the database and tables exist from here on
    conn = await asyncmy.connect(host=mysql_server.host, port=mysql_server.port, user=mysql_server.user,
                                 password=mysql_server.password, database=database, autocommit=True,
                                 charset="utf8mb4", binary_prefix=True)
    async with conn.cursor() as cur:
        await cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")

    async def fetch(sql: str, args: Sequence[Any]) -> list[Any]:
        async with conn.cursor() as cur:
            await cur.execute(sql, list(args))
            return list(await cur.fetchall())

    async def execute(sql: str, args: Sequence[Any]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(sql, list(args))

    try:
        yield Raw(fetch, execute)
    finally:
        await conn.ensure_closed()


async def test_newer_schema_is_refused(make_store: Callable[[], MysqlStore], raw: Raw) -> None:
    await check_newer_schema_refused(make_store, raw)


async def test_nodes_starting_together_create_the_schema_once(mysql_server: MariadbServer) -> None:
    # a database of its own that does not exist yet: the nodes also race to create it
    url = mysql_server.url(f"n{uuid.uuid4().hex[:10]}")
    await check_concurrent_first_start(lambda: MysqlStore.from_url(url), n=8)


async def test_corrupt_instance_rows(make_store: Callable[[], MysqlStore], raw: Raw) -> None:
    await check_corrupt_instance_rows(make_store, raw, garbage=b"\xff\xfe\x00{garbage \x80 not json")


async def test_corrupt_history_row(make_store: Callable[[], MysqlStore], raw: Raw) -> None:
    await check_corrupt_history_row(make_store, raw)


async def test_tables_live_in_the_named_database_with_the_prefix(mysql_server: MariadbServer, database: str,
                                                                 raw: Raw) -> None:
    async with MysqlStore.from_url(mysql_server.url(database, prefix="app_")) as a, \
            MysqlStore.from_url(mysql_server.url(database, prefix="other_")) as b:
        await a.enqueue([_inst(1)])
        assert await b.claim("n", 10, 30.0) == []
        assert len(await a.claim("n", 10, 30.0)) == 1
    rows = await raw.fetch("SELECT table_name, table_collation, engine FROM information_schema.tables "
                           "WHERE table_schema = %s", [database])
    names = {r[0] for r in rows}
    assert {"app_instances", "app_history", "app_logs", "app_meta", "app_schedules", "app_corrupt"} <= names
    assert {"other_instances", "other_history"} <= names
    assert {(r[1], r[2]) for r in rows} == {("utf8mb4_bin", "InnoDB")}


async def test_ids_compare_byte_for_byte(make_store: Callable[[], MysqlStore]) -> None:
    """Kinds and ids that differ only in case or accents are different (a binary collation), as on the
    other stores."""
    async with make_store() as store:
        a, b, c = _inst(1), _inst(2), _inst(3)
        a.kind, b.kind, c.kind = "Report", "report", "réport"
        await store.enqueue([a, b, c])
        assert [i.uuid for i in await store.list_instances(Query(kind="report"))] == [b.uuid]
        assert await store.queue_counts() == {"Report": 1, "report": 1, "réport": 1}


async def test_a_job_through_a_manager_by_url(url: str) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    for scheme in ("mysql", "mariadb"):
        async with Manager(url.replace("mysql://", f"{scheme}://"), num_workers=2) as mgr:
            assert type(mgr.store).__name__ == "MysqlStore"
            inst = await mgr.schedule_job(Job(kind="add", executor=add), arguments=(2, 3))
            assert (await mgr.wait(inst, timeout=10)).result == 5


async def test_an_idle_node_of_another_process_hears_of_new_work_within_its_poll(url: str) -> None:
    """No notification in MySQL: a node that is not in this process (its stores here are kept apart by
    the hand-off key) finds new work by its poll, within a few poll intervals, not the Manager's."""
    async def echo(i: int) -> int:
        return i

    job = Job(kind="echo", executor=echo)
    with anyio.fail_after(60):
        async with Manager(url + "?poll_interval=0.05", num_workers=1, poll_interval=60.0) as worker, \
                Manager(url + "?poll_interval=0.05&prefix=gojob_", num_workers=0) as producer:
            producer.store._key = "elsewhere"  # type: ignore[attr-defined]  # as if in another process
            await worker.register_job(job)
            await producer.schedule_job(job, arguments=[0])  # the worker has claimed once, and waits
            await anyio.sleep(0.3)
            t = time.monotonic()
            inst = await producer.schedule_job(job, arguments=[1])
            assert (await producer.wait(inst, timeout=10)).result == 1
            assert time.monotonic() - t < 2.0  # the Manager's own poll would take 60 s


async def test_cancel_reaches_a_running_node_of_another_process_by_its_poll(url: str) -> None:
    started = anyio.Event()

    async def body() -> None:
        started.set()
        await anyio.sleep(3600)

    async with Manager(url, num_workers=1, node_id="runner", lease_time=60.0) as runner, \
            Manager(url, num_workers=0, node_id="operator") as operator:
        operator.store._key = "elsewhere"  # type: ignore[attr-defined]  # as if in another process
        inst = await runner.schedule_job(Job(kind="sleepy", executor=body))
        with anyio.fail_after(10):
            await started.wait()
        t = time.monotonic()
        await operator.cancel_instance(inst)
        done = await operator.wait(inst, timeout=10)
        assert done.state.value == "CANCELED"
        assert time.monotonic() - t < 3.0  # the heartbeat would take 20 s


async def test_the_queue_reads_use_their_indexes(make_store: Callable[[], MysqlStore], raw: Raw) -> None:
    """EXPLAIN of the claim, the due read and a history lookup by instance: each reads an index, none
    sorts the table (what docs/stores.md shows)."""
    async with make_store() as store:
        await store.enqueue([_inst(i) for i in range(3000)])
        await store.claim("n", 1000, 30.0)  # some running, most waiting
        d = store.backend.dialect
        await raw.execute(f"ANALYZE TABLE {d.instances}, {d.history}", [])
        plans = {
            "claim": await raw.fetch("EXPLAIN " + d.select_claim(), [time.time(), 10]),
            "due": await raw.fetch("EXPLAIN " + d.next_due(), []),
            "history": await raw.fetch(f"EXPLAIN SELECT id FROM {d.history} WHERE uuid = %s ORDER BY ts, id",
                                       ["x"]),
        }
    for what, rows in plans.items():
        text = " ".join(str(v) for row in rows for v in row)
        assert "filesort" not in text, (what, rows)
        # the due time is read from the end of an index, without a table ("Select tables optimized away")
        assert re.search(r"gojob_(instances_queue|history_uuid)|optimized away", text), (what, rows)


# -- URLs, connections -------------------------------------------------------------------------------------
def test_url_forms() -> None:
    o = parse_mysql_url("mysql://u:p%40ss@db.example:3307/jobs?prefix=x_&pool_size=3&timeout=2.5&poll_interval=0.2")
    assert (o.host, o.port, o.user, o.password, o.database) == ("db.example", 3307, "u", "p@ss", "jobs")
    assert (o.prefix, o.pool_size, o.timeout, o.poll_interval) == ("x_", 3, 2.5, 0.2)
    assert o.address == "db.example:3307/jobs" and "p@ss" not in o.address
    assert parse_mysql_url("mariadb://h/db", prefix="other_").prefix == "other_"
    assert parse_mysql_url("mysql://h/db?ssl_ca=/ca.pem").ssl == "required"
    assert parse_mysql_url("mysql://h/db").port == 3306


@pytest.mark.parametrize(("url", "words"), [
    ("mysql://127.0.0.1:notaport/db", "is not a number"),
    ("mysql://127.0.0.1/", "name the database"),
    ("mysql://h1,h2/db", "give one host"),
    ("mysql://127.0.0.1/db-1", "database must be letters"),
    ("mysql://127.0.0.1/db?prefix=a-b", "prefix must be letters"),
    ("mysql://127.0.0.1/db?pool_size=0", "pool_size must be an integer between 1 and 1000, got '0'"),
    ("mysql://127.0.0.1/db?poll_interval=soon", "poll_interval must be a positive number of seconds, got 'soon'"),
    ("mysql://127.0.0.1/db?ssl=maybe", "ssl must be disabled, required or insecure, got 'maybe'"),
    ("mysql://127.0.0.1/db?ssl_cert=/c.pem", "give ssl_cert and ssl_key together"),
    ("mysql://127.0.0.1/db?bogus=1", "unknown parameter(s) ['bogus']"),
])
def test_bad_url_is_a_value_error_naming_it(url: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        Manager(store=url)
    assert repr(url) in str(err.value) and words in str(err.value), str(err.value)


def test_bad_option_names_it() -> None:
    with pytest.raises(ValueError, match=re.escape("unknown option(s) ['poll']")):
        Manager(store="mysql://127.0.0.1/db", store_options={"poll": 1})


async def test_refused_connection_fails_fast_naming_the_address() -> None:
    from gojob_core.testing.servers import free_port

    port = free_port()  # nothing listens there
    t = time.monotonic()
    with pytest.raises(StoreError) as err:
        async with Manager(store=f"mysql://u:pw-secret@127.0.0.1:{port}/db?connect_timeout=2", num_workers=1):
            pytest.fail("the Manager started without a server")
    assert time.monotonic() - t < 10
    assert f"127.0.0.1:{port}/db" in str(err.value) and "mysql" in str(err.value)
    assert "pw-secret" not in str(err.value)


async def test_wrong_password_is_an_access_error(mysql_server: MariadbServer) -> None:
    address = f"{mysql_server.host}:{mysql_server.port}"
    for creds in (f"{mysql_server.user}:wrong-password@", "nobody@"):
        with pytest.raises(StoreError) as err:
            async with Manager(store=f"mysql://{creds}{address}/db", num_workers=1):
                pytest.fail("the Manager started with a wrong password")
        message = str(err.value)
        assert address in message and "access denied" in message.lower(), message
        assert "wrong-password" not in message


async def test_instances_re_entering_the_queue_take_new_fifo_numbers(make_store: Callable[[], MysqlStore]) -> None:
    """A release (like a retry or a reclaim) gives instances new FIFO numbers: taken in the write's own
    round trip (LAST_INSERT_ID), distinct and past every other (the claim order is priority, ready time,
    then this number)."""
    async with make_store() as store:
        a, b, c = _inst(1), _inst(2), _inst(3)
        await store.enqueue([a, b])
        got = await store.claim("n", 2, 30.0)
        assert {i.uuid for i in got} == {a.uuid, b.uuid}
        await store.enqueue([c])
        await store.release("n", [a.uuid, b.uuid])
        seqs = {i.uuid: i.seq for i in await store.list_instances(Query())}
        assert seqs[a.uuid] > seqs[c.uuid] and seqs[b.uuid] > seqs[c.uuid] and seqs[a.uuid] != seqs[b.uuid]
