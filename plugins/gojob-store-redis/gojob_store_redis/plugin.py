"""Entry point of the ``gojob`` group: registers the ``redis://`` and ``rediss://`` store.

Every Manager loads this module, so it stays light: the store (with redis-py and hiredis) is imported
only when a Manager is given a Redis URL.
"""

from __future__ import annotations

from gojob_core import Store, hookimpl
from gojob_core.abc import lazy_store

RedisStoreFactory = lazy_store("gojob_store_redis.store:RedisStore", schemes=("redis", "rediss"), name="redis",
                               anyio_backends=("asyncio",))


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [RedisStoreFactory]
