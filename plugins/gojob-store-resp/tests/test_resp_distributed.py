"""The Valkey and Redis stores across processes and failures, on real servers.

- several worker processes (gojob_core.testing.worker) on one server run 5,000 instances, each exactly once;
- a worker process killed with SIGKILL mid-job: another one re-runs the job after the lease expires;
- the server restarted (with persistence) under load: nothing is lost, nothing runs more than twice;
- bad input at start (URL, refused connection, wrong password): one clear error each.

asyncio only (redis-py's asyncio client does not run on trio). Every process and server started here
is stopped by PID in a fixture's teardown.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from gojob_core import CorruptRecordError, Instance, Job, Manager, Query, State, StoreError
from gojob_core.abc import Outcome, Store
from gojob_core.testing.checks import (
    check_each_instance_runs_once,
    check_killed_worker_reruns,
    check_restart_under_load,
)
from gojob_core.testing.processes import Workers, wait_for
from gojob_core.testing.servers import Server, free_port
from gojob_store_resp import RespStore
from gojob_store_resp.testing import find_redis_server, find_valkey_server, start_resp_server
from redis.exceptions import RedisError

pytestmark = pytest.mark.anyio

STORES = ["redis", "valkey"]



@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _binary(kind: str) -> str:
    binary = find_redis_server() if kind == "redis" else find_valkey_server()
    if binary is None:
        raise RuntimeError(f"no {kind} server binary found; these tests need a real server")
    return binary


def _prefix() -> str:
    return f"d{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared_url(kind: str, request: pytest.FixtureRequest) -> str:
    """The session's server for this store, with a key prefix of this test's own."""
    server: Server = request.getfixturevalue(f"{kind}_server")
    return f"{server.url(kind)}?prefix={_prefix()}"


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers of this test's own (stopped by PID at teardown)."""
    started: list[Server] = []

    def start(kind: str, **options: Any) -> Server:
        server = start_resp_server(_binary(kind), tmp_path / f"{kind}-{len(started)}", **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()




# -- several worker processes, one server -------------------------------------------------------------------
N_MANY = 5000


@pytest.mark.slow
@pytest.mark.parametrize("n_procs", [2, 3])
async def test_worker_processes_run_each_instance_exactly_once(shared_url: str, workers: Workers,
                                                               n_procs: int) -> None:
    await check_each_instance_runs_once(shared_url, workers, n=N_MANY, n_procs=n_procs)


# -- a worker process killed mid-job ------------------------------------------------------------------------
@pytest.mark.slow
async def test_killed_worker_process_job_reruns_on_another_after_lease(shared_url: str, workers: Workers) -> None:
    # within the lease plus one reclaim interval (lease/2 at most) plus scheduling slack
    await check_killed_worker_reruns(shared_url, workers, lease=1.5, max_wait=1.5 * 1.5 + 1.0)


# -- the server restarted under load --------------------------------------------------------------------------
N_RESTART = 1000


@pytest.mark.slow
@pytest.mark.parametrize("kind", [
    "redis",
    "valkey",
])
async def test_server_restart_under_load_loses_nothing(kind: str, dedicated: Callable[..., Server],
                                                       record_property: Callable[[str, object], None]) -> None:
    server = dedicated(kind, persist=True)
    twice = await check_restart_under_load(f"{server.url(kind)}?prefix={_prefix()}", server.restart, n=N_RESTART)
    record_property("ran_twice", twice)
    print(f"\n[{kind}] server restarted under load: {twice} of {N_RESTART} instances ran twice")


@pytest.mark.parametrize("kind", [
    "redis",
    "valkey",
])
async def test_wake_subscription_comes_back_after_server_restart(kind: str,
                                                                 dedicated: Callable[..., Server]) -> None:
    """An idle node (its safety-net poll far away) hears of new work through the wake channel again
    once the client has reconnected by itself after a restart."""
    server = dedicated(kind, persist=True)
    prefix = _prefix()
    url = f"{server.url(kind)}?prefix={prefix}"

    async def echo(i: int) -> int:
        return i

    job = Job(kind="echo", executor=echo)
    probe = aioredis.Redis(host=server.host, port=server.port, socket_timeout=2, socket_connect_timeout=2)
    try:
        with anyio.fail_after(60):
            async with Manager(url, num_workers=1, lease_time=5.0, poll_interval=60.0) as mgr:
                await mgr.register_job(job)
                first = await mgr.schedule_job(job, arguments=[1])
                assert (await mgr.wait(first, timeout=5)).result == 1
                await anyio.to_thread.run_sync(server.restart)

                async def subscribed() -> bool:
                    try:
                        [(_, n)] = await probe.pubsub_numsub(prefix + "wake")
                    except (RedisError, OSError):
                        return False
                    return int(n) >= 1

                await wait_for(subscribed, 20, lambda: "the wake channel has no subscriber after the restart",
                               interval=0.1)
                t = time.monotonic()
                second = await mgr.schedule_job(job, arguments=[2])
                assert (await mgr.wait(second, timeout=5)).result == 2
                assert time.monotonic() - t < 3.0
                assert mgr.running
    finally:
        await probe.aclose()


# -- bad input at start ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1:notaport/0", "127.0.0.1:99999/0", "127.0.0.1:6379/db1",
                                     "127.0.0.1:6379/0/1"])
