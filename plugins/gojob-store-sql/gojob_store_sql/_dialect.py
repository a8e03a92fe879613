"""The dialect seam: what differs between SQL databases in the text of the statements the stores share.

A :class:`Dialect` names the tables (a schema and a prefix), writes placeholders, column types and the
schema's DDL by version, and turns a :class:`~gojob_core.Query` into a ``WHERE`` clause. The statements
that carry a store's hot path (claims, finishes, enqueues) belong to each backend, which may use what
its database has (PostgreSQL's arrays, ``FOR UPDATE SKIP LOCKED``); everything else is written here
once. MySQL/MariaDB will be a third subclass: ``%s`` placeholders, backquoted names, no partial
indexes (a generated column instead), ``INSERT IGNORE``.
"""

from __future__ import annotations

import re
from typing import Any

from gojob_core import Query, StoreError

from ._rows import HISTORY_COLUMNS, INSTANCE_COLUMNS, LOG_COLUMNS, MUTABLE_COLUMNS

__all__ = ["SCHEMA_VERSION", "Dialect", "PostgresDialect", "SqliteDialect", "check_identifier", "newer_schema"]

#: the schema version this code writes and reads; a database at a newer one is refused at start
#: (2: the schedule records table)
SCHEMA_VERSION = 2

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"[A-Za-z0-9_]*")

#: the tables of one store, by their short names
TABLES = ("meta", "instances", "history", "logs", "schedules", "corrupt", "schedule_records")


def newer_schema(found: int, where: str) -> StoreError:
    """The error of a node that finds a schema newer than it knows: it refuses to start."""
    return StoreError(f"{where}: the tables hold gojob SQL schema version {found}, newer than version "
                      f"{SCHEMA_VERSION}, the newest this node's gojob-store-sql knows; upgrade gojob-store-sql "
                      "(and the store's plugin) on this node, or point it at other tables (prefix or schema)")


def check_identifier(value: object, name: str, *, prefix: bool = False, max_len: int = 40) -> str:
    """``value`` if it is a plain SQL name (letters, digits, ``_``; a prefix may start with a digit or be
    empty), else a ValueError naming the parameter and the value."""
    pattern = _PREFIX if prefix else _IDENT
    if not isinstance(value, str) or not pattern.fullmatch(value) or len(value) > max_len:
        what = "letters, digits and _" + ("" if prefix else ", not starting with a digit")
        raise ValueError(f"{name} must be {what}, at most {max_len} characters; got {value!r}")
    return value


