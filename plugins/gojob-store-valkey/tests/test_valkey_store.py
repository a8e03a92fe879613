"""The Valkey store passes the store conformance suite unchanged, on a real valkey-server, asyncio and trio."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from gojob_core import Store
from gojob_core.testing import StoreConformance
from gojob_core.testing.servers import Server
from gojob_store_valkey import ValkeyStore


class TestValkeyStore(StoreConformance):
    anyio_backends = ("asyncio", "trio")

    @pytest.fixture
    def make_store(self, valkey_server: Server) -> Callable[[], Store]:
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        return lambda: ValkeyStore.from_url(valkey_server.url("valkey"), prefix=prefix)


class TestValkeyStoreOnRedis(StoreConformance):
    """glide against Redis 7 too (the same scripts)."""

    anyio_backends = ("asyncio",)

    @pytest.fixture
    def make_store(self, redis_server: Server) -> Callable[[], Store]:
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        return lambda: ValkeyStore.from_url(redis_server.url("valkey"), prefix=prefix)
