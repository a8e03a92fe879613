"""The instance state machine, in one place: every store applies it, none restates it.

Each function takes the stored instance record, an event and the time (the store's clock: this module has
none of its own and does no I/O), changes the record **in place** and returns the history records to write
with it, in order. ``None`` means the event does not apply (the instance is not in a state it can take
it, or the caller does not hold it): the store writes nothing. A store that must keep the old record
(a compare-and-set) passes a copy.

What a store still does itself is everything around the record: its indexes (the queue, the running set,
schedule members), atomicity, wake-ups and notifications. The rules of what follows what, which fields
change, and every history record's state, attempt, node and detail are here. The Valkey/Redis scripts
implement this same table in Lua (they run inside the server); ``tests/test_transitions_lua.py`` runs both
on the same event sequences and compares the records and histories.

The events:

=============  ============================  ====================================================
event          from                          to (history records)
=============  ============================  ====================================================
enqueue        (new)                         SCHEDULED (CREATED, SCHEDULED)
claim          SCHEDULED                     PROCESSING, attempts + 1 (PROCESSING)
extend         PROCESSING, held by the node  PROCESSING, lease renewed (none)
finish         PROCESSING, held by the node  the outcome's state, final (that state); or, with a
               in the outcome's attempt      retry, SCHEDULED (the state, then SCHEDULED "retry N
                                             of M in D s"); a retry with a cancel asked ends
                                             CANCELED (the state, then CANCELED "canceled")
release        PROCESSING, held by the node  SCHEDULED, attempts - 1 ("released by node X")
reclaim        PROCESSING, lease expired     SCHEDULED, abandoned + 1 ("attempt N abandoned: ...");
                                             CANCELED if a cancel was asked; TERMINATED at the
                                             ``max_abandons``-th abandon
cancel         CREATED or SCHEDULED          CANCELED ("canceled before it ran")
cancel         PROCESSING                    PROCESSING with ``cancel_requested`` (none)
=============  ============================  ====================================================
"""

from __future__ import annotations

from ._instance import Instance
from ._records import StateRecord
from ._state import State
from .abc import Outcome, abandon_limit_message

__all__ = [
    "WAITING",
    "abandoned_detail",
    "cancel",
    "claim",
    "enqueue",
    "extend",
    "finish",
    "holds",
    "lease_expired",
    "reclaim",
    "release",
    "retry_detail",
]

#: states a cancel makes final at once
WAITING = (State.CREATED, State.SCHEDULED)


def _rec(inst: Instance, state: State, ts: float, node: str | None, detail: str | None = None) -> StateRecord:
    return StateRecord(inst.uuid, inst.kind, state, ts, inst.attempts, node, detail)


def retry_detail(inst: Instance, retry_at: float, ts: float) -> str:
    """The SCHEDULED record's detail of a retry: retries are counted without abandoned attempts."""
    return (f"retry {inst.attempts - inst.abandoned} of {inst.max_retries} "
            f"in {max(0.0, retry_at - ts):.3f} s")


def abandoned_detail(attempt: int, lost_node: str | None) -> str:
    """The SCHEDULED record's detail of an attempt whose node lost its lease."""
    return f"attempt {attempt} abandoned: node {lost_node or '?'} lost its lease; re-queued"


def enqueue(inst: Instance, ts: float, node: str | None) -> list[StateRecord]:
    """A new instance enters the queue (the store has checked it is new)."""
    inst.state = State.SCHEDULED
    return [_rec(inst, State.CREATED, ts, node), _rec(inst, State.SCHEDULED, ts, node)]


def claim(inst: Instance, ts: float, node: str, lease: float) -> list[StateRecord] | None:
    """``node`` takes a ready instance for ``lease`` seconds: a new attempt starts."""
    if inst.state is not State.SCHEDULED:
        return None
    inst.state = State.PROCESSING
    inst.attempts += 1
    inst.started_ts = ts
    inst.node = node
    inst.lease_ts = ts + lease
    return [_rec(inst, State.PROCESSING, ts, node)]


