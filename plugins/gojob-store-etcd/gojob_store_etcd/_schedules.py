"""Schedule records: one key each (``{p}r/{schedule_id}``, JSON), compare-and-set on its mod revision.

The store contract's versions are etcd's own: a record's version is the revision of its last write, and
a write or delete given a version is one transaction comparing the key's mod revision with it.
"""

from __future__ import annotations

import json
from typing import Any

from gojob_core.abc import ScheduleRecord

from ._batching import PAGE
from ._client import absent, mod_is, op_delete, op_put, prefix_end

__all__ = ["ScheduleRecords"]


class ScheduleRecords:
    """get/list/put/delete of schedule records (a mixin of :class:`~gojob_store_etcd.EtcdStore`)."""

    def _k_schedule(self, schedule_id: str) -> bytes:
        b = schedule_id.encode()
        if b"/" in b:
            raise ValueError(f"schedule id {schedule_id!r} must not contain '/'")
        return self.keys.schedule_record + b

    def _schedule_record(self, kv: Any) -> ScheduleRecord | None:
        sid = kv.key[len(self.keys.schedule_record):].decode()
        try:
            data = json.loads(kv.value)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except ValueError as exc:
            self._report(kv.key, f"{type(exc).__name__}: {exc}", bytes(kv.value))
            return None
        return ScheduleRecord(sid, data, int(kv.mod_revision))

    async def get_schedule_record(self, schedule_id: str) -> ScheduleRecord | None:
        resp = await self._c().range(self._k_schedule(schedule_id))
        rec = self._schedule_record(resp.kvs[0]) if resp.kvs else None
        await self._flush_corrupt()
        return rec

    async def list_schedule_records(self) -> list[ScheduleRecord]:
        base = self.keys.schedule_record
        out: list[ScheduleRecord] = []
        key = base
        while True:
            page = await self._c().range(key, prefix_end(base), limit=PAGE)
            out += [r for kv in page.kvs if (r := self._schedule_record(kv)) is not None]
            if not page.more or not page.kvs:
                break
            key = page.kvs[-1].key + b"\0"
        await self._flush_corrupt()
        return out

    async def put_schedule_record(self, schedule_id: str, data: dict[str, Any], *,
                                  version: int | None) -> int | None:
        key = self._k_schedule(schedule_id)
        guard = absent(key) if version is None else mod_is(key, version)
        value = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        resp = await self._c().txn([op_put(key, value)], [guard])
        return int(resp.header.revision) if resp.succeeded else None

    async def delete_schedule_record(self, schedule_id: str, *, version: int) -> bool:
        key = self._k_schedule(schedule_id)
        resp = await self._c().txn([op_delete(key)], [mod_is(key, version)])
        return bool(resp.succeeded)
