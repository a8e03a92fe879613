"""Metrics across nodes on one shared store: the queue gauges every node reads from the store, and
go_job_lease_reclaimed_total on the node that re-queues the instance of a node that died.

Two Managers on one MemoryStore object are two nodes of one cluster (as in the store conformance suite).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import pytest
from gojob_core import Job, Manager, MemoryStore, Query, State
from prometheus_client.parser import text_string_to_metric_families


def _samples(mgr: Manager) -> dict[str, dict[str, float]]:
    """{sample name: {kind or "": value}} of the node's exposition (the text a scrape gets)."""
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(mgr.metrics.exposition().decode()):
        for s in fam.samples:
            if "le" not in s.labels:
                out.setdefault(s.name, {})[s.labels.get("kind", "")] = s.value
    return out


async def _until(mgr: Manager, ok: Callable[[dict[str, dict[str, float]]], bool],
                 timeout: float = 10) -> dict[str, dict[str, float]]:
    """Scrape ``mgr`` until ``ok(samples)`` holds; fail with the last scrape after ``timeout``."""
    samples = _samples(mgr)
    with anyio.move_on_after(timeout):
        while not ok(samples):
            await anyio.sleep(0.02)
            samples = _samples(mgr)
    assert ok(samples), samples
    return samples


@pytest.mark.parametrize("interval", [0, -1.0, math.inf, math.nan])
def test_metrics_interval_must_be_a_positive_number(interval: float) -> None:
    with pytest.raises(ValueError, match="metrics_interval"):
        Manager(autoload_plugins=False, metrics_interval=interval)


async def test_queue_gauges_show_what_another_node_scheduled() -> None:
    store = MemoryStore()  # one object: both nodes share it
    job = Job(kind="q.work", executor=lambda: "done")
    other = Job(kind="q.other", executor=lambda: None)
    async with Manager(store, num_workers=0, node_id="watcher", autoload_plugins=False,
                       metrics_interval=0.05) as watcher, \
            Manager(store, num_workers=0, node_id="producer", autoload_plugins=False) as producer:
        assert "go_job_queued" not in _samples(watcher)  # nothing queued yet, no kind known
        await watcher.register_job(job)
        due = await producer.schedule_many(job, [(), (), ()])
        later = await producer.schedule_job(job, schedule_after=3600)
        await producer.schedule_job(other, schedule_after=3600)

        # the watcher scheduled nothing and runs nothing, yet reports the cluster's queue
        samples = await _until(watcher, lambda s: s.get("go_job_queued", {}).get("q.work") == 4)
        assert samples["go_job_queued"] == {"q.work": 4, "q.other": 1}  # due and delayed ones
        age = samples["go_job_oldest_ready_age_seconds"]
        assert age["q.work"] > 0  # three are due and waiting
        assert age["q.other"] == 0  # nothing of this kind is due yet
        assert "go_job_executed_total" not in samples  # it has run nothing

        # workers on the watcher drain the due ones; the next reads show the one still delayed
        await watcher.resize_workers(2)
        for inst in due:
            assert (await watcher.wait(inst, timeout=10)).state is State.COMPLETED
        samples = await _until(watcher, lambda s: s.get("go_job_queued", {}).get("q.work") == 1)
        assert samples["go_job_oldest_ready_age_seconds"]["q.work"] == 0
        assert samples["go_job_executed_total"]["q.work"] == 3
        assert (await watcher.lookup_instance(later)).state is State.SCHEDULED


async def test_lease_reclaimed_counts_on_the_node_that_reruns_a_dead_nodes_instance() -> None:
    store = MemoryStore()
    started = anyio.Event()
    ran_on: list[str] = []

    async def body(manager: Manager) -> str:
        ran_on.append(manager.node_id)
        if manager.node_id == "doomed":
            started.set()
            await anyio.sleep(3600)
        return manager.node_id

    job = Job(kind="q.reclaimed", executor=body)
    lease = 0.5
    doomed = Manager(store, num_workers=1, node_id="doomed", lease_time=lease, autoload_plugins=False)
    await doomed.start()
    try:
        inst = await doomed.schedule_job(job)
        with anyio.fail_after(10):
            await started.wait()
    finally:
        await doomed.stop(abandon=True)  # as if it crashed: its lease is left to expire
    assert _samples(doomed)["go_job_lease_reclaimed_total"] == {"": 0}

    async with Manager(store, num_workers=1, node_id="survivor", lease_time=lease,
                       autoload_plugins=False) as survivor:
        assert _samples(survivor)["go_job_lease_reclaimed_total"] == {"": 0}
        await survivor.register_job(job)
        done = await survivor.wait(inst, timeout=lease * 4 + 10)
        assert (done.state, done.result) == (State.COMPLETED, "survivor")
        samples = _samples(survivor)
        assert samples["go_job_lease_reclaimed_total"] == {"": 1}
        assert samples["go_job_executed_total"] == {"q.reclaimed": 1}
        assert samples["go_job_completed_total"] == {"q.reclaimed": 1}
        history = await survivor.lookup_instance_history(Query(instance=inst))
        requeued = [r for r in history if r.state is State.SCHEDULED and r.node == "survivor"]
        assert len(requeued) == 1 and "doomed" in (requeued[0].detail or "")
    assert ran_on == ["doomed", "survivor"]


async def test_a_slow_queue_size_read_spaces_the_next_one() -> None:
    """A store whose queue_stats takes long (etcd reads every queued key) is not asked again at once:
    the next read waits twenty times as long as the last one took."""
    reads: list[float] = []

    class SlowStats(MemoryStore):
        async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
            reads.append(anyio.current_time())
            await anyio.sleep(0.05)
            return await super().queue_stats()

    async with Manager(SlowStats(), num_workers=0, autoload_plugins=False, metrics_interval=0.01):
        await anyio.sleep(0.8)
    # every 0.06 s without the spacing (about 13 reads); at least 1.05 s apart with it
    assert len(reads) == 1, reads
