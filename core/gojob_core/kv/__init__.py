"""A generic store over any key-value backend: go-job's ``kv.Store``, with compare-and-set.

Write a :class:`KvBackend` (get, set, compare-and-set, delete, scan by prefix; optionally watch) for
your database, and :class:`KvStore` gives the whole store contract on it: queue, leases, atomic
finish, cancel, wake-up, history and logs, corrupt records set aside. :class:`MemoryKvBackend` keeps
the keys in process memory; several ``KvStore`` objects on one of them act as the nodes of a cluster::

    from gojob_core import Manager
    from gojob_core.kv import KvStore, MemoryKvBackend

    backend = MemoryKvBackend()
    async with Manager(KvStore(backend), node_id="a") as a, Manager(KvStore(backend), node_id="b") as b:
        ...

See the extension guide, "A store over a key-value backend", for a worked example.
"""

from __future__ import annotations

from ._backend import KvBackend, KvChange, KvEntry
from ._memory import MemoryKvBackend
from ._store import KvStore

__all__ = ["KvBackend", "KvChange", "KvEntry", "KvStore", "MemoryKvBackend"]
