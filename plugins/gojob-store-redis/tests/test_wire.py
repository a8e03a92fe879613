"""The Redis store's own RESP wire: pipelined calls on one connection stay in step when callers give up
or time out, a dead connection is replaced on the next call, and TLS works with the certificate given."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from gojob_core import Job, Manager, Query, State, StoreError
from gojob_core.testing.servers import Server
from gojob_store_redis import RedisStore
from gojob_store_resp.testing import find_redis_server, start_resp_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the store runs on asyncio only


def _store(server: Server, **options: object) -> RedisStore:
    return RedisStore.from_url(server.url("redis"), prefix=f"w{uuid.uuid4().hex[:8]}:", **options)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own (the tests below pause or restart it)."""
    binary = find_redis_server()
    assert binary is not None, "no redis-server binary"
    server = start_resp_server(binary, tmp_path / "redis")
    yield server
    server.stop()


async def test_concurrent_calls_on_one_connection_each_get_their_own_reply(redis_server: Server) -> None:
    store = _store(redis_server)
    await store.conn.connect()
    try:
        got: dict[int, object] = {}

        async def echo(i: int) -> None:
            got[i] = await store.conn.execute("ECHO", f"reply-{i}-" + "x" * (i * 37 % 5000))

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(echo, i)
        assert got == {i: f"reply-{i}-" + "x" * (i * 37 % 5000) for i in range(300)}
        # a big pipeline (more than the transport buffers at once) comes back whole and in order
        replies = await store.conn.pipeline([["ECHO", f"{i}:" + "y" * 2000] for i in range(3000)])
        assert replies == [f"{i}:" + "y" * 2000 for i in range(3000)]
    finally:
        await store.conn.close()


async def test_a_call_given_up_by_its_caller_leaves_the_connection_in_step(redis_server: Server) -> None:
    """The reply to an abandoned call still arrives; it must be dropped, never handed to the next call."""
    store = _store(redis_server)
    await store.conn.connect()
    slow = "local t = redis.call('TIME') local s = t[1] + t[2] / 1e6 " \
           "repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 > s + 0.2 return 'slow'"
    try:
        for _ in range(3):
            with anyio.move_on_after(0.05) as scope:
                await store.conn.execute("EVAL", slow, 0)
            assert scope.cancelled_caught
            assert await store.conn.execute("ECHO", "mine") == "mine"
    finally:
        await store.conn.close()


async def test_a_call_past_its_timeout_fails_naming_it_and_the_next_call_reconnects(own_server: Server) -> None:
    store = _store(own_server, timeout=0.5)
    await store.conn.connect()
    admin = redis.Redis(host=own_server.host, port=own_server.port)
    try:
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        t = time.monotonic()
        with pytest.raises(StoreError, match=r"ECHO failed: no reply within 0.5 s"):
            await store.conn.execute("ECHO", "paused")
        assert time.monotonic() - t < 1.4
        await anyio.sleep(1.2)  # the pause is over
        assert await store.conn.execute("ECHO", "again") == "again"
        # the server going away and coming back: the next call after the failure reconnects
        own_server.restart()
        with pytest.raises(StoreError):
            await store.conn.execute("ECHO", "to a closed connection")
        assert await store.conn.execute("ECHO", "after restart") == "after restart"
    finally:
        admin.close()
        await store.conn.close()


async def test_an_error_reply_names_the_command_and_keeps_the_connection(redis_server: Server) -> None:
    store = _store(redis_server)
    await store.conn.connect()
    try:
        with pytest.raises(StoreError, match=r"NOSUCHCOMMAND failed: ERR unknown command"):
            await store.conn.execute("NOSUCHCOMMAND")
        with pytest.raises(StoreError, match=r"pipeline failed: WRONGTYPE"):
            await store.conn.execute("SET", store.p + "k", "v")
            await store.conn.pipeline([["PING"], ["LPUSH", store.p + "k", "x"], ["PING"]])
        assert await store.conn.execute("ECHO", "still fine") == "still fine"
    finally:
        await store.conn.close()


async def test_tls_through_a_given_client_that_trusts_the_certificate(redis_tls_server: tuple[Server, str]) -> None:
    server, cert = redis_tls_server
    client = aioredis.Redis(host=server.host, port=server.port, ssl=True, ssl_ca_certs=cert)
    store = RedisStore.from_url(f"rediss://{server.host}:{server.port}/0", client=client,
                                prefix=f"w{uuid.uuid4().hex[:8]}:")
    try:
        async with Manager(store, num_workers=2) as mgr:
            inst = await mgr.schedule_job(Job(kind="add", executor=lambda a, b: a + b), arguments=(2, 3))
            done = await mgr.wait(inst, timeout=10)
            assert (done.state, done.result) == (State.COMPLETED, 5)
            assert [r.state for r in await mgr.lookup_instance_history(Query(instance=inst))][-1] is State.COMPLETED
        assert await client.exists(f"{store.p}inst:{inst.uuid}") == 1
    finally:
        await client.aclose()
