"""The etcd store: every guarantee of the store contract on etcd's transactions, leases and watches.

Key layout (``{p}`` is the key prefix, ``/gojob/`` by default; see the plugin README for the details):

=====================================================  ==========================================================
``{p}i/{uuid}``                                        the instance record (JSON); ``"h"`` points to its history keys
``{p}q/r/{prio:20}/{ready_us:17}/{seq:20}/{uuid}/{kind}``  ready index, value = the record as queued. Keys sort
                                                       by priority (offset by 2**63 and zero-padded, so negative
                                                       priorities sort first), ready time, FIFO seq
``{p}q/d/{ready_us:17}/{seq:20}/{uuid}/{kind}``        delayed index (not yet due), value = the record
``{p}q/p/{uuid}``                                      running: ``{"node", "lease_ts", "cancel", "lease"}``
``{p}q/n/{lease_id:016x}``                             liveness key of a node's etcd lease, attached to that lease:
                                                       gone, the running entries naming the lease are re-queued
``{p}t/{ts_us:17}/{uuid}/{tag}``                       state records of one instance written by one transaction
``{p}h/{uuid}/{tag}``                                  pointers to the history keys of an instance whose record
                                                       was removed (``clear_instances``)
``{p}l/{uuid}/{ts_us:17}/{tag}``, ``{p}m/{ts_us}/..``  log records, per instance and by time
``{p}s/{schedule_id}/{uuid}``                          the occurrences of a recurring schedule
``{p}x/{schedule_id}``                                 a canceled schedule (a chained occurrence is refused)
``{p}z/{sha1(key)}``                                   the report of a record that could not be decoded (the record
                                                       itself is left where it is, or moved aside if it was a queue
                                                       or running entry)
``{p}zr/{sha1(key)}``                                  that record's bytes, exactly as they were
=====================================================  ==========================================================

Every change of an instance is one etcd transaction. A request carries one nested transaction per
instance, each guarded by the revisions it read, so a batch of claims or finishes costs one round trip
and one instance lost to a conflict does not fail the others.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from gojob_core import CorruptRecordError, Instance, LogRecord, Query, State, StateRecord, Store, StoreError
from gojob_core._instance import DEFAULT_MAX_ABANDONS
from gojob_core.abc import CorruptRecord, LeaseReport, Outcome, abandon_limit_message

from ._client import (
    Compacted,
    EtcdClient,
    EtcdOptions,
    absent,
    mod_below,
    mod_is,
    op_delete,
    op_put,
    op_range,
    op_txn,
    parse_etcd_url,
    prefix_end,
    present,
    value_is,
)
from ._codec import dumps, loads

__all__ = ["EtcdStore"]

_log = logging.getLogger("gojob.etcd")

_PAGE = 1000            # keys per page of a large read (gRPC's receive limit, etcd's request costs)
_NEST = 100             # nested transactions per request (etcd allows 128 operations per level)
_MAX_BYTES = 1_000_000  # bytes per request (etcd's default --max-request-bytes is 1.5 MiB)
_INFLIGHT = 8           # requests of one batch in flight at once
_PRIO_OFFSET = 2**63
_SCHEDULED, _PROCESSING, _CREATED = State.SCHEDULED.value, State.PROCESSING.value, State.CREATED.value
_CANCELED, _TERMINATED = State.CANCELED.value, State.TERMINATED.value
_WAITING = (_SCHEDULED, _CREATED)

_j = dumps
_loads = loads


# -- clocks and counters (per process) ---------------------------------------------------------------------
_last_ts = 0.0
_last_seq = 0


def _now() -> float:
    """Wall-clock seconds, strictly increasing within this process (history keeps its order)."""
    global _last_ts
    t = time.time()
    if t <= _last_ts:
        t = _last_ts + 2e-6
    _last_ts = t
    return t


def _next_seq() -> int:
    """A FIFO sequence number: nanoseconds since the epoch, strictly increasing within this process."""
    global _last_seq
    s = time.time_ns()
    if s <= _last_seq:
        s = _last_seq + 1
    _last_seq = s
    return s


_TAG = os.urandom(4).hex()
_tags = itertools.count(1)


def _tag() -> str:
    return f"{_TAG}{next(_tags):x}"


def _us(ts: float) -> str:
    return f"{max(0, int(ts * 1e6)):017d}"


def _prio(p: int) -> str:
    return f"{p + _PRIO_OFFSET:020d}"


def _text(b: bytes) -> str:
    """Bytes as text, losslessly: ``_text(b).encode("utf-8", "surrogateescape") == b`` (the key and the
    bytes of a corrupt record as :meth:`EtcdStore.corrupt_records` reports them)."""
    return b.decode("utf-8", "surrogateescape")


def _bytes(s: str) -> bytes:
    """The inverse of :func:`_text`."""
    return s.encode("utf-8", "surrogateescape")


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


class _State(NamedTuple):
    """What a node knows of one instance: its record and running entry, with their revisions."""

    rec: dict[str, Any] | None
    i_rev: int
    p: dict[str, Any] | None
    p_rev: int


class _Window:
    """The first keys of a queue index, in key order, kept current by the watch.

    Complete for every key up to ``bound`` (``None``: for the whole index). Events older than the
    read that loaded it (``loaded_rev``) are already in it and are skipped. While a read is in flight
    (:meth:`begin` .. :meth:`end`) the events applied are also kept, so that a read answered after
    newer events were applied does not undo them (a key put at a later revision would otherwise
    vanish from view until the next read, and a deleted one come back).
    """

    __slots__ = ("bound", "events", "keys", "loaded_rev", "read_at", "reading", "vals")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.vals: dict[bytes, tuple[int, bytes]] = {}
        self.bound: bytes | None = b""  # not loaded yet: nothing is known
        self.loaded_rev = 0
        self.read_at = -1e9
        self.reading = 0
        self.events: list[tuple[int, bytes, bytes | None]] = []  # (revision, key, value or None: deleted)

    def begin(self) -> None:
        """A read of the index is about to be sent: keep the events applied until it is loaded."""
        self.reading += 1

    def end(self) -> None:
        self.reading -= 1
        if not self.reading:
            self.events.clear()

    @property
    def complete(self) -> bool:
        return self.bound is None

    def load(self, kvs: Any, more: bool, rev: int, taken: dict[bytes, float] | None = None) -> None:
        """Replace the window by a read at ``rev``; keys in ``taken`` (claimed by this node at a later
        revision, or still being claimed) are left out: two reads in flight may answer out of order."""
        if rev < self.loaded_rev:
            return
        if taken:
            kvs = [kv for kv in kvs if taken.get(kv.key, 0) <= rev]
            for k in [k for k, r in taken.items() if r <= rev]:
                del taken[k]
        self.keys = [kv.key for kv in kvs]
        self.vals = {kv.key: (kv.mod_revision, kv.value) for kv in kvs}
        self.bound = self.keys[-1] if more and self.keys else None
        self.loaded_rev = rev
        self.read_at = time.monotonic()
        for erev, key, value in self.events:  # applied before this older read answered: apply again
            if erev > rev:
                if value is None:
                    self._delete(key, erev)
                elif not taken or taken.get(key, 0) <= erev:
                    self._put(key, erev, value)

    def put(self, key: bytes, rev: int, value: bytes) -> bool:
        if self.reading and rev > self.loaded_rev:
            self.events.append((rev, key, value))
        return self._put(key, rev, value)

    def _put(self, key: bytes, rev: int, value: bytes) -> bool:
        if rev <= self.loaded_rev or (self.bound is not None and key > self.bound):
            return False
        if key not in self.vals:
            bisect.insort(self.keys, key)
        self.vals[key] = (rev, value)
        return True

    def restore(self, key: bytes, rev: int, value: bytes) -> None:
        """Put back an entry taken out for a claim that was never answered."""
        if (self.bound is None or key <= self.bound) and key not in self.vals:
            bisect.insort(self.keys, key)
            self.vals[key] = (rev, value)

    def delete(self, key: bytes, rev: int = 0) -> None:
        if self.reading and rev > self.loaded_rev:
            self.events.append((rev, key, None))
        self._delete(key, rev)

    def _delete(self, key: bytes, rev: int = 0) -> None:
        if rev and rev <= self.loaded_rev:
            return
        if self.vals.pop(key, None) is not None:
            i = bisect.bisect_left(self.keys, key)
            if i < len(self.keys) and self.keys[i] == key:
                del self.keys[i]

    def take(self, n: int) -> list[tuple[bytes, int, bytes]]:
        taken, self.keys = self.keys[:n], self.keys[n:]
        return [(k, *self.vals.pop(k)) for k in taken]

    def trim(self, keep: int) -> None:
        if len(self.keys) > 2 * keep:
            for k in self.keys[keep:]:
                del self.vals[k]
            del self.keys[keep:]
            self.bound = self.keys[-1]


Handler = Callable[[Any, int], None]


class _Part(NamedTuple):
    op: Any
    handler: Handler
    size: int


class EtcdStore(Store):
    """Queue, history and logs on etcd, shared by every node pointed at the same cluster and prefix.

    ``EtcdStore.from_url("etcd://user:pw@h1:2379,h2:2379/myapp?timeout=5")``; ``etcds://`` for TLS
    (``?ca=..&cert=..&key=..``); keyword options (``prefix``, ``timeout``, ``compact``, ...) override
    the URL. Runs on the asyncio backend only (grpc.aio).
    """

    SCHEMES: ClassVar[tuple[str, ...]] = ("etcd", "etcds")
    ANYIO_BACKENDS: ClassVar[tuple[str, ...]] = ("asyncio",)
    name = "etcd"

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        p = options.prefix.encode()
        self._p = p
        self._ki, self._kq = p + b"i/", p + b"q/"
        self._kr, self._kd, self._kp, self._kn = p + b"q/r/", p + b"q/d/", p + b"q/p/", p + b"q/n/"
        self._kh, self._kt, self._kl, self._km = p + b"h/", p + b"t/", p + b"l/", p + b"m/"
        self._ks, self._kx, self._kz, self._kzr = p + b"s/", p + b"x/", p + b"z/", p + b"zr/"
        self.client: EtcdClient | None = None
        self._reset()

    def _reset(self) -> None:
        self._held: dict[str, _State] = {}
        self._rw, self._dw = _Window(), _Window()
        self._taken: dict[bytes, float] = {}  # ready keys this node took: the revision of the claim (inf: in flight)
        self._running: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._live: set[int] = set()  # etcd leases whose liveness key exists (their nodes hold claims)
        self._mirror_rev = 0
        self._rev = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_ok = False
        self._watch_lock = asyncio.Lock()
        self._ready_reading: asyncio.Event | None = None
        self._wake_ev = asyncio.Event()
        self._cancel_subs: list[MemoryObjectSendStream[str]] = []
        self._leases: dict[int, int] = {}
        self._keyed: set[int] = set()  # this node's leases whose liveness key was written
        self._keepalive: asyncio.Task[None] | None = None
        self._lease_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._reclaimed: list[Instance] = []
        self._reclaim_at = 0.0
        self._reported: dict[bytes, int] = {}  # key -> hash of the bytes reported (once per process)
        self._corrupt_q: list[tuple[bytes, str, bytes]] = []
        self._aside: list[tuple[bytes, int, bytes, str]] = []  # queue entries whose record changed: set aside
        self._repairs: list[tuple[str, int, dict[str, Any], bytes]] = []  # instances to put back in the queue

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdStore:
        return cls(parse_etcd_url(url, **options))

    def __repr__(self) -> str:
        return f"<EtcdStore {self.options.address} prefix={self.options.prefix!r}>"

    # -- plumbing --------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._reset()
        client = EtcdClient(self.options)
        await client.connect()
        self.client = client
        if self.options.compact > 0:
            self._tasks.append(asyncio.create_task(self._compact_loop(), name="gojob-etcd-compact"))

    async def stop(self) -> None:
        tasks = [t for t in (*self._tasks, self._watch_task) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for send in self._cancel_subs:
            send.close()
        client, self.client = self.client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                # the liveness keys of this node's leases go now, so other nodes re-queue what is left
                for lease_id in self._leases.values():
                    with contextlib.suppress(StoreError):
                        await client.revoke(lease_id)
                await client.close()
        self._reset()

    def _c(self) -> EtcdClient:
        if self.client is None:
            raise StoreError("etcd store is not started")
        return self.client

    async def _send(self, parts: Sequence[_Part], head: Sequence[Any] = ()) -> None:
        """Send the parts' operations in as few requests as etcd allows; call each part's handler.

        ``head`` operations go in front of the first request.
        """
        if not parts and not head:
            return
        chunks: list[list[_Part]] = []
        cur: list[_Part] = []
        size = sum(op.ByteSize() for op in head)
        for part in parts:
            if cur and (len(cur) + (len(head) if not chunks else 0) >= _NEST or size + part.size > _MAX_BYTES):
                chunks.append(cur)
                cur, size = [], 0
            cur.append(part)
            size += part.size
        chunks.append(cur)
        client = self._c()

        async def one(k: int, chunk: list[_Part]) -> None:
            first = list(head) if k == 0 else []
            resp = await client.txn(first + [p.op for p in chunk])
            rev = resp.header.revision
            for part, r in zip(chunk, resp.responses[len(first):]):
                part.handler(r, rev)

        if len(chunks) == 1:
            await one(0, chunks[0])
            return
        sem = asyncio.Semaphore(_INFLIGHT)
        errors: list[BaseException] = []

        async def guarded(k: int, chunk: list[_Part]) -> None:
            async with sem:
                try:
                    await one(k, chunk)
                except StoreError as exc:
                    errors.append(exc)

        await one(0, chunks[0])  # the head goes first
        await asyncio.gather(*(guarded(k, c) for k, c in enumerate(chunks) if k > 0))
        if errors:
            raise errors[0]

    # -- keys and records --------------------------------------------------------------------------------
    def _queue_key(self, rec: dict[str, Any], t: float) -> bytes:
        tail = f"{_us(rec['ready_ts'])}/{rec['seq']:020d}/{rec['uuid']}/{rec['kind']}"
        if rec["ready_ts"] <= t:
            return self._kr + f"{_prio(rec['priority'])}/{tail}".encode()
        return self._kd + tail.encode()

    def _both_queue_keys(self, rec: dict[str, Any]) -> tuple[bytes, bytes]:
        tail = f"{_us(rec['ready_ts'])}/{rec['seq']:020d}/{rec['uuid']}/{rec['kind']}"
        return self._kr + f"{_prio(rec['priority'])}/{tail}".encode(), self._kd + tail.encode()

    def _with_history(self, rec: dict[str, Any], recs: list[dict[str, Any]]) -> tuple[bytes, Any]:
        """The instance record a transaction writes, encoded with a pointer to the history key of the
        state records it writes too, and the put of that key (one key, by time). The pointers are how
        the history of one instance is found."""
        us, tag = _us(recs[0]["ts"]), _tag()
        rec["h"] = [*(rec.get("h") or ()), f"{us}/{tag}"]
        return _j(rec), op_put(self._kt + f"{us}/{rec['uuid']}/{tag}".encode(), _j(recs))

    # -- corrupt records ---------------------------------------------------------------------------------
    # A record that cannot be decoded is reported under z/{sha1(key)} (key, reason, in place or not) and
    # its bytes are kept exactly under zr/{sha1(key)}. A record is left where it is, except a queue or
    # running entry, which is moved aside (so that it blocks nothing); the instance of a queue entry set
    # aside is put back in the queue from its own record, when that record can be read.
    def _report(self, key: bytes, reason: str, raw: bytes = b"") -> None:
        """Report a record left in place (written by the next :meth:`_flush_corrupt`), once per process."""
        h = hash(raw)
        if self._reported.get(key) == h:
            return
        self._reported[key] = h
        _log.error("etcd store: record %r cannot be decoded and is set aside: %s", key[:200], reason)
        self._corrupt_q.append((key, reason, raw))

    def _report_value(self, key: bytes, reason: str, raw: bytes, in_place: bool) -> bytes:
        # "raw": a readable excerpt for versions that knew no zr/ key; the bytes themselves are under zr/
        return _j({"key": _text(key), "reason": reason, "raw": raw[:4000].decode(errors="replace"),
                   "in_place": in_place})

    def _zkey(self, key: bytes) -> bytes:
        return self._kz + hashlib.sha1(key).hexdigest().encode()

    def _zrkey(self, key: bytes) -> bytes:
        return self._kzr + hashlib.sha1(key).hexdigest().encode()

    def _report_part(self, key: bytes, reason: str, raw: bytes) -> _Part:
        z = self._zkey(key)
        return _Part(op_txn([absent(z)], [op_put(z, self._report_value(key, reason, raw, True)),
                                          op_put(self._zrkey(key), raw)]),
                     lambda r, rev: None, len(raw) + len(key) + 600)

    async def _flush_corrupt(self) -> None:
        """Write what was found unreadable: queue entries set aside (and their instances put back in the
        queue from their records), then the reports of records left in place. Nothing to do: no request."""
        for _ in range(3):
            if self._aside:
                batch, self._aside = self._aside, []
                # the records, to say why (and report those that cannot be decoded): a rare request
                resp = await self._c().txn([op_range(self._ki + u.encode()) for _, _, _, u in batch[:_NEST]])
                parts = []
                for (key, key_rev, raw, u), reply in zip(batch, resp.responses):
                    ikey, kvs = self._ki + u.encode(), reply.response_range.kvs
                    if kvs and self._decode_inst(ikey, kvs[0].value, u) is None:
                        why = f"its instance record {_text(ikey)!r} cannot be decoded: not run"
                    else:
                        why = f"its instance record {_text(ikey)!r} was rewritten after it was queued"
                    parts.append(self._set_aside_part(key, key_rev, raw, why, u))
                self._aside += batch[_NEST:]
                await self._send(parts)
            if self._repairs:
                batch2, self._repairs = self._repairs, []
                await self._send([self._repair_part(*r) for r in batch2])
            if not self._aside and not self._repairs:
                break
        if self._corrupt_q:
            batch3, self._corrupt_q = self._corrupt_q, []
            await self._send([self._report_part(*c) for c in batch3])

    def _set_aside_part(self, key: bytes, rev: int, raw: bytes, reason: str, uuid: str | None) -> _Part:
        """Move a queue or running entry that must not be used (at revision ``rev``) aside, reported, its
        bytes kept; read the record of its instance (``uuid``, when known) to put it back in the queue."""
        # what decoding it found (queued as a report of a record left in place): said here instead
        found = [c for c in self._corrupt_q if c[0] == key]
        if found:
            self._corrupt_q = [c for c in self._corrupt_q if c[0] != key]
            reason = f"{reason} ({found[-1][1]})"
        _log.error("etcd store: entry %r is set aside: %s", key[:200], reason)
        self._reported[key] = hash(raw)
        success = [op_put(self._zkey(key), self._report_value(key, reason, raw, False)),
                   op_put(self._zrkey(key), raw), op_delete(key)]
        ikey = None
        if uuid is not None and key.startswith(self._kq) and not key.startswith(self._kp):
            ikey = self._ki + uuid.encode()
            success.append(op_range(ikey))

        def done(r: Any, rev: int) -> None:
            txn = r.response_txn
            if not txn.succeeded:  # changed meanwhile (taken, or set aside by another node)
                return
            if key.startswith(self._kp):
                self._running.pop(key[len(self._kp):].decode(errors="replace"), None)
            if ikey is not None:
                kvs = txn.responses[3].response_range.kvs
                if kvs:
                    self._requeue_from(kvs[0], uuid)  # type: ignore[arg-type]

        return _Part(op_txn([mod_is(key, rev)], success), done, 2 * len(raw) + 800)

    def _requeue_from(self, kv: Any, uuid: str) -> None:
        """The record of an instance whose queue entry was set aside: if it is readable and waiting, put
        the instance back in the queue (next :meth:`_flush_corrupt`); if it is not readable, report it."""
        got = self._decode_inst(kv.key, kv.value, uuid)
        if got is not None and got[0].get("state") == _SCHEDULED:
            self._repairs.append((uuid, kv.mod_revision, got[0], kv.value))

    def _repair_part(self, uuid: str, i_rev: int, rec: dict[str, Any], raw: bytes) -> _Part:
        """Put a waiting instance back in the queue from its record, unless it changed or is queued."""
        rkey, dkey = self._both_queue_keys(rec)
        qkey = self._queue_key(rec, _now())

        def done(r: Any, rev: int) -> None:
            if r.response_txn.succeeded:
                _log.warning("etcd store: instance %s was put back in the queue from its record", uuid)
                (self._rw if qkey.startswith(self._kr) else self._dw).put(qkey, rev, raw)
                self._wake()

        return _Part(op_txn([mod_is(self._ki + uuid.encode(), i_rev), absent(rkey), absent(dkey)],
                            [op_put(qkey, raw)]), done, len(raw) + 400)

    def _uuid_in(self, key: bytes, base: bytes) -> str | None:
        """The uuid named by a ready (``{prio}/{ready}/{seq}/{uuid}/{kind}``) or delayed
        (``{ready}/{seq}/{uuid}/{kind}``) key; None if the key is malformed."""
        n = 4 if base is self._kr else 3
        parts = key[len(base):].split(b"/", n)
        if len(parts) <= n or not parts[n - 1]:
            return None
        try:
            return parts[n - 1].decode()
        except UnicodeDecodeError:
            return None

    def _decode_rec(self, key: bytes, raw: bytes) -> dict[str, Any] | None:
        got = self._decode_inst(key, raw)
        return None if got is None else got[0]

    def _decode_inst(self, key: bytes, raw: bytes,
                     uuid: str | None = None) -> tuple[dict[str, Any], Instance] | None:
        """The record and the instance it describes; None (and reported) if it cannot be decoded, or is
        not the record of ``uuid`` (or, for an ``i/`` key, of the uuid the key names)."""
        try:
            d = _loads(raw)
            if type(d) is not dict:
                raise ValueError(f"the record is a JSON {type(d).__name__}, not an object")
            inst = Instance.from_dict(d)  # validates the state and the counters
            if uuid is None and key.startswith(self._ki):
                uuid = key[len(self._ki):].decode(errors="replace")
            if uuid is not None and d["uuid"] != uuid:
                raise ValueError(f"the record is that of instance {d['uuid']!r}, not {uuid!r}")
            get = d.get
            for name, types in _SHAPE:
                if type(get(name)) not in types:
                    raise ValueError(f"{name} has the wrong type ({type(get(name)).__name__})")
            return d, inst
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._report(key, f"{type(exc).__name__}: {exc}", raw)
            return None

    def _decode_p(self, key: bytes, raw: bytes) -> dict[str, Any] | None:
        try:
            d = _loads(raw)
            if not isinstance(d, dict) or not isinstance(d.get("node"), str):
                raise ValueError("not a running entry")
            float(d.get("lease_ts") or 0)
            return d
        except (ValueError, TypeError) as exc:
            self._report(key, f"{type(exc).__name__}: {exc}", raw)
            return None

    @staticmethod
    def _instance(rec: dict[str, Any], p: dict[str, Any] | None = None) -> Instance:
        inst = Instance.from_dict(rec)
        if p is not None and inst.state is State.PROCESSING:
            inst.lease_ts = float(p.get("lease_ts") or 0) or None
            inst.cancel_requested = bool(p.get("cancel"))
        return inst

    async def _read(self, uuids: Sequence[str]) -> dict[str, _State]:
        """The current record and running entry of each instance (one round trip per 50)."""
        out: dict[str, _State] = {}
        for i in range(0, len(uuids), 50):
            chunk = uuids[i:i + 50]
            ops = []
            for u in chunk:
                b = u.encode()
                ops += [op_range(self._ki + b), op_range(self._kp + b)]
            resp = await self._c().txn(ops)
            for k, u in enumerate(chunk):
                out[u] = self._state_from(resp.responses[2 * k], resp.responses[2 * k + 1])
        return out

    def _state_from(self, ri: Any, rp: Any) -> _State:
        rec, i_rev, p, p_rev = None, 0, None, 0
        kvs = ri.response_range.kvs
        if kvs:
            rec, i_rev = self._decode_rec(kvs[0].key, kvs[0].value), kvs[0].mod_revision
        kvs = rp.response_range.kvs
        if kvs:
            p, p_rev = self._decode_p(kvs[0].key, kvs[0].value), kvs[0].mod_revision
        return _State(rec, i_rev, p, p_rev)

    def _lease_key(self, lease_id: int) -> bytes:
        return self._kn + b"%016x" % lease_id

    def _lease_of(self, key: bytes) -> int | None:
        try:
            return int(key[len(self._kn):], 16)
        except ValueError:
            return None

    def _holds(self, p: dict[str, Any], live: set[int], t: float) -> bool:
        """Whether a running entry's node still holds it: its etcd lease lives and its lease end is ahead.
        (An entry without a lease id, from before liveness keys, is judged by its lease end alone.)"""
        lid = p.get("lease")
        return (lid is None or lid in live) and float(p.get("lease_ts") or 0) >= t

    async def _live_leases(self) -> set[int]:
        """The etcd leases whose liveness key exists now (one per node and lease time: a short scan)."""
        return {lid async for kv in self._scan(self._kn, prefix_end(self._kn), keys_only=True)
                if (lid := self._lease_of(kv.key)) is not None}

    # -- watch: the queue's head, running entries and liveness keys, kept current ------------------------
    async def _ensure_watch(self) -> None:
        if self._watch_task is not None:
            return
        async with self._watch_lock:
            if self._watch_task is None:
                await self._load()
                self._watch_ok = True
                self._watch_task = asyncio.create_task(self._watch_loop(), name="gojob-etcd-watch")

    async def _load(self) -> None:
        """Read the queue heads, every running entry and liveness key at one revision."""
        w = self.options.window
        c = self._c()
        self._rw.begin()
        self._dw.begin()
        try:
            resp = await c.txn([op_range(self._kr, prefix_end(self._kr), limit=w),
                                op_range(self._kd, prefix_end(self._kd), limit=w),
                                op_range(self._kp, prefix_end(self._kp), limit=_PAGE),
                                op_range(self._kn, prefix_end(self._kn), limit=_PAGE, keys_only=True)])
            rev = resp.header.revision
            rr, rd, rp, rc = (r.response_range for r in resp.responses)
            self._rw.load(rr.kvs, rr.more, rev, self._taken)
            self._dw.load(rd.kvs, rd.more, rev)
        finally:
            self._rw.end()
            self._dw.end()
        running: dict[str, tuple[int, dict[str, Any] | None]] = {}
        live: set[int] = set()
        for base, first in ((self._kp, rp), (self._kn, rc)):
            page = first
            while True:
                for kv in page.kvs:
                    if base is self._kp:
                        running[kv.key[len(base):].decode()] = (kv.mod_revision, self._decode_p(kv.key, kv.value))
                    elif (lid := self._lease_of(kv.key)) is not None:
                        live.add(lid)
                if not page.more or not page.kvs:
                    break
                page = await c.range(page.kvs[-1].key + b"\0", prefix_end(base), limit=_PAGE, revision=rev,
                                     keys_only=base is self._kn)
        self._running, self._live = running, live
        self._mirror_rev = self._rev = rev

    async def _watch_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                async for resp in self._c().watch(self._kq, prefix_end(self._kq), self._rev + 1):
                    if not self._watch_ok:
                        self._watch_ok = True
                        self._wake()
                    delay = 0.05
                    if resp.events:
                        self._apply(resp.events)
                    elif not resp.created and resp.header.revision > self._rev:
                        self._rev = resp.header.revision  # progress: everything before it was sent
            except Compacted:
                self._watch_ok = False
                try:
                    await self._load()  # what was missed is gone from etcd's history: read it all again
                    self._wake()
                except StoreError as exc:
                    _log.warning("etcd store: reading the queue again after a compaction failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            except StoreError as exc:
                if self._watch_ok:
                    _log.warning("etcd store: watch interrupted (%s); resuming from revision %d", exc,
                                 self._rev + 1)
                self._watch_ok = False
                self._wake()  # waiters fall back to reading the queue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _apply(self, events: Any) -> None:
        lq, lp = len(self._kq), len(self._kp)
        wake = False
        hints = False
        rw, dw = self._rw, self._dw
        first_due = dw.keys[0] if dw.keys else None
        for ev in events:
            kv = ev.kv
            key, rev, put = kv.key, kv.mod_revision, ev.type == 0
            if rev > self._rev:
                self._rev = rev
            sub = key[lq:lq + 2]
            if sub == b"r/":
                if put:
                    wake = rw.put(key, rev, kv.value) or wake
                else:
                    rw.delete(key, rev)
                    if self._taken.get(key, 0) <= rev:
                        self._taken.pop(key, None)
            elif sub == b"d/":
                if put:
                    dw.put(key, rev, kv.value)
                else:
                    dw.delete(key, rev)
            elif rev > self._mirror_rev:
                u = key[lp:].decode(errors="replace")
                if sub == b"p/":
                    if put:
                        known = self._running.get(u)
                        # this node's own claim recorded the entry it wrote: no need to decode it
                        p = known[1] if known is not None and known[0] == rev else self._decode_p(key, kv.value)
                        self._running[u] = (rev, p)
                        if p is not None and p.get("cancel"):
                            self._notify_cancel(u)
                    else:
                        self._running.pop(u, None)
                elif sub == b"n/" and (lid := self._lease_of(key)) is not None:
                    if put:
                        self._live.add(lid)
                    else:
                        self._live.discard(lid)
                        hints = True
        if hints and any(p is not None and p.get("lease") not in self._live for _, p in self._running.values()):
            wake = True  # a liveness key vanished (its node's etcd lease expired): re-queue its instances
        if dw.keys and dw.keys[0] != first_due:
            wake = True  # a new first delayed instance: waiters recompute their timer
        w = self.options.window
        rw.trim(w)
        dw.trim(w)
        if wake:
            self._wake()

    def _wake(self) -> None:
        ev, self._wake_ev = self._wake_ev, asyncio.Event()
        ev.set()

    def _notify_cancel(self, uuid: str) -> None:
        for send in list(self._cancel_subs):
            try:
                send.send_nowait(uuid)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                self._cancel_subs.remove(send)

    def _expired(self, t: float) -> list[str]:
        live = self._live
        return [u for u, (_, p) in self._running.items() if p is not None and not self._holds(p, live, t)]

    def _next_due(self) -> float:
        if not self._dw.keys:
            return math.inf
        return self._due(self._dw.keys[0])

    def _next_expiry(self) -> float:
        t = math.inf
        for _, p in self._running.values():
            if p is not None:
                t = min(t, float(p.get("lease_ts") or 0))
        return t

    # -- leases ----------------------------------------------------------------------------------------
    async def _lease_for(self, lease: float) -> int:
        """This node's etcd lease for claims of ``lease`` seconds (granted once, kept alive by a task),
        with its liveness key ``q/n/{id}`` written: the running entries of its claims name the lease, and
        other nodes re-queue them once that key is gone (the lease expired or was revoked)."""
        ttl = max(1, math.ceil(lease))
        lease_id = self._leases.get(ttl)
        if lease_id is not None and lease_id in self._keyed:
            return lease_id
        async with self._lease_lock:
            if ttl not in self._leases:
                self._leases[ttl] = await self._c().grant(ttl)
                if self._keepalive is None:
                    self._keepalive = asyncio.create_task(self._keepalive_loop(), name="gojob-etcd-keepalive")
                    self._tasks.append(self._keepalive)
            lease_id = self._leases[ttl]
            if lease_id not in self._keyed:
                await self._c().txn([op_put(self._lease_key(lease_id), b"", lease_id)])
                self._keyed.add(lease_id)
            return lease_id

    def _lease_lapsed(self, lease_id: int) -> None:
        """A claim found this lease's liveness key gone (it expired before the keepalive saw it): the
        next claim gets a new lease, and re-queues what was held under the old one (as other nodes do:
        this node need not wait for its watch to report the key gone)."""
        self._keyed.discard(lease_id)
        self._live.discard(lease_id)
        self._reclaim_at = 0.0
        for ttl, lid in list(self._leases.items()):
            if lid == lease_id:
                del self._leases[ttl]

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, min(self._leases, default=3) / 3))
            for ttl, lease_id in list(self._leases.items()):
                try:
                    left = await self._c().keepalive(lease_id)
                    if left <= 0:  # it expired (the node could not reach etcd for a whole TTL)
                        _log.warning("etcd store: lease %x expired; granting a new one", lease_id)
                        self._keyed.discard(lease_id)
                        self._leases[ttl] = await self._c().grant(ttl)  # keyed on its next use
                except StoreError as exc:
                    _log.warning("etcd store: lease keepalive failed: %s", exc)

    async def _compact_loop(self) -> None:
        """Compact etcd's history to what it was ``compact`` seconds ago (keys keep their values)."""
        every = self.options.compact
        marks: list[tuple[float, int]] = []
        while True:
            await asyncio.sleep(min(every, 60.0))
            c = self.client
            if c is None:
                return
            t = time.monotonic()
            marks.append((t, c.last_revision))
            old = [m for m in marks if m[0] <= t - every]
            if old:
                rev = old[-1][1]
                marks = [m for m in marks if m[0] > t - every]
                if rev > 0:
                    try:
                        await c.compact(rev)
                    except StoreError as exc:
                        _log.warning("etcd store: compaction to revision %d failed: %s", rev, exc)

    # -- queue -----------------------------------------------------------------------------------------
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        if not instances:
            return []
        t = _now()
        added = [False] * len(instances)
        parts: list[_Part] = []
        seen: set[str] = set()
        for idx, given in enumerate(instances):
            u, sid = given.uuid, given.schedule_id
            if "/" in u or (sid is not None and "/" in sid):
                raise ValueError(f"instance uuid {u!r} and schedule id {sid!r} must not contain '/'")
            if not -_PRIO_OFFSET <= given.priority < _PRIO_OFFSET:
                raise ValueError(f"priority {given.priority!r} of job {given.kind!r} is out of range (64-bit)")
            if u in seen:
                continue
            seen.add(u)
            rec = given.to_dict()
            rec.update(state=_SCHEDULED, seq=_next_seq(), lease_ts=None, cancel_requested=False)
            raw, hist = self._with_history(rec, [
                {"uuid": u, "kind": rec["kind"], "state": _CREATED, "ts": t, "attempt": rec["attempts"],
                 "node": node, "detail": None},
                {"uuid": u, "kind": rec["kind"], "state": _SCHEDULED, "ts": t + 1e-6, "attempt": rec["attempts"],
                 "node": node, "detail": None}])
            qkey = self._queue_key(rec, t)
            b = u.encode()
            compare = [absent(self._ki + b)]
            success = [op_put(self._ki + b, raw), op_put(qkey, raw), hist]
            if sid is not None:
                sb = sid.encode()
                success.append(op_put(self._ks + sb + b"/" + b, b""))
                if chained:
                    compare.append(absent(self._kx + sb))
                else:
                    success.append(op_delete(self._kx + sb))

            def done(r: Any, rev: int, idx: int = idx, qkey: bytes = qkey, raw: bytes = raw) -> None:
                if r.response_txn.succeeded:
                    added[idx] = True
                    (self._rw if qkey.startswith(self._kr) else self._dw).put(qkey, rev, raw)

            parts.append(_Part(op_txn(compare, success), done, 4 * len(raw) + 300))
        await self._send(parts)
        self._rw.trim(self.options.window)
        self._dw.trim(self.options.window)
        return added

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        if limit <= 0:
            return []
        return (await self.finish_and_claim(node, (), limit, lease))[1]

    async def _prepare_claims(self, node: str) -> None:
        """Before claiming: re-queue expired leases the watch knows of, move due delayed instances."""
        await self._ensure_watch()
        t = _now()
        if t >= self._reclaim_at and self._running:
            expired = self._expired(t)
            if expired:
                self._reclaim_at = t + 0.2
                self._reclaimed += await self._reclaim(node, expired)
                await self._flush_corrupt()
        if not self._dw.keys and not self._dw.complete:
            await self._read_delayed()
        if self._dw.keys and self._next_due() <= t:
            await self._promote(t)

    async def _read_ready(self) -> None:
        """Read the head of the ready index; one read at a time per node (a second caller waits for it)."""
        reading = self._ready_reading
        if reading is not None:
            await reading.wait()
            return
        reading = self._ready_reading = asyncio.Event()
        self._rw.begin()
        try:
            resp = await self._c().range(self._kr, prefix_end(self._kr), limit=self.options.window)
            self._rw.load(resp.kvs, resp.more, resp.header.revision, self._taken)
        finally:
            self._rw.end()
            self._ready_reading = None
            reading.set()

    async def _read_delayed(self) -> None:
        self._dw.begin()
        try:
            resp = await self._c().range(self._kd, prefix_end(self._kd), limit=self.options.window)
            self._dw.load(resp.kvs, resp.more, resp.header.revision)
        finally:
            self._dw.end()

    async def _promote(self, t: float) -> None:
        """Move due delayed instances into the ready index (any node may; a conflict just loses)."""
        while True:
            dw = self._dw
            due = 0
            while due < len(dw.keys) and due < _NEST and self._due(dw.keys[due]) <= t:
                due += 1
            if not due:
                if not dw.keys and not dw.complete:
                    await self._read_delayed()
                    continue
                return
            parts = []
            for key, rev, raw in dw.take(due):
                u = self._uuid_in(key, self._kd)
                got = None if u is None else self._decode_inst(key, raw, u)
                if got is None or got[0].get("state") != _SCHEDULED:
                    parts.append(self._set_aside_part(key, rev, raw, "delayed entry cannot be decoded or is not "
                                                                     "SCHEDULED: set aside", u))
                    continue
                rkey = self._both_queue_keys(got[0])[0]
                ikey = self._ki + u.encode()  # type: ignore[union-attr]

                def done(r: Any, rev: int, key: bytes = key, key_rev: int = rev, rkey: bytes = rkey,
                         raw: bytes = raw, u: str = u) -> None:  # type: ignore[assignment]
                    txn = r.response_txn
                    if txn.succeeded:
                        self._rw.put(rkey, rev, raw)
                    else:
                        self._record_changed(txn, key, key_rev, raw, u)

                # only while the record is the one queued (written with the entry or before it)
                parts.append(_Part(op_txn([mod_is(key, rev), mod_below(ikey, rev + 1)],
                                          [op_delete(key), op_put(rkey, raw)],
                                          [op_range(key, keys_only=True), op_range(ikey, keys_only=True)]), done,
                                   2 * len(raw) + 200))
            await self._send(parts)
            await self._flush_corrupt()
            if due < _NEST:
                return

    def _due(self, key: bytes) -> float:
        """The due time of a delayed key (0 if the key is malformed: it is set aside when promoted)."""
        ld = len(self._kd)
        try:
            return int(key[ld:ld + 17]) / 1e6
        except ValueError:
            return 0.0

    def _record_changed(self, txn: Any, key: bytes, key_rev: int, raw: bytes, uuid: str) -> None:
        """A claim or promotion of a queue entry failed; ``txn``'s failure branch read the entry's key and
        the instance record's (keys only: most failures are another node's claim). If the entry is still
        there but the record was written after it (replaced by bytes that cannot be decoded, or
        rewritten behind the store's back), the entry must not be used: it is set aside by the next
        :meth:`_flush_corrupt` (and the instance put back from its record if that is readable and waiting)."""
        kvs = txn.responses[-2].response_range.kvs
        if not kvs or kvs[0].mod_revision != key_rev:
            return
        ikvs = txn.responses[-1].response_range.kvs
        if ikvs and ikvs[0].mod_revision > key_rev:
            self._aside.append((key, key_rev, raw, uuid))

    def _claim_part(self, node: str, lease: float, lease_id: int, t: float, key: bytes, rev: int, raw: bytes,
                    got: tuple[dict[str, Any], Instance], out: list[Instance]) -> _Part:
        rec, inst = got
        u = rec["uuid"]
        b = u.encode()
        ikey = self._ki + b
        attempts = int(rec.get("attempts") or 0) + 1
        rec.update(state=_PROCESSING, attempts=attempts, started_ts=t, node=node, lease_ts=t + lease,
                   cancel_requested=False)
        # the instance handed to the worker: the record as claimed (built once, from the decode above)
        inst.state, inst.attempts, inst.started_ts, inst.node = State.PROCESSING, attempts, t, node
        inst.lease_ts, inst.cancel_requested = t + lease, False
        p = {"node": node, "lease_ts": t + lease, "cancel": False, "lease": lease_id}
        raw_i, hist = self._with_history(rec, [{"uuid": u, "kind": rec["kind"], "state": _PROCESSING, "ts": t,
                                                "attempt": attempts, "node": node, "detail": None}])
        success = [op_delete(key), op_put(ikey, raw_i), op_put(self._kp + b, _j(p)), hist]

        key_rev = rev

        def done(r: Any, rev: int) -> None:
            txn = r.response_txn
            if txn.succeeded:
                self._held[u] = _State(rec, rev, p, rev)
                if self._rev < rev:  # known before the watch reports it (a lapsed lease re-queues it)
                    self._running[u] = (rev, p)
                out.append(inst)
            elif not txn.responses[0].response_range.kvs:  # not taken: this node's etcd lease lapsed
                self._lease_lapsed(lease_id)
                self._rw.restore(key, key_rev, raw)
            else:
                self._record_changed(txn, key, key_rev, raw, u)

        # only while this node's lease lives (a claim under a lapsed lease would be re-queued at once),
        # and while the instance record is the one queued: written with the entry, or before it (a
        # record replaced since, by bytes that cannot be read or behind the store's back, is not run)
        lkey = self._lease_key(lease_id)
        return _Part(op_txn([mod_is(key, rev), present(lkey), mod_below(ikey, rev + 1)], success,
                            [op_range(lkey, keys_only=True), op_range(key, keys_only=True),
                             op_range(ikey, keys_only=True)]),
                     done, 3 * len(raw_i) + 400)

    def _finish_part(self, node: str, oc: Outcome, st: _State, t: float, oks: list[bool | None], idx: int,
                     fresh: dict[str, _State]) -> _Part:
        assert st.rec is not None and st.p is not None
        rec = dict(st.rec)
        u = oc.uuid
        b = u.encode()
        kind, attempts = rec["kind"], int(rec.get("attempts") or 0)
        cancel = bool(st.p.get("cancel"))
        hist = [{"uuid": u, "kind": kind, "state": oc.state.value, "ts": t, "attempt": attempts, "node": node,
                 "detail": oc.error or oc.detail}]
        success = [op_delete(self._kp + b)]
        rec["lease_ts"] = None
        qkey = None
        if oc.retry_at is not None and not cancel:
            rec.update(state=_SCHEDULED, ready_ts=oc.retry_at, error=oc.error, seq=_next_seq(),
                       cancel_requested=False)
            # the words of gojob_core.transitions.retry_detail: retries are counted without abandoned attempts
            hist.append({"uuid": u, "kind": kind, "state": _SCHEDULED, "ts": t + 1e-6, "attempt": attempts,
                         "node": node, "detail": f"retry {attempts - int(rec.get('abandoned') or 0)} of "
                                                 f"{rec.get('max_retries', 0)} in "
                                                 f"{max(0.0, oc.retry_at - (t + 1e-6)):.3f} s"})
            qkey = self._queue_key(rec, t)
        else:
            state = oc.state.value
            if oc.retry_at is not None:  # a cancel arrived while the failed attempt ended: final
                state = _CANCELED
                hist.append({"uuid": u, "kind": kind, "state": _CANCELED, "ts": t + 1e-6, "attempt": attempts,
                             "node": node, "detail": "canceled"})
            rec.update(state=state, result=oc.result, error=oc.error, finished_ts=t, cancel_requested=cancel)
        raw, put_hist = self._with_history(rec, hist)
        success += [put_hist, op_put(self._ki + b, raw)]
        if qkey is not None:
            success.append(op_put(qkey, raw))

        def done(r: Any, rev: int) -> None:
            txn = r.response_txn
            if txn.succeeded:
                oks[idx] = True
                self._held.pop(u, None)
                self._running.pop(u, None)
                if qkey is not None:
                    (self._rw if qkey.startswith(self._kr) else self._dw).put(qkey, rev, raw)
            else:
                fresh[u] = self._state_from(txn.responses[0], txn.responses[1])

        return _Part(op_txn([mod_is(self._ki + b, st.i_rev), mod_is(self._kp + b, st.p_rev)], success,
                            [op_range(self._ki + b), op_range(self._kp + b)]), done, 3 * len(raw) + 400)

    async def _states_for(self, node: str, uuids: Sequence[str]) -> dict[str, _State]:
        """Known states of instances this node holds; read the others (one round trip)."""
        states: dict[str, _State] = {}
        missing = []
        for u in uuids:
            st = self._held.get(u)
            if st is None or st.rec is None or st.p is None or st.p.get("node") != node:
                missing.append(u)
            else:
                states[u] = st
        if missing:
            states.update(await self._read(missing))
        return states

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        return (await self.finish_and_claim(node, outcomes, 0, 0.0))[0]

    async def finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                               lease: float) -> tuple[list[bool], list[Instance]]:
        """Finish a batch and claim up to ``limit`` more in one request (nested transactions)."""
        if not outcomes and limit <= 0:
            return [], []
        return await self._finish_and_claim(node, outcomes, limit, lease)

    async def _finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                                lease: float) -> tuple[list[bool], list[Instance]]:
        n = len(outcomes)
        oks: list[bool | None] = [None] * n
        claimed: list[Instance] = []
        states = await self._states_for(node, [oc.uuid for oc in outcomes]) if n else {}
        if limit > 0:
            await self._prepare_claims(node)
        lease_id = await self._lease_for(lease) if limit > 0 else 0
        pending = list(range(n))
        rounds = 0
        stop_claims = False  # a suspect instance is (or ends) the claim
        while True:
            rounds += 1
            t = _now()
            fresh: dict[str, _State] = {}
            parts: list[_Part] = []
            seen: set[str] = set()
            for idx in pending:
                oc = outcomes[idx]
                st = states.get(oc.uuid)
                if oc.uuid in seen:  # the same instance twice in one batch: the first one counts
                    oks[idx] = False
                    continue
                seen.add(oc.uuid)
                # only while this node holds it, and in the outcome's attempt: an attempt that outlived
                # its lease (the instance re-queued and claimed again, even by this node) writes nothing
                if st is None or st.rec is None or st.rec.get("state") != _PROCESSING or st.p is None \
                        or st.p.get("node") != node \
                        or (oc.attempt is not None and st.rec.get("attempts") != oc.attempt):
                    oks[idx] = False
                    continue
                parts.append(self._finish_part(node, oc, st, t, oks, idx, fresh))
            taken: list[tuple[bytes, int, bytes]] = []
            need = limit - len(claimed)
            alone_first = False
            if need > 0 and rounds <= 8 and not stop_claims:
                if not self._rw.keys and (not self._rw.complete or not self._watch_ok
                                          or time.monotonic() - self._rw.read_at > 1.0):
                    await self._read_ready()
                taken = self._rw.take(min(need, _NEST - len(parts)))
                nclaims = 0
                for i, (key, rev, raw) in enumerate(taken):
                    u = self._uuid_in(key, self._kr)
                    if u is None:
                        parts.append(self._set_aside_part(key, rev, raw, "ready key is malformed: set aside", None))
                        continue
                    # an entry for an instance this node holds or finishes is stale (read before its
                    # claim); one instance twice in a request would fail it whole (duplicate key)
                    if u in seen or u in self._held:
                        continue
                    seen.add(u)
                    got = self._decode_inst(key, raw, u)
                    if got is None or got[0].get("state") != _SCHEDULED:
                        parts.append(self._set_aside_part(key, rev, raw, "ready entry cannot be decoded or is not "
                                                                         "SCHEDULED: set aside", u))
                        continue
                    if got[1].abandoned > 0:
                        # a suspect (an attempt of it was abandoned: it may kill its node) is handed out
                        # alone: first, it is the whole claim; after others, the claim ends before it.
                        # Either way what follows it stays queued, in order.
                        rest = i + 1 if not (claimed or nclaims) else i
                        for k, r, v in taken[rest:]:
                            self._rw.restore(k, r, v)
                        taken = taken[:rest]
                        if rest == i:
                            stop_claims = True
                            break
                        alone_first = True
                    self._taken[key] = math.inf
                    nclaims += 1
                    parts.append(self._claim_part(node, lease, lease_id, t, key, rev, raw, got, claimed))
                    if alone_first:
                        break
            if not parts:
                break
            try:
                await self._send(parts)
            except BaseException:
                for key, rev, raw in taken:  # not sent or not answered: keep them in view
                    self._taken.pop(key, None)
                    self._rw.restore(key, rev, raw)
                raise
            done_rev = self._c().last_revision
            for key, _, _ in taken:
                self._taken[key] = done_rev
            if alone_first and claimed:
                stop_claims = True
            if self._aside:  # entries that must not be used: set them aside before the next round
                await self._flush_corrupt()
            pending = [idx for idx in pending if oks[idx] is None]
            for idx in pending:
                states[outcomes[idx].uuid] = fresh.get(outcomes[idx].uuid, states[outcomes[idx].uuid])
            if rounds > 8 and pending:
                raise StoreError(f"etcd store: finish of {len(pending)} instance(s) kept conflicting")
            if not pending and (len(claimed) >= limit or not taken or stop_claims):
                break
        await self._flush_corrupt()
        return [bool(x) for x in oks], claimed

    async def wait_ready(self, timeout: float) -> None:
        await self._ensure_watch()
        t = _now()
        if self._rw.keys or not self._rw.complete or self._next_due() <= t \
                or (not self._dw.keys and not self._dw.complete):
            return  # work now, or a queue head to read again
        if self._running and t >= self._reclaim_at and self._expired(t):
            return
        deadline = min(self._next_due(), max(self._next_expiry() + 0.01, self._reclaim_at)) - t
        wait = min(timeout, max(0.0, deadline))
        if not self._watch_ok:
            wait = min(wait, 0.5)
        if wait <= 0:
            return
        ev = self._wake_ev
        with anyio.move_on_after(wait):
            await ev.wait()

    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        if not uuids:
            return LeaseReport()
        lease_id = await self._lease_for(lease)
        lost: set[str] = set()
        cancel: set[str] = set()
        states = await self._states_for(node, list(dict.fromkeys(uuids)))
        pending = list(states)
        for _ in range(5):
            t = _now()
            parts = []
            retry: dict[str, _State] = {}
            for u in pending:
                st = states[u]
                if st.p is None or st.p.get("node") != node:
                    lost.add(u)
                    continue
                p = dict(st.p, lease_ts=t + lease, lease=lease_id)  # a lease granted anew is named here
                b = u.encode()

                def done(r: Any, rev: int, u: str = u, st: _State = st, p: dict[str, Any] = p) -> None:
                    txn = r.response_txn
                    if txn.succeeded:
                        self._held[u] = st._replace(p=p, p_rev=rev)
                        if p.get("cancel"):
                            cancel.add(u)
                    else:
                        kvs = txn.responses[0].response_range.kvs
                        np = self._decode_p(kvs[0].key, kvs[0].value) if kvs else None
                        retry[u] = st._replace(p=np, p_rev=kvs[0].mod_revision if kvs else 0)

                parts.append(_Part(op_txn([mod_is(self._kp + b, st.p_rev)], [op_put(self._kp + b, _j(p))],
                                          [op_range(self._kp + b)]), done, 300))
            await self._send(parts)
            states.update(retry)
            pending = list(retry)
            if not pending:
                break
        return LeaseReport(frozenset(lost), frozenset(cancel))

    async def _reclaim(self, node: str, uuids: Sequence[str], live: set[int] | None = None) -> list[Instance]:
        """Re-queue (or cancel) instances whose lease ended or whose node's etcd lease is gone."""
        out: list[Instance] = []
        states = await self._read(list(uuids))
        if live is None:  # the caller's fresh scan, else one now (the watch's view may lag)
            live = await self._live_leases()
        self._live = live
        t = _now()
        parts = []
        for u, st in states.items():
            # what was read is newer than what the watch told: correct the mirror
            if st.p is None:
                self._running.pop(u, None)
            else:
                self._running[u] = (st.p_rev, st.p)
            rec, p = st.rec, st.p
            if rec is None and p is not None and not self._holds(p, live, t):
                # a running entry whose instance record cannot be read (reported) or is gone: nothing
                # can re-queue or finish it; moved aside (reported) so that it is not read again and again
                why = "cannot be decoded" if st.i_rev else "is missing"
                kv = (await self._c().range(self._kp + u.encode())).kvs  # its bytes, to keep them as they are
                if kv and kv[0].mod_revision == st.p_rev:
                    parts.append(self._set_aside_part(kv[0].key, st.p_rev, kv[0].value,
                                                      f"running entry whose instance record {why}: set aside", None))
                continue
            if rec is None or p is None or rec.get("state") != _PROCESSING:
                continue
            if self._holds(p, live, t):
                continue  # still held
            b = u.encode()
            lost_node = p.get("node") or "?"
            rec = dict(rec, lease_ts=None)
            attempts = int(rec.get("attempts") or 0)
            abandoned = int(rec.get("abandoned") or 0) + 1
            max_abandons = rec.get("max_abandons", DEFAULT_MAX_ABANDONS)  # a record from before the field
            qkey = None
            if p.get("cancel"):
                rec.update(state=_CANCELED, finished_ts=t, cancel_requested=True)
                h = {"uuid": u, "kind": rec["kind"], "state": _CANCELED, "ts": t, "attempt": attempts, "node": node,
                     "detail": f"canceled; node {lost_node} lost its lease"}
            elif max_abandons is not None and abandoned >= max_abandons:
                # abandoned too often (a job that kills its node must not crash-loop the cluster)
                msg = abandon_limit_message(attempts, lost_node, max_abandons)
                rec.update(state=_TERMINATED, abandoned=abandoned, finished_ts=t, error=msg, cancel_requested=False)
                h = {"uuid": u, "kind": rec["kind"], "state": _TERMINATED, "ts": t, "attempt": attempts,
                     "node": node, "detail": msg}
            else:
                rec.update(state=_SCHEDULED, abandoned=abandoned, seq=_next_seq(), cancel_requested=False)
                h = {"uuid": u, "kind": rec["kind"], "state": _SCHEDULED, "ts": t, "attempt": attempts, "node": node,
                     "detail": f"attempt {attempts} abandoned: node {lost_node} lost its lease; re-queued"}
                qkey = self._queue_key(rec, t)
            raw, hist = self._with_history(rec, [h])
            success = [op_delete(self._kp + b), op_put(self._ki + b, raw), hist]
            if qkey is not None:
                success.append(op_put(qkey, raw))

            def done(r: Any, rev: int, rec: dict[str, Any] = rec, qkey: bytes | None = qkey, raw: bytes = raw,
                     u: str = u) -> None:
                if r.response_txn.succeeded:
                    self._running.pop(u, None)
                    self._held.pop(u, None)
                    if qkey is not None:
                        (self._rw if qkey.startswith(self._kr) else self._dw).put(qkey, rev, raw)
                        out.append(self._instance(rec))

            # (a heartbeat meanwhile changes the running entry: then it is not taken)
            parts.append(_Part(op_txn([mod_is(self._ki + b, st.i_rev), mod_is(self._kp + b, st.p_rev)], success),
                               done, 3 * len(raw) + 400))
        await self._send(parts)
        if out:
            self._wake()
        return out

    async def reclaim_expired(self, node: str) -> list[Instance]:
        t = _now()
        live = await self._live_leases()
        expired = []
        async for kv in self._scan(self._kp, prefix_end(self._kp)):
            p = self._decode_p(kv.key, kv.value)
            if p is not None and not self._holds(p, live, t):
                expired.append(kv.key[len(self._kp):].decode())
        found = await self._reclaim(node, expired, live) if expired else []
        await self._flush_corrupt()
        earlier, self._reclaimed = self._reclaimed, []
        return earlier + found

    async def release(self, node: str, uuids: Sequence[str]) -> None:
        if not uuids:
            return
        states = await self._states_for(node, list(dict.fromkeys(uuids)))
        pending = list(states)
        for _ in range(5):
            t = _now()
            fresh: dict[str, _State] = {}
            parts = []
            for u in pending:
                st = states[u]
                if st.rec is None or st.p is None or st.rec.get("state") != _PROCESSING or st.p.get("node") != node:
                    continue
                b = u.encode()
                a = max(0, int(st.rec.get("attempts") or 0) - 1)
                rec = dict(st.rec, state=_SCHEDULED, attempts=a, lease_ts=None, seq=_next_seq(),
                           cancel_requested=False)
                raw, hist = self._with_history(rec, [{"uuid": u, "kind": rec["kind"], "state": _SCHEDULED, "ts": t,
                                                      "attempt": a, "node": node,
                                                      "detail": f"released by node {node}"}])
                qkey = self._queue_key(rec, t)
                success = [op_delete(self._kp + b), op_put(self._ki + b, raw), op_put(qkey, raw), hist]

                def done(r: Any, rev: int, u: str = u, qkey: bytes = qkey, raw: bytes = raw) -> None:
                    txn = r.response_txn
                    if txn.succeeded:
                        self._held.pop(u, None)
                        self._running.pop(u, None)
                        (self._rw if qkey.startswith(self._kr) else self._dw).put(qkey, rev, raw)
                    else:
                        fresh[u] = self._state_from(txn.responses[0], txn.responses[1])

                parts.append(_Part(op_txn([mod_is(self._ki + b, st.i_rev), mod_is(self._kp + b, st.p_rev)],
                                          success, [op_range(self._ki + b), op_range(self._kp + b)]),
                                   done, 3 * len(raw) + 400))
            await self._send(parts)
            states.update(fresh)
            pending = list(fresh)
            if not pending:
                break
        self._wake()

    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        c = self._c()
        first = (await self._read([uuid]))[uuid]
        await self._flush_corrupt()
        if first.rec is None:
            if first.i_rev:
                raise CorruptRecordError((self._ki + uuid.encode()).decode(), "cannot be decoded (set aside)")
            return None
        sid = first.rec.get("schedule_id")
        head = []
        targets = [uuid]
        if sid:
            sb = str(sid).encode()
            head.append(op_put(self._kx + sb, b"1"))
            base = self._ks + sb + b"/"
            key = base
            while True:
                page = await c.range(key, prefix_end(base), limit=_PAGE, keys_only=True)
                targets += [kv.key[len(base):].decode() for kv in page.kvs]
                if not page.more or not page.kvs:
                    break
                key = page.kvs[-1].key + b"\0"
            targets = list(dict.fromkeys(targets))
        states = await self._read(targets) if len(targets) > 1 else {uuid: first}
        pending = list(states)
        for _ in range(5):
            t = _now()
            fresh: dict[str, _State] = {}
            parts = []
            for u in pending:
                st = states[u]
                rec = st.rec
                if rec is None:
                    continue
                b = u.encode()
                failure = [op_range(self._ki + b), op_range(self._kp + b)]

                def done(r: Any, rev: int, u: str = u, st: _State = st) -> None:
                    txn = r.response_txn
                    if not txn.succeeded:
                        fresh[u] = self._state_from(txn.responses[0], txn.responses[1])

                if rec.get("state") in _WAITING:
                    new = dict(rec, state=_CANCELED, finished_ts=t)
                    rkey, dkey = self._both_queue_keys(rec)
                    self._rw.delete(rkey)
                    self._dw.delete(dkey)
                    raw, hist = self._with_history(new, [{"uuid": u, "kind": rec["kind"], "state": _CANCELED,
                                                          "ts": t, "attempt": rec.get("attempts", 0), "node": node,
                                                          "detail": "canceled before it ran"}])
                    success = [op_put(self._ki + b, raw), op_delete(rkey), op_delete(dkey), hist]
                    parts.append(_Part(op_txn([mod_is(self._ki + b, st.i_rev)], success, failure), done, 2000))
                elif rec.get("state") == _PROCESSING and st.p is not None and not st.p.get("cancel"):
                    p = dict(st.p, cancel=True)
                    parts.append(_Part(op_txn([mod_is(self._kp + b, st.p_rev), mod_is(self._ki + b, st.i_rev)],
                                              [op_put(self._kp + b, _j(p))], failure), done, 400))
            await self._send(parts, head)
            head = []
            states.update(fresh)
            pending = list(fresh)
            if not pending:
                break
        return await self.get_instance(uuid)

    async def cancel_notifications(self) -> AsyncIterator[str]:
        await self._ensure_watch()
        send, receive = anyio.create_memory_object_stream[str](1000)
        self._cancel_subs.append(send)
        try:
            async with receive:
                async for uuid in receive:
                    yield uuid
        finally:
            if send in self._cancel_subs:
                self._cancel_subs.remove(send)
            send.close()

    async def get_instance(self, uuid: str) -> Instance | None:
        b = uuid.encode()
        resp = await self._c().txn([op_range(self._ki + b), op_range(self._kp + b)])
        st = self._state_from(resp.responses[0], resp.responses[1])
        await self._flush_corrupt()
        if st.rec is None:
            if st.i_rev:
                raise CorruptRecordError((self._ki + b).decode(), "cannot be decoded (set aside)")
            return None
        return self._instance(st.rec, st.p)

    async def _scan(self, key: bytes, end: bytes, *, desc: bool = False, keys_only: bool = False,
                    stop: Callable[[int], bool] | None = None) -> AsyncIterator[Any]:
        """Every key in ``[key, end)``, a page at a time at one revision (gRPC's receive limit)."""
        c = self._c()
        lo, hi, rev = key, end, 0
        got = 0
        while True:
            page = await c.range(lo, hi, limit=_PAGE, desc=desc, keys_only=keys_only, revision=rev)
            rev = rev or page.header.revision
            for kv in page.kvs:
                yield kv
            got += len(page.kvs)
            if not page.more or not page.kvs or (stop is not None and stop(got)):
                return
            if desc:
                hi = page.kvs[-1].key
            else:
                lo = page.kvs[-1].key + b"\0"

    async def _instances(self, query: Query) -> list[tuple[Instance, int, Any]]:
        """(instance, revision of its record, its history pointers) of each match, oldest first."""
        found: list[tuple[Instance, int, Any]] = []
        if query.uuid is not None:
            b = query.uuid.encode()
            resp = await self._c().txn([op_range(self._ki + b), op_range(self._kp + b)])
            st = self._state_from(resp.responses[0], resp.responses[1])
            if st.rec is not None:
                inst = self._instance(st.rec, st.p)
                if query.matches_instance(inst):
                    found.append((inst, st.i_rev, st.rec.get("h")))
        else:
            running: dict[bytes, dict[str, Any] | None] = {}
            async for kv in self._scan(self._kp, prefix_end(self._kp)):
                running[kv.key[len(self._kp):]] = self._decode_p(kv.key, kv.value)
            li = len(self._ki)
            async for kv in self._scan(self._ki, prefix_end(self._ki)):
                rec = self._decode_rec(kv.key, kv.value)
                if rec is None:
                    continue
                inst = self._instance(rec, running.get(kv.key[li:]))
                if query.matches_instance(inst):
                    found.append((inst, kv.mod_revision, rec.get("h")))
            found.sort(key=lambda x: (x[0].created_ts, x[0].uuid))
        await self._flush_corrupt()
        return found

    async def list_instances(self, query: Query) -> list[Instance]:
        return query.apply_limit([inst for inst, _, _ in await self._instances(query)])

    async def clear_instances(self, query: Query) -> int:
        found = [f for f in await self._instances(query) if f[0].state is not State.PROCESSING]
        removed = [0]
        parts = []
        for inst, rev, pointers in found:
            b = inst.uuid.encode()
            rkey, dkey = self._both_queue_keys({"ready_ts": inst.ready_ts, "seq": inst.seq, "uuid": inst.uuid,
                                                "kind": inst.kind, "priority": inst.priority})
            self._rw.delete(rkey)
            self._dw.delete(dkey)
            ops = [op_delete(self._ki + b), op_delete(rkey), op_delete(dkey)]
            if pointers:  # its history stays: where its records are is kept with the record gone
                ops.append(op_put(self._kh + b + f"/{_tag()}".encode(), _j(pointers)))
            if inst.schedule_id is not None:
                ops.append(op_delete(self._ks + inst.schedule_id.encode() + b"/" + b))

            def done(r: Any, rev: int) -> None:
                if r.response_txn.succeeded:
                    removed[0] += 1

            parts.append(_Part(op_txn([mod_is(self._ki + b, rev)], ops), done, 300))
        await self._send(parts)
        return removed[0]

    async def queue_counts(self) -> dict[str, int]:
        counts, _ = await self.queue_stats()
        return counts

    async def oldest_ready(self) -> dict[str, float]:
        _, oldest = await self.queue_stats()
        return oldest

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        """Queued instances per kind, and per kind the ready time of the oldest due one, from the
        ready and delayed index keys alone (never the records: a store may hold millions)."""
        counts: dict[str, int] = {}
        oldest: dict[str, float] = {}
        now_us = int(time.time() * 1e6)
        # ready keys: {prio}/{ready}/{seq}/{uuid}/{kind}; delayed keys: {ready}/{seq}/{uuid}/{kind}
        for base, skip, at in ((self._kr, 4, 1), (self._kd, 3, 0)):
            async for kv in self._scan(base, prefix_end(base), keys_only=True):
                parts = kv.key[len(base):].decode(errors="replace").split("/", skip)
                if len(parts) <= skip:
                    continue
                kind = parts[skip]
                counts[kind] = counts.get(kind, 0) + 1
                try:
                    ready_us = int(parts[at])
                except ValueError:
                    continue
                if ready_us <= now_us and ready_us / 1e6 < oldest.get(kind, math.inf):
                    oldest[kind] = ready_us / 1e6
        return counts, oldest

    # -- history and logs ----------------------------------------------------------------------------
    def _time_range(self, by_uuid: bytes | None, by_time: bytes, query: Query) -> tuple[bytes, bytes]:
        """The keys of the query's time range: of one instance under ``by_uuid`` (``{uuid}/{us}/..``)
        when the query names one and the records have such keys, else of all under ``by_time``."""
        lo = "" if query.since_ts is None else _us(query.since_ts - 2e-6)
        hi = None if query.until_ts is None else f"{max(0, int(query.until_ts * 1e6) + 2):017d}"
        base = by_uuid + query.uuid.encode() + b"/" if query.uuid is not None and by_uuid is not None else by_time
        return base + lo.encode(), (base + hi.encode()) if hi is not None else prefix_end(base)

    async def _records(self, by_uuid: bytes | None, by_time: bytes, query: Query, decode: Callable[[Any], Any],
                       many: bool) -> list[tuple[bytes, Any, list[Any]]]:
        """(key, decoded list of all records in it, the matching ones), in time order."""
        lo, hi = self._time_range(by_uuid, by_time, query)
        desc = query.limit is not None and (query.uuid is None or by_uuid is None)
        matched = [0]
        limit = query.limit or 0
        out: list[tuple[bytes, Any, list[Any]]] = []
        async for kv in self._scan(lo, hi, desc=desc, stop=(lambda _: matched[0] > limit + 10) if desc else None):
            found = self._matching(kv, query, decode, many)
            if found is not None:
                matched[0] += len(found[2])
                out.append(found)
        await self._flush_corrupt()
        if desc:
            out.reverse()
        return out

    def _matching(self, kv: Any, query: Query, decode: Callable[[Any], Any],
                  many: bool) -> tuple[bytes, Any, list[Any]] | None:
        """(key, every record in the key, those the query matches), or None: no match, or the key cannot
        be decoded (then it is reported)."""
        try:
            raw = _loads(kv.value)
            recs = [decode(d) for d in (raw if many else [raw])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._report(kv.key, f"{type(exc).__name__}: {exc}", kv.value)
            return None
        hits = [r for r in recs if query.matches_record(r)]
        return (kv.key, recs, hits) if hits else None

    async def _history(self, query: Query) -> list[tuple[bytes, Any, list[Any]]]:
        """Like :meth:`_records` for state records: those of one instance are found through the
        pointers in its record (and those its cleared records left), the others by time."""
        if query.uuid is None:
            return await self._records(None, self._kt, query, StateRecord.from_dict, True)
        keys = await self._history_keys(query)
        if keys is None:  # its record cannot be decoded (reported): look through the records by time
            return await self._records(None, self._kt, query, StateRecord.from_dict, True)
        out: list[tuple[bytes, Any, list[Any]]] = []
        c = self._c()
        for i in range(0, len(keys), _NEST):
            resp = await c.txn([op_range(k) for k in keys[i:i + _NEST]])
            for reply in resp.responses:
                for kv in reply.response_range.kvs:  # none: cleared meanwhile
                    found = self._matching(kv, query, StateRecord.from_dict, True)
                    if found is not None:
                        out.append(found)
        await self._flush_corrupt()
        return out

    async def _history_keys(self, query: Query) -> list[bytes] | None:
        """The history keys of one instance within the query's time range, in time order; None when
        its record, or what a cleared record left, cannot be decoded."""
        assert query.uuid is not None
        b = query.uuid.encode()
        base = self._kh + b + b"/"
        resp = await self._c().txn([op_range(self._ki + b), op_range(base, prefix_end(base))])
        pointers: list[str] = []
        ok = True
        for kv in [*resp.responses[0].response_range.kvs, *resp.responses[1].response_range.kvs]:
            record = kv.key.startswith(self._ki)
            if not record and kv.key.count(b"/", len(base)):
                continue  # h/{uuid}/{ts}/{tag}: the second history key of a version before pointers
            try:
                got = _loads(kv.value)
                if record:
                    if not isinstance(got, dict):
                        raise ValueError("the instance record is not an object")
                    if "h" not in got:  # written before records pointed to their history: look by time
                        return None
                    got = got["h"] or []
                if not isinstance(got, list) or not all(isinstance(x, str) and x.count("/") == 1 for x in got):
                    raise ValueError("history pointers are not a list of 'time/tag' strings")
                pointers += got
            except (ValueError, TypeError, AttributeError) as exc:
                self._report(kv.key, f"{type(exc).__name__}: {exc}", kv.value)
                ok = False
        if not ok:
            await self._flush_corrupt()
            return None
        lo, hi = self._time_range(None, self._kt, query)
        keys = set()
        for ptr in pointers:
            us, tag = ptr.split("/")
            key = self._kt + f"{us}/{query.uuid}/{tag}".encode()
            if lo <= key < hi:
                keys.add(key)
        return sorted(keys)

    async def lookup_history(self, query: Query) -> list[StateRecord]:
        found = [r for _, _, hits in await self._history(query) for r in hits]
        found.sort(key=lambda r: r.ts)
        return query.apply_limit(found)

    async def _clear(self, by_uuid: bytes | None, by_time: bytes, query: Query, decode: Callable[[Any], Any],
                     many: bool) -> int:
        """Remove the matching records: under ``by_time`` and, where records have a second key per
        instance (logs), under ``by_uuid`` (state records have one key: ``by_uuid`` is None)."""
        found = await (self._history(query) if by_uuid is None else self._records(by_uuid, by_time, query, decode,
                                                                                   many))
        ops: list[Any] = []
        removed = 0
        for key, recs, hits in found:
            removed += len(hits)
            if key.startswith(by_time):  # {us}/{uuid}/{tag}
                us, rest = key[len(by_time):].decode().split("/", 1)
                u, tag = rest.rsplit("/", 1)
            else:  # {uuid}/{us}/{tag}
                assert by_uuid is not None and query.uuid is not None
                u = query.uuid
                us, tag = key[len(by_uuid) + len(u.encode()) + 1:].decode().split("/", 1)
            pair = [by_time + f"{us}/{u}/{tag}".encode()]
            if by_uuid is not None:
                pair.append(by_uuid + f"{u}/{us}/{tag}".encode())
            keep = [r for r in recs if r not in hits]
            for k in pair:
                ops.append(op_put(k, _j([r.to_dict() for r in keep]) if many else b"") if keep else op_delete(k))
        for i in range(0, len(ops), _NEST):
            await self._c().txn(ops[i:i + _NEST])
        return removed

    async def clear_history(self, query: Query) -> int:
        removed = await self._clear(None, self._kt, query, StateRecord.from_dict, True)
        q = query
        if q.uuid is not None and q.kind is None and q.states is None and q.since_ts is None \
                and q.until_ts is None and q.limit is None:
            # all of one instance's history is gone: so are the pointers its cleared records left
            base = self._kh + q.uuid.encode() + b"/"
            await self._c().txn([op_delete(base, prefix_end(base))])
        return removed

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        ops = []
        for rec in records:
            us, tag, raw = _us(rec.ts), _tag(), _j(rec.to_dict())
            ops.append(op_put(self._kl + f"{rec.uuid}/{us}/{tag}".encode(), raw))
            ops.append(op_put(self._km + f"{us}/{rec.uuid}/{tag}".encode(), raw))
        parts = [_Part(op, lambda r, rev: None, 2 * op.request_put.ByteSize()) for op in ops]
        await self._send(parts)

    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        found = [r for _, _, hits in await self._records(self._kl, self._km, query, LogRecord.from_dict, False)
                 for r in hits]
        found.sort(key=lambda r: r.ts)
        return query.apply_limit(found)

    async def clear_logs(self, query: Query) -> int:
        return await self._clear(self._kl, self._km, query, LogRecord.from_dict, False)

    async def corrupt_records(self) -> list[CorruptRecord]:
        """Records set aside because they could not be decoded (or could not be used: a queue or running
        entry whose instance record cannot be read). ``key`` and ``raw`` are the record's key and bytes as
        text, losslessly: ``raw.encode("utf-8", "surrogateescape")`` gives back its bytes exactly."""
        await self._flush_corrupt()
        reports = [kv async for kv in self._scan(self._kz, prefix_end(self._kz))]
        if not reports:  # the usual answer (the metrics ask every few seconds): one request
            return []
        exact = {kv.key[len(self._kzr):]: kv.value async for kv in self._scan(self._kzr, prefix_end(self._kzr))}
        out = []
        for kv in reports:
            try:
                d = _loads(kv.value)
                raw = exact.get(kv.key[len(self._kz):])
                out.append(CorruptRecord(str(d["key"]), str(d["reason"]),
                                         _text(raw) if raw is not None else str(d.get("raw", ""))))
            except (ValueError, KeyError, TypeError):
                out.append(CorruptRecord(_text(kv.key), "unreadable report", _text(kv.value)))
        return sorted(out, key=lambda c: c.key)

    async def drop_corrupt_record(self, key: str) -> bool:
        """Forget a record set aside (``key`` as :meth:`corrupt_records` reports it): its report and kept
        bytes are deleted, and so is the record itself if it was left in place and still holds exactly
        those bytes (one rewritten since is left alone). False if no such record is set aside."""
        await self._flush_corrupt()
        try:
            kb = _bytes(key)
        except UnicodeEncodeError:
            return False
        z, zr = self._zkey(kb), self._zrkey(kb)
        c = self._c()
        resp = await c.txn([op_range(z), op_range(zr)])
        zkv, zrkv = resp.responses[0].response_range.kvs, resp.responses[1].response_range.kvs
        if not zkv:
            if kb.startswith(self._kz) and (await c.range(kb)).kvs:  # an unreadable report, named by its key
                await c.txn([op_delete(kb), op_delete(self._kzr + kb[len(self._kz):])])
                return True
            return False
        ops = [op_delete(z), op_delete(zr)]
        try:
            d = _loads(zkv[0].value)
            in_place = d.get("in_place", True)  # a report of a version before: try (the bytes decide)
            raw = zrkv[0].value if zrkv else _bytes(str(d.get("raw", "")))
        except (ValueError, TypeError, AttributeError, UnicodeEncodeError):
            in_place, raw = False, b""
        if in_place and not kb.startswith(self._kz):
            ops.append(op_txn([value_is(kb, raw), present(kb)], [op_delete(kb)]))
        await c.txn(ops)
        self._reported.pop(kb, None)
        return True
