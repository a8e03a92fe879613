"""The etcd store passes the store conformance suite unchanged, on a real etcd (asyncio only)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from gojob_core import Store
from gojob_core.testing import StoreConformance
from gojob_core.testing.servers import Server
from gojob_store_etcd import EtcdStore


class TestEtcdStore(StoreConformance):
    anyio_backends = ("asyncio",)  # aetcd is built on grpc.aio, which runs on asyncio only

    @pytest.fixture
    def make_store(self, etcd_server: Server) -> Callable[[], Store]:
        prefix = f"/t{uuid.uuid4().hex[:8]}/"  # each test gets its own key space on the shared server
        return lambda: EtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix)
