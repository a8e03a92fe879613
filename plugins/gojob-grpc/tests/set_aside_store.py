"""A test double of the store contract's corrupt-record calls, to test the gRPC layer above them.

:class:`SetAsideStore` is a MemoryStore that reports the records it is given as set aside
(``Store.corrupt_records``) and drops them on request (``Store.drop_corrupt_record``), as the real
stores do with the records they could not read. Imported by the tests as ``set_aside_store``.
"""

from __future__ import annotations

from collections.abc import Iterable

import gojob_core as gojob
from gojob_core.abc import CorruptRecord

#: a queued instance's record cut short, with a newline and a NUL in it: more than a table shows
CUT_SHORT = CorruptRecord(
    "gojob:i:0d5c8f0e-1b7a-4c1e-9f4e-3f2a9a1c0b11",
    "not JSON: Invalid control character at: line 2 column 11 (char 49)",
    '{"uuid": "0d5c8f0e", "kind": "triple",\n"args": ["\x00' + "x" * 200)
#: a ready-index entry of garbage: an invalid UTF-8 byte kept by surrogateescape (a lone surrogate)
GARBAGE_ENTRY = CorruptRecord("gojob:ready:17", "not an instance uuid", "caf\xe9 \udcff!")


class SetAsideStore(gojob.MemoryStore):
    """A memory store with records set aside, as if it had found them unreadable."""

    def __init__(self, records: Iterable[CorruptRecord] = (CUT_SHORT, GARBAGE_ENTRY)) -> None:
        super().__init__()
        self.set_aside = {r.key: r for r in records}
        self.dropped: list[str] = []

    async def corrupt_records(self) -> list[CorruptRecord]:
        return list(self.set_aside.values())

    async def drop_corrupt_record(self, key: str) -> bool:
        if self.set_aside.pop(key, None) is None:
            return False
        self.dropped.append(key)
        return True
