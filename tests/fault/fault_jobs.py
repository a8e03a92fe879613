"""The jobs of the fault suite. Every executor records what it did outside the store, in an append-only
file of JSON lines (one per event, one ``os.write`` each), so that a scenario's checks do not depend on the
store they are checking.

Events (``e``): ``s`` the executor started, ``f`` it returned, ``x`` it was interrupted (cancel, timeout,
lost lease, shutdown), ``r`` it raised, ``c`` it is about to kill its node. Each carries the instance's
uuid ``u``, its attempt ``a``, the node ``n``, the node's incarnation ``p`` (the process id, or a counter
for in-process nodes) and the wall-clock time ``t``; cron ticks add their fire time ``r``.

The same definitions serve the node processes (:mod:`fault_node`), the in-process nodes of the memory
store, and the scheduling Manager of a test (``make_jobs(None)``: same kinds and signatures, executors
that are never called, since that Manager has no workers).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from gojob_core import Instance, Job

__all__ = ["CRASH_EXIT", "Recorder", "make_jobs"]

#: the exit status of a node process killed by the ``crash`` job
CRASH_EXIT = 70


class Recorder:
    """Appends one JSON line per event to ``OUT/NODE.events``."""

    def __init__(self, out_dir: Path, node: str, incarnation: int) -> None:
        self.node = node
        self.incarnation = incarnation
        self.path = out_dir / f"{node}.events"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, inst: Instance, **extra: Any) -> None:
        line = json.dumps({"e": event, "u": inst.uuid, "a": inst.attempts, "n": self.node, "p": self.incarnation,
                           "t": time.time(), **extra}, separators=(",", ":"))
        os.write(self._fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


def make_jobs(rec: Recorder | None, kill_node: Callable[[], Any] | None = None) -> list[Job]:
    """The suite's jobs, recording through ``rec``; ``kill_node()`` kills the node (``os._exit`` in a node
    process; in process, it asks the test to abandon the node's Manager and never returns)."""

    def rec_write(event: str, inst: Instance, **extra: Any) -> None:
        if rec is None:
            raise AssertionError("the scheduling Manager runs no jobs")
        rec.write(event, inst, **extra)

    cancelled = anyio.get_cancelled_exc_class

    async def work(i: int, ms: int, instance: Instance) -> dict[str, Any]:
        """Sleeps ``ms`` ms; returns who ran it (the node and the attempt: a result must be its attempt's)."""
        rec_write("s", instance)
        try:
            await anyio.sleep(ms / 1000)
        except cancelled():
            rec_write("x", instance)
            raise
        rec_write("f", instance)
        return {"i": i, "n": rec.node if rec else "", "a": instance.attempts}

    async def hang(i: int, instance: Instance) -> None:
        """Never returns (its timeout interrupts it)."""
        rec_write("s", instance)
        try:
            await anyio.sleep(3600)
        except cancelled():
            rec_write("x", instance)
            raise

    async def boom(i: int, instance: Instance) -> None:
        """Always raises."""
        rec_write("s", instance)
        rec_write("r", instance)
        raise RuntimeError(f"boom {i} on attempt {instance.attempts}")

    async def crash(i: int, ms: int, instance: Instance) -> None:
        """Kills its node ``ms`` ms after it started (its neighbours in the node die with it)."""
        rec_write("s", instance)
        await anyio.sleep(ms / 1000)
        rec_write("c", instance)
        assert kill_node is not None
        await kill_node()

    async def tick(instance: Instance) -> None:
        """One fire of a recurring schedule: records its fire time, runs for 400 ms."""
        rec_write("s", instance, r=instance.ready_ts)
        try:
            await anyio.sleep(0.4)
        except cancelled():
            rec_write("x", instance, r=instance.ready_ts)
            raise
        rec_write("f", instance, r=instance.ready_ts)

    return [
        Job(kind="work", executor=work),
        Job(kind="hang", executor=hang, timeout=0.5, max_retries=1, backoff_strategy=lambda inst: 0.1),
        Job(kind="boom", executor=boom, max_retries=2, backoff_strategy=lambda inst: 0.1),
        Job(kind="crash", executor=crash, max_abandons=2),
        Job(kind="tick", executor=tick),
    ]


