"""SIGINT (Ctrl-C) stops ``gojob serve`` as cleanly as SIGTERM: running instances finish or are handed
back to the queue, nothing is lost, a second Ctrl-C does not cut the shutdown short, and the exit
status is 0 (no KeyboardInterrupt traceback: the fixture fails a test whose node logged one)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import gojob_core as gojob
from gojob_core.testing.servers import Server
from grpc_nodes import NodeFactory


async def until_state(c: Any, uuid: str, state: gojob.State, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while (await c.lookup_instance(uuid)).state is not state:
            await anyio.sleep(0.02)


async def test_sigint_with_instances_running_loses_nothing(valkey_server: Server, nodes: NodeFactory,
                                                           tmp_path: Path) -> None:
    store = f"{valkey_server.url('valkey')}?prefix=i{uuid.uuid4().hex[:8]}:"
    node = nodes("--shutdown-timeout", "3", "--workers", "2", store=store, name="node-a")
    async with node.client() as c:
        # first_slow sleeps on its first run only: 1s for one (it finishes during the shutdown),
        # 60s for the other (interrupted after --shutdown-timeout and handed back to the queue)
        finishing = await c.schedule("first_slow", (str(tmp_path / "m1"), 1.0))
        handed_back = await c.schedule("first_slow", (str(tmp_path / "m2"), 60.0))
        for inst in (finishing, handed_back):
            await until_state(c, inst.uuid, gojob.State.PROCESSING)

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
