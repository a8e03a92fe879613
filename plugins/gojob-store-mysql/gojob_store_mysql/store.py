"""The MySQL/MariaDB store: :class:`gojob_store_sql.SqlStore` over asyncmy, on InnoDB.

Each step that changes state is one transaction: ``START TRANSACTION``; the reads, locking their rows
(``SELECT ... FOR UPDATE`` of the instances to finish, ``FOR UPDATE SKIP LOCKED`` of the next ready ones
in claim order); the writes (every changed row in one ``UPDATE ... JOIN`` of the new values, the history
records in one multi-row ``INSERT``); ``COMMIT``. An enqueue is one transaction too: its schedules'
rows upserted (locking them against a racing cancel), the new rows and their history inserted.

MySQL has no notification. Stores of one process hand wake-ups, cancels and final states to each other
directly (gojob_store_sql's hand-off); an idle node of another process learns of new work by reading,
every ``poll_interval``, whether anything is due: one indexed read that returns at most a row.

FIFO numbers come from a counter row (``UPDATE ... SET value = LAST_INSERT_ID(value + n)``): an enqueue
takes its numbers in a statement of its own before its transaction (so the row is locked for one
statement, not for the whole transaction); numbers taken by a transaction that then fails are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote

import asyncmy
import asyncmy.errors
from asyncmy.constants import CLIENT
from gojob_core import Instance, LogRecord, StateRecord, StoreError
from gojob_core._urls import parse_hosts
from gojob_store_sql import (
    INSTANCE_COLUMNS,
    MUTABLE_COLUMNS,
    SCHEMA_VERSION,
    Aside,
    MysqlDialect,
    Reads,
    Rows,
    SqlBackend,
    SqlStore,
    Writes,
    newer_schema,
)
from gojob_store_sql._options import integer, name, query_params, seconds
from gojob_store_sql._rows import instance_values, mutable_values

__all__ = ["MysqlOptions", "MysqlStore", "parse_mysql_url"]

T = TypeVar("T")
_log = logging.getLogger("gojob.mysql")

_KNOWN = frozenset({"prefix", "pool_size", "timeout", "connect_timeout", "poll_interval", "ssl", "ssl_ca",
                    "ssl_cert", "ssl_key"})
#: a deadlock, a lock wait timeout: the transaction is tried again
_RETRY = frozenset({1213, 1205})
_DUPLICATE = 1062
_UNKNOWN_DATABASE = 1049
_ACCESS_DENIED = frozenset({1044, 1045, 1698})
_ERRORS = (asyncmy.errors.Error, OSError, asyncio.TimeoutError, EOFError)
_CHUNK = 1000  # values per IN (...) list and rows per multi-row statement
#: the session: names in double quotes (the shared statements' quoting), strict, errors on bad data
_SQL_MODE = "ANSI_QUOTES,STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"


@dataclass
class MysqlOptions:
    host: str = "localhost"
    port: int = 3306
    user: str | None = None
    password: str | None = None
    database: str = ""
    prefix: str = "gojob_"
    pool_size: int = 8
    timeout: float = 10.0
    connect_timeout: float = 5.0
    poll_interval: float = 0.05
    ssl: str = "disabled"  # disabled, required (the server's certificate is checked), or insecure
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


def parse_mysql_url(url: str, **options: Any) -> MysqlOptions:
    """Parse ``mysql://[user[:password]@]host[:port]/database[?param=value&...]`` (``mariadb://`` too).
    The database is created if missing. Parameters: ``prefix`` (of the table names, ``gojob_``),
    ``pool_size`` (connections per node, 8), ``timeout`` (seconds to wait for a statement's reply, 10),
    ``connect_timeout`` (5), ``poll_interval`` (seconds between an idle node's looks for new work, and
    for cancels of its running instances, 0.05); TLS: ``ssl`` (``disabled``; ``required``: verify the
    server's certificate and name; ``insecure``: encrypt without verifying), ``ssl_ca``, ``ssl_cert``,
    ``ssl_key`` (files; ``ssl_ca`` alone implies ``required``). Keyword options override the URL's."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("mysql", "mariadb"):
        raise ValueError(f"store URL {url!r}: the scheme must be mysql:// or mariadb://")
    rest, _, query = rest.partition("?")
    netloc, _, database = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, creds = netloc, ""
    addresses = parse_hosts(url, hosts, "localhost", 3306)
    if len(addresses) != 1:
        raise ValueError(f"store URL {url!r}: give one host (a MySQL store talks to one server; put a proxy "
                         "in front of a cluster)")
    database = unquote(database)
    if not database:
        raise ValueError(f"store URL {url!r}: name the database in the path (mysql://host/jobs)")
    name(url, "database", database)
    params: dict[str, Any] = dict(query_params(url, query, _KNOWN))
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise ValueError(f"mysql store: unknown option(s) {unknown} (known: {sorted(_KNOWN)})")
    params.update(options)
    user, _, password = creds.partition(":")
    opts = MysqlOptions(addresses[0][0], addresses[0][1], unquote(user) or None,
                        unquote(password) if password else None, database)
    if "prefix" in params:
        opts.prefix = name(url, "prefix", params["prefix"], prefix=True)
    if "pool_size" in params:
        opts.pool_size = integer(url, "pool_size", params["pool_size"], minimum=1, maximum=1000)
    for key in ("timeout", "connect_timeout", "poll_interval"):
        if key in params:
            setattr(opts, key, seconds(url, key, params[key]))
    for key in ("ssl_ca", "ssl_cert", "ssl_key"):
        if params.get(key):
            setattr(opts, key, str(params[key]))
    if opts.ssl_ca:
        opts.ssl = "required"
    if "ssl" in params:
        mode = str(params["ssl"]).lower()
        if mode not in ("disabled", "required", "insecure"):
            raise ValueError(f"store URL {url!r}: ssl must be disabled, required or insecure, got {params['ssl']!r}")
        opts.ssl = mode
    if (opts.ssl_cert is None) != (opts.ssl_key is None):
        raise ValueError(f"store URL {url!r}: give ssl_cert and ssl_key together")
    if opts.ssl == "disabled" and (opts.ssl_ca or opts.ssl_cert):
        raise ValueError(f"store URL {url!r}: ssl=disabled with certificate files given")
    return opts


def _code(exc: BaseException | None) -> int | None:
    """The MySQL error number of an exception (None if it is not a server's error)."""
    if isinstance(exc, asyncmy.errors.Error) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _close_made(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


class _Result(NamedTuple):
    rows: list[Any]
    rowcount: int
    insert_id: int


class _Pool:
    """At most ``size`` connections, made on demand and kept while they work. A connection whose use
    raised (an error, a cancel) is closed, not reused: its protocol state is unknown, and closing it
    ends its transaction on the server."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            self.give(conn)

    def give(self, conn: Any) -> None:
        """Keep a working connection for the next acquire (closed if the pool was closed meanwhile)."""
        if self._closed:  # the store stopped while this one was out
            conn.close()
        else:
            self._idle.append(conn)

    async def aclose(self) -> None:
        """Close the idle connections (saying goodbye to the server; those out are closed when they come
        back), and let the event loop close their sockets before it may end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.ensure_closed(), 1.0)
            except (*_ERRORS, RuntimeError):
                conn.close()
        await asyncio.sleep(0)


class MysqlBackend(SqlBackend):
    PUSH = False

    def __init__(self, opts: MysqlOptions) -> None:
        self.opts = opts
        self.dialect = d = MysqlDialect(prefix=opts.prefix)
        self.where = f"mysql store at {opts.address}"
        self._pool: _Pool | None = None
        self._ssl: _ssl.SSLContext | None = None
        self._sql_claim = d.select_claim()
        self._sql_expired = d.select_expired()
        self._sql_schedule = d.select_schedule()
        self._sql_upsert_schedule = d.upsert_schedule()
        self._sql_seq = (f"UPDATE {d.meta} SET value = LAST_INSERT_ID(CAST(value AS UNSIGNED) + %s) "
                         "WHERE \"key\" = 'seq'")
        self._sql_due = (f"SELECT 1 FROM {d.instances} WHERE state = 'SCHEDULED' AND aside = FALSE "
                         "AND ready_ts <= %s LIMIT 1")
        mut = MUTABLE_COLUMNS
        first = ", ".join(f"%s AS {c}" for c in ("uuid", *mut, "k"))
        self._update_row = f"SELECT {first}"
        self._update_more = f"SELECT {', '.join(['%s'] * (len(mut) + 2))}"
        self._update_set = ", ".join(f"i.{c} = v.{c}" for c in mut)
        self._instance_head = (f"INSERT INTO {d.instances} ({', '.join(INSTANCE_COLUMNS)}) VALUES ",
                               len(INSTANCE_COLUMNS))
        hist = ("uuid", "kind", "state", "ts", "attempt", "node", "detail")
        self._history_head = f"INSERT INTO {d.history} ({', '.join(hist)}) VALUES ", len(hist)
        logs = ("uuid", "kind", "level", "message", "ts", "attempt", "node")
        self._log_head = f"INSERT INTO {d.logs} ({', '.join(logs)}) VALUES ", len(logs)

    # -- connections ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except StoreError:
            raise
        except _ERRORS as exc:
            if _code(exc) in _ACCESS_DENIED:
                raise StoreError(f"{self.where}: access denied ({exc.args[-1]})") from exc
            detail = f"{exc.args[0]} {exc.args[-1]}" if _code(exc) is not None else f"{type(exc).__name__}: {exc}"
            raise StoreError(f"{self.where}: {what} failed: {detail}") from exc

    def _ssl_context(self) -> _ssl.SSLContext | None:
        o = self.opts
        if o.ssl == "disabled":
            return None
        ctx = _ssl.create_default_context(cafile=o.ssl_ca)
        if o.ssl == "insecure":
            ctx.check_hostname = False
            ctx.verify_mode = _ssl.CERT_NONE
        if o.ssl_cert:
            ctx.load_cert_chain(o.ssl_cert, o.ssl_key)
        return ctx

    async def _connect(self, database: str | None = None) -> Any:
        """A new connection, set up. A caller canceled meanwhile does not leave it open: the connection
        is made to the end in a task of its own, then closed."""
        task = asyncio.ensure_future(self._open(database))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_close_made)
            raise

    async def _open(self, database: str | None) -> Any:
        o = self.opts
        conn = await asyncmy.connect(
            host=o.host, port=o.port, user=o.user, password=o.password or "",
            database=o.database if database is None else (database or None), charset="utf8mb4",
            autocommit=True, connect_timeout=o.connect_timeout, read_timeout=o.timeout, binary_prefix=True,
            ssl=self._ssl, program_name="gojob", client_flag=CLIENT.MULTI_STATEMENTS)
        try:
            async with conn.cursor() as cur:
                # text as the tables keep it (compares byte for byte); a locking read keeps locks on the
                # rows it returns only
                await cur.execute("SET NAMES utf8mb4 COLLATE utf8mb4_bin, SESSION sql_mode = %s", (_SQL_MODE,))
                await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        except BaseException:
            conn.close()
            raise
        return conn

    def _pool_or_fail(self) -> _Pool:
        if self._pool is None:
            raise StoreError(f"{self.where}: not started")
        return self._pool

    async def start(self) -> None:
        try:
            self._ssl = self._ssl_context()
        except (OSError, _ssl.SSLError) as exc:
            raise StoreError(f"{self.where}: cannot load the TLS files: {exc}") from exc
        self._pool = _Pool(self._connect, self.opts.pool_size)
        try:
            await self._migrate()
        except BaseException:
            await self.stop()
            raise

    async def _migrate(self) -> None:
        d = self.dialect
        async with self._errors("creating the tables"):
            try:
                conn = await self._connect()
            except asyncmy.errors.Error as exc:
                if _code(exc) != _UNKNOWN_DATABASE:
                    raise
                admin = await self._connect(database="")
                try:
                    async with admin.cursor() as cur:
                        await cur.execute(f"CREATE DATABASE IF NOT EXISTS {d.quote(self.opts.database)} "
                                          "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                finally:
                    admin.close()
                conn = await self._connect()
            try:
                async with conn.cursor() as cur:
                    if await self._version(cur) != SCHEMA_VERSION:  # else the usual case: no lock taken
                        await self._create(cur)
                self._pool_or_fail().give(conn)
            except BaseException:
                conn.close()
                raise

    async def _create(self, cur: Any) -> None:
        """Create or migrate the tables, one node at a time per database and prefix: the others wait
        for the lock, then find the tables made."""
        d = self.dialect
        lock = "gojob:" + hashlib.sha1(f"{self.opts.database}.{d.prefix}".encode()).hexdigest()[:40]
        await cur.execute("SELECT GET_LOCK(%s, %s)", (lock, max(30, int(self.opts.timeout))))
        (got,) = await cur.fetchone()
        if got != 1:
            raise StoreError(f"{self.where}: another node held the schema lock too long")
        try:
            await cur.execute(d.meta_ddl())
            found = await self._version(cur) or 0
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for stmt in d.ddl(version):
                    await cur.execute(stmt)
            if found < SCHEMA_VERSION:
                await cur.execute(d.schema_version_upsert(), (str(SCHEMA_VERSION),))
        finally:
            await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))

    async def _version(self, cur: Any) -> int | None:
        """The schema version the tables hold (None: no tables yet); a newer one is refused."""
        try:
            await cur.execute(self.dialect.schema_version_select())
        except asyncmy.errors.ProgrammingError as exc:
            if _code(exc) == 1146:  # no such table
                return None
            raise
        row = await cur.fetchone()
        found = int(row[0]) if row else None
        if found is not None and found > SCHEMA_VERSION:
            raise newer_schema(found, self.where)
        return found

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    # -- transactions -----------------------------------------------------------------------------------
    async def _batch(self, cur: Any, parts: Sequence[tuple[str, Sequence[Any]]]) -> list[_Result]:
        """Run several statements in one round trip (one multi-statement query); each one's result:
        its rows, its affected-row count, its insert id. The first that fails raises (the rest do not
        run; the connection is then closed, which ends its transaction)."""
        await cur.execute("; ".join(sql for sql, _ in parts), [a for _, args in parts for a in args])
        out: list[_Result] = []
        while True:
            out.append(_Result(list(await cur.fetchall()), cur.rowcount, cur.lastrowid))
            if not await cur.nextset():
                break
        if len(out) != len(parts):
            raise StoreError(f"{self.where}: {len(parts)} statements gave {len(out)} results")
        return out

    async def transact(self, reads: Reads, decide: Callable[[Rows], tuple[T, Writes]]) -> tuple[T, Writes]:
        for attempt in range(4):
            try:
                async with self._errors("a transaction"), self._pool_or_fail().acquire() as conn, \
                        conn.cursor() as cur:
                    parts, into = self._read_parts(reads)
                    rows = Rows()
                    for target, res in zip(into, await self._batch(cur, parts)):
                        if target is not None:
                            getattr(rows, target).extend(res.rows)
                    result, writes = decide(rows)
                    await self._batch(cur, [*self._write_parts(writes), ("COMMIT", ())])
                return result, writes
            except StoreError as exc:
                if _code(exc.__cause__) in _RETRY and attempt < 3:
                    continue  # a deadlock or a lock wait timeout: the transaction is tried again
                raise
        raise AssertionError("unreachable")

    def _read_parts(self, reads: Reads) -> tuple[list[tuple[str, Sequence[Any]]], list[str | None]]:
        """The statements of a transaction's first round trip, and which field of Rows each one fills."""
        parts: list[tuple[str, Sequence[Any]]] = [("START TRANSACTION", ())]
        into: list[str | None] = [None]
        if reads.cancel_schedule is not None:
            parts += [(self._sql_upsert_schedule, (reads.cancel_schedule, True)),
                      (self._sql_schedule, (reads.cancel_schedule,))]
            into += [None, "schedule"]
        for k in range(0, len(reads.uuids), _CHUNK):
            part = list(reads.uuids[k:k + _CHUNK])
            parts.append((self.dialect.select_uuids(len(part)), part))
            into.append("by_uuid")
        if reads.claim:
            parts.append((self._sql_claim, (reads.ts, reads.claim)))
            into.append("claim")
        if reads.expired:
            parts.append((self._sql_expired, (reads.ts, reads.expired)))
            into.append("expired")
        return parts, into

    def _write_parts(self, w: Writes) -> list[tuple[str, Sequence[Any]]]:
        """The statements of a transaction's writes. Instances that re-enter the queue take FIFO numbers
        in the same round trip: the counter's statement sets LAST_INSERT_ID(), which the row update
        reads (the k-th of n such rows gets LAST_INSERT_ID() - n + 1 + k)."""
        parts: list[tuple[str, Sequence[Any]]] = []
        if w.updates:
            n = sum(1 for _, requeue in w.updates if requeue)
            if n:
                parts.append((self._sql_seq, (n,)))
            k = 0
            for c in range(0, len(w.updates), _CHUNK):
                chunk = w.updates[c:c + _CHUNK]
                args: list[Any] = []
                for inst, requeue in chunk:
                    args += (inst.uuid, *mutable_values(inst), k if requeue else None)
                    k += requeue
                values = " UNION ALL ".join([self._update_row] + [self._update_more] * (len(chunk) - 1))
                parts.append((f"UPDATE {self.dialect.instances} AS i JOIN ({values}) AS v ON i.uuid = v.uuid "
                              f"SET {self._update_set}, "
                              f"i.seq = IF(v.k IS NULL, i.seq, LAST_INSERT_ID() - {n} + 1 + v.k)",
                              args))
        if w.history:
            parts += self._insert_rows(self._history_head, [
                (r.uuid, r.kind, r.state.value, r.ts, r.attempt, r.node, r.detail) for r in w.history])
        for a in w.aside:
            parts += self._aside_parts(a)
        return parts

    def _insert_rows(self, head: tuple[str, int], rows: Sequence[Sequence[Any]]) -> list[tuple[str, Sequence[Any]]]:
        """Multi-row INSERT statements (``head``: the statement up to VALUES, and the row width)."""
        sql, width = head
        mark = "(" + ", ".join(["%s"] * width) + ")"
        return [(sql + ", ".join([mark] * len(rows[c:c + _CHUNK])), [v for row in rows[c:c + _CHUNK] for v in row])
                for c in range(0, len(rows), _CHUNK)]

    def _aside_parts(self, a: Aside) -> list[tuple[str, Sequence[Any]]]:
        d = self.dialect
        return [(d.report_corrupt(), (a.key, a.source, a.reason, time.time(), a.raw)),
                (d.flag_aside(a.source), (a.ident,))]

    async def enqueue(self, items: Sequence[tuple[Instance, list[StateRecord]]], chained: bool) -> set[str]:
        for attempt in range(4):
            try:
                async with self._errors("enqueue"), self._pool_or_fail().acquire() as conn, conn.cursor() as cur:
                    return await self._enqueue(cur, items, chained)
            except StoreError as exc:
                if _code(exc.__cause__) in (*_RETRY, _DUPLICATE) and attempt < 3:
                    continue  # two enqueues of one uuid at once: the loser finds it there next time
                raise
        raise AssertionError("unreachable")

    async def _enqueue(self, cur: Any, items: Sequence[tuple[Instance, list[StateRecord]]], chained: bool) -> set[str]:
        """Two round trips: (the FIFO numbers, taken before the transaction: see the module's doc; the
        schedules' rows; which uuids exist), then (the new rows, their history, COMMIT)."""
        d = self.dialect
        sids = sorted({i.schedule_id for i, _ in items if i.schedule_id is not None})
        uuids = [i.uuid for i, _ in items]
        parts: list[tuple[str, Sequence[Any]]] = [(self._sql_seq, (len(items),)), ("START TRANSACTION", ())]
        canceled_at: list[int] = []
        existing_at: list[int] = []
        keep = "canceled" if chained else "FALSE"
        for k in range(0, len(sids), _CHUNK):
            part = sids[k:k + _CHUNK]
            # the schedules' rows, locked against a racing cancel: a chained enqueue keeps a cancel, a new
            # schedule call re-opens it
            parts.append((f"INSERT INTO {d.schedules} (sid, canceled) VALUES " + ", ".join(["(%s, FALSE)"] * len(part))
                          + f" ON DUPLICATE KEY UPDATE canceled = {keep}", part))
            if chained:
                canceled_at.append(len(parts))
                parts.append((f"SELECT sid FROM {d.schedules} WHERE sid IN ({', '.join(['%s'] * len(part))}) "
                              "AND canceled = TRUE", part))
        for k in range(0, len(uuids), _CHUNK):
            part = uuids[k:k + _CHUNK]
            existing_at.append(len(parts))
            parts.append((f"SELECT uuid FROM {d.instances} WHERE uuid IN ({', '.join(['%s'] * len(part))})", part))
        res = await self._batch(cur, parts)
        seq = int(res[0].insert_id) - len(items) + 1
        canceled = {r[0] for i in canceled_at for r in res[i].rows}
        existing = {r[0] for i in existing_at for r in res[i].rows}
        new = [(i, h) for i, h in items if i.uuid not in existing and i.schedule_id not in canceled]
        for n, (inst, _) in enumerate(new):
            inst.seq = seq + n
        writes = [*self._insert_rows(self._instance_head, [instance_values(i) for i, _ in new]),
                  *self._insert_rows(self._history_head, [(r.uuid, r.kind, r.state.value, r.ts, r.attempt, r.node,
                                                           r.detail) for _, h in new for r in h])]
        await self._batch(cur, [*writes, ("COMMIT", ())])
        return {i.uuid for i, _ in new}

    async def _fetch(self, cur: Any, sql: str, args: Sequence[Any]) -> list[Any]:
        await cur.execute(sql, args)
        return list(await cur.fetchall())

    # -- plain statements -------------------------------------------------------------------------------
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._errors("a query"), self._pool_or_fail().acquire() as conn, conn.cursor() as cur:
            return await self._fetch(cur, sql, list(args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._errors("a statement"), self._pool_or_fail().acquire() as conn, conn.cursor() as cur:
            return int(await cur.execute(sql, list(args)))

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        rows = [(r.uuid, r.kind, r.level.value, r.message, r.ts, r.attempt, r.node) for r in records]
        async with self._errors("writing logs"), self._pool_or_fail().acquire() as conn, conn.cursor() as cur:
            await self._batch(cur, self._insert_rows(self._log_head, rows))

    async def set_aside(self, asides: Sequence[Aside]) -> None:
        async with self._errors("setting a record aside"), self._pool_or_fail().acquire() as conn, \
                conn.cursor() as cur:
            await self._batch(cur, [("START TRANSACTION", ()), *(p for a in asides for p in self._aside_parts(a)),
                                    ("COMMIT", ())])

    async def drop_corrupt(self, key: str) -> bool:
        d = self.dialect
        async with self._errors("dropping a corrupt record"), self._pool_or_fail().acquire() as conn:
            async with conn.cursor() as cur:
                await cur.execute("START TRANSACTION")
                rows = await self._fetch(cur, f'SELECT source FROM {d.corrupt} WHERE "key" = %s FOR UPDATE', (key,))
                if not rows:
                    await conn.rollback()
                    return False
                await cur.execute(f'DELETE FROM {d.corrupt} WHERE "key" = %s', (key,))
                source = str(rows[0][0])
                ident: Any = key.partition("/")[2]
                if source in ("history", "logs"):
                    ident = int(ident)
                if source in ("instances", "history", "logs"):
                    await cur.execute(d.delete_aside(source), (ident,))
            await conn.commit()
            return True

    async def changed(self) -> bool:
        """Whether anything is due now (an idle node's poll: one read of the queue's index)."""
        return bool(await self.fetch(self._sql_due, (time.time(),)))


class MysqlStore(SqlStore):
    """gojob's store in MySQL (8.0.1 or later) or MariaDB (10.6 or later), on InnoDB: many nodes share
    one queue, history and log.

    Build it with :meth:`from_url` (``Manager(store="mysql://user:pw@host/jobs")``) or from
    :class:`MysqlOptions`.
    """

    SCHEMES = ("mysql", "mariadb")
    ANYIO_BACKENDS = ("asyncio",)
    FINISH_MODE = "handoff"
    name = "mysql"

    def __init__(self, opts: MysqlOptions) -> None:
        self.options = opts
        super().__init__(MysqlBackend(opts), poll_interval=opts.poll_interval,
                         local_key=f"mysql:{opts.address}:{opts.prefix}")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MysqlStore:
        return cls(parse_mysql_url(url, **options))
