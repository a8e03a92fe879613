"""``/metrics`` of running ``gojob serve`` nodes: every counter after a known sequence, per kind; the
queue gauges of a node that did not schedule the queue; go_job_lease_reclaimed_total after a node died.

The queue gauges (go_job_queued, go_job_oldest_ready_age_seconds) are read from the store every
``--metrics-interval`` seconds (5 by default), so their tests scrape until the read shows the queue; the
counters, histograms and the pool/registry gauges are updated as things happen.
"""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import gojob_core as gojob
from gojob_core.testing.servers import Server
from grpc_nodes import NodeFactory
from prometheus_client.parser import text_string_to_metric_families

PER_KIND = {"go_job_queued", "go_job_running", "go_job_executed", "go_job_completed", "go_job_terminated",
            "go_job_canceled", "go_job_timedout", "go_job_retried", "go_job_duration_seconds", "go_job_wait_seconds",
            "go_job_oldest_ready_age_seconds", "go_job_schedule_fires", "go_job_schedule_misfires",
            "go_job_schedule_lateness_seconds"}
#: labeled by schedule state (a fixed set), not by kind
BY_STATE = {"go_job_schedules"}
UNLABELED = {"go_job_registered", "go_job_workers", "go_job_lease_reclaimed", "go_job_lease_lost",
             "go_job_corrupt_records"}


def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("go_job_")}


def by_kind(family: Any, sample_name: str | None = None) -> dict[str, float]:
    """{kind: value} of a family's samples named ``sample_name`` (default: the family's own samples)."""
    name = sample_name or (family.name + "_total" if family.type == "counter" else family.name)
    return {s.labels["kind"]: s.value for s in family.samples if s.name == name}


async def test_metrics_after_a_known_sequence(nodes: NodeFactory) -> None:
    node = nodes("--workers", "3")
    assert node.metrics_url is not None
    async with node.client() as c:
        for inst in [await c.schedule("sum", (i, 1)) for i in range(2)]:  # 2 completed
            assert (await c.wait(inst, timeout=15)).state is gojob.State.COMPLETED
        failed = await c.schedule("fail.retried", ("boom",))  # fails, is retried once, fails: TERMINATED
        failed = await c.wait(failed, timeout=15)
        assert (failed.state, failed.attempts) == (gojob.State.TERMINATED, 2)
        slow = await c.schedule("sleep", (30,), timeout=0.2)  # TIMED_OUT
        assert (await c.wait(slow, timeout=15)).state is gojob.State.TIMED_OUT
        delayed = await c.schedule("sum", (5, 6), schedule_after=60)  # canceled while queued
        assert (await c.cancel_instance(delayed)).state is gojob.State.CANCELED
        registered = (await c.health()).registered_jobs  # other installed plugins may add jobs

    families = scrape(node.metrics_url)
    assert set(families) == PER_KIND | UNLABELED | BY_STATE, sorted(families)

    # labels: kind only (and le on histogram buckets); never an argument, a result or a node
    for family in families.values():
        for s in family.samples:
            expected = set() if family.name in UNLABELED else {"state"} if family.name in BY_STATE else {"kind"}
            if s.name.endswith("_bucket"):
                expected.add("le")
            assert set(s.labels) == expected, (s.name, s.labels)

    def counter(name: str) -> dict[str, float]:
        values = by_kind(families[name])
        return {kind: v for kind, v in values.items() if v}  # kinds seen elsewhere show 0

    assert counter("go_job_executed") == {"sum": 2, "fail.retried": 2, "sleep": 1}
    assert counter("go_job_completed") == {"sum": 2}
    # TERMINATED is recorded per failed attempt: the retried attempt and the last one
    assert counter("go_job_terminated") == {"fail.retried": 2}
    assert counter("go_job_retried") == {"fail.retried": 1}
    assert counter("go_job_timedout") == {"sleep": 1}
    assert counter("go_job_canceled") == {"sum": 1}
    assert set(by_kind(families["go_job_executed"])) == {"sum", "fail.retried", "sleep"}  # no other kind ran
    [reclaimed] = families["go_job_lease_reclaimed"].samples
    assert (reclaimed.name, reclaimed.value) == ("go_job_lease_reclaimed_total", 0)

    # one duration per finished attempt, one wait per started attempt; nothing is running any more
    durations = by_kind(families["go_job_duration_seconds"], "go_job_duration_seconds_count")
    assert {k: v for k, v in durations.items() if v} == {"sum": 2, "fail.retried": 2, "sleep": 1}
    waits = by_kind(families["go_job_wait_seconds"], "go_job_wait_seconds_count")
    assert {k: v for k, v in waits.items() if v} == {"sum": 2, "fail.retried": 2, "sleep": 1}
    timed_out = by_kind(families["go_job_duration_seconds"], "go_job_duration_seconds_sum")["sleep"]
    assert 0.15 < timed_out < 5, timed_out  # the attempt ended at its 0.2 s timeout, not after 30 s
    inf = {s.labels["kind"]: s.value for s in families["go_job_duration_seconds"].samples
           if s.name == "go_job_duration_seconds_bucket" and s.labels["le"] == "+Inf"}
    assert inf == durations
    assert set(by_kind(families["go_job_running"]).values()) == {0}

    [workers] = families["go_job_workers"].samples
    [jobs] = families["go_job_registered"].samples
    assert (workers.value, jobs.value) == (3, registered)


