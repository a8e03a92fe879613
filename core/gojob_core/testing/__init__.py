"""Test helpers for gojob and for third-party stores: the store conformance suite.

The suite is the store contract (:mod:`gojob_core.abc`) as tests. A store passes it by subclassing
:class:`StoreConformance` and overriding :meth:`StoreConformance.make_store`::

    from gojob_core.testing import StoreConformance

    class TestMyStore(StoreConformance):
        anyio_backends = ("asyncio",)          # the backends your store runs on

        @pytest.fixture
        def make_store(self, my_server):       # my_server: a real server started by a fixture
            def make():
                return MyStore.from_url(my_server.url, prefix=unique_prefix)
            return make

``make_store()`` returns a new, not yet started store object on the same backend data each time it
is called (a second client of the same server), so that two Managers in one test act as two nodes.
A store that lives in process (like :class:`~gojob_core.MemoryStore`) returns the same object.

The suite never skips because a server is missing: a missing server must fail the run.
Enable it with ``pytest_plugins = ["gojob_core.testing"]`` or by importing the class.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("gojob_core.testing._conformance")

from ._conformance import StoreConformance  # noqa: E402

__all__ = ["StoreConformance"]
