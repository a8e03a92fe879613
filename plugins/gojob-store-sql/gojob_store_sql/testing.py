"""Checks every SQL store must pass beyond the conformance suite, for the stores' own tests: the schema
(created once when nodes start together, a newer one refused), and rows that cannot be decoded.

Each takes ``make_store`` (a new, unstarted store on fresh tables each call, all on the same tables)
and a :class:`Raw` (plain SQL on the same database, to corrupt rows and look at them as they are).
"""

from __future__ import annotations

import json
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from gojob_core import CorruptRecordError, Instance, Manager, Query, State, StoreError
from gojob_core.abc import Outcome

from ._dialect import SCHEMA_VERSION
from ._store import SqlStore

__all__ = ["Raw", "check_concurrent_first_start", "check_corrupt_history_row", "check_corrupt_instance_rows",
           "check_newer_schema_refused"]


@dataclass
class Raw:
    """Plain SQL on the store's database: ``fetch(sql, args)`` and ``execute(sql, args)``, with the
    placeholders of the store's dialect."""

    fetch: Callable[[str, Sequence[Any]], Awaitable[list[Any]]]
    execute: Callable[[str, Sequence[Any]], Awaitable[None]]


def _inst(i: int, *, priority: int = 0) -> Instance:
    t = time.time()
    return Instance(uuid=str(_uuid.uuid4()), kind="k", args=[i], priority=priority, state=State.SCHEDULED,
                    created_ts=t + i * 1e-3, ready_ts=t - 1)


async def check_newer_schema_refused(make_store: Callable[[], SqlStore], raw: Raw) -> None:
    """A node that finds a schema version newer than it knows refuses to start, naming both versions;
    nothing of the tables is changed."""
    store = make_store()
    async with store:
        d = store.backend.dialect
    newer = SCHEMA_VERSION + 1
    await raw.execute(f"UPDATE {d.meta} SET value = {d.ph(1)} WHERE \"key\" = 'schema_version'", [str(newer)])
    other = make_store()
    try:
        await other.start()
    except StoreError as exc:
        message = str(exc)
        assert f"version {newer}" in message and f"version {SCHEMA_VERSION}" in message, message
        assert "upgrade" in message, message
    else:
        await other.stop()
        raise AssertionError("a store started on a newer schema")
    rows = await raw.fetch(d.schema_version_select(), [])
    assert [str(r[0]) for r in rows] == [str(newer)]
    # and through a Manager: its start raises the same
    try:
        async with Manager(make_store(), num_workers=1, autoload_plugins=False):
            pass
    except StoreError as exc:
        assert f"version {newer}" in str(exc)
    else:
        raise AssertionError("a Manager started on a newer schema")


async def check_concurrent_first_start(make_store: Callable[[], SqlStore], n: int = 6) -> None:
    """``n`` nodes starting together on tables that do not exist yet: every one starts, the tables are
    made once, and they work as one queue."""
    stores = [make_store() for _ in range(n)]
    errors: list[BaseException] = []

    async def start(s: SqlStore) -> None:
        try:
            await s.start()
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(start, s)
    try:
        assert not errors, errors
        insts = [_inst(i) for i in range(20)]
        assert await stores[0].enqueue(insts) == [True] * 20
        got: list[Instance] = []
        for k, s in enumerate(stores):
            got += await s.claim(f"n{k}", 4, 30.0)
        assert sorted(i.args[0] for i in got) == list(range(20))
    finally:
        for s in stores:
            await s.stop()


