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
