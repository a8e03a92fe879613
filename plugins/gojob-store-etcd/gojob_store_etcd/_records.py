"""What the store's values hold, converted at the edges: bytes in etcd, :class:`~gojob_core.Instance` and
:class:`~gojob_core.StateRecord` in between, where :mod:`gojob_core.transitions` changes them.

- An **instance record** (``i/{uuid}``, and its copy in a queue entry) is ``Instance.to_dict()`` plus
  ``"h"``, the pointers to its history keys. :func:`decode_record` checks its shape (a record of another
  shape is corrupt: reported, never run) and builds the Instance; :func:`encode_record` writes it back.
  Both give exactly what ``Instance.from_dict`` and ``Instance.to_dict`` give, only cheaper: a worker
  decodes and encodes every instance it claims or finishes.
- A **running entry** (``q/p/{uuid}``) is ``{"node", "lease_ts", "cancel", "lease"}``: the holder's lease
  end (its heartbeats renew it there) and the cancel flag (a cancel of a running instance is written
  there). :func:`current` gives the instance with both, as the state machine must see it.
- A **history key** holds the list of state records one transaction wrote (:func:`encode_history`).

No I/O and no clock here; a decode error is raised (``ValueError``, ``KeyError``, ``TypeError``,
``AttributeError``) for the caller to report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from gojob_core import Instance, State, StateRecord

from ._codec import dumps, loads

__all__ = ["DECODE_ERRORS", "Snapshot", "current", "decode_record", "decode_running", "encode_history",
           "encode_record", "encode_running"]

#: what a decoder raises for a record it cannot read
DECODE_ERRORS = (ValueError, KeyError, TypeError, AttributeError)

#: the fields of an instance record, in the order ``Instance.to_dict`` writes them
_FIELDS = tuple(Instance(uuid="", kind="").to_dict())
_ALL_FIELDS = frozenset(_FIELDS)

_INT, _NUM, _NONE = frozenset((int,)), frozenset((int, float)), frozenset((type(None),))
#: what the store reads from an instance record besides what ``Instance.from_dict`` checks: each field's
#: name and the types its value may have (None: it may be null or missing; a bool is no number). A
#: record of another shape is corrupt (reported, never run).
_SHAPE: tuple[tuple[str, frozenset[type]], ...] = (
    ("uuid", frozenset((str,))), ("kind", frozenset((str,))), ("seq", _INT), ("priority", _INT),
    ("ready_ts", _NUM), ("created_ts", _NUM), ("attempts", _INT), ("max_retries", _INT),
    ("args", frozenset((list,)) | _NONE), ("kwargs", frozenset((dict,)) | _NONE), ("abandoned", _INT | _NONE),
    ("max_abandons", _INT | _NONE), ("started_ts", _NUM | _NONE), ("finished_ts", _NUM | _NONE),
    ("lease_ts", _NUM | _NONE), ("timeout", _NUM | _NONE), ("h", frozenset((list,)) | _NONE))


def _straight_line() -> tuple[Callable[[Instance], dict[str, Any]], Callable[[dict[str, Any]], Instance],
                              Callable[[dict[str, Any]], str | None]]:
    """``Instance.to_dict``, the assignments of ``Instance.from_dict`` and the check of :data:`_SHAPE` as
    straight-line code over the core's own field list, compiled once (as dataclasses do): loops over two
    dozen fields cost a worker more than applying the transition itself, at each claim and finish."""
    values = ", ".join(f"{f!r}: inst.state._value_" if f == "state" else f"{f!r}: inst.{f}" for f in _FIELDS)
    sets = "".join(f"    inst.{f} = d[{f!r}]\n" for f in _FIELDS)
    checks = "".join(f"    if type(get({name!r})) not in shape{i}:\n        return {name!r}\n"
                     for i, (name, _) in enumerate(_SHAPE))
    source = (f"def to_dict(inst):\n    return {{{values}}}\n"
              f"def assign(d):\n    inst = new(Instance)\n{sets}    return inst\n"
              f"def misshapen(d):\n    get = d.get\n{checks}    return None\n")
    namespace: dict[str, Any] = {"new": object.__new__, "Instance": Instance,
                                 **{f"shape{i}": types for i, (_, types) in enumerate(_SHAPE)}}
    exec(compile(source, "<gojob_store_etcd._records>", "exec"), namespace)
    return namespace["to_dict"], namespace["assign"], namespace["misshapen"]


_to_dict, _assign, _misshapen = _straight_line()
_STATES = {s.value: s for s in State}
_HEADERS = "headers" in _ALL_FIELDS


class Snapshot(NamedTuple):
    """One instance as this node last read or wrote it: its record and running entry, with the revisions
    the next transaction that changes them compares."""

    inst: Instance | None  #: the record; None if there is none (``i_rev == 0``) or it cannot be decoded
    pointers: list[str] | None  #: the record's history pointers (``"h"``)
    i_rev: int
    p: dict[str, Any] | None  #: the running entry; None if there is none (``p_rev == 0``) or it cannot be decoded
    p_rev: int


def _instance(d: dict[str, Any]) -> Instance:
    """``Instance.from_dict(d)``, a few times faster for a record that has every field (as the store writes):
    the same assignments, checks and defaults (``tests/test_etcd_records.py`` compares the two on every
    field, so that a change of ``from_dict`` fails there until it is made here too)."""
    if not _ALL_FIELDS <= d.keys():
        return Instance.from_dict(d)  # a record of another version: the core fills in what is missing
    inst = _assign(d)
    inst._sink = None
    inst.uuid, inst.kind = str(inst.uuid), str(inst.kind)
    try:
        inst.state = _STATES[inst.state]
    except (KeyError, TypeError):  # not a state: State() raises as Instance.from_dict does
        inst.state = State(inst.state)
    if inst.args is None:
        inst.args = []
    if inst.kwargs is None:
        inst.kwargs = {}
    if _HEADERS:
        if inst.headers is None:
            inst.headers = {}
        elif not isinstance(inst.headers, dict):
            raise ValueError(f"headers must be an object, got {type(inst.headers).__name__}")
    inst.abandoned = int(inst.abandoned or 0)
    if inst.max_abandons is not None:
        inst.max_abandons = int(inst.max_abandons)
    return inst


def decode_record(raw: bytes, uuid: str | None = None) -> tuple[Instance, list[str] | None]:
    """The instance an instance record describes and the record's history pointers; raises if the record
    cannot be decoded, is of another shape, or is not that of ``uuid``."""
    d = loads(raw)
    if type(d) is not dict:
        raise ValueError(f"the record is a JSON {type(d).__name__}, not an object")
    inst = _instance(d)  # validates the state and the counters
    if uuid is not None and d["uuid"] != uuid:
        raise ValueError(f"the record is that of instance {d['uuid']!r}, not {uuid!r}")
    name = _misshapen(d)
    if name is not None:
        raise ValueError(f"{name} has the wrong type ({type(d.get(name)).__name__})")
    return inst, d.get("h")


def encode_record(inst: Instance, pointers: list[str] | None) -> bytes:
    """The instance record of ``inst`` (``inst.to_dict()``) with its history pointers."""
    d = _to_dict(inst)
    d["h"] = pointers
    return dumps(d)


def decode_running(raw: bytes) -> dict[str, Any]:
    """A running entry; raises if it cannot be decoded."""
    d = loads(raw)
    if not isinstance(d, dict) or not isinstance(d.get("node"), str):
        raise ValueError("not a running entry")
    float(d.get("lease_ts") or 0)
    return d


def encode_running(p: dict[str, Any]) -> bytes:
    return dumps(p)


def encode_history(history: list[StateRecord]) -> bytes:
    """The value of a history key: the state records one transaction wrote, in order."""
    return dumps([r.to_dict() for r in history])


def current(snap: Snapshot) -> Instance:
    """The instance of ``snap`` as the state machine must see it: a copy of its record, with the lease end
    and the cancel flag of its running entry while it runs (heartbeats and cancels write only there)."""
    assert snap.inst is not None
    inst = snap.inst.copy()
    p = snap.p
    if p is not None and inst.state is State.PROCESSING:
        inst.lease_ts = float(p.get("lease_ts") or 0) or None
        inst.cancel_requested = bool(p.get("cancel"))
    return inst
