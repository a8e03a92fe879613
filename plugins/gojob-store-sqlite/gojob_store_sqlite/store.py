"""The SQLite store: :class:`gojob_store_sql.SqlStore` over the standard library's ``sqlite3``.

Every call runs in a worker thread (``anyio.to_thread``), never on the event loop, one at a time per
store (one connection). Each step that changes state is one ``BEGIN IMMEDIATE`` transaction: it takes
the database's write lock first, so the transactions of every process on the file follow one another
and a claim needs no row locks. WAL mode lets readers (queries, the poll) run beside the writer.

SQLite has no notification: an idle node learns of another process's writes by polling
``PRAGMA data_version`` (a read of shared memory, no disk) every ``poll_interval``; stores of one
process hand wake-ups, cancels and final states to each other directly.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import anyio
import anyio.to_thread
from gojob_core import Instance, LogRecord, StateRecord, StoreError
from gojob_store_sql import (
    SCHEMA_VERSION,
    Aside,
    Reads,
    Rows,
    SqlBackend,
    SqliteDialect,
    SqlStore,
    Writes,
    newer_schema,
)
from gojob_store_sql._options import name, query_params, seconds
from gojob_store_sql._rows import instance_values, mutable_values

__all__ = ["SqliteOptions", "SqliteStore", "parse_sqlite_url"]

T = TypeVar("T")

_KNOWN = frozenset({"prefix", "poll_interval", "busy_timeout", "synchronous"})
_SYNC = ("OFF", "NORMAL", "FULL", "EXTRA")
_CHUNK = 500  # parameters per IN (...) list (SQLite's default limit is 32,766; old builds 999)


@dataclass
class SqliteOptions:
    path: str
    prefix: str = "gojob_"
    poll_interval: float = 0.02
    busy_timeout: float = 30.0
    synchronous: str = "NORMAL"


def parse_sqlite_url(url: str, **options: Any) -> SqliteOptions:
    """Parse ``sqlite://PATH[?param=value&...]``: everything between ``sqlite://`` and ``?`` is the
    file's path (``sqlite:///var/lib/jobs.db`` is ``/var/lib/jobs.db``, ``sqlite://jobs.db`` is
    ``jobs.db`` in the working directory; percent-escapes are decoded). Parameters: ``prefix`` (of
    the table names), ``poll_interval`` and ``busy_timeout`` (seconds), ``synchronous`` (OFF, NORMAL,
    FULL, EXTRA). Keyword options override the URL's parameters."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ValueError(f"store URL {url!r}: the scheme must be sqlite://")
    path_s, _, query = rest.partition("?")
    path = unquote(path_s)
    if not path:
        raise ValueError(f"store URL {url!r}: no database file (sqlite:///absolute/path.db or sqlite://relative.db)")
    if path == ":memory:" or path.startswith("file:"):
        raise ValueError(f"store URL {url!r}: the path must name a file ({path!r} is not one: an in-memory SQLite "
                         "database is not shared between connections; use memory:// for a store in memory)")
    params: dict[str, Any] = dict(query_params(url, query, _KNOWN))
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise ValueError(f"sqlite store: unknown option(s) {unknown} (known: {sorted(_KNOWN)})")
    params.update(options)
    opts = SqliteOptions(path)
    if "prefix" in params:
        opts.prefix = name(url, "prefix", params["prefix"], prefix=True)
    if "poll_interval" in params:
        opts.poll_interval = seconds(url, "poll_interval", params["poll_interval"])
    if "busy_timeout" in params:
        opts.busy_timeout = seconds(url, "busy_timeout", params["busy_timeout"], zero=True)
    if "synchronous" in params:
        value = params["synchronous"]
        if not isinstance(value, str) or value.upper() not in _SYNC:
            raise ValueError(f"store URL {url!r}: synchronous must be one of {', '.join(_SYNC)}, got {value!r}")
        opts.synchronous = value.upper()
    return opts


def _text_factory(raw: bytes) -> str:
    # text that is not UTF-8 is read with surrogate escapes instead of failing the whole read: the row
    # it is in then fails to decode and is set aside, and the others go on
    return raw.decode("utf-8", "surrogateescape")


def _param(value: Any) -> Any:
    """A text parameter that holds surrogate escapes (bytes that were not UTF-8) as those bytes."""
    if type(value) is str and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return value


