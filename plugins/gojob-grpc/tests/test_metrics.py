"""``/metrics`` of a running ``gojob serve`` node after a known sequence: every counter, per kind.

The queue gauges (go_job_queued, go_job_oldest_ready_age_seconds) are refreshed from the store every
5 s, so their values are not asserted here (only their labels); the counters, histograms and the
pool/registry gauges are updated as things happen.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import gojob_core as gojob
from grpc_nodes import NodeFactory
from prometheus_client.parser import text_string_to_metric_families

PER_KIND = {"go_job_queued", "go_job_running", "go_job_executed", "go_job_completed", "go_job_terminated",
            "go_job_canceled", "go_job_timedout", "go_job_retried", "go_job_duration_seconds", "go_job_wait_seconds",
            "go_job_oldest_ready_age_seconds"}
UNLABELED = {"go_job_registered", "go_job_workers", "go_job_lease_reclaimed"}


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
    assert set(families) == PER_KIND | UNLABELED, sorted(families)

    # labels: kind only (and le on histogram buckets); never an argument, a result or a node
    for family in families.values():
        for s in family.samples:
            expected = set() if family.name in UNLABELED else {"kind"}
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
