"""Corrupt records of every kind the store holds, queued first in line among good instances.

Valkey/Redis: an instance hash replaced by a string (WRONGTYPE), an instance hash whose fixed part ``d``
is not JSON, a ready-index member that is not one (first in line), a history member that is not a record. etcd: an
instance record replaced by garbage bytes, one replaced by JSON of the wrong shape, a ready-index entry
whose value is garbage (its instance's record is sound), a ready-index key that does not parse, a
history key that is not a record. PostgreSQL and SQLite (rows written with a plain connection, after the
schema of gojob-store-sql's README): instance rows that cannot be decoded, first in line in the queue:
arguments of garbage bytes, keyword arguments of the wrong JSON shape, a field of the wrong shape in
``extra``; one in a state that does not exist (out of the queue: a lookup meets it), one PROCESSING
with an expired lease and a result that is not JSON (a reclaim meets it); SQLite also a text column
that is not UTF-8 and an integer column holding text; and a history row and a log row that cannot be
decoded.

Invariants: every good instance runs once and completes (nothing is taken down with the bad records);
the bad instances never start; every bad record is reported by ``store.corrupt_records()`` with its
bytes exactly (a report's ``raw`` must give back the stored bytes, losslessly); instance records and
history are left where they are, unchanged, and a set-aside instance is not in the running index (no
lease expiry brings it back); queue entries are moved aside only with their exact bytes in the report;
``lookup_instances`` and ``lookup_instance_history`` still work over the whole store. On the SQL stores,
each bad row is reported as the documented lossless rendering of its columns (every column of the row,
binary and non-UTF-8 values as text with surrogate escapes: each value gives its stored bytes back), by
the claims and reclaims that meet it (the rows in the queue and the expired lease) or by the lookups;
it is left in its table with every column unchanged but the ``aside`` flag the store documents, and is
in neither the queue nor the running index.
The memory store holds objects, not bytes: it has no corrupt records (not run there).
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio
import pytest
from fault_support import BYTE_STORES, Cluster, ProcessCluster, Verdict, check_runs, lookup_all, until
from gojob_core import Query
from gojob_core.abc import CorruptRecord

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.slow]

N_GOOD = 40


def raw_is(raw: str, original: bytes) -> bool:
    """Whether a report's ``raw`` text gives back ``original`` exactly, in any lossless form a store might
    choose for bytes in a text field: the text itself (UTF-8, or with surrogate escapes), Latin-1,
    base64 or hex. A replacement character (a lossy decode) gives nothing back."""
    forms = []
    try:
        forms.append(raw.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        pass
    try:
        forms.append(raw.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    try:
        forms.append(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        pass
    try:
        forms.append(bytes.fromhex(raw))
    except ValueError:
        pass
    return original in forms


def _find(reports: list[CorruptRecord], key_part: str) -> list[CorruptRecord]:
    return [r for r in reports if key_part in r.key]


async def _run_good(c: Cluster, good: list[str], v: Verdict) -> None:
    await c.start(["a", "b"], workers=8)

    async def done() -> bool:
        finished = {ev.uuid for ev in c.events() if ev.e == "f"}
        return all(u in finished for u in good)

    await until(done, 20, lambda: f"good instances not all run: {sum(1 for ev in c.events() if ev.e == 'f')} "
                f"of {len(good)}\n" + c.logs(), cluster=c, interval=0.1, timeouts=v.problems)


async def _read_all(c: Cluster, v: Verdict) -> None:
    """The whole-store reads work (and meet the bad history records, which a read sets aside)."""
    try:
        listed = await c.client.lookup_instances(Query())
        missing = set(ev.uuid for ev in c.events() if ev.e == "f") - {i.uuid for i in listed}
        if missing:
            v.problems.append(f"lookup_instances(Query()) misses {len(missing)} instance(s) that ran")
    except Exception as exc:  # noqa: BLE001 - any failure of the whole-store read is the finding
        v.problems.append(f"lookup_instances(Query()) failed: {exc!r}")
    try:
        await c.client.lookup_instance_history(Query())
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"lookup_instance_history(Query()) failed: {exc!r}")


async def _schedule(c: Cluster, n_bad: int) -> tuple[list[str], list[str]]:
    """``n_bad`` instances first in line (priority -1), then the good ones; nodes not started yet."""
    bad = [i.uuid for i in await c.client.schedule_many("work", [(1000 + k, 5) for k in range(n_bad)], priority=-1)]
    good = [i.uuid for i in await c.client.schedule_many("work", [(k, 5) for k in range(N_GOOD)])]
    return bad, good


@pytest.mark.parametrize("store", BYTE_STORES)
async def test_corrupt_records_are_reported_and_set_aside(store: str, cluster) -> None:
    t0 = time.time()
    async with cluster() as c:
        if store == "etcd":
            v, good, bad = await _etcd(c, store, t0)
        elif store in ("postgres", "mysql", "sqlite"):
            v, good, bad = await _sql(c, store, t0)
        else:
            v, good, bad = await _resp(c, store, t0)
        finals: dict[str, Any] | None
        try:
            finals = {i.uuid: i for i in await c.client.lookup_instances(Query(kind="work"))}
        except Exception as exc:  # noqa: BLE001 - a store that cannot list around a bad record is the finding
            v.problems.append(f"lookup_instances(Query(kind='work')) failed: {exc!r}")
            finals = None  # the executors' records alone then say what ran
        events = c.events()
    check_runs(v, good, events, [], finals=finals, t0=t0, max_runs=1)
    started_bad = sorted({ev.uuid for ev in events if ev.e == "s" and ev.uuid in bad})
    if started_bad:
        v.problems.append(f"instances that cannot be read were run: {started_bad}")
    v.instances = len(good) + len(bad)
    v.wall = time.time() - t0
    v.report()


def _prefix(url: str) -> str:
    return parse_qs(urlsplit(url).query)["prefix"][0]


async def _resp(c: Cluster, store: str, t0: float) -> tuple[Verdict, list[str], list[str]]:
    """The bad records are written with a plain client, after the key layout the RESP store documents."""
    import redis.asyncio as aioredis

    assert isinstance(c, ProcessCluster)
    p = _prefix(c.url)
    host_port = urlsplit(c.url).netloc
    host, port = host_port.rsplit(":", 1)
    r = aioredis.Redis(host=host, port=int(port), decode_responses=True)
    try:
        return await _resp_with(c, store, r, p)
    finally:
        await r.aclose()


async def _resp_with(c: Cluster, store: str, r: Any, p: str) -> tuple[Verdict, list[str], list[str]]:
    (x_str, x_json), good = await _schedule(c, 2)
    as_string = "garbage \x00 where a hash should be \u00e9"
    await r.delete(f"{p}inst:{x_str}")
    await r.set(f"{p}inst:{x_str}", as_string)
    await r.hset(f"{p}inst:{x_json}", "d", "{not json")
    ready_member = "not-a-ready-member"
    await r.zadd(f"{p}ready", {ready_member: -10})
    hist_member = "[{not a record"
    await r.zadd(f"{p}hist", {hist_member: 2.0})
    await r.zadd(f"{p}hist:i:{good[0]}", {hist_member: 2.0})
    v = Verdict("corrupt records", store, faults=4, fault_kind="corrupt records")

    await _run_good(c, good, v)
    await _read_all(c, v)
    reports = await c.client.store.corrupt_records()
    # the string where a hash should be: reported byte-exact, left in place, not running
    found = _find(reports, f"inst:{x_str}")
    if not found:
        v.problems.append(f"instance key holding a string (WRONGTYPE) not reported: {[x.key for x in reports]}")
    elif not any(raw_is(x.raw, as_string.encode()) for x in found):
        v.problems.append(f"the string instance's report does not give its bytes back: {[x.raw for x in found]}")
    if (await r.type(f"{p}inst:{x_str}"), await r.get(f"{p}inst:{x_str}")) != ("string", as_string):
        v.problems.append("the string instance key was changed")
    # the hash with a bad fixed part: reported (its field verbatim in raw), left in place
    found = _find(reports, f"inst:{x_json}")
    if not found:
        v.problems.append("instance hash whose 'd' is not JSON not reported")
    elif not any("{not json" in x.raw for x in found):
        v.problems.append(f"the bad hash's report lacks its bytes: {[x.raw[:200] for x in found]}")
    if await r.hget(f"{p}inst:{x_json}", "d") != "{not json":
        v.problems.append("the bad hash was changed")
    for x in (x_str, x_json):
        if await r.zscore(f"{p}running", x) is not None:
            v.problems.append(f"{x} is in the running index: a lease expiry would bring it back")
    # the ready member that is not one (it points at no instance): reported, its bytes kept in the report
    # unless it is still where it was
    in_place = await r.zscore(f"{p}ready", ready_member) is not None
    found = [x for x in reports if ready_member in x.key or ready_member in x.raw]
    if not found:
        v.problems.append(f"the ready-index member that is not one was not reported (still queued: {in_place})")
    elif not in_place and not any(raw_is(x.raw, ready_member.encode()) or ready_member in x.raw for x in found):
        v.problems.append(f"the bad ready-index member was removed without its bytes: {[x.raw for x in found]}")
    v.notes.append(f"ready member that points nowhere: {'still queued' if in_place else 'moved aside'}")
    # the history member: reported, left in place
    if not [x for x in reports if hist_member in x.raw]:
        v.problems.append("the bad history member was not reported")
    if await r.zscore(f"{p}hist", hist_member) is None:
        v.problems.append("the bad history member was removed")
    v.notes.append(f"{len(reports)} report(s): {sorted({x.key.removeprefix(p).split(':')[0] for x in reports})}")
    return v, good, [x_str, x_json]


async def _etcd(c: Cluster, store: str, t0: float) -> tuple[Verdict, list[str], list[str]]:
    """The bad records are written with a plain client, after the key layout the etcd store documents."""
    import aetcd

    assert isinstance(c, ProcessCluster)
    host, port = urlsplit(c.url).netloc.rsplit(":", 1)
    etcd = aetcd.Client(host=host, port=int(port))
    await etcd.connect()
    try:
        return await _etcd_with(c, store, etcd, _prefix(c.url).encode())
    finally:
        await etcd.close()


async def _etcd_with(c: Cluster, store: str, etcd: Any, p: bytes) -> tuple[Verdict, list[str], list[str]]:
    ki, kr, kt, kp = p + b"i/", p + b"q/r/", p + b"t/", p + b"q/p/"
    (x_bytes, x_shape, x_entry), good = await _schedule(c, 3)
    garbage = b"\xff\xfe\x00garbage where a record should be"
    shaped = b'{"uuid": 42, "kind": ["not", "a", "kind"], "state": {}}'
    entry_garbage = "\x00garbage ready entry \u00e9".encode()
    [entry_key] = [kv.key for kv in await etcd.get_prefix(kr) if x_entry.encode() in kv.key]
    odd_key = kr + b"not/a/ready/key"
    hist_key = kt + f"00000000000000001/{good[0]}/x".encode()
    for key, value in ((ki + x_bytes.encode(), garbage), (ki + x_shape.encode(), shaped), (entry_key, entry_garbage),
                       (odd_key, b"garbage"), (hist_key, b"[{}]")):
        await etcd.put(key, value)
    v = Verdict("corrupt records", store, faults=5, fault_kind="corrupt records")

    await _run_good(c, good, v)
    await _read_all(c, v)
    reports = await c.client.store.corrupt_records()

    async def value(key: bytes) -> bytes | None:
        got = await etcd.get(key)
        return None if got is None else got.value

    for uid, original, what in ((x_bytes, garbage, "garbage bytes"), (x_shape, shaped, "wrong-shaped JSON")):
        key = (ki + uid.encode()).decode()
        found = [x for x in reports if x.key == key]
        if not found:
            v.problems.append(f"instance record of {what} not reported: {[x.key for x in reports]}")
        elif not any(raw_is(x.raw, original) for x in found):
            v.problems.append(f"the report of the instance record of {what} does not give its bytes back: "
                              f"{[x.raw[:100] for x in found]}")
        if await value(ki + uid.encode()) != original:
            v.problems.append(f"the instance record of {what} was changed: {await value(ki + uid.encode())!r}")
        if await value(kp + uid.encode()) is not None:
            v.problems.append(f"the instance record of {what} has a running entry: a lease expiry would "
                              "bring it back")
    for key, original, what in ((entry_key, entry_garbage, "ready-index entry with a garbage value"),
                                (odd_key, b"garbage", "ready-index key that does not parse")):
        found = [x for x in reports if x.key == key.decode(errors="replace")]
        kept = await value(key)
        if not found:
            v.problems.append(f"{what} not reported (in place: {kept!r})")
        elif kept != original and not any(raw_is(x.raw, original) for x in found):
            v.problems.append(f"{what} moved aside without its bytes: {[x.raw[:100] for x in found]}")
    if not [x for x in reports if x.key == hist_key.decode()]:
        v.problems.append("the history key that is not a record was not reported")
    if await value(hist_key) != b"[{}]":
        v.problems.append("the history key that is not a record was changed")
    entry_runs = sum(1 for ev in c.events() if ev.e == "s" and ev.uuid == x_entry)
    final = (await lookup_all(c.client, "work")).get(x_entry) if not v.problems else None
    v.notes.append(f"instance behind the garbage ready entry: started {entry_runs}x, "
                   f"now {final.state.value if final else '?'}")
    if entry_runs > 1:
        v.problems.append(f"the instance behind the garbage ready entry ran {entry_runs} times")
    v.notes.append(f"{len(reports)} report(s)")
    return v, good, [x_bytes, x_shape]


# -- PostgreSQL and SQLite -------------------------------------------------------------------------------------
class _Raw:
    """Plain SQL on a SQL store's tables, after the schema of gojob-store-sql's README (not the store's code):
    the tables ``{prefix}instances``, ``{prefix}history``, ``{prefix}logs`` with the default prefix
    ``gojob_``, in the URL's schema on PostgreSQL. Rows are read as dicts of column values (binary values,
    and on SQLite text too, as bytes: exactly what is stored)."""

    def table(self, short: str) -> str:
        raise NotImplementedError

    def ph(self, n: int) -> str:
        raise NotImplementedError

    async def rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        raise NotImplementedError

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        """Run an INSERT; the new row's ``id``."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _PgRaw(_Raw):
    def __init__(self, conn: Any, schema: str) -> None:
        self.conn, self.schema = conn, schema

    @classmethod
    async def open(cls, url: str) -> _PgRaw:
        import asyncpg

        parts = urlsplit(url)
        schema = parse_qs(parts.query)["schema"][0]
        return cls(await asyncpg.connect(urlunsplit(parts._replace(query=""))), schema)

    def table(self, short: str) -> str:
        return f'"{self.schema}"."gojob_{short}"'

    def ph(self, n: int) -> str:
        return f"${n}"

    async def rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.conn.fetch(sql, *args)]

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        await self.conn.execute(sql, *args)

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        return int(await self.conn.fetchval(sql + " RETURNING id", *args))

    async def close(self) -> None:
        await self.conn.close()


