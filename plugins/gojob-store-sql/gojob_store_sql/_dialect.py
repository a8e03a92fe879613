"""The dialect seam: what differs between SQL databases in the text of the statements the stores share.

A :class:`Dialect` names the tables (a schema and a prefix), writes placeholders, column types and the
schema's DDL by version, and turns a :class:`~gojob_core.Query` into a ``WHERE`` clause. The statements
that carry a store's hot path (claims, finishes, enqueues) belong to each backend, which may use what
its database has (PostgreSQL's arrays, ``FOR UPDATE SKIP LOCKED``); everything else is written here
once. MySQL/MariaDB is the third: ``%s`` placeholders, no partial indexes (ordinary ones led by the
columns of the condition), ``ON DUPLICATE KEY UPDATE`` for upserts.
"""

from __future__ import annotations

import re
from typing import Any

from gojob_core import Query, StoreError

from ._rows import HISTORY_COLUMNS, INSTANCE_COLUMNS, LOG_COLUMNS, MUTABLE_COLUMNS

__all__ = ["SCHEMA_VERSION", "Dialect", "MysqlDialect", "PostgresDialect", "SqliteDialect", "check_identifier",
           "newer_schema"]

#: the schema version this code writes and reads; a database at a newer one is refused at start
#: (2: the schedule records table)
SCHEMA_VERSION = 2

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"[A-Za-z0-9_]*")

#: the rows of the queue's partial indexes: waiting instances, and running ones (leases)
WAITING = "state = 'SCHEDULED' AND aside = FALSE"
RUNNING = "state = 'PROCESSING' AND aside = FALSE"

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
    #: the history and log id column (an ever-growing integer key)
    SERIAL_PK = "BIGINT PRIMARY KEY"
    #: text that is a key or indexed (ids, kinds, states, nodes), and a longer key (a corrupt record's)
    ID = "TEXT"
    LONG_ID = "TEXT"
    #: text that may be long (errors, history details, log messages)
    LONG_TEXT = "TEXT"

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
            columns = f"id {self.ID} PRIMARY KEY, data {self.LONG_TEXT} NOT NULL, version {self.BIGINT} NOT NULL"
            return self.create_table(self.schedule_records, columns)
        if version != 1:
            raise ValueError(f"no schema version {version}")
        T, B, N, F, BO, BL = self.TEXT, self.BIGINT, self.INT, self.FLOAT, self.BOOL, self.BLOB
        ID, LT = self.ID, self.LONG_TEXT
        return [
            *self.pre_ddl(),
            *self.create_table(
                self.instances,
                f"uuid {ID} PRIMARY KEY, kind {ID} NOT NULL, state {ID} NOT NULL, priority {B} NOT NULL, "
                f"ready_ts {F} NOT NULL, seq {B} NOT NULL, created_ts {F} NOT NULL, started_ts {F}, "
                f"finished_ts {F}, attempts {N} NOT NULL, max_retries {N} NOT NULL, timeout {F}, node {ID}, "
                f"lease_ts {F}, cancel_requested {BO} NOT NULL, crontab_spec {T}, timezone {T}, schedule_id {ID}, "
                f"abandoned {N} NOT NULL, max_abandons {N}, error {LT}, args {BL} NOT NULL, kwargs {BL} NOT NULL, "
                f"result {BL}, extra {BL}, aside {BO} NOT NULL DEFAULT FALSE",
                # the queue: the claim order, over waiting instances only
                ("instances_queue", "priority, ready_ts, seq", WAITING),
                # the next delayed instance to fall due; the oldest ready per kind
                ("instances_due", "ready_ts", WAITING),
                # leases: what reclaim reads, and the cancels asked for running instances
                ("instances_running", "lease_ts", RUNNING),
                ("instances_created", "created_ts, uuid", None),
                ("instances_kind", "kind, created_ts, uuid", None),
                ("instances_schedule", "schedule_id", "schedule_id IS NOT NULL")),
            *self.create_table(
                self.history,
                f"id {self.SERIAL_PK}, uuid {ID} NOT NULL, kind {ID} NOT NULL, state {ID} NOT NULL, ts {F} NOT NULL, "
                f"attempt {N} NOT NULL, node {ID}, detail {LT}, aside {BO} NOT NULL DEFAULT FALSE",
                ("history_uuid", "uuid, ts, id", None),
                ("history_ts", "ts, id", None),
                ("history_kind", "kind, ts, id", None),
                ("history_state", "state, ts, id", None)),
            *self.create_table(
                self.logs,
                f"id {self.SERIAL_PK}, uuid {ID} NOT NULL, kind {ID} NOT NULL, level {ID} NOT NULL, "
                f"message {LT} NOT NULL, ts {F} NOT NULL, attempt {N} NOT NULL, node {ID}, "
                f"aside {BO} NOT NULL DEFAULT FALSE",
                ("logs_uuid", "uuid, ts, id", None),
                ("logs_ts", "ts, id", None),
                ("logs_kind", "kind, ts, id", None)),
            *self.create_table(self.schedules, f"sid {ID} PRIMARY KEY, canceled {BO} NOT NULL"),
            *self.create_table(self.corrupt, f'"key" {self.LONG_ID} PRIMARY KEY, source {ID} NOT NULL, '
                                             f"reason {LT} NOT NULL, ts {F} NOT NULL, raw {BL} NOT NULL"),
            *self.post_ddl(),
        ]

    def create_table(self, table: str, columns: str, *indexes: tuple[str, str, str | None]) -> list[str]:
        """A table and its indexes, each ``(short name, columns, WHERE of a partial index or None)``."""
        out = [f"CREATE TABLE IF NOT EXISTS {table} ({columns})"]
        for short, cols, where in indexes:
            out.append(f"CREATE INDEX IF NOT EXISTS {self.index(short)} ON {table} ({cols})"
                       + (f" WHERE {where}" if where else ""))
        return out

    def pre_ddl(self) -> list[str]:
        """Statements before the tables (a schema, a sequence); the meta table is made by the backend."""
        return []

    def post_ddl(self) -> list[str]:
        return []

    def meta_ddl(self) -> str:
        return f'CREATE TABLE IF NOT EXISTS {self.meta} ("key" {self.ID} PRIMARY KEY, value {self.TEXT} NOT NULL)'

    def schema_version_select(self) -> str:
        return f"SELECT value FROM {self.meta} WHERE \"key\" = 'schema_version'"

    def schema_version_upsert(self) -> str:
        """Record the schema version (the one argument)."""
        return (f"INSERT INTO {self.meta} (\"key\", value) VALUES ('schema_version', {self.ph(1)}) "
                'ON CONFLICT ("key") DO UPDATE SET value = excluded.value')

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

    # -- the statements of a row-at-a-time backend (SQLite, MySQL) ---------------------------------
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
        return (f'INSERT INTO {self.corrupt} ("key", source, reason, ts, raw) VALUES '
                f"({', '.join(self.ph(i + 1) for i in range(5))}) ON CONFLICT (\"key\") DO NOTHING")

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
        return [f"INSERT OR IGNORE INTO {self.meta} (\"key\", value) VALUES ('seq', '0')"]


