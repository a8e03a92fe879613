"""The jobs module the test nodes import (``gojob serve --jobs sample_jobs``, PYTHONPATH set by the fixture)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import anyio
import gojob_core as gojob


async def add(a: int, b: int) -> int:
    return a + b


sum_job = gojob.Job(kind="sum", executor=add, description="add two integers")


def fail(message: str) -> None:
    raise RuntimeError(message)


fail_job = gojob.Job(kind="fail", executor=fail, description="always fails")

# fails, is retried once 50 ms later, fails again: TERMINATED after two attempts (test_metrics.py)
fail_retried_job = gojob.Job(kind="fail.retried", executor=fail, max_retries=1, backoff_strategy=lambda inst: 0.05,
                             description="always fails; one retry, 50 ms later")


async def nap(seconds: float, inst: gojob.Instance) -> float:
    inst.infof("sleeping %ss", seconds)
    await anyio.sleep(seconds)
    inst.infof("woke up")
    return seconds


sleep_job = gojob.Job(kind="sleep", executor=nap)


async def greet(name: str, greeting: str = "hello", *, when: dt.date | None = None) -> str:
    return f"{greeting}, {name}" + (f" on {when.isoformat()}" if when else "")


greet_job = gojob.Job(kind="greet", executor=greet, priority=5, max_retries=1, timeout=30.0)


async def first_slow(marker: str, slow: float, manager: gojob.Manager) -> dict[str, object]:
    """Slow on its first run (while ``marker`` does not exist yet), fast on any later run."""
    path = Path(marker)
    first = not path.exists()
    if first:
        path.write_text(str(os.getpid()))
        await anyio.sleep(slow)
    return {"node": manager.node_id, "first_run": first}


first_slow_job = gojob.Job(kind="first_slow", executor=first_slow)


async def register(manager: gojob.Manager) -> None:
    """Called by ``gojob serve`` once the Manager has started, before it serves."""
    await manager.register_job(gojob.Job(kind="registered.by.function", executor=lambda: "registered",
                                         description="from register(manager)"))
