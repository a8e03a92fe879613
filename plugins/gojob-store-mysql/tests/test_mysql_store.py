"""The store conformance suite on the MySQL store, against a real MariaDB server: each test gets a
database of its own; each call of make_store() is another client (another node) of the same tables."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from gojob_core import Store
from gojob_core.testing import StoreConformance
from gojob_store_mysql import MysqlStore
from gojob_store_mysql.testing import MariadbServer


class TestMysqlStore(StoreConformance):
    anyio_backends = ("asyncio",)  # asyncmy runs on asyncio only

    @pytest.fixture
    def make_store(self, mysql_server: MariadbServer) -> Callable[[], Store]:
        url = mysql_server.url(f"t{uuid.uuid4().hex[:10]}", pool_size=4)
        return lambda: MysqlStore.from_url(url)
