"""Where the store keeps what in etcd: the key layout under the prefix, and the parts that go into keys.

``{p}`` is the key prefix (``/gojob/`` by default); the plugin README explains each key.

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
``{p}x/{schedule_id}``                                 a canceled occurrence chain (a chained occurrence is refused)
``{p}r/{schedule_id}``                                 a schedule record (JSON; its version is the key's mod revision)
``{p}z/{sha1(key)}``                                   the report of a record that could not be decoded (the record
                                                       itself is left where it is, or moved aside if it was a queue
                                                       or running entry)
``{p}zr/{sha1(key)}``                                  that record's bytes, exactly as they were
=====================================================  ==========================================================

The clocks and counters of this module are per process: :func:`now` (the time of every change, strictly
increasing so that history keeps its order), :func:`next_seq` (FIFO order in the queue) and
:func:`new_tag` (what makes a history or log key unique).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time

from gojob_core import Instance

__all__ = ["PRIO_OFFSET", "Keys", "new_tag", "next_seq", "now", "prio", "text", "to_bytes", "us"]

#: added to a priority in a ready key, so that etcd's byte order is numeric order (negative ones first)
PRIO_OFFSET = 2**63

_last_ts = 0.0
_last_seq = 0


def now() -> float:
    """Wall-clock seconds, strictly increasing within this process (history keeps its order)."""
    global _last_ts
    t = time.time()
    if t <= _last_ts:
        t = _last_ts + 2e-6
    _last_ts = t
    return t


def next_seq() -> int:
    """A FIFO sequence number: nanoseconds since the epoch, strictly increasing within this process."""
    global _last_seq
    s = time.time_ns()
    if s <= _last_seq:
        s = _last_seq + 1
    _last_seq = s
    return s


_TAG = os.urandom(4).hex()
_tags = itertools.count(1)


def new_tag() -> str:
    """A tag no other key of this process or of another process has (random per process, then counted)."""
    return f"{_TAG}{next(_tags):x}"


def us(ts: float) -> str:
    """A time as it appears in keys: microseconds since the epoch, 17 digits."""
    return f"{max(0, int(ts * 1e6)):017d}"


def prio(p: int) -> str:
    """A priority as it appears in ready keys (offset by 2**63, 20 digits)."""
    return f"{p + PRIO_OFFSET:020d}"


def text(b: bytes) -> str:
    """Bytes as text, losslessly: ``text(b).encode("utf-8", "surrogateescape") == b`` (the key and the
    bytes of a corrupt record as ``EtcdStore.corrupt_records`` reports them)."""
    return b.decode("utf-8", "surrogateescape")


def to_bytes(s: str) -> bytes:
    """The inverse of :func:`text`."""
    return s.encode("utf-8", "surrogateescape")


class Keys:
    """The key bases of one prefix (see the module's table), and the keys built from them and read back."""

    __slots__ = ("cleared", "delayed", "history", "instance", "kept", "liveness", "logs", "logs_by_time", "prefix",
                 "queue", "ready", "report", "running", "schedule", "schedule_canceled", "schedule_record")

    def __init__(self, prefix: str) -> None:
        p = prefix.encode()
        self.prefix = p
        self.instance = p + b"i/"
        self.queue = p + b"q/"  # what the watch covers: the indexes below
        self.ready = p + b"q/r/"
        self.delayed = p + b"q/d/"
        self.running = p + b"q/p/"
        self.liveness = p + b"q/n/"
        self.history = p + b"t/"
        self.cleared = p + b"h/"
        self.logs = p + b"l/"
        self.logs_by_time = p + b"m/"
        self.schedule = p + b"s/"
        self.schedule_canceled = p + b"x/"
        self.schedule_record = p + b"r/"
        self.report = p + b"z/"
        self.kept = p + b"zr/"

    # -- the queue ---------------------------------------------------------------------------------------
    def queue_keys(self, inst: Instance) -> tuple[bytes, bytes]:
        """The ready key and the delayed key an instance is queued under (one of them, by its ready time)."""
        tail = f"{us(inst.ready_ts)}/{inst.seq:020d}/{inst.uuid}/{inst.kind}"
        return self.ready + f"{prio(inst.priority)}/{tail}".encode(), self.delayed + tail.encode()

    def queue_key(self, inst: Instance, t: float) -> bytes:
        """The key an instance is queued under at time ``t``: ready if it is due, delayed if not."""
        tail = f"{us(inst.ready_ts)}/{inst.seq:020d}/{inst.uuid}/{inst.kind}"
        if inst.ready_ts <= t:
            return self.ready + f"{prio(inst.priority)}/{tail}".encode()
        return self.delayed + tail.encode()

    def uuid_in(self, key: bytes, base: bytes) -> str | None:
        """The uuid named by a ready (``{prio}/{ready}/{seq}/{uuid}/{kind}``) or delayed
        (``{ready}/{seq}/{uuid}/{kind}``) key; None if the key is malformed."""
        n = 4 if base is self.ready else 3
        parts = key[len(base):].split(b"/", n)
        if len(parts) <= n or not parts[n - 1]:
            return None
        try:
            return parts[n - 1].decode()
        except UnicodeDecodeError:
            return None

    def due(self, key: bytes) -> float:
        """The due time of a delayed key (0 if the key is malformed: it is set aside when promoted)."""
        ld = len(self.delayed)
        try:
            return int(key[ld:ld + 17]) / 1e6
        except ValueError:
            return 0.0

    # -- leases ------------------------------------------------------------------------------------------
    def liveness_key(self, lease_id: int) -> bytes:
        return self.liveness + b"%016x" % lease_id

    def lease_of(self, key: bytes) -> int | None:
        """The etcd lease a liveness key stands for; None if the key is malformed."""
        try:
            return int(key[len(self.liveness):], 16)
        except ValueError:
            return None

    # -- corrupt records ---------------------------------------------------------------------------------
    def report_key(self, key: bytes) -> bytes:
        """Where the report of a record that cannot be decoded or used goes."""
        return self.report + hashlib.sha1(key).hexdigest().encode()

    def kept_key(self, key: bytes) -> bytes:
        """Where that record's bytes are kept, exactly."""
        return self.kept + hashlib.sha1(key).hexdigest().encode()
