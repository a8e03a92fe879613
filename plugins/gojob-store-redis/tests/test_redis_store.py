"""The Redis store passes the store conformance suite unchanged, on a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from gojob_core import Store
from gojob_core.testing import StoreConformance
from gojob_core.testing.servers import Server
from gojob_store_redis import RedisStore


class TestRedisStore(StoreConformance):
    anyio_backends = ("asyncio",)  # redis.asyncio runs on asyncio only

    @pytest.fixture
    def make_store(self, redis_server: Server) -> Callable[[], Store]:
        prefix = f"t{uuid.uuid4().hex[:8]}:"  # each test gets its own key space on the shared server
        return lambda: RedisStore.from_url(redis_server.url("redis"), prefix=prefix)
