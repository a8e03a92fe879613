"""Nodes on one shared Valkey store: one cluster; SIGTERM or SIGINT (Ctrl-C) with instances running loses
nothing: running instances finish or are handed back to the queue, a second Ctrl-C does not cut the
shutdown short, and the exit status is 0 (no KeyboardInterrupt traceback: the fixture fails a test whose
node logged one)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import gojob_core as gojob
from gojob_core.testing.servers import Server
from grpc_nodes import OK, Node, NodeFactory


def store_url(valkey: Server) -> str:
    return f"{valkey.url('valkey')}?prefix=g{uuid.uuid4().hex[:8]}:"  # each test its own keys


async def until_state(c: Any, uuid: str, state: gojob.State, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while (await c.lookup_instance(uuid)).state is not state:
            await anyio.sleep(0.02)


async def two_running(node: Node, tmp_path: Path) -> tuple[Any, Any]:
    """Two instances running on ``node`` (started with --shutdown-timeout 3): one that finishes during a
    shutdown, one that is interrupted after the shutdown timeout and handed back to the queue."""
    async with node.client() as c:
        # first_slow sleeps on its first run only: 1s for one, 60s for the other
        finishing = await c.schedule("first_slow", (str(tmp_path / "m1"), 1.0))
        handed_back = await c.schedule("first_slow", (str(tmp_path / "m2"), 60.0))
        for inst in (finishing, handed_back):
            await until_state(c, inst.uuid, gojob.State.PROCESSING)
    return finishing, handed_back


async def test_two_nodes_on_one_valkey_store_see_each_others_instances(valkey_server: Server,
                                                                      nodes: NodeFactory) -> None:
    store = store_url(valkey_server)
    a, b = nodes(store=store, name="node-a"), nodes(store=store, name="node-b")
    async with a.client() as ca, b.client() as cb:
        assert (await ca.health()).store == (await cb.health()).store == "valkey"
        from_a = [await ca.schedule("sum", (i, 1)) for i in range(4)]
        from_b = await cb.schedule("sum", (10, 1))
        for inst in from_a:  # b waits for what a scheduled, and the other way round
            assert (await cb.wait(inst, timeout=15)).result == inst.args[0] + 1
        assert (await ca.wait(from_b, timeout=15)).result == 11
        seen_a = {i.uuid for i in await ca.lookup_instances(kind="sum")}
        seen_b = {i.uuid for i in await cb.lookup_instances(kind="sum")}
        assert seen_a == seen_b == {i.uuid for i in [*from_a, from_b]}
        ran_on = {i.node for i in await cb.lookup_instances(kind="sum")}
        assert ran_on <= {"node-a", "node-b"}
        history = await cb.lookup_instance_history(from_a[0])
        assert [r.state for r in history][-1] is gojob.State.COMPLETED

        # a cancel through b reaches an instance a scheduled, and a running one on whichever node holds it
        delayed = await ca.schedule("sum", (1, 2), schedule_after=3600)
        assert (await cb.cancel_instance(delayed)).state is gojob.State.CANCELED
        assert (await ca.lookup_instance(delayed)).state is gojob.State.CANCELED
        running = await ca.schedule("sleep", 30)
        await until_state(cb, running.uuid, gojob.State.PROCESSING)
        await cb.cancel_instance(running)
        assert (await ca.wait(running, timeout=15)).state is gojob.State.CANCELED
    # jobctl on either node tells the same story
    listed_a = a.jobctl("instances", "--kind", "sum", "--state", "COMPLETED")
    listed_b = b.jobctl("instances", "--kind", "sum", "--state", "COMPLETED")
    assert listed_a.returncode == listed_b.returncode == OK
    assert listed_a.stdout == listed_b.stdout and len(listed_a.stdout.splitlines()) == 6


async def test_sigterm_with_instances_running_loses_nothing(valkey_server: Server, nodes: NodeFactory,
                                                            tmp_path: Path) -> None:
    store = store_url(valkey_server)
    node = nodes("--shutdown-timeout", "3", "--workers", "2", store=store, name="node-a")
    finishing, handed_back = await two_running(node, tmp_path)
    t0 = time.monotonic()
    assert node.stop() == 0  # SIGTERM by PID; a clean exit
    elapsed = time.monotonic() - t0
    assert 0.5 < elapsed < 15, elapsed
    assert "SIGTERM: stopping node node-a" in node.output()

    restarted: Node = nodes("--workers", "2", store=store, name="node-a")  # the same node, restarted
    async with restarted.client() as c:
        done = await c.wait(finishing, timeout=15)
        assert done.state is gojob.State.COMPLETED
        assert done.result == {"node": "node-a", "first_run": True}  # finished before the old node exited
        again = await c.wait(handed_back, timeout=15)
        assert again.state is gojob.State.COMPLETED
        assert again.result == {"node": "node-a", "first_run": False}  # ran again after the restart
        history = await c.lookup_instance_history(handed_back)
        states = [r.state.value for r in history]
        assert states == ["CREATED", "SCHEDULED", "PROCESSING", "SCHEDULED", "PROCESSING", "COMPLETED"], states
        assert history[3].detail == "released by node node-a"
        assert again.attempts == 1  # a hand-back does not use up an attempt


async def test_sigint_with_instances_running_loses_nothing(valkey_server: Server, nodes: NodeFactory,
                                                           tmp_path: Path) -> None:
    store = store_url(valkey_server)
    node = nodes("--shutdown-timeout", "3", "--workers", "2", store=store, name="node-a")
    finishing, handed_back = await two_running(node, tmp_path)

    node.proc.send_signal(signal.SIGINT)  # Ctrl-C, by PID
    deadline = time.monotonic() + 15
    while "SIGINT: stopping node node-a" not in node.output() and node.proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "SIGINT: stopping node node-a" in node.output(), node.output()[-3000:]
    assert node.stop(signal.SIGINT) == 0  # a second Ctrl-C while it stops; still a clean exit
    log = node.output()
    assert "SIGINT: node node-a is already stopping" in log, log[-3000:]
    assert "KeyboardInterrupt" not in log and "node node-a stopped" in log, log[-3000:]

    restarted = nodes("--workers", "2", store=store, name="node-b")  # another node on the store
    async with restarted.client() as c:
        done = await c.wait(finishing, timeout=15)
        assert done.state is gojob.State.COMPLETED
        assert done.result == {"node": "node-a", "first_run": True}  # finished before node-a exited
        again = await c.wait(handed_back, timeout=15)
        assert again.state is gojob.State.COMPLETED
        assert again.result == {"node": "node-b", "first_run": False}  # handed back, ran again on node-b
        history = await c.lookup_instance_history(handed_back)
        states = [r.state.value for r in history]
        assert states == ["CREATED", "SCHEDULED", "PROCESSING", "SCHEDULED", "PROCESSING", "COMPLETED"], states
        assert history[3].detail == "released by node node-a"
        assert again.attempts == 1  # a hand-back does not use up an attempt


async def test_two_nodes_on_one_sqlite_file(tmp_path: Path, nodes: NodeFactory) -> None:
    # gojob serve --store sqlite:///...: two nodes (processes) on one file share the queue and history
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    a, b = nodes(store=store, name="file-a"), nodes(store=store, name="file-b")
    async with a.client() as ca, b.client() as cb:
        assert (await ca.health()).store == (await cb.health()).store == "sqlite"
        insts = [await ca.schedule("sum", (i, 1)) for i in range(6)]
        for inst in insts:
            assert (await cb.wait(inst, timeout=20)).result == inst.args[0] + 1
        assert {i.uuid for i in await cb.lookup_instances(kind="sum")} == {i.uuid for i in insts}
        delayed = await cb.schedule("sum", (1, 2), schedule_after=3600)
        assert (await ca.cancel_instance(delayed)).state is gojob.State.CANCELED


async def test_a_node_on_postgresql(postgres_server: Any, nodes: NodeFactory) -> None:
    node = nodes(store=f"{postgres_server.url()}?schema=serve_{uuid.uuid4().hex[:8]}", name="pg")
    async with node.client() as c:
        assert (await c.health()).store == "postgres"
        inst = await c.schedule("sum", (20, 22))
        assert (await c.wait(inst, timeout=20)).result == 42
