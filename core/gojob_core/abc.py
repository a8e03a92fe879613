"""The store contract: queue, leases, atomic finish, cancel, wake-up, history and logs.

Every store (memory, Valkey, Redis, etcd, a third party's) implements :class:`Store` and passes the
conformance suite in :mod:`gojob_core.testing`. The rules a store must keep:

- **Enqueue** is idempotent by uuid and writes the CREATED and SCHEDULED history records with the
  instance. An occurrence of a canceled occurrence chain (:meth:`Store.cancel_schedule`), enqueued by
  chaining, is refused; a non-chained enqueue re-opens the chain.
- **Claim** is atomic: it hands up to ``limit`` ready instances, ordered by (priority, ready time,
  FIFO), to one node under a lease, sets them PROCESSING, counts the attempt and records it.
  Two nodes never hold the same instance.
- **Leases** are extended by the running node; an instance whose lease expired (its node died) is
  re-queued by any live node (an *abandoned* attempt in history), or canceled if a cancel was asked;
  once an instance has been abandoned ``max_abandons`` times it ends TERMINATED instead (a job that
  kills its node must not crash-loop the cluster). Claims hand out a *suspect* instance (one abandoned
  before) only alone, never in a batch with others, so that its neighbours do not die with it again.
- **Finish** writes the final state (or the failed state and the retry), its history records, the
  result or error and releases the lease in one atomic step, only while the lease is still held by
  that node *for that attempt* (:attr:`Outcome.attempt`).
- **Cancel** of a waiting instance is final at once; of a running one it sets a flag that the running
  node sees (through :meth:`Store.cancel_notifications` or the lease heartbeat). Canceling an
  occurrence of a schedule cancels that occurrence only; :meth:`Store.cancel_schedule` stops a chain.
- **Schedule records** (:meth:`Store.put_schedule_record` and the others) are opaque JSON-compatible
  dicts under a schedule id, each with a version that changes on every write: a write or delete given
  a version happens only if the record still has it (compare-and-set), so two nodes changing one
  schedule never both win. The store reads nothing inside them.
- **Wake-up** (:meth:`Store.wait_ready`) blocks until work may be ready; a sleep-poll is only a safety net.
- **History and logs** are queried by instance, kind, state and time range, sorted by time. A record
  that cannot be decoded is reported through :meth:`Store.corrupt_records` and set aside, never deleted.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, NamedTuple

import anyio

from ._instance import Instance
from ._records import LogRecord, Query, StateRecord
from ._state import State

__all__ = ["CorruptRecord", "LeaseReport", "Outcome", "ScheduleRecord", "Store", "abandon_limit_message",
           "lazy_store"]


def abandon_limit_message(attempt: int, lost_node: str | None, max_abandons: int) -> str:
    """The error and TERMINATED history detail of an instance abandoned for the ``max_abandons``-th
    time (every store writes the same words; the Lua scripts build the same string)."""
    return (f"AbandonedError: attempt {attempt} abandoned: node {lost_node or '?'} lost its lease; "
            f"{max_abandons} attempts abandoned (max_abandons), not re-queued")


class Outcome(NamedTuple):
    """How one attempt ended, handed to :meth:`Store.finish` (a named tuple: one is made per attempt).

    ``state`` is the attempt's state (COMPLETED, TERMINATED, TIMED_OUT or CANCELED). With ``retry_at``
    set (epoch seconds) the instance records ``state`` for this attempt and goes back to SCHEDULED,
    ready at ``retry_at``; otherwise ``state`` is final.

    ``attempt`` fences the write: the attempt number (``Instance.attempts`` when it was claimed) the
    outcome belongs to. A store writes it only while the instance is still in that attempt, so an
    attempt that outlived its lease (its node was cut off from the store, the instance was re-queued
    and claimed again, even by the same node) cannot pass its result off as the newer attempt's.
    ``None`` (a caller that does not know it) fences by node only.
    """

    uuid: str
    state: State
    result: Any = None
    error: str | None = None
    retry_at: float | None = None
    detail: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseReport:
    """What a lease heartbeat learned: leases this node no longer holds, and cancels asked for."""

    lost: frozenset[str] = frozenset()
    cancel_requested: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CorruptRecord:
    """A stored record that could not be decoded, set aside for an operator to inspect."""

    key: str
    reason: str
    raw: str = field(default="", repr=False)


class ScheduleRecord(NamedTuple):
    """A stored schedule: its id, its data (a JSON-compatible dict the store does not read) and its
    version (a positive number that changes on every write; compare-and-set compares it)."""

    id: str
    data: dict[str, Any]
    version: int


class Store(abc.ABC):
    """Base class of every store. Subclasses set ``SCHEMES`` and implement the abstract methods.

    A store is an async context manager; :meth:`start` connects, :meth:`stop` disconnects.
    ``ANYIO_BACKENDS`` names the anyio backends the store runs on (tests run on each).
    """

    SCHEMES: ClassVar[tuple[str, ...]] = ()
    ANYIO_BACKENDS: ClassVar[tuple[str, ...]] = ("asyncio", "trio")
    #: How the Manager writes the outcomes of finished attempts to this store (all ways group-commit
    #: the outcomes that arrive together, and claim for the freed slots in the same call):
    #:
    #: - ``"await"``: the worker waits for its write, one write at a time (a store whose calls do no
    #:   I/O, like the memory store: waiting costs nothing);
    #: - ``"split"``: the worker waits for its write; up to two writes are in flight, each with at
    #:   most half the pool's outcomes, so the store works on one while the node runs what the other
    #:   claimed (short round trips, fast single-threaded servers: Valkey, Redis);
    #: - ``"handoff"`` (the default): the worker hands its outcome to a writer task and is free at
    #:   once; the dispatcher claims for the freed slots in its own call while the write is in flight
    #:   (long round trips: etcd). The instance stays the node's (lease kept alive, a graceful stop
    #:   waits for it) until its write is answered.
    FINISH_MODE: ClassVar[str] = "handoff"
    #: Seconds a ``"split"`` write waits for more outcomes while the queue has nothing for the node (its
    #: last claim got fewer instances than it asked for, so an early write would claim nothing). Fewer,
    #: larger writes cost the node and the server less CPU and round trips; a node with work waiting
    #: never waits. The instances' end is recorded that much later; their start is not delayed.
    FINISH_LINGER: ClassVar[float] = 0.0

    #: The store's name, shown in logs and ``jobctl``.
    name: str = "store"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Store:
        """Build a store from a URL of one of ``SCHEMES`` (options override URL parameters)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a URL")

    async def start(self) -> None:
        """Connect; called once by the Manager before anything else."""

    async def stop(self) -> None:
        """Disconnect and release resources; the store may be started again."""

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- queue -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        """Add instances (state SCHEDULED, with CREATED and SCHEDULED history records).

        Idempotent by uuid: an instance already present is left as it is (False in the result).
        ``chained`` marks the next occurrence of a recurring schedule, refused (False) when that
        schedule was canceled; an enqueue that is not chained re-opens a canceled schedule.
        :returns: for each instance, whether it was added.
        """

    @abc.abstractmethod
    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        """Atomically take up to ``limit`` ready instances for ``node`` for ``lease`` seconds.

        Ordered by (priority, ready time, FIFO). Each is set PROCESSING with ``attempts`` + 1,
        ``started_ts``, ``node`` and ``lease_ts``, and a PROCESSING history record. A suspect instance
        (``abandoned`` > 0) is handed out alone: first in the order, it is the whole claim; reached
        after others, the claim ends before it (it stays queued, first for the next claim).
        """

    async def claim_or_wait(self, node: str, limit: int, lease: float, timeout: float) -> list[Instance]:
        """Claim like :meth:`claim`; if nothing is ready, wait up to ``timeout`` for work and return
        what could be claimed then (possibly nothing). An idle node's main loop.

        The default claims, waits with :meth:`wait_ready`, and claims again; a network store may
        hand instances to a waiting node in the wake-up itself.
        """
        got = await self.claim(node, limit, lease)
        if got:
            return got
        await self.wait_ready(timeout)
        return await self.claim(node, limit, lease)

    @abc.abstractmethod
    async def wait_ready(self, timeout: float) -> None:
        """Return when an instance may be ready to claim (new, due, or re-queued), or after ``timeout``."""

    @abc.abstractmethod
    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        """Extend ``node``'s leases; report those it lost and those whose cancel was asked."""

    @abc.abstractmethod
    async def reclaim_expired(self, node: str) -> list[Instance]:
        """Re-queue instances whose lease expired (their node died); returns them as re-queued.

        Each gets ``abandoned`` + 1 (abandoned attempts do not use up retries) and a history record
        of the abandoned attempt (the attempt's state PROCESSING ends with
        state SCHEDULED, detail naming the node that lost it). One whose cancel was asked is CANCELED.
        One whose ``abandoned`` reaches ``max_abandons`` (not None) ends TERMINATED instead, its error
        and history detail from :func:`abandon_limit_message`; it is not in the returned list.
        """

    @abc.abstractmethod
    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply each outcome atomically (state, history, result or error, lease release).

        Only while ``node`` still holds the instance's lease and the instance is still in the
        outcome's ``attempt`` (when given); otherwise nothing is written (False).
        """

    async def finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                               lease: float) -> tuple[list[bool], list[Instance]]:
        """:meth:`finish`, then :meth:`claim` up to ``limit`` more: a busy node's usual step.

        The default makes the two calls; a network store does both in one round trip.
        """
        oks = await self.finish(node, outcomes) if outcomes else []
        return oks, (await self.claim(node, limit, lease) if limit > 0 else [])

    @abc.abstractmethod
    async def release(self, node: str, uuids: Sequence[str]) -> None:
        """Hand claimed instances back to the queue unchanged in priority (a node stopping)."""

    @abc.abstractmethod
    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        """Cancel one instance (an occurrence of a schedule: that occurrence only); None if there is no
        such instance.

        A waiting instance becomes CANCELED at once; a running one gets ``cancel_requested`` set and
        is reported to its node; a final one is left as it is. Returns the instance after the change.
        """

    @abc.abstractmethod
    async def cancel_schedule(self, schedule_id: str, *, node: str | None = None) -> list[Instance]:
        """Stop the occurrence chain ``schedule_id`` (the ``schedule_id`` of its instances): mark it
        canceled, so that a chained enqueue of it is refused from now on, then cancel its waiting
        occurrences (a running one is left to finish). The mark comes first, or in the same atomic
        step: an occurrence chained concurrently is either refused or canceled here.

        :returns: the occurrences it made CANCELED, after the change.
        """

    # -- schedule records ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_schedule_record(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record under ``schedule_id``, or None."""

    @abc.abstractmethod
    async def list_schedule_records(self) -> list[ScheduleRecord]:
        """Every schedule record, by id."""

    @abc.abstractmethod
    async def put_schedule_record(self, schedule_id: str, data: dict[str, Any], *,
                                  version: int | None) -> int | None:
        """Write a schedule record: with ``version=None`` only if there is none (create), otherwise only
        if the stored one still has ``version``. Returns the new version, or None if nothing was written."""

    @abc.abstractmethod
    async def delete_schedule_record(self, schedule_id: str, *, version: int) -> bool:
        """Delete a schedule record only if it still has ``version``; True if it was deleted."""

    async def cancel_notifications(self) -> AsyncIterator[str]:
        """Yield uuids whose cancel was asked, as soon as the store learns of them.

        The default yields nothing: the lease heartbeat then carries cancels (slower). Callers
        close the generator with ``contextlib.aclosing``.
        """
        await anyio.sleep_forever()
        yield ""  # pragma: no cover

    @abc.abstractmethod
    async def get_instance(self, uuid: str) -> Instance | None:
        """The instance with this uuid, or None."""

    @abc.abstractmethod
    async def list_instances(self, query: Query) -> list[Instance]:
        """Instances matching the query, oldest created first."""

    @abc.abstractmethod
    async def clear_instances(self, query: Query) -> int:
        """Remove matching instances that are not running; returns how many were removed."""

    async def queue_counts(self) -> dict[str, int]:
        """How many instances wait in the queue (SCHEDULED, due or delayed), by kind.

        The default counts :meth:`list_instances`; stores that keep counters override it.
        """
        counts: dict[str, int] = {}
        for inst in await self.list_instances(Query(state=State.SCHEDULED)):
            counts[inst.kind] = counts.get(inst.kind, 0) + 1
        return counts

    async def oldest_ready(self) -> dict[str, float]:
        """Per kind, the ready time (epoch seconds) of the longest-waiting instance that is due now.

        What ``go_job_oldest_ready_age_seconds`` reports. The default reads :meth:`list_instances`;
        stores that keep an index override it.
        """
        now = time.time()
        oldest: dict[str, float] = {}
        for inst in await self.list_instances(Query(state=State.SCHEDULED)):
            if inst.ready_ts <= now and inst.ready_ts < oldest.get(inst.kind, math.inf):
                oldest[inst.kind] = inst.ready_ts
        return oldest

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        """:meth:`queue_counts` and :meth:`oldest_ready` together (what the metrics read every few
        seconds); a store that can answer both from one read overrides it."""
        return await self.queue_counts(), await self.oldest_ready()

    async def wait_final(self, uuid: str, timeout: float | None) -> Instance | None:
        """Wait until the instance is final (or the timeout passes); returns it as it then is.

        The default polls :meth:`get_instance` with a growing interval; stores that can, notify.
        """
        interval = 0.002
        with anyio.move_on_after(timeout):
            while True:
                inst = await self.get_instance(uuid)
                if inst is None or inst.state.is_final:
                    return inst
                await anyio.sleep(interval)
                interval = min(interval * 1.5, 0.1)
        return await self.get_instance(uuid)

    # -- history and logs ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def lookup_history(self, query: Query) -> list[StateRecord]:
        """State records matching the query, sorted by time."""

    @abc.abstractmethod
    async def clear_history(self, query: Query) -> int:
        """Remove matching state records; returns how many."""

    @abc.abstractmethod
    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        """Append log records."""

    @abc.abstractmethod
    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        """Log records matching the query, sorted by time."""

    @abc.abstractmethod
    async def clear_logs(self, query: Query) -> int:
        """Remove matching log records; returns how many."""

    async def corrupt_records(self) -> list[CorruptRecord]:
        """Records set aside because they could not be decoded (the default store has none)."""
        return []

    async def drop_corrupt_record(self, key: str) -> bool:
        """Forget a record set aside as corrupt, ``key`` as :meth:`corrupt_records` reports it: its kept
        copy (and the unreadable original, if the store kept it in place) is deleted, and it is no
        longer reported. An operator's decision, never the store's own: to repair, read ``raw``,
        schedule the work again, then drop. Returns False if no such record is set aside."""
        return False


def lazy_store(target: str, *, schemes: tuple[str, ...], name: str,
               anyio_backends: tuple[str, ...] = ("asyncio", "trio")) -> type[Store]:
    """A stand-in for a store class, for a plugin's ``gojob_register_stores``: it declares the URL
    schemes, and imports ``target`` (``"package.module:Class"``) only when a Manager is given one of
    them, through its ``from_url``.

    Every Manager loads every installed plugin: a plugin module that imports its store (and with it
    the client library) makes every Manager pay for it, whatever store it uses (valkey-glide and
    redis-py took about 0.3 s of a Manager's creation together).
    """
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"lazy_store target must be 'package.module:Class', got {target!r}")

    def from_url(cls: type[Store], url: str, **options: Any) -> Store:
        import importlib

        real: type[Store] = getattr(importlib.import_module(module), attr)
        return real.from_url(url, **options)

    return type(f"Lazy{attr}", (Store,), {
        "__doc__": f"Stands for {target} in the scheme registry; from_url imports and builds it.",
        "__module__": module.rpartition(".")[0] or module,
        "SCHEMES": tuple(schemes), "ANYIO_BACKENDS": tuple(anyio_backends), "name": name,
        "from_url": classmethod(from_url)})
