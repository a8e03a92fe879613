"""The SQLite store's own rules: its URL, the schema (created once, a newer one refused), rows that
cannot be decoded, several stores in one file by prefix, and a job through a Manager by URL."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from gojob_core import Job, Manager, StoreError
from gojob_store_sql.testing import (
    Raw,
    check_concurrent_first_start,
    check_corrupt_history_row,
    check_corrupt_instance_rows,
    check_newer_schema_refused,
)
from gojob_store_sqlite import SqliteStore, parse_sqlite_url

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def make_store(path: Path) -> Callable[[], SqliteStore]:
    return lambda: SqliteStore(str(path))


@pytest.fixture
def raw(path: Path) -> Raw:
    def run(sql: str, args: Sequence[Any]) -> list[Any]:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            return db.execute(sql, list(args)).fetchall()
        finally:
            db.close()

    async def fetch(sql: str, args: Sequence[Any]) -> list[Any]:
        return await anyio.to_thread.run_sync(run, sql, args)

    async def execute(sql: str, args: Sequence[Any]) -> None:
        await anyio.to_thread.run_sync(run, sql, args)

    return Raw(fetch, execute)


async def test_newer_schema_is_refused(make_store: Callable[[], SqliteStore], raw: Raw) -> None:
    await check_newer_schema_refused(make_store, raw)


async def test_nodes_starting_together_create_the_schema_once(make_store: Callable[[], SqliteStore]) -> None:
    await check_concurrent_first_start(make_store)


async def test_corrupt_instance_rows(make_store: Callable[[], SqliteStore], raw: Raw) -> None:
    await check_corrupt_instance_rows(make_store, raw, garbage=b"\xff\xfe\x00{garbage \x80 not json")


async def test_corrupt_history_row(make_store: Callable[[], SqliteStore], raw: Raw) -> None:
    await check_corrupt_history_row(make_store, raw)


async def test_text_that_is_not_utf8_is_set_aside_not_fatal(make_store: Callable[[], SqliteStore], raw: Raw) -> None:
    from gojob_store_sql.testing import _inst

    async with make_store() as store:
        d = store.backend.dialect
        good, bad = _inst(1), _inst(2, priority=-1)
        await store.enqueue([good, bad])
        await raw.execute(f"UPDATE {d.instances} SET kind = CAST(? AS TEXT) WHERE uuid = ?", [b"k\xff\xfe", bad.uuid])
        [got] = await store.claim("n1", 10, 30.0)
        assert got.uuid == good.uuid
        [report] = await store.corrupt_records()
        assert report.key == f"instances/{bad.uuid}"
        assert b"k\xff\xfe" in report.raw.encode("utf-8", "surrogateescape")


async def test_prefixes_keep_stores_apart(path: Path) -> None:
    from gojob_store_sql.testing import _inst

    async with SqliteStore(str(path), prefix="a_") as a, SqliteStore(str(path), prefix="b_") as b:
        await a.enqueue([_inst(1)])
        assert await b.claim("n", 10, 30.0) == []
        assert len(await a.claim("n", 10, 30.0)) == 1


async def test_a_job_through_a_manager_by_url(path: Path) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    async with Manager(f"sqlite://{path}?prefix=app_", num_workers=2) as mgr:
        assert type(mgr.store).__name__ == "SqliteStore"
        inst = await mgr.schedule_job(Job(kind="add", executor=add), arguments=(2, 3))
        assert (await mgr.wait(inst, timeout=10)).result == 5


# -- URLs --------------------------------------------------------------------------------------------------
def test_url_forms() -> None:
    assert parse_sqlite_url("sqlite:///var/lib/jobs.db").path == "/var/lib/jobs.db"
    assert parse_sqlite_url("sqlite://jobs.db").path == "jobs.db"
    assert parse_sqlite_url("sqlite:///tmp/a%20b.db").path == "/tmp/a b.db"
    o = parse_sqlite_url("sqlite:///x.db?prefix=app_&poll_interval=0.1&busy_timeout=5&synchronous=full")
    assert (o.prefix, o.poll_interval, o.busy_timeout, o.synchronous) == ("app_", 0.1, 5.0, "FULL")
    assert parse_sqlite_url("sqlite:///x.db?prefix=a_", prefix="b_").prefix == "b_"


@pytest.mark.parametrize(("url", "words"), [
    ("sqlite://", "no database file"),
    ("sqlite://:memory:", "memory://"),
    ("sqlite:///x.db?poll_interval=fast", "poll_interval must be a positive number of seconds, got 'fast'"),
    ("sqlite:///x.db?poll_interval=0", "poll_interval"),
    ("sqlite:///x.db?busy_timeout=-1", "busy_timeout"),
    ("sqlite:///x.db?synchronous=sometimes", "synchronous must be one of"),
    ("sqlite:///x.db?prefix=a-b", "prefix must be letters, digits and _"),
    ("sqlite:///x.db?bogus=1", "unknown parameter(s) ['bogus']"),
])
def test_bad_url_is_a_value_error_naming_it(url: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        Manager(store=url)
    assert repr(url) in str(err.value) and words in str(err.value), str(err.value)


def test_bad_option_names_it() -> None:
    with pytest.raises(ValueError, match=re.escape("unknown option(s) ['schema']")):
        Manager(store="sqlite:///x.db", store_options={"schema": "s"})
    with pytest.raises(ValueError, match="poll_interval"):
        Manager(store="sqlite:///x.db", store_options={"poll_interval": "never"})


async def test_a_missing_directory_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "jobs.db"
    with pytest.raises(StoreError) as err:
        async with Manager(f"sqlite://{path}", num_workers=1):
            pytest.fail("started")
    assert str(path) in str(err.value)
