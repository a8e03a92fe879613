"""The memory store passes the store conformance suite unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gojob_core import MemoryStore, Store
from gojob_core.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = MemoryStore()  # one object: every "node" in a test shares it
        return lambda: shared


class _HandoffMemoryStore(MemoryStore):
    FINISH_MODE = "handoff"


class _SplitMemoryStore(MemoryStore):
    FINISH_MODE = "split"


class TestMemoryStoreHandoffFinishes(StoreConformance):
    """The suite again with the Manager writing finishes the way it does for etcd (a writer task)."""

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = _HandoffMemoryStore()
        return lambda: shared


class TestMemoryStoreSplitFinishes(StoreConformance):
    """The suite again with the Manager writing finishes the way it does for Valkey and Redis."""

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = _SplitMemoryStore()
        return lambda: shared
