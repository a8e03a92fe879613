"""The store conformance suite on the SQLite store: a file in a temporary directory; each call of
make_store() opens a new connection to it (another node), on both anyio backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gojob_core import Store
from gojob_core.testing import StoreConformance
from gojob_store_sqlite import SqliteStore


class TestSqliteStore(StoreConformance):
    anyio_backends = ("asyncio", "trio")

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[], Store]:
        path = tmp_path / "jobs.db"
        return lambda: SqliteStore(str(path), poll_interval=0.02)
