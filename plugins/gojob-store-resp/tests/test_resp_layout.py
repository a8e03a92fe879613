"""The key layout version: the first node on a prefix writes it; a node of another layout refuses to start."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from gojob_core import Manager, StoreError
from gojob_core.testing.servers import Server
from gojob_store_resp import LAYOUT_VERSION

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("kind", ["redis", "valkey"])
async def test_a_node_of_another_key_layout_is_refused(kind: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(f"{kind}_server")
    prefix = f"l{uuid.uuid4().hex[:8]}:"
    url = f"{server.url(kind)}?prefix={prefix}"
    async with Manager(url, num_workers=0, autoload_plugins=True):
        pass
    raw = aioredis.Redis(host=server.host, port=server.port, decode_responses=True)
    try:
        assert await raw.get(f"{prefix}layout") == str(LAYOUT_VERSION)  # written by the first node
        await raw.set(f"{prefix}layout", "0")  # as if nodes of an older layout used this prefix
        mgr = Manager(url, num_workers=0)
        with pytest.raises(StoreError) as caught:
            await mgr.start()
        message = str(caught.value)
        assert "layout version '0'" in message and f"layout version {LAYOUT_VERSION}" in message
        assert prefix in message
        assert await raw.get(f"{prefix}layout") == "0"  # nothing overwritten
    finally:
        await raw.aclose()
