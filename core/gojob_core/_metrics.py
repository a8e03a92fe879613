"""Prometheus metrics with go-job's names, one registry per Manager (a built-in plugin).

Counting happens on the hot path of every instance, so it is plain integer arithmetic per kind;
the Prometheus families are built only when the registry is scraped. Labels carry only the job
kind, never arguments or results.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ._state import State
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from ._instance import Instance
    from ._manager import Manager

__all__ = ["ManagerMetrics"]

#: go_job_duration_seconds buckets (seconds)
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_COUNTERS = (
    ("executed", "go_job_executed", "Total number of executed jobs by kind"),
    ("completed", "go_job_completed", "Total number of successfully completed jobs by kind"),
    ("terminated", "go_job_terminated", "Total number of terminated jobs by kind"),
    ("canceled", "go_job_canceled", "Total number of canceled jobs by kind"),
    ("timedout", "go_job_timedout", "Total number of timed out jobs by kind"),
    ("retried", "go_job_retried", "Total number of retries scheduled by kind"),
)
_FINAL = {State.COMPLETED: "completed", State.TERMINATED: "terminated", State.CANCELED: "canceled",
          State.TIMED_OUT: "timedout"}


class _KindStats:
    __slots__ = ("buckets", "canceled", "completed", "count", "executed", "retried", "running", "sum",
                 "terminated", "timedout")

    def __init__(self) -> None:
        self.executed = self.completed = self.terminated = self.canceled = self.timedout = 0
        self.retried = self.running = self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)


class ManagerMetrics(Collector):
    """The Manager's Prometheus registry and the go-job metrics, fed by the state-change hook."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self._kinds: dict[str, _KindStats] = {}
        self._queued: dict[str, int] = {}
        self.reclaimed = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def set_queued(self, counts: dict[str, int]) -> None:
        """Refresh go_job_queued from the store's counts (the cluster's queue, not only this node's)."""
        self._queued = dict(counts)

    def add_reclaimed(self, n: int) -> None:
        self.reclaimed += n

    def _stats(self, kind: str) -> _KindStats:
        st = self._kinds.get(kind)
        if st is None:
            st = self._kinds[kind] = _KindStats()
        return st

    # -- hook ------------------------------------------------------------------------------------
    @hookimpl
    def gojob_instance_state_changed(self, instance: Instance, state: State) -> None:
        st = self._kinds.get(instance.kind) or self._stats(instance.kind)
        if state is State.PROCESSING:
            st.executed += 1
            st.running += 1
            return
        name = _FINAL.get(state)
        if name is None:
            if state is State.SCHEDULED and instance.attempts > 0:
                st.retried += 1
            return
        setattr(st, name, getattr(st, name) + 1)
        if instance.started_ts is not None and st.running > 0:
            st.running -= 1
            d = max(0.0, time.time() - instance.started_ts)
            st.buckets[bisect.bisect_left(BUCKETS, d)] += 1
            st.sum += d
            st.count += 1

    # -- scrape ------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        mgr = self.manager
        yield GaugeMetricFamily("go_job_registered", "Current number of registered jobs",
                                value=len(mgr.registered_jobs()))
        yield GaugeMetricFamily("go_job_workers", "Current number of workers", value=mgr.num_workers)
        queued = GaugeMetricFamily("go_job_queued", "Current number of queued jobs by kind", labels=["kind"])
        for kind in sorted(set(self._queued) | set(self._kinds)):
            queued.add_metric([kind], self._queued.get(kind, 0))
        yield queued
        running = GaugeMetricFamily("go_job_running", "Instances running on this node by kind", labels=["kind"])
        for kind, st in sorted(self._kinds.items()):
            running.add_metric([kind], st.running)
        yield running
        for attr, name, doc in _COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["kind"])
            for kind, st in sorted(self._kinds.items()):
                fam.add_metric([kind], getattr(st, attr))
            yield fam
        yield CounterMetricFamily("go_job_lease_reclaimed", "Instances re-queued after their node lost its lease",
                                  value=self.reclaimed)
        hist = HistogramMetricFamily("go_job_duration_seconds",
                                     "Histogram of job execution durations in seconds by kind", labels=["kind"])
        for kind, st in sorted(self._kinds.items()):
            cumulative, acc = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), st.buckets):
                acc += n
                cumulative.append((_bound(bound), acc))
            hist.add_metric([kind], cumulative, sum_value=st.sum)
        yield hist


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)
