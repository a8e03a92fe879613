"""The etcd store across processes and failures, on a real etcd.

- two worker processes (gojob_core.testing.worker) on one etcd run 3,000 instances, each exactly once;
- a worker process killed with SIGKILL mid-job: the other one re-runs the job within the lease time;
- etcd restarted under load: the watch resumes, nothing is lost, nothing runs twice except after a
  lease expiry (an abandoned attempt);
- an idle node hears of new work through the watch again after a restart (its poll is far away);
- bad input at start (URL, refused connection, wrong password): one clear error each;
- TLS with a private CA, and mutual TLS; several endpoints with one of them down.

asyncio only (aetcd runs on grpc.aio). Every process and server started here is stopped by PID.
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
from gojob_core import Job, Manager, StoreError
from gojob_core.testing.checks import (
    check_each_instance_runs_once,
    check_killed_worker_reruns,
    check_restart_under_load,
)
from gojob_core.testing.processes import Workers, wait_for
from gojob_core.testing.servers import Server, free_port
from gojob_store_etcd.testing import find_etcd, start_etcd_server

pytestmark = pytest.mark.anyio



@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _prefix() -> str:
    return f"/d{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def shared_url(etcd_server: Server) -> str:
    """The session's etcd, with a key prefix of this test's own."""
    return f"{etcd_server.url('etcd')}?prefix={_prefix()}"


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[Callable[[], Server]]:
    """Start etcd servers of this test's own (stopped by PID at teardown)."""
    started: list[Server] = []

    def start() -> Server:
        binary = find_etcd()
        if binary is None:
            raise RuntimeError("no etcd binary found; these tests need a real server")
        server = start_etcd_server(binary, tmp_path / f"etcd-{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()




# -- two worker processes, one etcd --------------------------------------------------------------------------
N_MANY = 3000


@pytest.mark.slow
async def test_two_worker_processes_run_each_instance_exactly_once(shared_url: str, workers: Workers) -> None:
    await check_each_instance_runs_once(shared_url, workers, n=N_MANY, n_procs=2)


# -- a worker process killed mid-job ------------------------------------------------------------------------
@pytest.mark.slow
async def test_killed_worker_process_job_reruns_within_the_lease_time(shared_url: str, workers: Workers) -> None:
    # the survivor's watch knows the lease's end and re-runs the job then, not a poll later; the bound
    # allows the scheduling delays of a loaded 2-core CI machine (four processes and etcd share it)
    await check_killed_worker_reruns(shared_url, workers, lease=1.5, max_wait=1.5 + 1.5)


# -- etcd restarted under load ----------------------------------------------------------------------------
N_RESTART = 1000


@pytest.mark.slow
async def test_etcd_restart_under_load_loses_nothing(dedicated: Callable[[], Server],
                                                     record_property: Callable[[str, object], None]) -> None:
    server = dedicated()
    twice = await check_restart_under_load(f"{server.url('etcd')}?prefix={_prefix()}", server.restart, n=N_RESTART)
    record_property("ran_twice", twice)
    print(f"\n[etcd] restarted under load: {twice} of {N_RESTART} instances ran twice")


async def test_watch_resumes_after_etcd_restart(dedicated: Callable[[], Server]) -> None:
    """An idle node (its safety-net poll a minute away) hears of new work through the watch again
    once it has re-created it from the last revision it saw."""
    server = dedicated()
    url = f"{server.url('etcd')}?prefix={_prefix()}"

    async def echo(i: int) -> int:
        return i

    job = Job(kind="echo", executor=echo)
    with anyio.fail_after(60):
        async with Manager(url, num_workers=1, lease_time=5.0, poll_interval=60.0) as mgr, \
                Manager(url, num_workers=0, lease_time=5.0) as producer:
            await mgr.register_job(job)
            first = await producer.schedule_job(job, arguments=[1])
            assert (await mgr.wait(first, timeout=5)).result == 1
            store: Any = mgr.store
            before = store._rev
            await anyio.to_thread.run_sync(server.restart)

            async def resumed() -> bool:
                return bool(store._watch_ok) and store._watch_task is not None and not store._watch_task.done()

            await wait_for(resumed, 20, lambda: "the watch did not come back after the restart", interval=0.05)
            await anyio.sleep(0.3)
            t = time.monotonic()
            second = await producer.schedule_job(job, arguments=[2])
            assert (await mgr.wait(second, timeout=5)).result == 2
            assert time.monotonic() - t < 3.0
            assert store._rev > before
            assert mgr.running


# -- bad input at start ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1:notaport", "127.0.0.1:99999", "127.0.0.1:2379?bogus=1",
                                     "127.0.0.1:2379?timeout=soon"])
async def test_bad_url_raises_value_error_naming_it(address: str) -> None:
    url = f"etcd://{address}"
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        Manager(store=url)


