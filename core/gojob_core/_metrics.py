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
    ("terminated", "go_job_terminated", "Total number of terminated jobs by kind (each failed attempt counts, "
                                        "as in the state history, retried or not)"),
    ("canceled", "go_job_canceled", "Total number of canceled jobs by kind"),
    ("timedout", "go_job_timedout", "Total number of timed out jobs by kind (each timed-out attempt counts)"),
    ("retried", "go_job_retried", "Total number of retries scheduled by kind"),
)
_FINAL = {State.COMPLETED: "completed", State.TERMINATED: "terminated", State.CANCELED: "canceled",
          State.TIMED_OUT: "timedout"}


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, v)] += 1
        self.sum += v
        self.count += 1

    def add_to(self, family: HistogramMetricFamily, kind: str) -> None:
        cumulative, acc = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.buckets):
            acc += n
            cumulative.append((_bound(bound), acc))
        family.add_metric([kind], cumulative, sum_value=self.sum)


class _KindStats:
    __slots__ = ("canceled", "completed", "duration", "executed", "fires", "lateness", "misfires", "retried", "running",
                 "terminated", "timedout", "wait")

    def __init__(self) -> None:
        self.executed = self.completed = self.terminated = self.canceled = self.timedout = 0
        self.retried = self.running = 0
        self.fires = self.misfires = 0  # schedule occurrences this node enqueued; those it skipped
        self.lateness = _Histogram()  # a schedule occurrence's fire time -> its claim
        self.duration = _Histogram()  # attempt start -> end
        self.wait = _Histogram()  # ready -> attempt start


class ManagerMetrics(Collector):
    """The Manager's Prometheus registry and the go-job metrics, fed by the state-change hook."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self._kinds: dict[str, _KindStats] = {}
        self._queued: dict[str, int] = {}
        self._oldest: dict[str, float] = {}
        self.reclaimed = 0
        self.lease_lost = 0  # attempts this node stopped because it lost, or could not renew, their lease
        self.corrupt = 0  # records the store set aside, as of the last read
        self._schedules: dict[str, int] = {}  # schedules by state, as of the last read
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def set_queued(self, counts: dict[str, int], oldest: dict[str, float] | None = None) -> None:
        """Refresh go_job_queued and the queue age from the store (the cluster's queue, not only this node's)."""
        self._queued = dict(counts)
        self._oldest = dict(oldest or {})

    def add_reclaimed(self, n: int) -> None:
        self.reclaimed += n

    def add_lease_lost(self, n: int = 1) -> None:
        self.lease_lost += n

    def set_corrupt(self, n: int) -> None:
        """Refresh go_job_corrupt_records (records the store set aside, cluster-wide)."""
        self.corrupt = n

    def set_schedules(self, by_state: dict[str, int]) -> None:
        """Refresh go_job_schedules (the store's schedules by state, cluster-wide)."""
        self._schedules = dict(by_state)

    def schedule_fired(self, kind: str) -> None:
        """An occurrence of a schedule was enqueued by this node."""
        self._stats(kind).fires += 1

    def schedule_misfired(self, kind: str) -> None:
        """An occurrence of a schedule was skipped by this node (misfire or coalesce)."""
        self._stats(kind).misfires += 1

    def schedule_lateness(self, kind: str, seconds: float) -> None:
        """How late after its fire time an occurrence that runs was claimed."""
        self._stats(kind).lateness.observe(seconds)

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
            if instance.started_ts is not None:
                st.wait.observe(max(0.0, instance.started_ts - instance.ready_ts))
            return
        name = _FINAL.get(state)
        if name is None:
            if state is State.SCHEDULED and instance.attempts > 0:
                st.retried += 1
            return
        setattr(st, name, getattr(st, name) + 1)
        if instance.started_ts is not None and st.running > 0:
            st.running -= 1
            st.duration.observe(max(0.0, time.time() - instance.started_ts))

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
        yield CounterMetricFamily("go_job_lease_lost", "Attempts this node stopped because it lost their lease or "
                                  "could not renew it in time", value=self.lease_lost)
        yield GaugeMetricFamily("go_job_corrupt_records", "Records the store could not read and set aside "
                                "(see 'jobctl corrupt')", value=self.corrupt)
        duration = HistogramMetricFamily("go_job_duration_seconds",
                                         "Histogram of job execution durations in seconds by kind", labels=["kind"])
        wait = HistogramMetricFamily("go_job_wait_seconds", "Time from ready to start of each attempt, by kind",
                                     labels=["kind"])
        for kind, st in sorted(self._kinds.items()):
            st.duration.add_to(duration, kind)
            st.wait.add_to(wait, kind)
        yield duration
        yield wait
        fires = CounterMetricFamily("go_job_schedule_fires", "Schedule occurrences enqueued by this node, by kind",
                                    labels=["kind"])
        misfires = CounterMetricFamily("go_job_schedule_misfires", "Schedule occurrences skipped by this node "
                                       "(misfire_grace_time or coalesce), by kind", labels=["kind"])
        lateness = HistogramMetricFamily("go_job_schedule_lateness_seconds", "Time from a schedule occurrence's "
                                         "fire time to its start, by kind", labels=["kind"])
        for kind, st in sorted(self._kinds.items()):
            fires.add_metric([kind], st.fires)
            misfires.add_metric([kind], st.misfires)
            st.lateness.add_to(lateness, kind)
        yield fires
        yield misfires
        yield lateness
        schedules = GaugeMetricFamily("go_job_schedules", "Schedules in the store by state", labels=["state"])
        for state in ("active", "paused", "finished"):
            schedules.add_metric([state], self._schedules.get(state, 0))
        yield schedules
        oldest = GaugeMetricFamily("go_job_oldest_ready_age_seconds",
                                   "Age of the longest-waiting due instance in the queue, by kind", labels=["kind"])
        now = time.time()
        for kind in sorted(set(self._queued) | set(self._kinds)):
            ts = self._oldest.get(kind)
            oldest.add_metric([kind], max(0.0, now - ts) if ts is not None else 0.0)
        yield oldest


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)