class _MysqlRaw(_Raw):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, url: str) -> _MysqlRaw:
        import asyncmy
        from gojob_store_mysql import parse_mysql_url

        o = parse_mysql_url(url)
        conn = await asyncmy.connect(host=o.host, port=o.port, user=o.user, password=o.password or "",
                                     database=o.database, autocommit=True, charset="utf8mb4", binary_prefix=True)
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
        return cls(conn)

    def table(self, short: str) -> str:
        return f'"gojob_{short}"'

    def ph(self, n: int) -> str:
        return "%s"

    async def rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        async with self.conn.cursor() as cur:
            await cur.execute(sql, list(args))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in await cur.fetchall()]

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        async with self.conn.cursor() as cur:
            await cur.execute(sql, list(args))

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        async with self.conn.cursor() as cur:
            await cur.execute(sql, list(args))
            return int(cur.lastrowid)

    async def close(self) -> None:
        await self.conn.ensure_closed()


class _SqliteRaw(_Raw):
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.text_factory = bytes  # text as its stored bytes (UTF-8 or not)

    @classmethod
    async def open(cls, url: str) -> _SqliteRaw:
        return cls(url.removeprefix("sqlite://").split("?", 1)[0])

    def table(self, short: str) -> str:
        return f'"gojob_{short}"'

    def ph(self, n: int) -> str:
        return "?"

    async def rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            cur = self.db.execute(sql, list(args))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

        return await anyio.to_thread.run_sync(run)

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        await anyio.to_thread.run_sync(lambda: self.db.execute(sql, list(args)))

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        return int(await anyio.to_thread.run_sync(lambda: self.db.execute(sql, list(args)).lastrowid))

    async def close(self) -> None:
        self.db.close()