def values(url: str, family: str) -> dict[str, float]:
    """{kind: value} of a per-kind family (counters under their ``_total`` sample) on one scrape."""
    return by_kind(scrape(url)[family])


def scrape_until(url: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
    """Scrape until ``ok(families)`` holds (the queue gauges change on the node's next store read)."""
    deadline = time.monotonic() + timeout
    families = scrape(url)
    while not ok(families) and time.monotonic() < deadline:
        time.sleep(0.1)
        families = scrape(url)
    assert ok(families), {name: [(s.name, s.labels, s.value) for s in f.samples] for name, f in families.items()
                          if name in ("go_job_queued", "go_job_oldest_ready_age_seconds")}
    return families


def valkey_store(valkey: Server) -> str:
    return f"{valkey.url('valkey')}?prefix=m{uuid.uuid4().hex[:8]}:"  # each test its own keys


async def until_state(c: Any, inst: Any, state: gojob.State, timeout: float = 15) -> gojob.Instance:
    with anyio.fail_after(timeout):
        while (cur := await c.lookup_instance(inst)).state is not state:
            await anyio.sleep(0.02)
    return cur


async def test_queue_gauges_of_a_node_show_what_another_node_scheduled(valkey_server: Server,
                                                                      nodes: NodeFactory) -> None:
    store = valkey_store(valkey_server)
    fresh = ("--metrics-interval", "0.5")  # the gauges' store reads, 0.5 s apart instead of 5
    watcher = nodes("--workers", "0", *fresh, store=store, name="watcher")  # schedules and runs nothing (yet)
    producer = nodes("--workers", "0", *fresh, store=store, name="producer")
    assert watcher.metrics_url is not None
    assert by_kind(scrape(watcher.metrics_url)["go_job_queued"]) == {}
    async with producer.client() as c:
        due = [await c.schedule("sum", (i, 1)) for i in range(3)]
        later = await c.schedule("sum", (9, 9), schedule_after=3600)
        await c.schedule("greet", ("later",), schedule_after=3600)

    def queued(n: int) -> Callable[[dict[str, Any]], bool]:
        return lambda families: by_kind(families["go_job_queued"]).get("sum") == n

    families = scrape_until(watcher.metrics_url, queued(4))
    assert by_kind(families["go_job_queued"]) == {"sum": 4, "greet": 1}  # due and delayed, of the cluster
    age = by_kind(families["go_job_oldest_ready_age_seconds"])
    assert age["sum"] > 0 and age["greet"] == 0  # three sums wait; no greet is due yet
    assert by_kind(families["go_job_executed"]) == {}  # the watcher has run nothing

    # the watcher gets a worker and drains what is due: its next store read shows the delayed one only
    async with watcher.client() as c:
        await c.resize_workers(1)
        for inst in due:
            assert (await c.wait(inst, timeout=15)).state is gojob.State.COMPLETED
        assert (await c.lookup_instance(later)).state is gojob.State.SCHEDULED
    families = scrape_until(watcher.metrics_url, queued(1))
    assert by_kind(families["go_job_oldest_ready_age_seconds"])["sum"] == 0
    assert by_kind(families["go_job_executed"]) == {"sum": 3}
    # the producer reads the same store: the same queue, though it ran nothing
    assert producer.metrics_url is not None
    families = scrape_until(producer.metrics_url, queued(1))
    assert by_kind(families["go_job_queued"]) == {"sum": 1, "greet": 1}
    assert set(by_kind(families["go_job_executed"]).values()) == {0}  # kinds it scheduled show 0


async def test_lease_reclaimed_counts_on_the_node_that_reruns_a_killed_nodes_instance(
        valkey_server: Server, nodes: NodeFactory, tmp_path: Path) -> None:
    store = valkey_store(valkey_server)
    lease = ("--lease-time", "2")
    doomed = nodes("--workers", "1", *lease, store=store, name="doomed")
    async with doomed.client() as c:
        # slow on its first run only: the re-run on the survivor finishes at once
        inst = await c.schedule("first_slow", (str(tmp_path / "marker"), 3600.0))
        assert (await until_state(c, inst, gojob.State.PROCESSING)).node == "doomed"
    assert doomed.stop(signal.SIGKILL) == -signal.SIGKILL  # dies mid-job, its lease left to expire

    survivor = nodes("--workers", "1", *lease, store=store, name="survivor")
    assert survivor.metrics_url is not None
    async with survivor.client() as c:
        done = await c.wait(inst, timeout=30)
        assert done.state is gojob.State.COMPLETED, done
        assert done.result == {"node": "survivor", "first_run": False}
        history = [(r.state, r.node) for r in await c.lookup_instance_history(inst)]
    assert history[-3:] == [(gojob.State.SCHEDULED, "survivor"), (gojob.State.PROCESSING, "survivor"),
                            (gojob.State.COMPLETED, "survivor")], history
    families = scrape(survivor.metrics_url)
    [reclaimed] = families["go_job_lease_reclaimed"].samples
    assert (reclaimed.name, reclaimed.value) == ("go_job_lease_reclaimed_total", 1)
    executed = {k: v for k, v in by_kind(families["go_job_executed"]).items() if v}
    assert executed == {"first_slow": 1}