async def check_corrupt_instance_rows(make_store: Callable[[], SqlStore], raw: Raw, *, garbage: bytes) -> None:
    """Rows that cannot be decoded (arguments that are not JSON, an unknown state, a result of the wrong
    JSON): claims hand out the good instances around them and never run them; each is reported once in
    the corrupt table with its columns losslessly, flagged and otherwise left byte for byte where it
    was; lookups skip it, ``get_instance`` and ``cancel`` refuse it; ``drop_corrupt_record`` removes the
    report and the row. ``garbage`` is a value the database keeps in a binary column as it is."""
    async with make_store() as store:
        d = store.backend.dialect
        good = [_inst(i) for i in range(6)]
        bad = [_inst(100 + i, priority=-1) for i in range(3)]  # first in line
        assert await store.enqueue([*good[:3], *bad, *good[3:]]) == [True] * 9
        p = d.ph
        await raw.execute(f"UPDATE {d.instances} SET args = {p(1)} WHERE uuid = {p(2)}", [garbage, bad[0].uuid])
        await raw.execute(f"UPDATE {d.instances} SET state = 'RUNNING-ISH' WHERE uuid = {p(1)}", [bad[1].uuid])
        await raw.execute(f"UPDATE {d.instances} SET kwargs = {p(1)} WHERE uuid = {p(2)}", [b"[1, 2]", bad[2].uuid])
        # (the row in state 'RUNNING-ISH' is not in the queue's index: a lookup meets it, not a claim)
        cols = "uuid, kind, state, priority, ready_ts, seq, args, kwargs, result"
        before = {r[0]: tuple(r) for r in await raw.fetch(f"SELECT {cols} FROM {d.instances}", [])}

        claimed = []
        for _ in range(10):
            got = await store.claim("n1", 4, 30.0)
            if not got:
                break
            claimed += got
            oks = await store.finish("n1", [Outcome(i.uuid, State.COMPLETED, attempt=i.attempts) for i in got])
            assert oks == [True] * len(got)
        assert sorted(i.uuid for i in claimed) == sorted(i.uuid for i in good)

        # each unreadable row: reported (a row first read by a claim or a lookup, reported once)
        reports = {r.key: r for r in await store.corrupt_records()}
        assert f"instances/{bad[0].uuid}" in reports and f"instances/{bad[2].uuid}" in reports, reports
        assert await store.list_instances(Query(kind="k", state=State.COMPLETED)) != []
        listed = {i.uuid for i in await store.list_instances(Query())}
        assert listed == {i.uuid for i in good}
        reports = {r.key: r for r in await store.corrupt_records()}
        assert set(reports) == {f"instances/{b.uuid}" for b in bad}, sorted(reports)
        doc = json.loads(reports[f"instances/{bad[0].uuid}"].raw)
        assert doc["table"] == "instances" and doc["columns"]["uuid"] == bad[0].uuid
        # the exact bytes of the bad value are in the report
        assert doc["columns"]["args"].encode("utf-8", "surrogateescape") == garbage
        assert "RUNNING-ISH" in reports[f"instances/{bad[1].uuid}"].raw
        # left where they were, unchanged (but for the flag)
        after = {r[0]: tuple(r) for r in await raw.fetch(f"SELECT {cols} FROM {d.instances}", [])}
        for b in bad:
            assert after[b.uuid] == before[b.uuid]
        flags = await raw.fetch(f"SELECT uuid FROM {d.instances} WHERE aside = TRUE", [])
        assert {r[0] for r in flags} == {b.uuid for b in bad}
        for b in bad:
            try:
                await store.get_instance(b.uuid)
            except CorruptRecordError as exc:
                assert b.uuid in str(exc)
            else:
                raise AssertionError("get_instance returned a corrupt record")
        assert await store.claim("n2", 10, 30.0) == []
        assert await store.reclaim_expired("n2") == []
        assert sorted(r.key for r in await store.corrupt_records()) == sorted(reports)  # reported once each

        # an operator drops one: its report and its row go; the others stay
        assert await store.drop_corrupt_record(f"instances/{bad[0].uuid}") is True
        assert await store.drop_corrupt_record(f"instances/{bad[0].uuid}") is False
        assert await raw.fetch(f"SELECT uuid FROM {d.instances} WHERE uuid = {p(1)}", [bad[0].uuid]) == []
        assert {r.key for r in await store.corrupt_records()} == {f"instances/{b.uuid}" for b in bad[1:]}
        assert await store.get_instance(bad[0].uuid) is None


async def check_corrupt_history_row(make_store: Callable[[], SqlStore], raw: Raw) -> None:
    """A history row of an unknown state: lookups skip and report it, the others are returned."""
    async with make_store() as store:
        d = store.backend.dialect
        inst = _inst(1)
        await store.enqueue([inst])
        await raw.execute(f"UPDATE {d.history} SET state = 'NOT-A-STATE' WHERE uuid = {d.ph(1)} "
                          "AND state = 'CREATED'", [inst.uuid])
        hist = await store.lookup_history(Query(instance=inst))
        assert [h.state for h in hist] == [State.SCHEDULED]
        reports = await store.corrupt_records()
        assert len(reports) == 1 and reports[0].key.startswith("history/") and "NOT-A-STATE" in reports[0].raw
        assert [h.state for h in await store.lookup_history(Query(instance=inst))] == [State.SCHEDULED]
        assert len(await store.corrupt_records()) == 1
        assert await store.drop_corrupt_record(reports[0].key) is True
        assert await store.corrupt_records() == []