async def test_refused_connection_fails_fast_naming_the_address() -> None:
    port = free_port()  # nothing listens there
    t = time.monotonic()
    with anyio.fail_after(15):
        with pytest.raises(StoreError) as err:
            async with Manager(store=f"etcd://127.0.0.1:{port}?connect_timeout=2", num_workers=1):
                pytest.fail("the Manager started without a server")
    assert time.monotonic() - t < 10
    assert f"127.0.0.1:{port}" in str(err.value) and "etcd" in str(err.value)


async def test_refused_connection_fails_as_fast_as_redis_does() -> None:
    """Nothing listens at any endpoint: the first refusal is the answer (well within the default
    connect_timeout of 5s, which is for a server that accepts but does not answer yet)."""
    ports = [free_port(), free_port()]
    for address in (f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"):
        t = time.monotonic()
        with anyio.fail_after(15):
            with pytest.raises(StoreError) as err:
                await Manager(store=f"etcd://{address}", num_workers=1).start()
        elapsed = time.monotonic() - t
        assert elapsed < 2, f"a refused connection to {address} took {elapsed:.2f}s"
        message = str(err.value)
        assert f"etcd store: cannot connect to {address}: " in message and "Connection refused" in message, message


# -- a job through a URL, or one clear error ----------------------------------------------------------------
async def _runs_a_job(url: str) -> None:
    async def echo(i: int) -> int:
        return i

    async with Manager(store=url, num_workers=1) as mgr:
        inst = await mgr.schedule_job(Job(kind="echo", executor=echo), arguments=[5])
        assert (await mgr.wait(inst, timeout=10)).result == 5


async def _refused(url: str) -> str:
    with anyio.fail_after(20):
        with pytest.raises(StoreError) as err:
            async with Manager(store=url, num_workers=1):
                pytest.fail(f"the Manager started with {url}")
    return str(err.value)


PASSWORD = "pw-Zq81x-secret"


@pytest.mark.parametrize("credentials", ["root:wrong-password@", "nobody:wrong-password@", ""],
                         ids=["wrong-password", "unknown-user", "no-credentials"])
async def test_authentication(credentials: str, dedicated: Callable[[], Server]) -> None:
    """With auth enabled: a wrong or missing password is one clear error naming the address (never the
    password); the right one works, token and all."""
    from aetcd import rpc
    from gojob_store_etcd._client import EtcdClient, parse_etcd_url

    server = dedicated()
    admin = EtcdClient(parse_etcd_url(server.url("etcd")))
    await admin.connect()
    try:
        auth = rpc.AuthStub(admin._channel)
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"))
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=PASSWORD))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.AuthEnable(rpc.AuthEnableRequest())
    finally:
        await admin.close()
    address = f"{server.host}:{server.port}"
    message = await _refused(f"etcd://{credentials}{address}?connect_timeout=3")
    assert address in message and "authentication" in message.lower(), message
    assert "wrong-password" not in message and PASSWORD not in message
    await _runs_a_job(f"etcd://root:{PASSWORD}@{address}")


# -- TLS and several endpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
async def test_tls_with_a_private_ca(mutual: bool, tmp_path: Path) -> None:
    """etcds:// with the CA that signed the server's certificate works (with a client certificate when
    the server asks for one); plain etcd://, no CA, or no client certificate is one clear error."""
    from gojob_core.testing.servers import ca_signed_certificate

    binary = find_etcd()
    assert binary is not None, "no etcd binary found; these tests need a real server"
    ca, cert, key = ca_signed_certificate(tmp_path / "tls")
    server = start_etcd_server(binary, tmp_path / "etcd", tls=(cert, key, ca), client_cert_auth=mutual)
    try:
        address = f"127.0.0.1:{server.port}"
        good = f"etcds://{address}?ca={ca}&prefix={_prefix()}" + (f"&cert={cert}&key={key}" if mutual else "")
        await _runs_a_job(good)
        # the name in the certificate is checked: localhost is in it too
        await _runs_a_job(good.replace("127.0.0.1", "localhost"))
        for bad in (f"etcd://{address}?connect_timeout=2",  # plain gRPC to a TLS port
                    f"etcds://{address}?connect_timeout=2",  # the system's CAs do not know ours
                    *([f"etcds://{address}?ca={ca}&connect_timeout=2"] if mutual else [])):  # no client certificate
            message = await _refused(bad)
            assert address in message and "etcd" in message, message
    finally:
        server.stop()


async def test_several_endpoints_one_of_them_down(etcd_server: Server) -> None:
    """A URL naming several members keeps working while one of them does not answer."""
    dead = free_port()
    live = f"127.0.0.1:{etcd_server.port}"
    await _runs_a_job(f"etcd://127.0.0.1:{dead},{live}?prefix={_prefix()}")
    await _runs_a_job(f"etcd://{live},127.0.0.1:{dead}?prefix={_prefix()}")