class SqliteBackend(SqlBackend):
    PUSH = False

    def __init__(self, opts: SqliteOptions) -> None:
        self.opts = opts
        self.dialect = SqliteDialect(prefix=opts.prefix)
        self.where = f"sqlite store {opts.path}"
        self._db: sqlite3.Connection | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._claim_version: int | None = None
        self._lock = threading.Lock()
        d = self.dialect
        self._sql_claim = d.select_claim()
        self._sql_expired = d.select_expired()
        self._sql_schedule = d.select_schedule()
        self._sql_upsert_schedule = d.upsert_schedule()
        self._sql_update = d.update_instance()
        self._sql_insert = d.insert_instance()
        self._sql_history = d.insert_history()
        self._sql_log = d.insert_log()
        self._sql_seq = f"UPDATE {d.meta} SET value = CAST(value AS INTEGER) + ? WHERE \"key\" = 'seq'"
        self._sql_seq_get = f"SELECT CAST(value AS INTEGER) FROM {d.meta} WHERE \"key\" = 'seq'"

    # -- running calls in the thread ------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self._guarded, fn, args, limiter=self._limiter)

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            try:
                return fn(*args)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.where}: {type(exc).__name__}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.where}: not started")
        return self._db

    def _in_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
            db.execute("COMMIT")
            return out
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- start and stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._limiter = anyio.CapacityLimiter(1)
        await self._run(self._open)

    def _open(self) -> None:
        if self._db is not None:
            return
        path = self.opts.path
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise StoreError(f"{self.where}: the directory of the database file does not exist")
        db = sqlite3.connect(path, timeout=self.opts.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            db.text_factory = _text_factory
            db.execute(f"PRAGMA busy_timeout = {int(self.opts.busy_timeout * 1000)}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.where}: cannot use WAL mode (journal mode is {mode})")
            db.execute(f"PRAGMA synchronous = {self.opts.synchronous}")
            self._db = db
            self._migrate(db)
        except BaseException:
            self._db = None
            db.close()
            raise

    def _migrate(self, db: sqlite3.Connection) -> None:
        d = self.dialect

        def run(db: sqlite3.Connection) -> None:
            db.execute(d.meta_ddl())
            row = db.execute(d.schema_version_select()).fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise newer_schema(found, self.where)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for stmt in d.ddl(version):
                    db.execute(stmt)
            if found < SCHEMA_VERSION:
                db.execute(d.schema_version_upsert(), (str(SCHEMA_VERSION),))

        self._in_tx(run)  # BEGIN IMMEDIATE: two nodes starting together create the tables once

    async def stop(self) -> None:
        if self._db is not None:
            await self._run(self._close)

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- transactions -----------------------------------------------------------------------------------
    async def transact(self, reads: Reads, decide: Callable[[Rows], tuple[T, Writes]]) -> tuple[T, Writes]:
        return await self._run(self._in_tx, lambda db: self._transact(db, reads, decide))

    def _transact(self, db: sqlite3.Connection, reads: Reads,
                  decide: Callable[[Rows], tuple[T, Writes]]) -> tuple[T, Writes]:
        rows = Rows()
        if reads.claim:
            self._claim_version = db.execute("PRAGMA data_version").fetchone()[0]
        if reads.cancel_schedule is not None:
            db.execute(self._sql_upsert_schedule, (reads.cancel_schedule, True))
            rows.schedule = db.execute(self._sql_schedule, (reads.cancel_schedule,)).fetchall()
        if reads.uuids:
            rows.by_uuid = self._by_uuid(db, reads.uuids)
        if reads.claim:
            rows.claim = db.execute(self._sql_claim, (reads.ts, reads.claim)).fetchall()
        if reads.expired:
            rows.expired = db.execute(self._sql_expired, (reads.ts, reads.expired)).fetchall()
        result, writes = decide(rows)
        self._write(db, writes)
        return result, writes

    def _by_uuid(self, db: sqlite3.Connection, uuids: Sequence[str]) -> list[Any]:
        out: list[Any] = []
        for k in range(0, len(uuids), _CHUNK):
            part = list(uuids[k:k + _CHUNK])
            out += db.execute(self.dialect.select_uuids(len(part)), part).fetchall()
        return out

    def _seqs(self, db: sqlite3.Connection, n: int) -> int:
        """Take ``n`` FIFO numbers; returns the first."""
        db.execute(self._sql_seq, (n,))
        return int(db.execute(self._sql_seq_get).fetchone()[0]) - n + 1

    def _write(self, db: sqlite3.Connection, w: Writes) -> None:
        if w.updates:
            n = sum(1 for _, requeue in w.updates if requeue)
            seq = self._seqs(db, n) if n else 0
            params = []
            for inst, requeue in w.updates:
                new_seq = None
                if requeue:
                    inst.seq = new_seq = seq
                    seq += 1
                params.append((*mutable_values(inst), new_seq, inst.uuid))
            db.executemany(self._sql_update, params)
        if w.history:
            db.executemany(self._sql_history, [(r.uuid, r.kind, r.state.value, r.ts, r.attempt, r.node, r.detail)
                                               for r in w.history])
        if w.aside:
            self._write_aside(db, w.aside)

    def _write_aside(self, db: sqlite3.Connection, asides: Sequence[Aside]) -> None:
        d = self.dialect
        for a in asides:
            key = _param(a.key)
            db.execute(d.report_corrupt().replace("VALUES (?,", "VALUES (CAST(? AS TEXT),", 1),
                       (key, a.source, a.reason, time.time(), a.raw))
            ident = _param(a.ident)
            flag = d.flag_aside(a.source)
            if isinstance(ident, bytes):
                flag = flag.replace("= ?", "= CAST(? AS TEXT)")
            db.execute(flag, (ident,))

    async def enqueue(self, items: Sequence[tuple[Instance, list[StateRecord]]], chained: bool) -> set[str]:
        return await self._run(self._in_tx, lambda db: self._enqueue(db, items, chained))

    def _enqueue(self, db: sqlite3.Connection, items: Sequence[tuple[Instance, list[StateRecord]]],
                 chained: bool) -> set[str]:
        d = self.dialect
        sids = sorted({i.schedule_id for i, _ in items if i.schedule_id is not None})
        canceled: set[str] = set()
        for k in range(0, len(sids), _CHUNK):
            part = sids[k:k + _CHUNK]
            if chained:
                marks = ", ".join("?" * len(part))
                canceled |= {r[0] for r in db.execute(f"SELECT sid FROM {d.schedules} WHERE sid IN ({marks}) "
                                                      "AND canceled = TRUE", part)}
            else:  # scheduling anew re-opens a canceled schedule
                db.executemany(self._sql_upsert_schedule, [(s, False) for s in part])
        uuids = [i.uuid for i, _ in items]
        existing: set[str] = set()
        for k in range(0, len(uuids), _CHUNK):
            part = uuids[k:k + _CHUNK]
            marks = ", ".join("?" * len(part))
            existing |= {r[0] for r in db.execute(f"SELECT uuid FROM {d.instances} WHERE uuid IN ({marks})", part)}
        new = [(i, h) for i, h in items if i.uuid not in existing and i.schedule_id not in canceled]
        if not new:
            return set()
        seq = self._seqs(db, len(new))
        for n, (inst, _) in enumerate(new):
            inst.seq = seq + n
        db.executemany(self._sql_insert, [instance_values(i) for i, _ in new])
        db.executemany(self._sql_history, [(r.uuid, r.kind, r.state.value, r.ts, r.attempt, r.node, r.detail)
                                           for _, h in new for r in h])
        return {i.uuid for i, _ in new}

    # -- plain statements -------------------------------------------------------------------------------
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return await self._run(lambda: self._conn().execute(sql, list(args)).fetchall())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self._run(self._in_tx, lambda db: db.execute(sql, list(args)).rowcount)

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        rows = [(r.uuid, r.kind, r.level.value, r.message, r.ts, r.attempt, r.node) for r in records]
        await self._run(self._in_tx, lambda db: db.executemany(self._sql_log, rows))

    async def set_aside(self, asides: Sequence[Aside]) -> None:
        await self._run(self._in_tx, lambda db: self._write_aside(db, asides))

    async def drop_corrupt(self, key: str) -> bool:
        d = self.dialect

        def run(db: sqlite3.Connection) -> bool:
            row = db.execute(f"SELECT source FROM {d.corrupt} WHERE \"key\" = ?", (_param(key),)).fetchone()
            if row is None:
                return False
            db.execute(f"DELETE FROM {d.corrupt} WHERE \"key\" = ?", (_param(key),))
            source = str(row[0])
            ident: Any = key.partition("/")[2]
            if source in ("history", "logs"):
                ident = int(ident)
            if source in ("instances", "history", "logs"):
                sql = d.delete_aside(source)
                ident = _param(ident)
                if isinstance(ident, bytes):
                    sql = sql.replace("= ?", "= CAST(? AS TEXT)", 1)
                db.execute(sql, (ident,))
            return True

        return await self._run(self._in_tx, run)

    async def changed(self) -> bool:
        def run() -> bool:
            version = self._conn().execute("PRAGMA data_version").fetchone()[0]
            return bool(version != self._claim_version)

        return await self._run(run)


class SqliteStore(SqlStore):
    """gojob's store in one SQLite file, shared by the processes of one host.

    :param path: the database file (created if missing; its directory must exist).
    :param prefix: of the table names (several stores in one file).
    :param poll_interval: how often an idle node, and a node with running instances, looks whether
        another process wrote (new work, a cancel); stores of one process hear of each other at once.
    :param busy_timeout: how long a transaction waits for another process's write lock.
    :param synchronous: ``PRAGMA synchronous`` (NORMAL: a commit survives a crash of the process, the
        last ones may be lost if the machine loses power; FULL: they are not).
    """

    SCHEMES = ("sqlite",)
    ANYIO_BACKENDS = ("asyncio", "trio")
    FINISH_MODE = "handoff"
    name = "sqlite"

    def __init__(self, path: str, *, prefix: str = "gojob_", poll_interval: float = 0.02,
                 busy_timeout: float = 30.0, synchronous: str = "NORMAL") -> None:
        opts = SqliteOptions(str(path), prefix, poll_interval, busy_timeout, synchronous)
        self.options = opts
        super().__init__(SqliteBackend(opts), poll_interval=poll_interval,
                         local_key=f"sqlite:{os.path.realpath(opts.path)}:{opts.prefix}")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteStore:
        o = parse_sqlite_url(url, **options)
        return cls(o.path, prefix=o.prefix, poll_interval=o.poll_interval, busy_timeout=o.busy_timeout,
                   synchronous=o.synchronous)