def holds(inst: Instance, node: str, attempt: int | None = None) -> bool:
    """Whether ``node`` holds the instance (in ``attempt``, when given): what finish and release require."""
    return (inst.state is State.PROCESSING and inst.node == node
            and (attempt is None or inst.attempts == attempt))


def extend(inst: Instance, ts: float, node: str, lease: float) -> list[StateRecord] | None:
    """The holding node renews its lease."""
    if not holds(inst, node):
        return None
    inst.lease_ts = ts + lease
    return []


def finish(inst: Instance, outcome: Outcome, ts: float, node: str) -> list[StateRecord] | None:
    """The holding node's attempt ended: final, or back in the queue for a retry."""
    if (inst.state is not State.PROCESSING or inst.node != node
            or (outcome.attempt is not None and inst.attempts != outcome.attempt)):  # holds(), inlined: hot
        return None
    history = [_rec(inst, outcome.state, ts, node, outcome.error or outcome.detail)]
    inst.lease_ts = None
    if outcome.retry_at is not None and not inst.cancel_requested:
        inst.state = State.SCHEDULED
        inst.ready_ts = outcome.retry_at
        inst.error = outcome.error
        history.append(_rec(inst, State.SCHEDULED, ts, node, retry_detail(inst, outcome.retry_at, ts)))
        return history
    if outcome.retry_at is not None:  # a cancel arrived while the failed attempt ended: final
        inst.state = State.CANCELED
        history.append(_rec(inst, State.CANCELED, ts, node, "canceled"))
    else:
        inst.state = outcome.state
    inst.result = outcome.result
    inst.error = outcome.error
    inst.finished_ts = ts
    return history


def release(inst: Instance, ts: float, node: str) -> list[StateRecord] | None:
    """A stopping node hands a claimed instance back: the attempt is not counted."""
    if not holds(inst, node):
        return None
    inst.lease_ts = None
    inst.attempts = max(0, inst.attempts - 1)
    inst.state = State.SCHEDULED
    return [_rec(inst, State.SCHEDULED, ts, node, f"released by node {node}")]


def lease_expired(inst: Instance, ts: float) -> bool:
    """Whether the instance is held under a lease that lapsed before ``ts``."""
    return inst.state is State.PROCESSING and inst.lease_ts is not None and inst.lease_ts < ts


def reclaim(inst: Instance, ts: float, node: str) -> list[StateRecord] | None:
    """``node`` found the lease lapsed (its holder died or was cut off): re-queue the instance as an
    abandoned attempt, or end it (a cancel was asked; or the abandon limit is reached)."""
    if not lease_expired(inst, ts):
        return None
    lost_node = inst.node
    inst.lease_ts = None
    if inst.cancel_requested:
        inst.state = State.CANCELED
        inst.finished_ts = ts
        return [_rec(inst, State.CANCELED, ts, node, f"canceled; node {lost_node or '?'} lost its lease")]
    inst.abandoned += 1
    if inst.max_abandons is not None and inst.abandoned >= inst.max_abandons:
        inst.state = State.TERMINATED
        inst.finished_ts = ts
        inst.error = abandon_limit_message(inst.attempts, lost_node, inst.max_abandons)
        return [_rec(inst, State.TERMINATED, ts, node, inst.error)]
    inst.state = State.SCHEDULED
    return [_rec(inst, State.SCHEDULED, ts, node, abandoned_detail(inst.attempts, lost_node))]


def cancel(inst: Instance, ts: float, node: str | None) -> list[StateRecord] | None:
    """A cancel: final at once while waiting; a flag for the holding node while claimed or running."""
    if inst.state in WAITING:
        inst.state = State.CANCELED
        inst.finished_ts = ts
        return [_rec(inst, State.CANCELED, ts, node, "canceled before it ran")]
    if inst.state is State.PROCESSING and not inst.cancel_requested:
        inst.cancel_requested = True
        return []
    return None