class Dialect:
    """SQL text for one kind of database; subclasses set the differences."""

    name = "sql"
    #: column types
    TEXT = "TEXT"
    BIGINT = "BIGINT"
    INT = "INTEGER"
    FLOAT = "DOUBLE PRECISION"
    BOOL = "BOOLEAN"
    BLOB = "BLOB"
    #: a text primary key (MySQL needs a bounded VARCHAR there)
    TEXT_KEY = "TEXT"
    #: the history and log id column (an ever-growing integer key)
    SERIAL_PK = "BIGINT PRIMARY KEY"

    def __init__(self, *, prefix: str = "gojob_", schema: str | None = None) -> None:
        self.prefix = check_identifier(prefix, "prefix", prefix=True)
        self.schema = None if schema is None else check_identifier(schema, "schema")
        for short in TABLES:
            setattr(self, short, self.table(short))

    # -- names and placeholders ----------------------------------------------------------------------
    def quote(self, name: str) -> str:
        return f'"{name}"'

    def table(self, short: str) -> str:
        """The qualified, quoted name of one of the store's tables (or sequences)."""
        name = self.quote(self.prefix + short)
        return f"{self.quote(self.schema)}.{name}" if self.schema else name

    def index(self, short: str) -> str:
        """The name of an index as written in CREATE INDEX (unqualified: it lives beside its table)."""
        return self.quote(f"{self.prefix}{short}")

    def ph(self, n: int) -> str:
        """The ``n``-th placeholder (1-based)."""
        return "?"

    # -- DDL -----------------------------------------------------------------------------------------
    def ddl(self, version: int) -> list[str]:
        """The statements that take a database from ``version - 1`` to ``version`` (1: create it all)."""
        if version == 2:
            return [f"CREATE TABLE IF NOT EXISTS {self.schedule_records} (id {self.TEXT_KEY} PRIMARY KEY, "
                    f"data {self.TEXT} NOT NULL, version {self.BIGINT} NOT NULL)"]
        if version != 1:
            raise ValueError(f"no schema version {version}")
        T, B, N, F, BO, BL = self.TEXT, self.BIGINT, self.INT, self.FLOAT, self.BOOL, self.BLOB
        waiting = "state = 'SCHEDULED' AND aside = FALSE"
        return [
            *self.pre_ddl(),
            f"CREATE TABLE IF NOT EXISTS {self.instances} ("
            f"uuid {T} PRIMARY KEY, kind {T} NOT NULL, state {T} NOT NULL, priority {B} NOT NULL, "
            f"ready_ts {F} NOT NULL, seq {B} NOT NULL, created_ts {F} NOT NULL, started_ts {F}, finished_ts {F}, "
            f"attempts {N} NOT NULL, max_retries {N} NOT NULL, timeout {F}, node {T}, lease_ts {F}, "
            f"cancel_requested {BO} NOT NULL, crontab_spec {T}, timezone {T}, schedule_id {T}, "
            f"abandoned {N} NOT NULL, max_abandons {N}, error {T}, args {BL} NOT NULL, kwargs {BL} NOT NULL, "
            f"result {BL}, extra {BL}, aside {BO} NOT NULL DEFAULT FALSE)",
            # the queue: the claim order, over waiting instances only
            f"CREATE INDEX IF NOT EXISTS {self.index('instances_queue')} ON {self.instances} "
            f"(priority, ready_ts, seq) WHERE {waiting}",
            # the next delayed instance to fall due; the oldest ready per kind
            f"CREATE INDEX IF NOT EXISTS {self.index('instances_due')} ON {self.instances} (ready_ts) WHERE {waiting}",
            # leases: what reclaim reads, and the cancels asked for running instances
            f"CREATE INDEX IF NOT EXISTS {self.index('instances_running')} ON {self.instances} (lease_ts) "
            "WHERE state = 'PROCESSING' AND aside = FALSE",
            f"CREATE INDEX IF NOT EXISTS {self.index('instances_created')} ON {self.instances} (created_ts, uuid)",
            f"CREATE INDEX IF NOT EXISTS {self.index('instances_kind')} ON {self.instances} (kind, created_ts, uuid)",
            f"CREATE INDEX IF NOT EXISTS {self.index('instances_schedule')} ON {self.instances} (schedule_id) "
            "WHERE schedule_id IS NOT NULL",
            f"CREATE TABLE IF NOT EXISTS {self.history} (id {self.SERIAL_PK}, uuid {T} NOT NULL, kind {T} NOT NULL, "
            f"state {T} NOT NULL, ts {F} NOT NULL, attempt {N} NOT NULL, node {T}, detail {T}, "
            f"aside {BO} NOT NULL DEFAULT FALSE)",
            f"CREATE INDEX IF NOT EXISTS {self.index('history_uuid')} ON {self.history} (uuid, ts, id)",
            f"CREATE INDEX IF NOT EXISTS {self.index('history_ts')} ON {self.history} (ts, id)",
            f"CREATE INDEX IF NOT EXISTS {self.index('history_kind')} ON {self.history} (kind, ts, id)",
            f"CREATE INDEX IF NOT EXISTS {self.index('history_state')} ON {self.history} (state, ts, id)",
            f"CREATE TABLE IF NOT EXISTS {self.logs} (id {self.SERIAL_PK}, uuid {T} NOT NULL, kind {T} NOT NULL, "
            f"level {T} NOT NULL, message {T} NOT NULL, ts {F} NOT NULL, attempt {N} NOT NULL, node {T}, "
            f"aside {BO} NOT NULL DEFAULT FALSE)",
            f"CREATE INDEX IF NOT EXISTS {self.index('logs_uuid')} ON {self.logs} (uuid, ts, id)",
            f"CREATE INDEX IF NOT EXISTS {self.index('logs_ts')} ON {self.logs} (ts, id)",
            f"CREATE INDEX IF NOT EXISTS {self.index('logs_kind')} ON {self.logs} (kind, ts, id)",
            f"CREATE TABLE IF NOT EXISTS {self.schedules} (sid {T} PRIMARY KEY, canceled {BO} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.corrupt} (key {T} PRIMARY KEY, source {T} NOT NULL, "
            f"reason {T} NOT NULL, ts {F} NOT NULL, raw {BL} NOT NULL)",
            *self.post_ddl(),
        ]

    def pre_ddl(self) -> list[str]:
        """Statements before the tables (a schema, a sequence); the meta table is made by the backend."""
        return []

    def post_ddl(self) -> list[str]:
        return []

    def meta_ddl(self) -> str:
        return f"CREATE TABLE IF NOT EXISTS {self.meta} (key {self.TEXT} PRIMARY KEY, value {self.TEXT} NOT NULL)"

    # -- queries -------------------------------------------------------------------------------------
    def where(self, query: Query, *, ts_col: str, instances: bool = False, start: int = 1,
              extra: str = "aside = FALSE") -> tuple[str, list[Any]]:
        """The ``WHERE`` clause (with the word) and its arguments for ``query``: uuid, kind, states,
        the time range on ``ts_col``, and for instances the schedule id. Placeholders start at ``start``."""
        parts: list[str] = [extra] if extra else []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return self.ph(start + len(args) - 1)

        if query.uuid is not None:
            parts.append(f"uuid = {arg(query.uuid)}")
        if query.kind is not None:
            parts.append(f"kind = {arg(query.kind)}")
        if query.states is not None:
            if not query.states:
                parts.append("1 = 0")
            else:
                parts.append(f"state IN ({', '.join(arg(s.value) for s in sorted(query.states))})")
        if query.since_ts is not None:
            parts.append(f"{ts_col} >= {arg(float(query.since_ts))}")
        if query.until_ts is not None:
            parts.append(f"{ts_col} <= {arg(float(query.until_ts))}")
        if instances and query.schedule_id is not None:
            parts.append(f"schedule_id = {arg(query.schedule_id)}")
        return (" WHERE " + " AND ".join(parts) if parts else ""), args

    def records_select(self, table: str, columns: str, query: Query, *, state_filter: bool) -> tuple[str, list[Any]]:
        """History or log rows matching ``query`` sorted by (time, id): the newest ``limit`` when set
        (the caller puts them back in time order)."""
        if not state_filter and query.states is not None:
            query = _without_states(query)
        where, args = self.where(query, ts_col="ts")
        if query.limit is not None:
            args.append(query.limit)
            return (f"SELECT {columns} FROM {table}{where} ORDER BY ts DESC, id DESC LIMIT {self.ph(len(args))}",
                    args)
        return f"SELECT {columns} FROM {table}{where} ORDER BY ts, id", args

    def records_delete(self, table: str, query: Query, *, state_filter: bool) -> tuple[str, list[Any]]:
        if not state_filter and query.states is not None:
            query = _without_states(query)
        where, args = self.where(query, ts_col="ts")
        return f"DELETE FROM {table}{where}", args

    def instances_select(self, columns: str, query: Query) -> tuple[str, list[Any]]:
        where, args = self.where(query, ts_col="created_ts", instances=True)
        if query.limit is not None:
            args.append(query.limit)
            return (f"SELECT {columns} FROM {self.instances}{where} ORDER BY created_ts DESC, uuid DESC "
                    f"LIMIT {self.ph(len(args))}", args)
        return f"SELECT {columns} FROM {self.instances}{where} ORDER BY created_ts, uuid", args

    def instances_delete(self, query: Query) -> tuple[str, list[Any]]:
        where, args = self.where(query, ts_col="created_ts", instances=True,
                                 extra="aside = FALSE AND state <> 'PROCESSING'")
        return f"DELETE FROM {self.instances}{where}", args

    def queue_stats(self) -> str:
        """Per kind: how many wait, and the oldest ready time among those due at the first argument."""
        return (f"SELECT kind, count(*), min(CASE WHEN ready_ts <= {self.ph(1)} THEN ready_ts END) "
                f"FROM {self.instances} WHERE state = 'SCHEDULED' AND aside = FALSE GROUP BY kind")

    def next_due(self) -> str:
        return f"SELECT min(ready_ts) FROM {self.instances} WHERE state = 'SCHEDULED' AND aside = FALSE"

    # -- the statements of a row-at-a-time backend (SQLite; MySQL to come) ---------------------------------
    #: appended to reads that lock the rows they return, and to those that skip rows others hold
    #: (empty where a transaction locks the whole database, like SQLite's BEGIN IMMEDIATE)
    FOR_UPDATE = " FOR UPDATE"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def select_claim(self) -> str:
        """Ready instances in claim order: (time, limit)."""
        return (f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM {self.instances} WHERE state = 'SCHEDULED' "
                f"AND aside = FALSE AND ready_ts <= {self.ph(1)} ORDER BY priority, ready_ts, seq "
                f"LIMIT {self.ph(2)}{self.SKIP_LOCKED}")

    def select_expired(self) -> str:
        """Instances whose lease ended: (time, limit)."""
        return (f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM {self.instances} WHERE state = 'PROCESSING' "
                f"AND aside = FALSE AND lease_ts < {self.ph(1)} ORDER BY lease_ts LIMIT {self.ph(2)}{self.SKIP_LOCKED}")

    def select_uuids(self, n: int) -> str:
        """``n`` instances by uuid, locked in uuid order."""
        marks = ", ".join(self.ph(i + 1) for i in range(n))
        return (f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM {self.instances} WHERE uuid IN ({marks}) "
                f"AND aside = FALSE ORDER BY uuid{self.FOR_UPDATE}")

    def select_schedule(self) -> str:
        return (f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM {self.instances} WHERE schedule_id = {self.ph(1)} "
                f"AND aside = FALSE ORDER BY uuid{self.FOR_UPDATE}")

    def upsert_schedule(self) -> str:
        """Mark a schedule (sid, canceled): canceled or re-opened."""
        return (f"INSERT INTO {self.schedules} (sid, canceled) VALUES ({self.ph(1)}, {self.ph(2)}) "
                "ON CONFLICT (sid) DO UPDATE SET canceled = excluded.canceled")

    # -- schedule records: plain statements, each in a transaction of its own (compare-and-set by version) --
    def select_schedule_records(self, one: bool) -> str:
        """(id, data, version) of every schedule record by id, or of one: (id)."""
        where = f" WHERE id = {self.ph(1)}" if one else ""
        return f"SELECT id, data, version FROM {self.schedule_records}{where} ORDER BY id"

    def insert_schedule_record(self) -> str:
        """(id, data): a new record at version 1; changes no row if the id exists (MySQL: INSERT IGNORE)."""
        return (f"INSERT INTO {self.schedule_records} (id, data, version) VALUES ({self.ph(1)}, {self.ph(2)}, 1) "
                "ON CONFLICT (id) DO NOTHING")

    def update_schedule_record(self) -> str:
        """(data, id, version): the record's next version, only if it is still at that version."""
        return (f"UPDATE {self.schedule_records} SET data = {self.ph(1)}, version = version + 1 "
                f"WHERE id = {self.ph(2)} AND version = {self.ph(3)}")

    def delete_schedule_record(self) -> str:
        """(id, version): only if it is still at that version."""
        return f"DELETE FROM {self.schedule_records} WHERE id = {self.ph(1)} AND version = {self.ph(2)}"

    def update_instance(self) -> str:
        """The columns a transition changes, then the new seq (NULL: keep it), then the uuid."""
        sets = ", ".join(f"{c} = {self.ph(i + 1)}" for i, c in enumerate(MUTABLE_COLUMNS))
        n = len(MUTABLE_COLUMNS)
        return (f"UPDATE {self.instances} SET {sets}, seq = COALESCE({self.ph(n + 1)}, seq) "
                f"WHERE uuid = {self.ph(n + 2)}")

    def insert_instance(self) -> str:
        marks = ", ".join(self.ph(i + 1) for i in range(len(INSTANCE_COLUMNS)))
        return f"INSERT INTO {self.instances} ({', '.join(INSTANCE_COLUMNS)}) VALUES ({marks})"

    def insert_history(self) -> str:
        cols = HISTORY_COLUMNS[1:]
        return (f"INSERT INTO {self.history} ({', '.join(cols)}) "
                f"VALUES ({', '.join(self.ph(i + 1) for i in range(len(cols)))})")

    def insert_log(self) -> str:
        cols = LOG_COLUMNS[1:]
        return (f"INSERT INTO {self.logs} ({', '.join(cols)}) "
                f"VALUES ({', '.join(self.ph(i + 1) for i in range(len(cols)))})")

    def report_corrupt(self) -> str:
        """(key, source, reason, ts, raw); a record reported before keeps its first report."""
        return (f"INSERT INTO {self.corrupt} (key, source, reason, ts, raw) VALUES "
                f"({', '.join(self.ph(i + 1) for i in range(5))}) ON CONFLICT (key) DO NOTHING")

    def flag_aside(self, source: str) -> str:
        key = "uuid" if source == "instances" else "id"
        return f"UPDATE {getattr(self, source)} SET aside = TRUE WHERE {key} = {self.ph(1)}"

    def delete_aside(self, source: str) -> str:
        key = "uuid" if source == "instances" else "id"
        return f"DELETE FROM {getattr(self, source)} WHERE {key} = {self.ph(1)} AND aside = TRUE"


