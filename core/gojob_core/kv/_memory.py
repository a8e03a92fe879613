"""A key-value backend in process memory: a KvStore with no server, for tests and one process."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from ._backend import KvBackend, KvChange, KvEntry

__all__ = ["MemoryKvBackend"]


class MemoryKvBackend(KvBackend):
    """Keys in a sorted list, values and versions in a dict; versions come from one revision counter.

    Several :class:`~gojob_core.kv.KvStore` objects may share one backend: they then act as nodes of
    one cluster. Every call yields to the event loop first (a checkpoint), so the tasks of those nodes
    interleave between calls as a network backend's would, and each call's own work is atomic (a
    lock also keeps it so against other threads). Watches deliver to tasks of one event loop at a
    time: opening a watch on another loop forgets those opened on the previous one.
    """

    SUPPORTS_WATCH = True

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._keys: list[str] = []  # sorted
        self._rev = itertools.count(1)
        self._lock = threading.Lock()
        self._watchers: list[tuple[str, MemoryObjectSendStream[KvChange]]] = []
        self._loop: object = None

    def __repr__(self) -> str:
        return f"<MemoryKvBackend keys={len(self._keys)}>"

    # -- internals (call with the lock held) ------------------------------------------------------------
    def _put(self, key: str, value: bytes) -> int:
        if not isinstance(key, str) or not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"kv keys are str and values bytes, got {type(key).__name__}, {type(value).__name__}")
        version = next(self._rev)
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = (bytes(value), version)
        self._emit(key, bytes(value))
        return version

    def _remove(self, key: str) -> bool:
        if self._data.pop(key, None) is None:
            return False
        i = bisect.bisect_left(self._keys, key)
        del self._keys[i]
        self._emit(key, None)
        return True

    def _emit(self, key: str, value: bytes | None) -> None:
        if not self._watchers:
            return
        for watcher in list(self._watchers):
            prefix, send = watcher
            if key.startswith(prefix):
                try:
                    send.send_nowait(KvChange(key, value))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._watchers.remove(watcher)

    # -- the interface ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KvEntry | None:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            item = self._data.get(key)
        return KvEntry(key, item[0], item[1]) if item is not None else None

    async def get_many(self, keys: Sequence[str]) -> list[KvEntry | None]:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            out: list[KvEntry | None] = []
            for key in keys:
                item = self._data.get(key)
                out.append(KvEntry(key, item[0], item[1]) if item is not None else None)
            return out

    async def set(self, key: str, value: bytes) -> int:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            return self._put(key, value)

    async def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            for key, value in items:
                self._put(key, value)

    async def compare_and_set(self, key: str, value: bytes, version: int | None) -> int | None:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            item = self._data.get(key)
            current = item[1] if item is not None else None
            if current != version:
                return None
            return self._put(key, value)

    async def delete(self, key: str, version: int | None = None) -> bool:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            if version is not None:
                item = self._data.get(key)
                if item is None or item[1] != version:
                    return False
            return self._remove(key)

    async def delete_many(self, keys: Iterable[str]) -> None:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            for key in keys:
                self._remove(key)

    async def scan(self, prefix: str, *, after: str | None = None, limit: int | None = None,
                   keys_only: bool = False) -> list[KvEntry]:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            keys = self._keys
            i = bisect.bisect_left(keys, prefix)
            if after is not None and after >= prefix:
                i = max(i, bisect.bisect_right(keys, after))
            out: list[KvEntry] = []
            while i < len(keys) and (limit is None or len(out) < limit):
                key = keys[i]
                if not key.startswith(prefix):
                    break
                value, version = self._data[key]
                out.append(KvEntry(key, b"" if keys_only else value, version))
                i += 1
            return out

    def watch(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[KvChange]]:
        return self._watch(prefix)

    @asynccontextmanager
    async def _watch(self, prefix: str) -> AsyncIterator[AsyncIterator[KvChange]]:
        token = anyio.lowlevel.current_token()
        send, receive = anyio.create_memory_object_stream[KvChange](float("inf"))
        with self._lock:
            if token != self._loop:  # watches of an event loop that is gone
                self._loop = token
                self._watchers = []
            watcher = (prefix, send)
            self._watchers.append(watcher)
        try:
            async with receive:
                yield receive
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
            send.close()
