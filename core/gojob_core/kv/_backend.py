"""The key-value backend interface a :class:`~gojob_core.kv.KvStore` is written against.

It is go-job's ``kv.Store`` (set/get/scan/remove/delete/dump/clear) with what safe sharing between
nodes needs: every entry carries a *version*, and a write or delete can be made conditional on it
(compare-and-set), so two nodes that read the same record cannot both change it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import ClassVar, NamedTuple

__all__ = ["KvBackend", "KvChange", "KvEntry"]


class KvEntry(NamedTuple):
    """One stored key: its value and its version (changes on every write of the key)."""

    key: str
    value: bytes
    #: a positive number that changes on every write of the key; compare-and-set compares it
    version: int


class KvChange(NamedTuple):
    """A change seen by :meth:`KvBackend.watch`: ``value`` is None when the key was deleted."""

    key: str
    value: bytes | None


class KvBackend(abc.ABC):
    """An async key-value backend: string keys in byte order, byte values, per-key versions.

    What a backend must guarantee (the store's correctness rests on it):

    - every call is atomic and linearizable (a read sees every write that returned before it);
    - :meth:`compare_and_set` and a versioned :meth:`delete` succeed only if the key's version is still
      the one given: this is what makes a claim or a finish safe when many nodes share the backend;
    - :meth:`scan` returns keys in ascending order (Python ``str`` order), so queue index keys sort.

    The batch methods (``get_many``, ``set_many``, ``delete_many``) default to one call per key;
    a network backend overrides them to save round trips (they need not be atomic as a whole).
    A backend that can report changes sets ``SUPPORTS_WATCH`` and implements :meth:`watch`: the store
    then wakes idle nodes and hears cancels at once instead of polling.
    """

    #: True if :meth:`watch` is implemented (a store without it polls, at ``KvStore.poll_interval``)
    SUPPORTS_WATCH: ClassVar[bool] = False

    async def start(self) -> None:
        """Connect (called by the store's ``start``)."""

    async def stop(self) -> None:
        """Disconnect (called by the store's ``stop``); the backend may be started again."""

    @abc.abstractmethod
    async def get(self, key: str) -> KvEntry | None:
        """The entry of ``key``, or None if it is absent."""

    async def get_many(self, keys: Sequence[str]) -> list[KvEntry | None]:
        """The entries of several keys, in the same order (None for an absent key)."""
        return [await self.get(k) for k in keys]

    @abc.abstractmethod
    async def set(self, key: str, value: bytes) -> int:
        """Write ``key`` whatever it holds; returns its new version."""

    async def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Write several keys unconditionally (each atomically; the batch need not be)."""
        for key, value in items:
            await self.set(key, value)

    @abc.abstractmethod
    async def compare_and_set(self, key: str, value: bytes, version: int | None) -> int | None:
        """Write ``key`` only if its version is still ``version``; with ``version=None`` only if the key
        is absent (create-only). Returns the new version, or None if the key had changed (nothing written).

        The one primitive shared state needs: read, decide, write back only if nobody wrote meanwhile.
        """

    @abc.abstractmethod
    async def delete(self, key: str, version: int | None = None) -> bool:
        """Remove ``key``; with ``version`` only if it is still that version. True if it was removed."""

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several keys unconditionally (absent ones are ignored)."""
        for key in keys:
            await self.delete(key)

    @abc.abstractmethod
    async def scan(self, prefix: str, *, after: str | None = None, limit: int | None = None,
                   keys_only: bool = False) -> list[KvEntry]:
        """Entries whose key starts with ``prefix``, in key order, from the first key greater than
        ``after`` (for paging), at most ``limit`` of them. ``keys_only`` may leave values empty (a
        backend that can skip reading values saves the transfer)."""

    def watch(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[KvChange]]:
        """An async context manager giving the changes of keys starting with ``prefix``.

        Changes made after ``__aenter__`` returns are delivered (so a caller subscribes, then reads,
        and misses nothing); changes may be coalesced or, after a reconnect, dropped: the store treats
        them as hints and re-reads. Only backends with ``SUPPORTS_WATCH`` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot watch keys")

    # -- go-job's kv.Store conveniences, built on the above -------------------------------------------
    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix`` (go-job's ``Delete``); returns how many."""
        n = 0
        while page := await self.scan(prefix, limit=1000, keys_only=True):
            await self.delete_many(e.key for e in page)
            n += len(page)
        return n

    async def dump(self) -> list[KvEntry]:
        """Every entry (go-job's ``Dump``), for debugging and tests."""
        return await self.scan("")
