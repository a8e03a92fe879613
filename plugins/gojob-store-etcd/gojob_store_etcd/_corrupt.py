"""Records that cannot be decoded or used: reported, set aside, never run, rewritten or deleted by the store.

A record that cannot be decoded is reported under ``z/{sha1(key)}`` (key, reason, in place or not) and
its bytes are kept exactly under ``zr/{sha1(key)}``. A record is left where it is, except a queue or
running entry, which is moved aside (so that it blocks nothing); the instance of a queue entry set aside
is put back in the queue from its own record, when that record can be read and is waiting. Reports are
gathered while a call decodes and written by :meth:`CorruptRecords._flush_corrupt` (no request when
there is nothing to write). The plugin README says what becomes of each kind of record.
"""

from __future__ import annotations

import logging
from typing import Any

from gojob_core import Instance, State
from gojob_core.abc import CorruptRecord

from ._batching import NEST, Part, ignore, send
from ._client import absent, mod_is, op_delete, op_put, op_range, op_txn, prefix_end, present, value_is
from ._codec import dumps, loads
from ._keys import now, text, to_bytes
from ._records import DECODE_ERRORS, decode_record, decode_running

__all__ = ["CorruptRecords"]

_log = logging.getLogger("gojob.etcd")


class CorruptRecords:
    """Reporting and setting aside (a mixin of :class:`~gojob_store_etcd.EtcdStore`)."""

    def _reset_corrupt(self) -> None:
        self._reported: dict[bytes, int] = {}  # key -> hash of the bytes reported (once per process)
        self._corrupt_q: list[tuple[bytes, str, bytes]] = []  # reports of records left in place, to write
        self._aside: list[tuple[bytes, int, bytes, str]] = []  # queue entries whose record changed: set aside
        self._repairs: list[tuple[str, int, Instance, bytes]] = []  # instances to put back in the queue

    # -- decoding, with a report of what cannot be decoded -------------------------------------------------
    def _decode_inst(self, key: bytes, raw: bytes,
                     uuid: str | None = None) -> tuple[Instance, list[str] | None] | None:
        """The instance a record (an instance record or a queue entry) describes and its history pointers;
        None (and reported) if it cannot be decoded, or is not the record of ``uuid`` (or, for an ``i/``
        key, of the uuid the key names)."""
        try:
            if uuid is None and key.startswith(self.keys.instance):
                uuid = key[len(self.keys.instance):].decode(errors="replace")
            return decode_record(raw, uuid)
        except DECODE_ERRORS as exc:
            self._report(key, f"{type(exc).__name__}: {exc}", raw)
            return None

    def _decode_p(self, key: bytes, raw: bytes) -> dict[str, Any] | None:
        """A running entry; None (and reported) if it cannot be decoded."""
        try:
            return decode_running(raw)
        except (ValueError, TypeError) as exc:
            self._report(key, f"{type(exc).__name__}: {exc}", raw)
            return None

    # -- reports -----------------------------------------------------------------------------------------
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
        return dumps({"key": text(key), "reason": reason, "raw": raw[:4000].decode(errors="replace"),
                      "in_place": in_place})

    def _report_part(self, key: bytes, reason: str, raw: bytes) -> Part:
        z = self.keys.report_key(key)
        return Part(op_txn([absent(z)], [op_put(z, self._report_value(key, reason, raw, True)),
                                         op_put(self.keys.kept_key(key), raw)]),
                    ignore, len(raw) + len(key) + 600)

    async def _flush_corrupt(self) -> None:
        """Write what was found unreadable: queue entries set aside (and their instances put back in the
        queue from their records), then the reports of records left in place. Nothing to do: no request."""
        k = self.keys
        for _ in range(3):
            if self._aside:
                batch, self._aside = self._aside, []
                # the records, to say why (and report those that cannot be decoded): a rare request
                resp = await self._c().txn([op_range(k.instance + u.encode()) for _, _, _, u in batch[:NEST]])
                parts = []
                for (key, key_rev, raw, u), reply in zip(batch, resp.responses):
                    ikey, kvs = k.instance + u.encode(), reply.response_range.kvs
                    if kvs and self._decode_inst(ikey, kvs[0].value, u) is None:
                        why = f"its instance record {text(ikey)!r} cannot be decoded: not run"
                    else:
                        why = f"its instance record {text(ikey)!r} was rewritten after it was queued"
                    parts.append(self._set_aside_part(key, key_rev, raw, why, u))
                self._aside += batch[NEST:]
                await send(self._c(), parts)
            if self._repairs:
                batch2, self._repairs = self._repairs, []
                await send(self._c(), [self._repair_part(*r) for r in batch2])
            if not self._aside and not self._repairs:
                break
        if self._corrupt_q:
            batch3, self._corrupt_q = self._corrupt_q, []
            await send(self._c(), [self._report_part(*c) for c in batch3])

    # -- setting aside -----------------------------------------------------------------------------------
    def _set_aside_part(self, key: bytes, rev: int, raw: bytes, reason: str, uuid: str | None) -> Part:
        """Move a queue or running entry that must not be used (at revision ``rev``) aside, reported, its
        bytes kept; read the record of its instance (``uuid``, when known) to put it back in the queue."""
        k = self.keys
        # what decoding it found (queued as a report of a record left in place): said here instead
        found = [c for c in self._corrupt_q if c[0] == key]
        if found:
            self._corrupt_q = [c for c in self._corrupt_q if c[0] != key]
            reason = f"{reason} ({found[-1][1]})"
        _log.error("etcd store: entry %r is set aside: %s", key[:200], reason)
        self._reported[key] = hash(raw)
        success = [op_put(k.report_key(key), self._report_value(key, reason, raw, False)),
                   op_put(k.kept_key(key), raw), op_delete(key)]
        ikey = None
        if uuid is not None and key.startswith(k.queue) and not key.startswith(k.running):
            ikey = k.instance + uuid.encode()
            success.append(op_range(ikey))

        def done(r: Any, rev: int) -> None:
            txn = r.response_txn
            if not txn.succeeded:  # changed meanwhile (taken, or set aside by another node)
                return
            if key.startswith(k.running):
                self._running.pop(key[len(k.running):].decode(errors="replace"), None)
            if ikey is not None:
                kvs = txn.responses[3].response_range.kvs
                if kvs:
                    self._requeue_from(kvs[0], uuid)  # type: ignore[arg-type]

        return Part(op_txn([mod_is(key, rev)], success), done, 2 * len(raw) + 800)

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

    def _requeue_from(self, kv: Any, uuid: str) -> None:
        """The record of an instance whose queue entry was set aside: if it is readable and waiting in the
        queue, put the instance back in the queue (next :meth:`_flush_corrupt`); if it is not readable,
        report it."""
        got = self._decode_inst(kv.key, kv.value, uuid)
        if got is not None and got[0].state is State.SCHEDULED:
            self._repairs.append((uuid, kv.mod_revision, got[0], kv.value))

    def _repair_part(self, uuid: str, i_rev: int, inst: Instance, raw: bytes) -> Part:
        """Put a waiting instance back in the queue from its record, unless it changed or is queued."""
        rkey, dkey = self.keys.queue_keys(inst)
        qkey = self.keys.queue_key(inst, now())

        def done(r: Any, rev: int) -> None:
            if r.response_txn.succeeded:
                _log.warning("etcd store: instance %s was put back in the queue from its record", uuid)
                self._queued(qkey, rev, raw)
                self._wake()

        return Part(op_txn([mod_is(self.keys.instance + uuid.encode(), i_rev), absent(rkey), absent(dkey)],
                           [op_put(qkey, raw)]), done, len(raw) + 400)

    # -- the operator's view -------------------------------------------------------------------------------
    async def corrupt_records(self) -> list[CorruptRecord]:
        """Records set aside because they could not be decoded (or could not be used: a queue or running
        entry whose instance record cannot be read). ``key`` and ``raw`` are the record's key and bytes as
        text, losslessly: ``raw.encode("utf-8", "surrogateescape")`` gives back its bytes exactly."""
        await self._flush_corrupt()
        k = self.keys
        reports = [kv async for kv in self._scan(k.report, prefix_end(k.report))]
        if not reports:  # the usual answer (the metrics ask every few seconds): one request
            return []
        exact = {kv.key[len(k.kept):]: kv.value async for kv in self._scan(k.kept, prefix_end(k.kept))}
        out = []
        for kv in reports:
            try:
                d = loads(kv.value)
                raw = exact.get(kv.key[len(k.report):])
                out.append(CorruptRecord(str(d["key"]), str(d["reason"]),
                                         text(raw) if raw is not None else str(d.get("raw", ""))))
            except (ValueError, KeyError, TypeError):
                out.append(CorruptRecord(text(kv.key), "unreadable report", text(kv.value)))
        return sorted(out, key=lambda c: c.key)

    async def drop_corrupt_record(self, key: str) -> bool:
        """Forget a record set aside (``key`` as :meth:`corrupt_records` reports it): its report and kept
        bytes are deleted, and so is the record itself if it was left in place and still holds exactly
        those bytes (one rewritten since is left alone). False if no such record is set aside."""
        await self._flush_corrupt()
        try:
            kb = to_bytes(key)
        except UnicodeEncodeError:
            return False
        k = self.keys
        z, zr = k.report_key(kb), k.kept_key(kb)
        c = self._c()
        resp = await c.txn([op_range(z), op_range(zr)])
        zkv, zrkv = resp.responses[0].response_range.kvs, resp.responses[1].response_range.kvs
        if not zkv:
            if kb.startswith(k.report) and (await c.range(kb)).kvs:  # an unreadable report, named by its key
                await c.txn([op_delete(kb), op_delete(k.kept + kb[len(k.report):])])
                return True
            return False
        ops = [op_delete(z), op_delete(zr)]
        try:
            d = loads(zkv[0].value)
            in_place = d.get("in_place", True)  # a report of a version before: try (the bytes decide)
            raw = zrkv[0].value if zrkv else to_bytes(str(d.get("raw", "")))
        except (ValueError, TypeError, AttributeError, UnicodeEncodeError):
            in_place, raw = False, b""
        if in_place and not kb.startswith(k.report):
            ops.append(op_txn([value_is(kb, raw), present(kb)], [op_delete(kb)]))
        await c.txn(ops)
        self._reported.pop(kb, None)
        return True
