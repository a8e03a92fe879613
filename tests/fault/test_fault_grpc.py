"""Hostile input to a node's gRPC server: a real ``gojob serve`` process on each store.

Garbage bytes as the request of every method of ``gojob.v1.JobService`` (server-streaming ones also called
as unary, as a client that knows nothing of the service would), and bytes that are not HTTP/2 at all on
the port. Invariants: every call is refused with INVALID_ARGUMENT; the node goes on serving; nothing is
written (instances, history, the pool's size as before: an instance waiting for an hour still waits);
the node logs no traceback, and at most one line per refused call.

The scenario does not depend on the store: a request is refused where its bytes are decoded, before any
call reaches the Manager or its store (``gojob_grpc._server``: every method's deserializer is wrapped).
It runs on the stores it was written for and is not repeated on each store added since (PostgreSQL,
SQLite), which would only start the same refusals on another backend.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from fault_support import HERE, Verdict, store_url
from gojob_core import Query, State
from gojob_grpc import Client
from gojob_grpc.proto.gojob.v1 import jobs_pb2 as pb

pytestmark = [pytest.mark.anyio, pytest.mark.fault, pytest.mark.slow]

#: the stores this store-independent scenario runs on (see the module's docstring)
GRPC_STORES = ["memory", "valkey", "redis", "etcd"]

#: every method of the service (one added later is covered without touching this test)
METHODS = list(pb.DESCRIPTOR.services_by_name["JobService"].methods)
#: none of these decodes as any request message of the service: a varint that never ends, a length past
#: the end, a field without its value, an end-group with no group, text. (Field number 0, ``\x00\x01``, is
#: not among them: upb decodes it as an empty message of a type without fields, such as HealthRequest.)
GARBAGE = (b"\xff" * 10, b"\x0a\x05ab", b"\x08", b"\x0c", b"not a protobuf \xff\x00")
#: what is sent to the port itself: an HTTP/1.1 request, a TLS hello's first bytes, random bytes
NOT_HTTP2 = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
             bytes(range(256)) * 4)
_READY = re.compile(r"gojob serve: node (?P<node>\S+) ready: grpc (?P<grpc>[^\s,]+)")


def _gojob() -> list[str]:
    path = Path(sys.executable).parent / "gojob"
    return [str(path)] if path.exists() else [sys.executable, "-m", "gojob_grpc.cli"]


async def _start_node(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    node = f"g-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{node}.log"
    env = dict(os.environ, GRPC_VERBOSITY="ERROR",
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    env.pop("GOJOB_TOKEN", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_gojob(), "serve", "--store", url, "--jobs", "fault_serve_jobs", "--listen",
                                 "127.0.0.1:0", "--node-id", node, "--workers", "2", "--lease-time", "3",
                                 "--log-level", "INFO"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                start_new_session=True)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        m = _READY.search(log.read_text(errors="replace"))
        if m:
            return proc, m["grpc"], log
        if proc.poll() is not None:
            break
        await anyio.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    pytest.fail(f"gojob serve did not become ready:\n{log.read_text(errors='replace')[-3000:]}", pytrace=False)


async def _call(channel: grpc.aio.Channel, path: str, payload: bytes, streaming: bool) -> grpc.StatusCode | str:
    try:
        if streaming:
            async for _ in channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                    payload, timeout=10):
                pass
        else:
            await channel.unary_unary(path, request_serializer=None, response_deserializer=None)(payload, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return "accepted"


def _raw(address: str, payload: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        s.settimeout(2)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


async def _snapshot(client: Client) -> tuple[Any, ...]:
    insts = sorted((i.uuid, i.state.value, i.attempts, i.cancel_requested) for i in await client.lookup_instances())
    hist = [(r.uuid, r.state.value, r.attempt) for r in await client.lookup_instance_history(Query())]
    workers = (await client.get_workers()).num_workers
    jobs = sorted(j.kind for j in await client.registered_jobs())
    return insts, hist, workers, jobs


@pytest.mark.parametrize("store", GRPC_STORES)
async def test_hostile_grpc_input_is_refused_and_writes_nothing(store: str, request: pytest.FixtureRequest,
                                                                tmp_path: Path) -> None:
    t0 = time.time()
    url = "memory://" if store == "memory" else store_url(store, request.getfixturevalue(f"{store}_server"))
    proc, address, log = await _start_node(url, tmp_path)
    v = Verdict("hostile gRPC input", store)
    lines_before = 0
    try:
        async with Client(address) as client:
            waiting = await client.schedule("echo", (1,), schedule_after=3600)
            before = await _snapshot(client)
            lines_before = len(log.read_text(errors="replace").splitlines())
            calls = 0
            async with grpc.aio.insecure_channel(address) as channel:
                for method in METHODS:
                    path = f"/{method.containing_service.full_name}/{method.name}"
                    shapes = [method.server_streaming] + ([False] if method.server_streaming else [])
                    for streaming, payload in itertools.product(shapes, GARBAGE):
                        calls += 1
                        code = await _call(channel, path, payload, streaming)
                        if code is not grpc.StatusCode.INVALID_ARGUMENT:
                            v.problems.append(f"{path} ({'stream' if streaming else 'unary'}) with {payload[:12]!r}: "
                                              f"{code}, expected INVALID_ARGUMENT")
            for payload in NOT_HTTP2:
                await anyio.to_thread.run_sync(_raw, address, payload)
            v.faults = calls + len(NOT_HTTP2)
            health = await client.health()
            after = await _snapshot(client)
            still = await client.lookup_instance(waiting.uuid)
        if after != before:
            v.problems.append(f"the store changed: before {before!r}, after {after!r}")
        if (still.state, still.cancel_requested) != (State.SCHEDULED, False):
            v.problems.append(f"the waiting instance is now {still.state.value} (cancel_requested "
                              f"{still.cancel_requested})")
        v.notes.append(f"{calls} garbage calls, {len(NOT_HTTP2)} non-HTTP/2 connections; node {health.node_id} "
                       "still serving")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                await anyio.to_thread.run_sync(proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                v.problems.append("the node did not stop on SIGTERM")
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        v.problems.append(f"the node exited {proc.returncode} on SIGTERM")
    if "Traceback" in text:
        v.problems.append("the node logged a traceback:\n" + text[text.index("Traceback"):][:1500])
    added = text.splitlines()[lines_before:]
    refused = [ln for ln in added if "refused" in ln or "INVALID" in ln.upper()]
    if len(added) > v.faults + 5:  # one line per refused call, and the stop's own few lines
        v.problems.append(f"the node logged {len(added)} lines for {v.faults} hostile calls: {added[:5]}")
    v.notes.append(f"{len(refused)} log lines about refused calls")
    v.wall = time.time() - t0
    v.report()