class MysqlDialect(Dialect):
    """MySQL 8.0.1+ and MariaDB 10.6+ (for ``FOR UPDATE SKIP LOCKED``), on InnoDB.

    Sessions run with ``ANSI_QUOTES`` (names in double quotes, as the shared statements write them) and
    ``READ COMMITTED`` (a locking read keeps locks on the rows it returns only, no gap locks). Text is
    ``utf8mb4`` with a binary collation (ids and kinds compare byte for byte, as on the other stores).
    There are no partial indexes: an index over the queue leads with the columns of its condition
    (``state, aside``), which the queries name with ``=``. Indexes are made with their table, in one
    statement: MySQL's DDL is not transactional, and a table made is then made whole.
    """

    name = "mysql"
    ID = "VARCHAR(255)"
    LONG_ID = "VARCHAR(512)"
    LONG_TEXT = "LONGTEXT"
    BLOB = "LONGBLOB"
    BOOL = "BOOLEAN"
    SERIAL_PK = "BIGINT AUTO_INCREMENT PRIMARY KEY"
    #: the condition of a partial index as the leading columns of an ordinary one
    _LEAD = {WAITING: "state, aside", RUNNING: "state, aside", "schedule_id IS NOT NULL": ""}
    TABLE_OPTIONS = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

    def __init__(self, *, prefix: str = "gojob_", schema: str | None = None) -> None:
        if schema is not None:
            raise ValueError(f"schema: in MySQL a schema is a database, named in the URL's path "
                             f"(got schema={schema!r})")
        super().__init__(prefix=prefix)

    def ph(self, n: int) -> str:
        return "%s"

    def create_table(self, table: str, columns: str, *indexes: tuple[str, str, str | None]) -> list[str]:
        parts = [columns]
        for short, cols, where in indexes:
            lead = self._LEAD[where] if where else ""
            parts.append(f"INDEX {self.index(short)} ({lead + ', ' if lead else ''}{cols})")
        return [f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)}){self.TABLE_OPTIONS}"]

    def meta_ddl(self) -> str:
        return super().meta_ddl() + self.TABLE_OPTIONS

    def post_ddl(self) -> list[str]:
        return [f"INSERT IGNORE INTO {self.meta} (\"key\", value) VALUES ('seq', '0')"]

    def schema_version_upsert(self) -> str:
        return (f"INSERT INTO {self.meta} (\"key\", value) VALUES ('schema_version', %s) "
                "ON DUPLICATE KEY UPDATE value = VALUES(value)")

    def upsert_schedule(self) -> str:
        return (f"INSERT INTO {self.schedules} (sid, canceled) VALUES (%s, %s) "
                "ON DUPLICATE KEY UPDATE canceled = VALUES(canceled)")

    def insert_schedule_record(self) -> str:
        return (f"INSERT INTO {self.schedule_records} (id, data, version) VALUES (%s, %s, 1) "
                "ON DUPLICATE KEY UPDATE id = id")

    def report_corrupt(self) -> str:
        return (f'INSERT INTO {self.corrupt} ("key", source, reason, ts, raw) VALUES (%s, %s, %s, %s, %s) '
                'ON DUPLICATE KEY UPDATE "key" = "key"')
