"""The store conformance suite on the PostgreSQL store, against a real server: each test gets a schema
of its own; each call of make_store() is another client (another node) of the same tables."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from gojob_core import Store
from gojob_core.testing import StoreConformance
from gojob_store_postgres import PostgresStore
from gojob_store_postgres.testing import PostgresServer


class TestPostgresStore(StoreConformance):
    anyio_backends = ("asyncio",)  # asyncpg runs on asyncio only

    @pytest.fixture
    def make_store(self, postgres_server: PostgresServer) -> Callable[[], Store]:
        url = postgres_server.url(schema=f"t{uuid.uuid4().hex[:10]}", pool_size=4)
        return lambda: PostgresStore.from_url(url)
