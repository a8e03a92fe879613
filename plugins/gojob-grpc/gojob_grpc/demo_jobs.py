"""Example jobs for a ``gojob serve`` node: ``gojob serve --jobs gojob_grpc.demo_jobs``.

``python -m gojob_grpc.demo`` starts a node with these jobs and drives it with ``jobctl``; they also
make a node to try ``jobctl`` by hand::

    gojob serve --jobs gojob_grpc.demo_jobs &
    jobctl schedule sum '"40"' '"2"'                 # strings, coerced to int by the type hints: 42
    jobctl schedule flaky world --max-retries 2      # fails its first attempt, the retry succeeds
    jobctl schedule slow 2                           # sleeps 2 s (its timeout is 10 s)
    jobctl schedule report --cron "*/5 * * * *"      # recurring

``gojob serve`` registers every ``gojob.Job`` bound at the top level of the module.
"""

from __future__ import annotations

import collections

import anyio
import gojob_core as gojob

__all__ = ["flaky_job", "report_job", "slow_job", "sum_job"]


def add(a: int, b: int) -> int:
    """Arguments are coerced to these hints: ``jobctl schedule sum '"40"' '"2"'`` gives 42."""
    return a + b


sum_job = gojob.Job(
    kind="sum",
    executor=add,
    description="add two integers (strings are coerced)",
    complete_processor=lambda inst, results: inst.infof("sum = %d", results[0]),
)


def flaky(inst: gojob.Instance, name: str) -> str:
    """Fails its first attempt (``inst`` is injected: it is not one of the arguments)."""
    inst.infof("attempt %d: calling upstream for %s", inst.attempts, name)
    if inst.attempts == 1:
        raise ConnectionError("upstream not ready yet")
    return f"hello, {name}"


flaky_job = gojob.Job(
    kind="flaky",
    executor=flaky,
    description="fails its first attempt; schedule it with retries (--max-retries 2)",
    backoff_strategy=lambda inst: 0.2,  # seconds before the next attempt
)


async def slow(seconds: float, inst: gojob.Instance) -> float:
    """Sleeps; an async executor, so a cancel or its timeout interrupts it at once."""
    inst.infof("sleeping %gs", seconds)
    await anyio.sleep(seconds)
    inst.infof("woke up")
    return seconds


slow_job = gojob.Job(kind="slow", executor=slow, description="sleep for a while (timeout 10 s)", timeout=10.0)


async def report(manager: gojob.Manager, inst: gojob.Instance) -> dict[str, int]:
    """Counts the instances of the cluster by state: a job to run on a crontab spec."""
    counts = collections.Counter(i.state.value for i in await manager.lookup_instances())
    inst.infof("instances by state: %s", dict(sorted(counts.items())))
    return dict(sorted(counts.items()))


report_job = gojob.Job(kind="report", executor=report, description="count the instances by state (for cron)",
                       priority=50)
