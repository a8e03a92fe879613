"""The code gojob's SQL stores share: the store contract over one transaction per step
(:class:`SqlStore`), the backend interface a database implements (:class:`SqlBackend`), the dialect
seam (:class:`Dialect`: names, placeholders, types, the schema by version, query clauses) and the
schema version this code knows (:data:`SCHEMA_VERSION`).

Not a plugin: gojob-store-postgres, gojob-store-mysql and gojob-store-sqlite build on it.
"""

from __future__ import annotations

from ._backend import Aside, Reads, Rows, SqlBackend, Writes
from ._dialect import (
    SCHEMA_VERSION,
    Dialect,
    MysqlDialect,
    PostgresDialect,
    SqliteDialect,
    check_identifier,
    newer_schema,
)
from ._rows import HISTORY_COLUMNS, INSTANCE_COLUMNS, LOG_COLUMNS, MUTABLE_COLUMNS
from ._store import SqlStore

__all__ = [
    "HISTORY_COLUMNS",
    "INSTANCE_COLUMNS",
    "LOG_COLUMNS",
    "MUTABLE_COLUMNS",
    "SCHEMA_VERSION",
    "Aside",
    "Dialect",
    "MysqlDialect",
    "PostgresDialect",
    "Reads",
    "Rows",
    "SqlBackend",
    "SqlStore",
    "SqliteDialect",
    "Writes",
    "check_identifier",
    "newer_schema",
]