async def test_bad_url_raises_value_error_naming_it(kind: str, address: str) -> None:
    url = f"{kind}://{address}"
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        Manager(store=url)


async def test_out_of_range_port_is_reported_as_out_of_range(kind: str) -> None:
    url = f"{kind}://127.0.0.1:99999/0"
    with pytest.raises(ValueError, match=r"(?i)range") as err:
        Manager(store=url)
    assert repr(url) in str(err.value)


async def test_refused_connection_fails_fast_naming_the_address(kind: str) -> None:
    port = free_port()  # nothing listens there
    t = time.monotonic()
    with anyio.fail_after(15):
        with pytest.raises(StoreError) as err:
            async with Manager(store=f"{kind}://127.0.0.1:{port}/0", num_workers=1):
                pytest.fail("the Manager started without a server")
    assert time.monotonic() - t < 10
    assert f"127.0.0.1:{port}" in str(err.value)
    assert kind in str(err.value)


PASSWORD = "pw-Zq81x-secret"


@pytest.mark.parametrize("kind", [
    "redis",
    "valkey",
])
@pytest.mark.parametrize("credentials", [":wrong-password@", "someone:wrong-password@", ""],
                         ids=["wrong-password", "wrong-user-password", "no-password"])
async def test_wrong_password_is_an_authentication_error(kind: str, credentials: str,
                                                         dedicated: Callable[..., Server]) -> None:
    server = dedicated(kind, password=PASSWORD)
    t = time.monotonic()
    with anyio.fail_after(15):
        with pytest.raises(StoreError) as err:
            async with Manager(store=f"{kind}://{credentials}{server.host}:{server.port}/0", num_workers=1):
                pytest.fail("the Manager started with a wrong password")
    assert time.monotonic() - t < 10
    message = str(err.value)
    assert f"{server.host}:{server.port}" in message
    assert "wrong-password" not in message and PASSWORD not in message
    assert "authentication" in message.lower(), message
    # and the right password works
    async with Manager(store=f"{kind}://:{PASSWORD}@{server.host}:{server.port}/0", num_workers=0) as mgr:
        assert await mgr.lookup_instances() == []


# -- corrupt records ---------------------------------------------------------------------------------------------
async def test_corrupt_records_are_reported_set_aside_and_never_deleted(shared_url: str) -> None:
    """An instance hash, a queue entry and a history member that cannot be decoded: reads skip and report
    them, a claim sets the bad instance aside (out of the running index, so no lease expiry brings it
    back), the good instances run, and every bad record is still in the server afterwards."""
    async with Manager(store=shared_url, num_workers=0, node_id="n1") as mgr:
        store = mgr.store
        assert isinstance(store, RespStore) and isinstance(store, Store)
        p = store.p
        good = [Instance(uuid=str(uuid.uuid4()), kind="k", args=[i], created_ts=time.time() + i,
                         ready_ts=time.time() - 1) for i in range(3)]
        assert await store.enqueue(good) == [True] * 3
        bad = str(uuid.uuid4())
        # a record whose fixed part is not JSON, queued first in line
        await store.conn.execute("HSET", f"{p}inst:{bad}", "uuid", bad, "d", "{not json", "kind", "k",
                                 "priority", "-5", "ready_ts", "1.0", "state", "SCHEDULED", "seq", "7")
        await store.conn.execute("ZADD", f"{p}all", "1.0", bad)
        await store.conn.execute("ZADD", f"{p}ready", "-5", f"{1_000_000:017d}:{7:015d}:{bad}")
        bad_member = "[{not a record"
        await store.conn.execute("ZADD", f"{p}hist", "2.0", bad_member)
        await store.conn.execute("ZADD", f"{p}hist:i:{good[0].uuid}", "2.0", bad_member)

        assert sorted(i.uuid for i in await store.list_instances(Query())) == sorted(i.uuid for i in good)
        with pytest.raises(CorruptRecordError):
            await store.get_instance(bad)
        claimed = await store.claim("n1", 10, 30.0)
        assert sorted(i.uuid for i in claimed) == sorted(i.uuid for i in good)
        assert await store.conn.execute("ZSCORE", f"{p}running", bad) is None  # set aside
        hist = await store.lookup_history(Query(instance=good[0]))
        assert [r.state for r in hist] == [State.CREATED, State.SCHEDULED, State.PROCESSING]
        assert await store.finish("n1", [Outcome(i.uuid, State.COMPLETED) for i in claimed]) == [True] * 3

        reported = {r.key: r for r in await store.corrupt_records()}
        assert f"{p}inst:{bad}" in reported
        assert "{not json" in reported[f"{p}inst:{bad}"].raw
        assert any(k.startswith(f"{p}hist:") and bad_member in r.raw for k, r in reported.items())
        # nothing was deleted
        assert await store.conn.execute("HGET", f"{p}inst:{bad}", "d") == "{not json"
        assert await store.conn.execute("ZSCORE", f"{p}hist", bad_member) is not None
        assert await store.reclaim_expired("n2") == []  # and it does not come back


