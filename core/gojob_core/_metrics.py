"""Prometheus metrics with go-job's names, one registry per Manager (a built-in plugin).

Labels carry only the job kind, never arguments or results.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ._state import State
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from ._instance import Instance
    from ._manager import Manager

__all__ = ["ManagerMetrics"]

_FINAL_COUNTERS = {
    State.COMPLETED: "completed",
    State.TERMINATED: "terminated",
    State.CANCELED: "canceled",
    State.TIMED_OUT: "timedout",
}


class ManagerMetrics:
    """The Manager's Prometheus registry and the go-job metrics, fed by the state-change hook."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registered = Gauge("go_job_registered", "Current number of registered jobs", registry=r)
        self.registered.set_function(lambda: len(manager.registered_jobs()))
        self.workers = Gauge("go_job_workers", "Current number of workers", registry=r)
        self.workers.set_function(lambda: manager.num_workers)
        self.queued = Gauge("go_job_queued", "Current number of queued jobs by kind", ["kind"], registry=r)
        self.running = Gauge("go_job_running", "Instances running on this node by kind", ["kind"], registry=r)
        self.executed = Counter("go_job_executed", "Total number of executed jobs by kind", ["kind"], registry=r)
        self.completed = Counter("go_job_completed", "Total number of successfully completed jobs by kind",
                                 ["kind"], registry=r)
        self.terminated = Counter("go_job_terminated", "Total number of terminated jobs by kind", ["kind"],
                                  registry=r)
        self.canceled = Counter("go_job_canceled", "Total number of canceled jobs by kind", ["kind"], registry=r)
        self.timedout = Counter("go_job_timedout", "Total number of timed out jobs by kind", ["kind"], registry=r)
        self.retried = Counter("go_job_retried", "Total number of retries scheduled by kind", ["kind"], registry=r)
        self.reclaimed = Counter("go_job_lease_reclaimed", "Instances re-queued after their node lost its lease",
                                 registry=r)
        self.duration = Histogram("go_job_duration_seconds", "Histogram of job execution durations in seconds "
                                  "by kind", ["kind"], registry=r)
        self._children: dict[tuple[str, str], Any] = {}

    def _child(self, metric: str, kind: str) -> Any:
        key = (metric, kind)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = getattr(self, metric).labels(kind=kind)
        return child

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def set_queued(self, counts: dict[str, int]) -> None:
        """Refresh go_job_queued from the store's counts (kinds that emptied drop to 0)."""
        for (metric, kind), child in list(self._children.items()):
            if metric == "queued" and kind not in counts:
                child.set(0)
        for kind, n in counts.items():
            self._child("queued", kind).set(n)

    # -- hooks ---------------------------------------------------------------------------------------
    @hookimpl
    def gojob_instance_state_changed(self, manager: Manager, instance: Instance, state: State) -> None:
        kind = instance.kind
        if state is State.PROCESSING:
            self._child("executed", kind).inc()
            self._child("running", kind).inc()
            return
        name = _FINAL_COUNTERS.get(state)
        if name is None:
            if state is State.SCHEDULED and instance.attempts > 0:
                self._child("retried", kind).inc()
            return
        self._child(name, kind).inc()
        if instance.started_ts is not None:
            self._child("running", kind).dec()
            self._child("duration", kind).observe(max(0.0, time.time() - instance.started_ts))
