"""What a SQL store asks of its database: the backend interface, and the plans a step reads and writes.

Every step of the store that changes state is one call of :meth:`SqlBackend.transact`: the backend
opens a transaction, makes the reads a :class:`Reads` asks for (locking the rows it returns), hands the
rows to ``decide`` (pure Python: it decodes the rows and applies :mod:`gojob_core.transitions`), writes
the :class:`Writes` it returns (the rows, their history records, rows set aside, notifications) and
commits. A backend may run ``decide`` wherever it likes: the PostgreSQL one on the event loop between
two round trips, the SQLite one in its worker thread, inside one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gojob_core import Instance, LogRecord, StateRecord

from ._dialect import Dialect

__all__ = ["Aside", "Reads", "Rows", "SqlBackend", "Writes"]

T = TypeVar("T")
Row = Sequence[Any]


@dataclass(slots=True)
class Reads:
    """The rows one transaction reads (each locked until it commits)."""

    #: instances by uuid (finish, extend, release, cancel), locked in uuid order
    uuids: Sequence[str] = ()
    #: the time the queue is read at (claims, reclaims)
    ts: float = 0.0
    #: up to this many ready instances in claim order (priority, ready time, seq), skipping rows
    #: another transaction holds
    claim: int = 0
    #: up to this many instances whose lease ended before ``ts``, skipping rows another transaction holds
    expired: int = 0
    #: mark this recurring schedule canceled, then read (and lock) its instances
    cancel_schedule: str | None = None


@dataclass(slots=True)
class Rows:
    """What :class:`Reads` found: instance rows (of ``INSTANCE_COLUMNS``)."""

    by_uuid: list[Row] = field(default_factory=list)
    claim: list[Row] = field(default_factory=list)
    expired: list[Row] = field(default_factory=list)
    schedule: list[Row] = field(default_factory=list)


@dataclass(slots=True)
class Aside:
    """A row that cannot be decoded: reported in the corrupt table (``raw``: the row, losslessly) and
    flagged ``aside`` in its own table, where it stays, unchanged otherwise."""

    source: str  # "instances", "history" or "logs"
    ident: Any   # its uuid (instances) or id (history, logs)
    reason: str
    raw: bytes

    @property
    def key(self) -> str:
        return f"{self.source}/{self.ident}"


@dataclass(slots=True)
class Writes:
    """What one transaction writes, and who must hear of it once it commits."""

    #: instances after their transition, each with whether it re-enters the queue (a new seq)
    updates: list[tuple[Instance, bool]] = field(default_factory=list)
    history: list[StateRecord] = field(default_factory=list)
    aside: list[Aside] = field(default_factory=list)
    #: work may be ready (re-queued instances): idle nodes should claim
    wake: bool = False
    #: instances that reached a final state (``wait_final``)
    finals: list[str] = field(default_factory=list)
    #: running instances whose cancel was asked (their node stops them)
    cancels: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.updates or self.history or self.aside)


class SqlBackend(abc.ABC):
    """A database under a :class:`~gojob_store_sql.SqlStore`. Every error of the database or its
    connection is raised as :class:`gojob_core.StoreError`."""

    #: whether the backend hears of other nodes' writes by itself (PostgreSQL's LISTEN/NOTIFY: it calls
    #: ``on_notify``); if not, the store polls (:meth:`changed`)
    PUSH = False

    dialect: Dialect
    #: what error messages call the database ("postgres store at 127.0.0.1:5432/db")
    where: str = "sql store"
    #: set by the store: called with (channel, uuids) for "wake", "final" and "cancel" notifications
    on_notify: Callable[[str, list[str]], None] | None = None

    async def start(self) -> None:
        """Connect, and create or migrate the schema (under a lock: two nodes starting together never
        race); refuse a schema newer than :data:`~gojob_store_sql.SCHEMA_VERSION`."""

    async def stop(self) -> None:
        """Disconnect (the backend may be started again)."""

    @abc.abstractmethod
    async def transact(self, reads: Reads, decide: Callable[[Rows], tuple[T, Writes]]) -> tuple[T, Writes]:
        """Read, decide, write, in one transaction; notify the other nodes of what the writes say
        (``wake``, ``finals``, ``cancels``). Returns what ``decide`` returned."""

    @abc.abstractmethod
    async def enqueue(self, items: Sequence[tuple[Instance, list[StateRecord]]], chained: bool) -> set[str]:
        """Insert the new instances (each with its history records) that are not there yet, in one
        transaction: refused if ``chained`` and its schedule was canceled; a non-chained one re-opens its
        schedule. Wakes idle nodes. Returns the uuids inserted."""

    @abc.abstractmethod
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Rows of one read-only statement."""

    async def lookup(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Rows of a lookup by a user's query (history, logs, instances): planned for its values where
        the database would otherwise reuse one plan for every value."""
        return await self.fetch(sql, args)

    @abc.abstractmethod
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement in a transaction of its own; the number of rows it changed."""

    @abc.abstractmethod
    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        """Insert log records."""

    @abc.abstractmethod
    async def set_aside(self, asides: Sequence[Aside]) -> None:
        """Report and flag undecodable rows found by a read (one transaction)."""

    @abc.abstractmethod
    async def drop_corrupt(self, key: str) -> bool:
        """Delete a corrupt-record report and the flagged original row; False if no such report."""

    async def changed(self) -> bool:
        """Whether another connection committed since this backend's last transaction (polling
        backends; a pushing one need not answer)."""
        return True