# -- the hand-off to a waiting node ------------------------------------------------------------------------------
def _due(kind: str, delay: float = 0.0) -> Instance:
    t = time.time()
    return Instance(uuid=str(uuid.uuid4()), kind=kind, created_ts=t, ready_ts=t + delay)


async def test_enqueue_hands_a_due_instance_straight_to_a_waiting_node(shared_url: str) -> None:
    async with Manager(store=shared_url, num_workers=0, node_id="producer") as mgr:
        store = mgr.store
        assert isinstance(store, RespStore)
        await store._run("idle", "w", 2, "30", "30", -1)  # node w waits for work, 2 slots
        inst = _due("hand")
        assert await store.enqueue([inst], node="producer") == [True]
        got = await store.get_instance(inst.uuid)
        assert got is not None and (got.state, got.node, got.attempts) == (State.PROCESSING, "w", 1)
        assert got.lease_ts is not None and got.lease_ts > time.time() + 20
        assert await store.queue_counts() == {}  # it never waited in the queue
        assert [r.state for r in await store.lookup_history(Query(instance=inst))] == [
            State.CREATED, State.SCHEDULED, State.PROCESSING]
        assert int(await store.conn.execute("HGET", f"{store.p}handed", "w")) == 1
        # the registration now has one slot left; the running index holds the lease
        assert (await store.conn.execute("HGET", f"{store.p}idle", "w")).startswith("1 ")
        assert await store.conn.execute("ZSCORE", f"{store.p}running", inst.uuid) is not None


async def test_a_due_delayed_instance_is_handed_before_a_newer_one(shared_url: str) -> None:
    """A delayed instance that became due but was not moved to the ready set yet goes first: the
    enqueue of a newer instance does not hand that one over directly."""
    async with Manager(store=shared_url, num_workers=0, node_id="producer") as mgr:
        store = mgr.store
        assert isinstance(store, RespStore)
        older = _due("order", delay=0.3)
        assert await store.enqueue([older]) == [True]
        await store._run("idle", "w", 1, "30", "30", -1)  # one slot
        await anyio.sleep(0.4)  # older is due now, still in the delayed set
        newer = _due("order")
        assert await store.enqueue([newer]) == [True]
        got_older, got_newer = await store.get_instance(older.uuid), await store.get_instance(newer.uuid)
        assert got_older is not None and (got_older.state, got_older.node) == (State.PROCESSING, "w")
        assert got_newer is not None and got_newer.state is State.SCHEDULED
        assert await store.queue_counts() == {"order": 1}


async def _run_one_job(store: Store) -> Instance:
    """A node on ``store`` runs one job to completion, with its history; returns the instance."""
    async with Manager(store, num_workers=2) as mgr:
        inst = await mgr.schedule_job(Job(kind="add", executor=lambda a, b: a + b), arguments=(2, 3))
        done = await mgr.wait(inst, timeout=10)
        assert (done.state, done.result) == (State.COMPLETED, 5)
        assert [r.state for r in await mgr.lookup_instance_history(Query(instance=inst))][-1] is State.COMPLETED
    return inst


async def test_redis_store_takes_an_existing_client_whatever_its_reply_settings(redis_server: Server) -> None:
    """``client=``: the store uses the client's connection settings (here its database) for connections
    of its own, which decode replies and speak RESP2 whatever the client was built with."""
    from gojob_store_redis import RedisStore

    client = aioredis.Redis(host=redis_server.host, port=redis_server.port, db=3, decode_responses=False,
                            protocol=3)
    store = RedisStore.from_url(f"redis://{redis_server.host}:{redis_server.port}/0", client=client,
                                prefix=_prefix())
    try:
        inst = await _run_one_job(store)
        # the records went to the client's database, 3
        assert await client.exists(f"{store.p}inst:{inst.uuid}".encode()) == 1
    finally:
        await client.aclose()


async def test_valkey_store_takes_an_existing_glide_client(valkey_server: Server) -> None:
    """``client=``: requests go through the given glide client (subscriptions get clients of their own,
    from the URL); the store does not close a client it was given."""
    from glide import GlideClient, GlideClientConfiguration, NodeAddress
    from gojob_store_valkey import ValkeyStore

    client = await GlideClient.create(GlideClientConfiguration([NodeAddress(valkey_server.host, valkey_server.port)],
                                                               request_timeout=5000))
    store = ValkeyStore.from_url(f"valkey://{valkey_server.host}:{valkey_server.port}/0", client=client,
                                 prefix=_prefix())
    try:
        inst = await _run_one_job(store)
        assert await client.exists([f"{store.p}inst:{inst.uuid}"]) == 1  # still open, and it wrote there
    finally:
        await client.close()