def _norm(value: Any) -> Any:
    """A column's value as bytes where it is text or binary (text with surrogate escapes: the bytes that
    were not UTF-8), a boolean as 0/1: a report's JSON value and a stored value compare exactly."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bool):
        return int(value)
    return value


async def _sql(c: Cluster, store: str, t0: float) -> tuple[Verdict, list[str], list[str]]:
    assert isinstance(c, ProcessCluster)
    opener = {"postgres": _PgRaw.open, "mysql": _MysqlRaw.open, "sqlite": _SqliteRaw.open}[store]
    raw: _Raw = await opener(c.url)
    try:
        return await _sql_with(c, store, raw)
    finally:
        await raw.close()


async def _sql_with(c: Cluster, store: str, raw: _Raw) -> tuple[Verdict, list[str], list[str]]:
    ti, th, tl, p = raw.table("instances"), raw.table("history"), raw.table("logs"), raw.ph
    kinds = ["args", "kwargs", "extra", "state", "lease"] + (["text", "type"] if store == "sqlite" else [])
    bad_list, good = await _schedule(c, len(kinds))
    bad = dict(zip(kinds, bad_list))
    now = time.time()
    garbage = b"\xff\xfe\x00{garbage \x80 not json"
    # (what, uuid, the statement's SET clause, its arguments, the column whose bytes are the fault)
    faults: list[tuple[str, str, str, list[Any], str | None]] = [
        ("arguments of garbage bytes", bad["args"], f"args = {p(1)}", [garbage], "args"),
        ("keyword arguments of the wrong JSON shape", bad["kwargs"], f"kwargs = {p(1)}", [b"[1, 2]"], "kwargs"),
        ("a field of the wrong shape in extra", bad["extra"], f"extra = {p(1)}",
         [b'{"headers": "not an object"}'], "extra"),
        ("a state that does not exist", bad["state"], "state = 'RUNNING-ISH'", [], None),
        ("PROCESSING, lease expired, a result that is not JSON", bad["lease"],
         f"state = 'PROCESSING', node = 'ghost', attempts = 1, started_ts = {p(1)}, lease_ts = {p(2)}, "
         f"result = {p(3)}", [now - 30.0, now - 20.0, b"\x80\x81 not json"], "result"),
    ]
    if store == "sqlite":
        faults += [
            ("a text column that is not UTF-8", bad["text"], f"kind = CAST({p(1)} AS TEXT)", [b"work\xff\xfe"],
             "kind"),
            ("an integer column holding text", bad["type"], "attempts = 'zero'", [], "attempts"),
        ]
    for _, uid, sets, args, _ in faults:
        await raw.execute(f"UPDATE {ti} SET {sets} WHERE uuid = {p(len(args) + 1)}", [*args, uid])
    hist_id = await raw.insert(
        f"INSERT INTO {th} (uuid, kind, state, ts, attempt, node, detail) "
        f"VALUES ({p(1)}, 'work', 'NOT-A-STATE', {p(2)}, 0, NULL, 'a record of no state')", [good[0], now])
    log_id = await raw.insert(
        f"INSERT INTO {tl} (uuid, kind, level, message, ts, attempt, node) "
        f"VALUES ({p(1)}, 'work', 'NOT-A-LEVEL', 'a line of no level', {p(2)}, 1, 'a')", [good[0], now])
    v = Verdict("corrupt records", store, faults=len(faults) + 2, fault_kind="corrupt records")

    async def row(table: str, key: str, value: Any) -> dict[str, Any] | None:
        found = await raw.rows(f"SELECT * FROM {table} WHERE {key} = {p(1)}", [value])
        return found[0] if found else None

    # every bad row as it is now, and the key of its report (the README's: instances/<uuid>, history/<id>)
    targets: list[tuple[str, str, str, str, Any, str | None]] = [
        (what, f"instances/{uid}", ti, "uuid", uid, col) for what, uid, _, _, col in faults]
    targets += [("a history row of no state", f"history/{hist_id}", th, "id", hist_id, None),
                ("a log row of no level", f"logs/{log_id}", tl, "id", log_id, None)]
    before = {key: await row(table, k, value) for _, key, table, k, value, _ in targets}

    await _run_good(c, good, v)
    # the claims and reclaims meet the rows in the queue and the expired lease: they report them by
    # themselves, before any whole-store lookup does
    met = {f"instances/{uid}" for _, uid, _, _, _ in faults if uid != bad["state"]}
    seen: set[str] = set()

    async def reported() -> bool:
        nonlocal seen
        seen = {x.key for x in await c.client.store.corrupt_records()}
        return met <= seen

    await until(reported, 2 * c.lease + 5, lambda: "rows in the queue or an expired lease that claims and "
                f"reclaims did not report: {sorted(met - seen)}", cluster=c, interval=0.1, timeouts=v.problems)
    await _read_all(c, v)
    try:
        await c.client.lookup_instance_logs(Query())
    except Exception as exc:  # noqa: BLE001 - a failure of the whole-store read is the finding
        v.problems.append(f"lookup_instance_logs(Query()) failed: {exc!r}")
    reports = {x.key: x for x in await c.client.store.corrupt_records()}

    for what, key, table, k, value, col in targets:
        was = before[key]
        now_row = await row(table, k, value)
        assert was is not None
        # reported, as every column of the row, each giving its stored bytes back
        x = reports.get(key)
        if x is None:
            v.problems.append(f"{what} ({key}) not reported: {sorted(reports)}")
        else:
            try:
                doc = json.loads(x.raw)
                columns = doc["columns"]
            except (ValueError, KeyError, TypeError) as exc:
                v.problems.append(f"{what}: the report is not the documented rendering of the row ({exc!r}): "
                                  f"{x.raw[:200]!r}")
            else:
                for name, stored in was.items():
                    if name == "aside":
                        continue
                    if name not in columns:
                        v.problems.append(f"{what}: the report lacks the column {name}")
                    elif _norm(columns[name]) != _norm(stored):
                        v.problems.append(f"{what}: the report's {name} {columns[name]!r} does not give back the "
                                          f"stored {stored!r}" + (" (the bad value)" if name == col else ""))
        # left where it was, every column unchanged but the flag that sets it aside
        if now_row is None:
            v.problems.append(f"{what} ({key}) was deleted")
            continue
        changed = {n: (was[n], now_row.get(n)) for n in was if n != "aside" and _norm(now_row.get(n)) != _norm(was[n])}
        if changed:
            v.problems.append(f"{what} ({key}) was changed: {changed}")
        if not now_row.get("aside"):
            v.problems.append(f"{what} ({key}) is not flagged aside")
    # in neither the queue nor the running index (no claim, no lease expiry brings one back)
    for what, uid, _, _, _ in faults:
        r = await row(ti, "uuid", uid)
        if r is not None and not r["aside"] and _norm(r["state"]) in (b"SCHEDULED", b"PROCESSING"):
            v.problems.append(f"{what} ({uid}) is still in the {_norm(r['state']).decode().lower()} index")
    v.notes.append(f"{len(reports)} report(s): {sorted({key.split('/')[0] for key in reports})}")
    return v, good, bad_list
