"""The first keys of a queue index (ready or delayed), in key order, as one node sees them.

A node reads the head of the ready index once (``window`` keys, 256 by default) and then keeps it current
from its watch, so that a claim takes its candidates from memory and costs no read. The delayed index is
kept the same way, for the next due time. See :class:`QueueWindow`.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

__all__ = ["QueueWindow"]


class QueueWindow:
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
