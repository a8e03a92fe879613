"""State history and logs: written by time, found by time or, for one instance, through its record.

**History: one key per transaction.** The state records one transaction writes go under one key by time
(``t/{ts}/{uuid}/{tag}``), and the instance record that the same transaction writes gains a pointer to
it (``"h"``), so the history of one instance is its record's pointers, fetched in one request (plus
those ``clear_instances`` left under ``h/{uuid}/``, so it outlives the record). A record that cannot be
decoded, or was written before records had pointers, has its history found by time instead.

**Logs: two keys per line**, by instance (``l/{uuid}/{ts}/{tag}``) and by time (``m/{ts}/{uuid}/{tag}``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gojob_core import LogRecord, Query, StateRecord

from ._batching import NEST, Part, ignore, send
from ._client import op_delete, op_put, op_range, prefix_end
from ._codec import dumps, loads
from ._keys import new_tag
from ._keys import us as us_key

__all__ = ["HistoryAndLogs"]


class HistoryAndLogs:
    """Lookups and clears of state history and logs, and appending logs (a mixin of
    :class:`~gojob_store_etcd.EtcdStore`)."""

    def _time_range(self, by_uuid: bytes | None, by_time: bytes, query: Query) -> tuple[bytes, bytes]:
        """The keys of the query's time range: of one instance under ``by_uuid`` (``{uuid}/{us}/..``)
        when the query names one and the records have such keys, else of all under ``by_time``."""
        lo = "" if query.since_ts is None else us_key(query.since_ts - 2e-6)
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
            raw = loads(kv.value)
            recs = [decode(d) for d in (raw if many else [raw])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._report(kv.key, f"{type(exc).__name__}: {exc}", kv.value)
            return None
        hits = [r for r in recs if query.matches_record(r)]
        return (kv.key, recs, hits) if hits else None

    async def _history(self, query: Query) -> list[tuple[bytes, Any, list[Any]]]:
        """Like :meth:`_records` for state records: those of one instance are found through the
        pointers in its record (and those its cleared records left), the others by time."""
        by_time = self.keys.history
        if query.uuid is None:
            return await self._records(None, by_time, query, StateRecord.from_dict, True)
        keys = await self._history_keys(query)
        if keys is None:  # its record cannot be decoded (reported): look through the records by time
            return await self._records(None, by_time, query, StateRecord.from_dict, True)
        out: list[tuple[bytes, Any, list[Any]]] = []
        c = self._c()
        for i in range(0, len(keys), NEST):
            resp = await c.txn([op_range(key) for key in keys[i:i + NEST]])
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
        k = self.keys
        b = query.uuid.encode()
        base = k.cleared + b + b"/"
        resp = await self._c().txn([op_range(k.instance + b), op_range(base, prefix_end(base))])
        pointers: list[str] = []
        ok = True
        for kv in [*resp.responses[0].response_range.kvs, *resp.responses[1].response_range.kvs]:
            record = kv.key.startswith(k.instance)
            if not record and kv.key.count(b"/", len(base)):
                continue  # h/{uuid}/{ts}/{tag}: the second history key of a version before pointers
            try:
                got = loads(kv.value)
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
        lo, hi = self._time_range(None, k.history, query)
        keys = set()
        for ptr in pointers:
            ts_us, tag = ptr.split("/")
            key = k.history + f"{ts_us}/{query.uuid}/{tag}".encode()
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
                ts_us, rest = key[len(by_time):].decode().split("/", 1)
                u, tag = rest.rsplit("/", 1)
            else:  # {uuid}/{us}/{tag}
                assert by_uuid is not None and query.uuid is not None
                u = query.uuid
                ts_us, tag = key[len(by_uuid) + len(u.encode()) + 1:].decode().split("/", 1)
            pair = [by_time + f"{ts_us}/{u}/{tag}".encode()]
            if by_uuid is not None:
                pair.append(by_uuid + f"{u}/{ts_us}/{tag}".encode())
            keep = [r for r in recs if r not in hits]
            for pk in pair:
                ops.append(op_put(pk, dumps([r.to_dict() for r in keep]) if many else b"") if keep else op_delete(pk))
        for i in range(0, len(ops), NEST):
            await self._c().txn(ops[i:i + NEST])
        return removed

    async def clear_history(self, query: Query) -> int:
        removed = await self._clear(None, self.keys.history, query, StateRecord.from_dict, True)
        q = query
        if q.uuid is not None and q.kind is None and q.states is None and q.since_ts is None \
                and q.until_ts is None and q.limit is None:
            # all of one instance's history is gone: so are the pointers its cleared records left
            base = self.keys.cleared + q.uuid.encode() + b"/"
            await self._c().txn([op_delete(base, prefix_end(base))])
        return removed

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        k = self.keys
        ops = []
        for rec in records:
            ts_us, tag, raw = us_key(rec.ts), new_tag(), dumps(rec.to_dict())
            ops.append(op_put(k.logs + f"{rec.uuid}/{ts_us}/{tag}".encode(), raw))
            ops.append(op_put(k.logs_by_time + f"{ts_us}/{rec.uuid}/{tag}".encode(), raw))
        parts = [Part(op, ignore, 2 * op.request_put.ByteSize()) for op in ops]
        await send(self._c(), parts)

    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        k = self.keys
        found = [r for _, _, hits in await self._records(k.logs, k.logs_by_time, query, LogRecord.from_dict, False)
                 for r in hits]
        found.sort(key=lambda r: r.ts)
        return query.apply_limit(found)

    async def clear_logs(self, query: Query) -> int:
        return await self._clear(self.keys.logs, self.keys.logs_by_time, query, LogRecord.from_dict, False)
