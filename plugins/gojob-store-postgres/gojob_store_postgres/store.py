"""The PostgreSQL store: :class:`gojob_store_sql.SqlStore` over asyncpg.

Each step that changes state is one transaction of four round trips: ``BEGIN``; one read that locks
its rows (``SELECT ... FOR UPDATE`` of the instances to finish, and ``FOR UPDATE SKIP LOCKED`` of the
next ready ones in claim order, in one statement of two CTEs); one write (the rows through
``unnest`` of arrays, their history records, and ``pg_notify`` for the other nodes, in one
statement); ``COMMIT``. An enqueue is one statement (its schedules, its rows, their history, the
wake-up). Idle nodes, cancels and ``wait_final`` hear of changes through ``LISTEN`` on a connection of
their own; the Manager's poll is only a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlencode

import asyncpg
from gojob_core import Instance, LogRecord, StateRecord, StoreError
from gojob_core._urls import parse_hosts
from gojob_store_sql import (
    INSTANCE_COLUMNS,
    MUTABLE_COLUMNS,
    SCHEMA_VERSION,
    Aside,
    PostgresDialect,
    Reads,
    Rows,
    SqlBackend,
    SqlStore,
    Writes,
    newer_schema,
)
from gojob_store_sql._options import integer, name, query_params, seconds
from gojob_store_sql._rows import instance_values, mutable_values

__all__ = ["PostgresOptions", "PostgresStore", "parse_postgres_url"]

T = TypeVar("T")
_log = logging.getLogger("gojob.postgres")

_OURS = frozenset({"schema", "prefix", "pool_size", "timeout", "connect_timeout"})
#: libpq parameters passed on to asyncpg as they are
_PASSED = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile", "target_session_attrs",
                     "application_name", "host", "port", "user", "password", "dbname"})
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, asyncio.TimeoutError)
_PAYLOAD = 7900  # bytes of one NOTIFY payload (PostgreSQL's limit is 8000)


@dataclass
class PostgresOptions:
    dsn: str
    address: str  # host:port/db, for messages (never the password)
    schema: str | None = None
    prefix: str = "gojob_"
    pool_size: int = 8
    timeout: float = 10.0
    connect_timeout: float = 5.0
    extra: dict[str, str] = field(default_factory=dict)


def parse_postgres_url(url: str, **options: Any) -> PostgresOptions:
    """Parse ``postgresql://[user[:password]@]host[:port][,host[:port]...]/database[?param=value&...]``
    (``postgres://`` too). Ours: ``schema`` (created if missing; default: the connection's
    search_path, usually ``public``), ``prefix`` (of the table names, ``gojob_``), ``pool_size``
    (connections per node besides the listener, 8), ``timeout`` (seconds per statement, 10),
    ``connect_timeout`` (5). libpq's ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``, ``sslcrl``,
    ``passfile``, ``target_session_attrs``, ``application_name``, ``host`` (a unix socket directory)
    are passed on. Keyword options override ours."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"store URL {url!r}: the scheme must be postgresql:// or postgres://")
    rest, _, query = rest.partition("?")
    netloc, _, database = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, creds = netloc, ""
    addresses = [f"{h}:{p}" for h, p in parse_hosts(url, hosts, "localhost", 5432)]
    if "/" in database:
        raise ValueError(f"store URL {url!r}: the path must be just the database name, got {database!r}")
    params = query_params(url, query, _OURS | _PASSED)
    unknown = sorted(set(options) - _OURS)
    if unknown:
        raise ValueError(f"postgres store: unknown option(s) {unknown} (known: {sorted(_OURS)})")
    ours: dict[str, Any] = {k: v for k, v in params.items() if k in _OURS}
    ours.update(options)
    passed = {k: v for k, v in params.items() if k in _PASSED}
    dsn = f"postgresql://{creds + '@' if creds else ''}{hosts}/{database}"
    if passed:
        dsn += "?" + urlencode(passed, quote_via=quote)
    where = ",".join(addresses) or f"unix socket {passed.get('host', '(default)')}"
    opts = PostgresOptions(dsn, f"{where}/{unquote(database) or '(default database)'}", extra=passed)
    if "schema" in ours and ours["schema"] not in (None, ""):
        opts.schema = name(url, "schema", ours["schema"])
    if "prefix" in ours:
        opts.prefix = name(url, "prefix", ours["prefix"], prefix=True)
    if "pool_size" in ours:
        opts.pool_size = integer(url, "pool_size", ours["pool_size"], minimum=2, maximum=1000)
    if "timeout" in ours:
        opts.timeout = seconds(url, "timeout", ours["timeout"])
    if "connect_timeout" in ours:
        opts.connect_timeout = seconds(url, "connect_timeout", ours["connect_timeout"])
    return opts


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection: released without asyncpg's reset query (a round trip per release). These
    connections never LISTEN, set session state, hold cursors or session advisory locks; an open
    transaction is still rolled back on release."""

    def get_reset_query(self) -> str:
        return ""


def _arrays(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    """Rows to ``n`` column arrays (what ``unnest`` takes)."""
    cols: list[list[Any]] = [[] for _ in range(n)]
    for row in rows:
        for c, v in zip(cols, row):
            c.append(v)
    return cols


def _chunks(uuids: Sequence[str]) -> list[str]:
    """uuids as comma-separated payloads of at most ``_PAYLOAD`` bytes."""
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for u in uuids:
        if cur and size + len(u) + 1 > _PAYLOAD:
            out.append(",".join(cur))
            cur, size = [], 0
        cur.append(u)
        size += len(u) + 1
    if cur:
        out.append(",".join(cur))
    return out


class PostgresBackend(SqlBackend):
    PUSH = True

    def __init__(self, opts: PostgresOptions) -> None:
        self.opts = opts
        self.dialect = d = PostgresDialect(prefix=opts.prefix, schema=opts.schema)
        self.where = f"postgres store at {opts.address}"
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._stopping = False
        tag = hashlib.sha1(f"{opts.schema or ''}.{opts.prefix}".encode()).hexdigest()[:12]
        self.channels = {f"gojob_{tag}_{k}": k for k in ("wake", "final", "cancel")}
        self._chan = {k: c for c, k in self.channels.items()}
        cols = ", ".join(INSTANCE_COLUMNS)
        inst, seq = d.instances, d.table("seq")
        waiting = "state = 'SCHEDULED' AND aside = FALSE"
        self._sql_uuids = (f"SELECT {cols} FROM {inst} WHERE uuid = ANY($1::text[]) AND aside = FALSE "
                           "ORDER BY uuid FOR UPDATE")
        self._sql_claim = d.select_claim()
        self._sql_both = (
            f"WITH f AS (SELECT {cols} FROM {inst} WHERE uuid = ANY($1::text[]) AND aside = FALSE "
            "ORDER BY uuid FOR UPDATE), "
            f"c AS (SELECT {cols} FROM {inst} WHERE {waiting} AND ready_ts <= $2 "
            "ORDER BY priority, ready_ts, seq LIMIT $3 FOR UPDATE SKIP LOCKED) "
            "SELECT 0 AS part, * FROM f UNION ALL SELECT 1, * FROM c ORDER BY 1, priority, ready_ts, seq")
        self._sql_expired = d.select_expired()
        self._sql_schedule = d.select_schedule()
        self._sql_upsert_schedule = d.upsert_schedule()
        mut = list(MUTABLE_COLUMNS)
        types = {"state": "text", "attempts": "int4", "started_ts": "float8", "finished_ts": "float8",
                 "node": "text", "lease_ts": "float8", "ready_ts": "float8", "error": "text", "result": "bytea",
                 "cancel_requested": "bool", "abandoned": "int4"}
        arrays = ", ".join(f"${i + 2}::{types[c]}[]" for i, c in enumerate(mut))
        requeue = len(mut) + 2  # $1 the uuids, $2.. the mutable columns, then whether each re-enters the queue
        hist_cols = "uuid, kind, state, ts, attempt, node, detail"
        hist_types = ("text", "text", "text", "float8", "int4", "text", "text")
        hist_arrays = ", ".join(f"${requeue + 1 + i}::{t}[]" for i, t in enumerate(hist_types))
        n = requeue + 1 + len(hist_types)
        self._sql_write = (
            f"WITH u AS (UPDATE {inst} AS i SET "
            + ", ".join(f"{c} = v.{c}" for c in mut)
            + f", seq = CASE WHEN v.requeue THEN nextval('{seq}') ELSE i.seq END "
            f"FROM unnest($1::text[], {arrays}, ${requeue}::bool[]) AS v(uuid, {', '.join(mut)}, requeue) "
            "WHERE i.uuid = v.uuid RETURNING 1), "
            f"h AS (INSERT INTO {d.history} ({hist_cols}) SELECT {hist_cols} FROM unnest({hist_arrays}) "
            f"WITH ORDINALITY AS r({hist_cols}, n) ORDER BY r.n RETURNING 1) "
            f"SELECT pg_notify(x.c, x.p) FROM unnest(${n}::text[], ${n + 1}::text[]) AS x(c, p)")
        # enqueue: the instance columns but seq (nextval), in order; its history; the wake-up
        new_cols = [c for c in INSTANCE_COLUMNS if c != "seq"]
        col_types = {"uuid": "text", "kind": "text", "state": "text", "priority": "int8", "ready_ts": "float8",
                     "created_ts": "float8", "started_ts": "float8", "finished_ts": "float8", "attempts": "int4",
                     "max_retries": "int4", "timeout": "float8", "node": "text", "lease_ts": "float8",
                     "cancel_requested": "bool", "crontab_spec": "text", "timezone": "text", "schedule_id": "text",
                     "abandoned": "int4", "max_abandons": "int4", "error": "text", "args": "bytea",
                     "kwargs": "bytea", "result": "bytea", "extra": "bytea"}
        self._new_cols = new_cols
        new_arrays = ", ".join(f"${i + 1}::{col_types[c]}[]" for i, c in enumerate(new_cols))
        m = len(new_cols) + 1
        eh_arrays = ", ".join(f"${m + i}::{t}[]" for i, t in enumerate(hist_types))
        e = m + len(hist_types)
        self._sql_enqueue = (
            f"WITH v AS (SELECT * FROM unnest({new_arrays}) WITH ORDINALITY AS v({', '.join(new_cols)}, n)), "
            f"s AS (INSERT INTO {d.schedules} AS s (sid, canceled) "
            "SELECT DISTINCT schedule_id, FALSE FROM v WHERE schedule_id IS NOT NULL "
            f"ON CONFLICT (sid) DO UPDATE SET canceled = CASE WHEN ${e}::bool THEN s.canceled ELSE FALSE END "
            "RETURNING sid, canceled), "
            f"ins AS (INSERT INTO {inst} ({', '.join(new_cols)}, seq) "
            f"SELECT {', '.join('w.' + c for c in new_cols)}, nextval('{seq}') FROM "
            "(SELECT * FROM v WHERE v.schedule_id IS NULL OR v.schedule_id NOT IN "
            "(SELECT sid FROM s WHERE canceled) ORDER BY v.n) AS w "
            "ON CONFLICT (uuid) DO NOTHING RETURNING uuid), "
            f"h AS (INSERT INTO {d.history} ({hist_cols}) SELECT {hist_cols} FROM unnest({eh_arrays}) "
            f"WITH ORDINALITY AS r({hist_cols}, n) WHERE r.uuid IN (SELECT uuid FROM ins) ORDER BY r.n) "
            f"SELECT array_agg(uuid), pg_notify(${e + 1}, '') FROM ins HAVING count(*) > 0")
        log_cols = "uuid, kind, level, message, ts, attempt, node"
        log_types = ("text", "text", "text", "text", "float8", "int4", "text")
        self._sql_logs = (f"INSERT INTO {d.logs} ({log_cols}) SELECT {log_cols} FROM unnest("
                          + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(log_types))
                          + f") WITH ORDINALITY AS r({log_cols}, n) ORDER BY r.n")

    # -- connections -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except StoreError:
            raise
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            raise StoreError(f"{self.where}: authentication failed ({type(exc).__name__}: {exc})") from exc
        except _ERRORS as exc:
            raise StoreError(f"{self.where}: {what} failed: {type(exc).__name__}: {exc}") from exc

    def _settings(self, application: str) -> dict[str, str]:
        # the statements are prepared once per connection (asyncpg's cache) and their parameters are
        # arrays, whose length the planner cannot know: a plan made for the first call serves all (a
        # custom plan per call cost more planning than running, up to 5 ms for an enqueue)
        return {"application_name": self.opts.extra.get("application_name", application),
                "plan_cache_mode": "force_generic_plan"}

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self.where}: not started")
        return self._pool

    async def _connect(self, *, listener: bool = False) -> asyncpg.Connection:
        return await asyncpg.connect(self.opts.dsn, timeout=self.opts.connect_timeout,
                                     command_timeout=self.opts.timeout,
                                     server_settings=self._settings("gojob-listener" if listener else "gojob"))

    async def start(self) -> None:
        self._stopping = False
        async with self._errors("connecting"):
            self._pool = await asyncpg.create_pool(
                self.opts.dsn, min_size=1, max_size=self.opts.pool_size, timeout=self.opts.connect_timeout,
                command_timeout=self.opts.timeout, connection_class=_Connection,
                server_settings=self._settings("gojob"))
        try:
            await self._migrate()
            async with self._errors("listening"):
                await self._listen_once()
            self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop())
        except BaseException:
            await self.stop()
            raise

    async def _migrate(self) -> None:
        d = self.dialect
        async with self._errors("creating the schema"), self._pool_or_fail().acquire() as conn:
            try:  # the usual case: the tables are there, at this version (no lock taken)
                found = await conn.fetchval(d.schema_version_select())
                if found is not None and int(found) == SCHEMA_VERSION:
                    return
            except asyncpg.UndefinedTableError:
                pass
            async with conn.transaction():
                # one node at a time per schema: the others wait here, then find the tables made
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"gojob:{d.schema or ''}")
                if d.schema:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {d.quote(d.schema)}")
                await conn.execute(d.meta_ddl())
                value = await conn.fetchval(d.schema_version_select())
                found = int(value) if value is not None else 0
                if found > SCHEMA_VERSION:
                    raise newer_schema(found, self.where)
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for stmt in d.ddl(version):
                        await conn.execute(stmt)
                if found < SCHEMA_VERSION:
                    await conn.execute(d.schema_version_upsert(), str(SCHEMA_VERSION))

    async def stop(self) -> None:
        self._stopping = True
        task, self._listen_task = self._listen_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(listener.close(), 5)
            if not listener.is_closed():
                listener.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, *_ERRORS):
                pool.terminate()

    # -- LISTEN ---------------------------------------------------------------------------------------------
    def _on_pg_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        kind = self.channels.get(channel)
        if kind is None or self.on_notify is None:
            return
        self.on_notify(kind, payload.split(",") if payload else [])

    async def _listen_once(self) -> None:
        conn = await self._connect(listener=True)
        try:
            for channel in self.channels:
                await conn.add_listener(channel, self._on_pg_notify)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn

    async def _listen_loop(self) -> None:
        """Keep the LISTEN connection up: after it is lost (a restart), connect again, listen again,
        and wake the node (what was notified meanwhile is lost: the node looks for itself)."""
        delay = 0.1
        while not self._stopping:
            conn = self._listener
            if conn is not None and not conn.is_closed():
                await asyncio.sleep(0.5)
                continue
            self._listener = None
            if conn is not None:
                conn.terminate()
            try:
                await self._listen_once()
            except _ERRORS as exc:
                _log.warning("%s: listening for notifications failed: %r; trying again in %.1f s",
                             self.where, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            if self.on_notify is not None:
                self.on_notify("wake", [])

    # -- transactions -----------------------------------------------------------------------------------
    async def transact(self, reads: Reads, decide: Callable[[Rows], tuple[T, Writes]]) -> tuple[T, Writes]:
        pool = self._pool_or_fail()
        for attempt in range(4):
            try:
                async with self._errors("a transaction"), pool.acquire() as conn, conn.transaction():
                    rows = await self._read(conn, reads)
                    result, writes = decide(rows)
                    if writes.aside:
                        await self._write_aside(conn, writes.aside)
                    await self._write(conn, writes)
                return result, writes
            except StoreError as exc:
                if isinstance(exc.__cause__, _RETRY) and attempt < 3:
                    continue  # a deadlock or serialization failure: the transaction is tried again
                raise
        raise AssertionError("unreachable")

    async def _read(self, conn: asyncpg.Connection, reads: Reads) -> Rows:
        rows = Rows()
        if reads.cancel_schedule is not None:
            await conn.execute(self._sql_upsert_schedule, reads.cancel_schedule, True)
            rows.schedule = await conn.fetch(self._sql_schedule, reads.cancel_schedule)
        if reads.uuids and reads.claim:
            for r in await conn.fetch(self._sql_both, list(reads.uuids), reads.ts, reads.claim):
                (rows.claim if r[0] else rows.by_uuid).append(tuple(r)[1:])
        elif reads.uuids:
            rows.by_uuid = await conn.fetch(self._sql_uuids, list(reads.uuids))
        elif reads.claim:
            rows.claim = await conn.fetch(self._sql_claim, reads.ts, reads.claim)
        if reads.expired:
            rows.expired = await conn.fetch(self._sql_expired, reads.ts, reads.expired)
        return rows

    async def _write(self, conn: asyncpg.Connection, w: Writes) -> None:
        notes: list[tuple[str, str]] = []
        if w.wake:
            notes.append((self._chan["wake"], ""))
        notes += [(self._chan["final"], p) for p in _chunks(w.finals)]
        notes += [(self._chan["cancel"], p) for p in _chunks(w.cancels)]
        if not (w.updates or w.history or notes):
            return
        ups = _arrays([(inst.uuid, *mutable_values(inst), requeue) for inst, requeue in w.updates],
                      len(MUTABLE_COLUMNS) + 2)
        hist = _arrays([(r.uuid, r.kind, r.state.value, r.ts, r.attempt, r.node, r.detail) for r in w.history], 7)
        ch = _arrays(notes, 2)
        await conn.execute(self._sql_write, *ups, *hist, *ch)

    async def _write_aside(self, conn: asyncpg.Connection, asides: Sequence[Aside]) -> None:
        import time

        d = self.dialect
        for a in asides:
            await conn.execute(d.report_corrupt(), a.key, a.source, a.reason, time.time(), a.raw)
            await conn.execute(d.flag_aside(a.source), a.ident)

    async def enqueue(self, items: Sequence[tuple[Instance, list[StateRecord]]], chained: bool) -> set[str]:
        cols = _arrays([v[:5] + v[6:] for v in (instance_values(i) for i, _ in items)], len(self._new_cols))
        hist = _arrays([(r.uuid, r.kind, r.state.value, r.ts, r.attempt, r.node, r.detail)
                        for _, h in items for r in h], 7)
        for attempt in range(4):
            try:
                async with self._errors("enqueue"), self._pool_or_fail().acquire() as conn:
                    row = await conn.fetchrow(self._sql_enqueue, *cols, *hist, chained, self._chan["wake"])
                return set(row[0]) if row is not None else set()
            except StoreError as exc:
                if isinstance(exc.__cause__, (*_RETRY, asyncpg.UniqueViolationError)) and attempt < 3:
                    continue  # two enqueues of one uuid at once: the loser finds it there next time
                raise
        raise AssertionError("unreachable")

    # -- plain statements -------------------------------------------------------------------------------
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._errors("a query"), self._pool_or_fail().acquire() as conn:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def lookup(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        # a plan for these values: the generic plan of "state = $1 ORDER BY ts LIMIT n" walks the whole
        # history by time for a rare state, where the (state, ts, id) index answers at once
        async with self._errors("a query"), self._pool_or_fail().acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._errors("a statement"), self._pool_or_fail().acquire() as conn:
            status = await conn.execute(sql, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        arrays = _arrays([(r.uuid, r.kind, r.level.value, r.message, r.ts, r.attempt, r.node) for r in records], 7)
        async with self._errors("writing logs"), self._pool_or_fail().acquire() as conn:
            await conn.execute(self._sql_logs, *arrays)

    async def set_aside(self, asides: Sequence[Aside]) -> None:
        async with self._errors("setting a record aside"), self._pool_or_fail().acquire() as conn, \
                conn.transaction():
            await self._write_aside(conn, asides)

    async def drop_corrupt(self, key: str) -> bool:
        d = self.dialect
        async with self._errors("dropping a corrupt record"), self._pool_or_fail().acquire() as conn, \
                conn.transaction():
            source = await conn.fetchval(f'DELETE FROM {d.corrupt} WHERE "key" = $1 RETURNING source', key)
            if source is None:
                return False
            ident: Any = key.partition("/")[2]
            if source in ("history", "logs"):
                ident = int(ident)
            if source in ("instances", "history", "logs"):
                await conn.execute(d.delete_aside(source), ident)
            return True


class PostgresStore(SqlStore):
    """gojob's store in PostgreSQL (12 or later): many nodes share one queue, history and log.

    Build it with :meth:`from_url` (``Manager(store="postgresql://...")``) or from
    :class:`PostgresOptions`.
    """

    SCHEMES = ("postgresql", "postgres")
    ANYIO_BACKENDS = ("asyncio",)
    FINISH_MODE = "handoff"
    name = "postgres"

    def __init__(self, opts: PostgresOptions) -> None:
        self.options = opts
        super().__init__(PostgresBackend(opts), poll_interval=1.0,
                         local_key=f"postgres:{opts.address}:{opts.schema}:{opts.prefix}")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        return cls(parse_postgres_url(url, **options))