def _without_states(query: Query) -> Query:
    q = object.__new__(Query)
    for name in ("uuid", "kind", "since_ts", "until_ts", "limit", "schedule_id"):
        object.__setattr__(q, name, getattr(query, name))
    object.__setattr__(q, "states", None)
    return q


class PostgresDialect(Dialect):
    """PostgreSQL 12 and later: ``$n`` placeholders, a schema of the user's choosing, a sequence for FIFO."""

    name = "postgresql"
    BLOB = "BYTEA"
    SERIAL_PK = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def ph(self, n: int) -> str:
        return f"${n}"

    def pre_ddl(self) -> list[str]:
        return [f"CREATE SEQUENCE IF NOT EXISTS {self.table('seq')}"]


class SqliteDialect(Dialect):
    """SQLite 3.24 and later: ``?`` placeholders, no schemas, the FIFO counter in the meta table."""

    name = "sqlite"
    FOR_UPDATE = ""
    SKIP_LOCKED = ""
    BIGINT = "INTEGER"
    FLOAT = "REAL"
    BOOL = "INTEGER"
    SERIAL_PK = "INTEGER PRIMARY KEY"

    def __init__(self, *, prefix: str = "gojob_", schema: str | None = None) -> None:
        if schema is not None:
            raise ValueError(f"schema: SQLite has no schemas; use prefix instead (got schema={schema!r})")
        super().__init__(prefix=prefix)

    def post_ddl(self) -> list[str]:
        return [f"INSERT OR IGNORE INTO {self.meta} (key, value) VALUES ('seq', '0')"]
