"""The fault suite's machinery: the executors' own records, the checkers, the report, and clusters of nodes.

- :func:`read_events` reads what the executors recorded (see :mod:`fault_jobs`), outside the store.
- The checkers (:func:`check_runs`, :func:`check_cancels`, :func:`check_fires`) compare those records with
  the faults the test injected (:class:`Death`, :class:`CancelCall`) and fill a :class:`Verdict`: lost
  instances, duplicated ones, unexpected re-runs, starts after a cancel returned, and the recovery
  delays. They are pure functions, tested on their own in ``test_fault_checkers.py``.
- :meth:`Verdict.report` appends the scenario's row to ``$GOJOB_FAULT_REPORT`` (JSON lines; render
  them with ``python tests/fault/fault_report.py FILE``) and fails the test with every problem found.
- :class:`ProcessCluster` runs nodes as OS processes on a store URL (SIGKILL kills one);
  :class:`MemoryCluster` runs Managers sharing one ``MemoryStore`` in this process
  (``stop(abandon=True)`` kills one). Both restart nodes that died on their own (the ``crash`` job) when
  :meth:`Cluster.supervise` is called, as a service manager would.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from fault_jobs import Recorder, make_jobs
from gojob_core import Instance, Manager, MemoryStore, Query, State, StoreError

HERE = Path(__file__).resolve().parent
NODE_PROGRAM = HERE / "fault_node.py"
REPORT_ENV = "GOJOB_FAULT_REPORT"

STORES = ["memory", "valkey", "redis", "etcd", "postgres", "mysql", "sqlite"]
#: the stores with a server of their own, which the restart scenarios stop and start again
NETWORK_STORES = ["valkey", "redis", "etcd", "postgres", "mysql"]
#: the stores that keep bytes, which can hold records they cannot read (memory holds objects)
BYTE_STORES = ["valkey", "redis", "etcd", "postgres", "mysql", "sqlite"]
#: lease time of the nodes: short, so that a dead node's work comes back within seconds; long enough
#: that a node of a loaded 2-core CI machine does not miss two heartbeats in a row (every lease/3)
LEASE = {"memory": 2.0, "valkey": 3.0, "redis": 3.0, "etcd": 3.0, "postgres": 3.0, "mysql": 3.0,
         "sqlite": 3.0}

_ENDS = ("f", "x", "r", "c")
_WAITING = (State.CREATED, State.SCHEDULED)


def store_url(kind: str, server: Any) -> str:
    """``server``'s URL for the store ``kind``, with a key prefix (PostgreSQL: a schema) of its own. For
    SQLite, ``server`` is the directory the database file is made in (there is no server)."""
    tag = _uuid.uuid4().hex[:10]
    if kind == "etcd":
        return f"{server.url('etcd')}?prefix=/f{tag}/"
    if kind == "postgres":
        return str(server.url(schema=f"f{tag}"))
    if kind == "mysql":
        return str(server.url(f"f{tag}"))
    if kind == "sqlite":
        return f"sqlite://{Path(server).resolve()}/f{tag}.db"
    return f"{server.url(kind)}?prefix=f{tag}:"


# -- the executors' records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One line an executor wrote (see :mod:`fault_jobs`)."""

    e: str
    uuid: str
    attempt: int
    node: str
    inc: int
    t: float
    fire: float | None = None

    @classmethod
    def from_line(cls, line: str) -> Event:
        d = json.loads(line)
        return cls(d["e"], d["u"], int(d["a"]), d["n"], int(d["p"]), float(d["t"]), d.get("r"))


def read_events(out_dir: Path) -> list[Event]:
    """Every event recorded in ``out_dir``, in time order (a line cut short by a kill is skipped)."""
    out = []
    for path in sorted(out_dir.glob("*.events")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(Event.from_line(line))
            except (ValueError, KeyError, TypeError):
                continue
    out.sort(key=lambda ev: ev.t)
    return out


@dataclass(frozen=True)
class Death:
    """A node incarnation that died at ``t`` (SIGKILL, ``os._exit``, or an abandoning stop)."""

    node: str
    inc: int
    t: float


@dataclass(frozen=True)
class CancelCall:
    """One ``cancel_instance`` call: when it was made, when it returned, and what it returned."""

    uuid: str
    called: float
    returned: float
    state: State
    cancel_requested: bool
    #: the ``wait`` given to ``cancel_instance`` (None: not known)
    wait: float | None = None


# -- verdicts -------------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class Verdict:
    """What one scenario found. ``report()`` writes its row and fails the test if anything is wrong."""

    scenario: str
    store: str
    instances: int = 0
    faults: int = 0
    fault_kind: str = ""
    lost: list[str] = field(default_factory=list)
    #: instances whose executor returned more than once (its effects happened twice)
    duplicated: list[str] = field(default_factory=list)
    #: starts after the first that no death of the previous attempt's node explains
    unexpected: list[str] = field(default_factory=list)
    #: starts after the first that a death explains (at least once: allowed)
    reruns: int = 0
    #: seconds from each fault to the recovery it calls for (a re-run, a node working again, a stop)
    recovery: list[float] = field(default_factory=list)
    #: every other broken invariant (a start after cancel returned, a wrong final state, ...)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall: float = 0.0

    def failures(self) -> list[str]:
        out = [f"lost: {x}" for x in self.lost]
        out += [f"unexpected re-run: {x}" for x in self.unexpected]
        out += self.problems
        return out

    def row(self) -> dict[str, Any]:
        p50, mx = _pct(self.recovery, 0.5), (max(self.recovery) if self.recovery else None)
        return {
            "scenario": self.scenario, "store": self.store, "instances": self.instances,
            "faults": f"{self.faults} {self.fault_kind}".strip(), "lost": len(self.lost),
            "duplicated": len(self.duplicated), "unexpected_reruns": len(self.unexpected),
            "explained_reruns": self.reruns,
            "recovery_p50_s": None if p50 is None else round(p50, 3),
            "recovery_max_s": None if mx is None else round(mx, 3),
            "problems": len(self.problems), "passed": not self.failures(), "wall_s": round(self.wall, 1),
            "notes": self.notes[:5],
        }

    def report(self) -> None:
        """Append the row to ``$GOJOB_FAULT_REPORT`` (if set), print it, then fail on any problem."""
        row = self.row()
        target = os.environ.get(REPORT_ENV)
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")
        print(f"\n[fault] {json.dumps(row)}")
        failures = self.failures()
        if failures:
            shown = "\n  ".join(failures[:25])
            more = f"\n  ... and {len(failures) - 25} more" if len(failures) > 25 else ""
            pytest.fail(f"{self.scenario} on {self.store}: {len(failures)} broken invariant(s):\n  {shown}{more}",
                        pytrace=False)


# -- checkers ---------------------------------------------------------------------------------------------------
def _by_uuid(events: Iterable[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = collections.defaultdict(list)
    for ev in events:
        out[ev.uuid].append(ev)
    for evs in out.values():
        evs.sort(key=lambda ev: ev.t)
    return out


def _end_of(evs: list[Event], start: Event) -> Event | None:
    """The event that ended the run begun by ``start`` (same incarnation and attempt), if recorded."""
    for ev in evs:
        if ev.e in _ENDS and ev.inc == start.inc and ev.node == start.node and ev.attempt == start.attempt \
                and ev.t >= start.t:
            return ev
    return None


def _death_between(deaths: Iterable[Death], run: Event, until: float) -> Death | None:
    for d in sorted(deaths, key=lambda d: d.t):
        if d.node == run.node and d.inc == run.inc and run.t <= d.t <= until:
            return d
    return None


def _fmt(ev: Event, t0: float) -> str:
    return f"attempt {ev.attempt} on {ev.node}#{ev.inc} at +{ev.t - t0:.3f}s"


def check_runs(v: Verdict, expected: Iterable[str], events: Iterable[Event], deaths: Iterable[Death], *,
               finals: Mapping[str, Instance] | None = None, abandoned: Iterable[tuple[str, int]] = (),
               t0: float = 0.0, max_runs: int | None = None) -> None:
    """Each expected instance ran to completion (its executor returned, and the store says COMPLETED,
    with the result of its last attempt), and every start after its first is explained:

    - by a death: the node incarnation running the previous attempt died after that attempt started
      and before this one did (the re-run must come after the kill), or
    - by an abandoned attempt the store recorded (``abandoned``: (uuid, attempt) pairs, an outcome lost
      with the store's connection), provided that attempt had ended before this one started (a stale
      attempt still running beside the new one is never explained).

    Anything else is an unexpected re-run. ``max_runs`` bounds the starts of each instance."""
    deaths = list(deaths)
    abandoned_set = set(abandoned)
    by = _by_uuid(events)
    expected = list(expected)
    v.instances += len(expected)
    for uid in expected:
        evs = by.get(uid, [])
        starts = [ev for ev in evs if ev.e == "s"]
        returned = [ev for ev in evs if ev.e == "f"]
        final = finals.get(uid) if finals is not None else None
        if not starts:
            v.lost.append(f"{uid}: its executor never started"
                          + (f" (store: {final.state.value}, attempts {final.attempts})" if final else ""))
            continue
        if not returned:
            v.lost.append(f"{uid}: its executor never returned ({len(starts)} start(s))"
                          + (f" (store: {final.state.value})" if final else ""))
            continue
        if finals is not None:
            if final is None:
                v.lost.append(f"{uid}: ran, but the store has no such instance")
                continue
            if final.state is not State.COMPLETED:
                v.lost.append(f"{uid}: ran, but the store says {final.state.value} (attempts {final.attempts}, "
                              f"error {final.error!r})")
                continue
            res = final.result
            if isinstance(res, dict) and "a" in res and res["a"] != final.attempts:
                v.problems.append(f"{uid}: COMPLETED as attempt {final.attempts} with the result of attempt "
                                  f"{res['a']} (node {res.get('n')}): a stale attempt's outcome was taken")
        if len(returned) > 1:
            v.duplicated.append(uid)
        if max_runs is not None and len(starts) > max_runs:
            v.problems.append(f"{uid}: started {len(starts)} times (at most {max_runs} allowed): "
                              + ", ".join(_fmt(s, t0) for s in starts))
        for prev, cur in zip(starts, starts[1:]):
            death = _death_between(deaths, prev, cur.t)
            if death is not None:
                v.reruns += 1
                v.recovery.append(cur.t - death.t)
                continue
            end = _end_of(evs, prev)
            if (uid, prev.attempt) in abandoned_set and end is not None and end.t <= cur.t:
                v.reruns += 1
                continue
            why = ("its node did not die" if end is None or end.t > cur.t else
                   f"it had ended ({end.e}) and its node did not die")
            v.unexpected.append(f"{uid}: {_fmt(cur, t0)} after {_fmt(prev, t0)}: {why}")
    stray = set(by) - set(expected) - set(finals or ())
    if stray and finals is not None:
        v.problems.append(f"{len(stray)} executor run(s) of instances this scenario did not schedule: "
                          f"{sorted(stray)[:5]}")


def check_cancels(v: Verdict, calls: Iterable[CancelCall], events: Iterable[Event],
                  finals: Mapping[str, Instance], t0: float = 0.0) -> None:
    """Cancel semantics (issue 19, defect 2; ``Manager.cancel_instance``):

    - returned final (CANCELED, or COMPLETED etc. if the attempt ended first) or not running: the
      executor never starts after the return, and no run of it is still going on after it;
    - returned PROCESSING: only with ``cancel_requested``, and only once the call's ``wait`` has run out
      (the Manager could not confirm the stop within it; the executor "may still be running, and may
      still start": such starts are counted in the notes, not as failures). A PROCESSING answer before
      the wait ran out is the race of issue 19's defect 2: an answer that did not wait for a claimed
      instance, which may then start;
    - the store's final state agrees (CANCELED; COMPLETED only if the attempt completed first).

    The stop latency (call to the executor's end) of executors running when their cancel was called is
    the recovery."""
    by = _by_uuid(events)
    unconfirmed_starts = 0
    for c in calls:
        evs = by.get(c.uuid, [])
        starts = [ev for ev in evs if ev.e == "s"]
        said = f"{c.state.value}{' (cancel_requested)' if c.cancel_requested else ''}"
        confirmed = c.state.is_final or c.state in _WAITING
        for s in starts:
            if s.t > c.returned:
                if confirmed:
                    v.problems.append(f"{c.uuid}: executor started {1000 * (s.t - c.returned):.1f} ms after "
                                      f"cancel_instance returned {said} ({_fmt(s, t0)})")
                else:
                    unconfirmed_starts += 1
        if c.state is State.PROCESSING and not c.cancel_requested:
            v.problems.append(f"{c.uuid}: cancel_instance returned PROCESSING without cancel_requested")
        elif c.state is State.PROCESSING and c.wait is not None and c.returned - c.called < c.wait:
            late = [s.t - c.returned for s in starts if s.t > c.returned]
            then = f"; the executor then started {1000 * min(late):.1f} ms later" if late else ""
            v.problems.append(f"{c.uuid}: cancel_instance returned PROCESSING after "
                              f"{1000 * (c.returned - c.called):.1f} ms, before its wait of {c.wait} s ran out{then}")
        elif not confirmed and c.state is not State.PROCESSING:
            v.problems.append(f"{c.uuid}: cancel_instance returned {said}")
        for s in starts:
            if s.t > c.called:
                continue
            end = _end_of(evs, s)
            if end is not None and end.t < c.called:
                continue  # that run was over before the cancel
            if end is None:
                v.problems.append(f"{c.uuid}: the executor running at the cancel ({_fmt(s, t0)}) never stopped")
                continue
            v.recovery.append(end.t - c.called)
            if confirmed and end.t > c.returned:
                v.problems.append(f"{c.uuid}: cancel_instance returned {said} while the executor still ran "
                                  f"(it stopped {1000 * (end.t - c.returned):.1f} ms later)")
        final = finals.get(c.uuid)
        if final is None:
            v.lost.append(f"{c.uuid}: canceled, then missing from the store")
        elif c.state is State.CANCELED and final.state is not State.CANCELED:
            v.problems.append(f"{c.uuid}: cancel_instance returned CANCELED, the store now says {final.state.value}")
        elif c.state is State.PROCESSING and final.state not in (State.CANCELED, State.COMPLETED):
            v.problems.append(f"{c.uuid}: canceled while PROCESSING, ended {final.state.value}")
        elif c.state.is_final and c.state is not State.CANCELED and final.state is not c.state:
            v.problems.append(f"{c.uuid}: was {c.state.value} when canceled, now {final.state.value}")
    if unconfirmed_starts:
        v.notes.append(f"{unconfirmed_starts} start(s) after a PROCESSING (unconfirmed) cancel return")


def check_fires(v: Verdict, events: Iterable[Event], deaths: Iterable[Death], finals: Mapping[str, Instance],
                canceled_at: float, t0: float = 0.0) -> None:
    """Cron: one occurrence (uuid) per fire time; every occurrence in the store ran to completion once
    (re-run only if the node running it died), except the last ones, canceled with the schedule at
    ``canceled_at`` (an occurrence due well before that and never run is a lost fire)."""
    ticks = [ev for ev in events if ev.fire is not None]
    fires: dict[float, set[str]] = collections.defaultdict(set)
    for ev in ticks:
        assert ev.fire is not None
        fires[ev.fire].add(ev.uuid)
    for inst in finals.values():
        fires[inst.ready_ts].add(inst.uuid)
    for fire, uuids in sorted(fires.items()):
        if len(uuids) > 1:
            v.problems.append(f"fire time {fire - t0:+.3f}s ran as {len(uuids)} occurrences: {sorted(uuids)}")
    expected = [u for u, inst in finals.items() if inst.state is not State.CANCELED]
    for u, inst in finals.items():
        if inst.state is State.CANCELED and inst.ready_ts < canceled_at - 1.5:
            v.lost.append(f"{u}: the fire at {inst.ready_ts - t0:+.3f}s was never run (CANCELED with the schedule "
                          f"at {canceled_at - t0:+.3f}s)")
    check_runs(v, expected, ticks, deaths, finals=finals, t0=t0)


# -- clusters ---------------------------------------------------------------------------------------------------
async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: Callable[[], str], *,
                cluster: Cluster | None = None, interval: float = 0.05, timeouts: list[str] | None = None) -> bool:
    """Poll ``condition`` (letting ``cluster`` restart crashed nodes in between) until it holds.

    After ``timeout`` seconds: fail the test, or, given a ``timeouts`` list, add ``what()`` to it and
    return False (the scenario then checks and reports what it has: a row is written even so)."""
    deadline = time.monotonic() + timeout
    while True:
        if cluster is not None:
            await cluster.supervise()
        if await condition():
            return True
        if time.monotonic() > deadline:
            if timeouts is None:
                pytest.fail(f"not within {timeout}s: {what()}", pytrace=False)
            timeouts.append(f"not within {timeout}s: {what()[:1500]}")
            return False
        await anyio.sleep(interval)


async def lookup_all(mgr: Manager, kind: str | None = None) -> dict[str, Instance]:
    """The store's instances (of ``kind``) by uuid; a StoreError (a reconnecting client) is retried."""
    for attempt in range(40):
        try:
            found = await mgr.lookup_instances(Query(kind=kind) if kind else Query())
            return {i.uuid: i for i in found}
        except StoreError:
            if attempt == 39:
                raise
            await anyio.sleep(0.25)
    raise AssertionError("unreachable")


async def abandoned_attempts(mgr: Manager, uuids: Iterable[str]) -> set[tuple[str, int]]:
    """(uuid, attempt) of every attempt the store recorded as abandoned (its lease expired)."""
    out = set()
    for uid in uuids:
        for r in await mgr.lookup_instance_history(Query(instance=uid, state=State.SCHEDULED)):
            if r.detail and "abandoned" in r.detail:
                out.add((uid, r.attempt))
    return out


class Cluster:
    """Nodes on one store, a scheduling Manager (``client``, no workers) and the faults injected so far."""

    kind: str
    out: Path
    lease: float
    client: Manager
    deaths: list[Death]
    restart_crashed: bool
    #: the task group of the cluster's block (in-process nodes run there)
    tg: Any = None

    def events(self) -> list[Event]:
        return read_events(self.out)

    async def open_client(self) -> Manager:
        """Start the scheduling Manager (no workers: it runs nothing) with the suite's job definitions."""
        await self.client.start()
        for job in make_jobs(None):
            await self.client.register_job(job)
        return self.client

    async def start(self, nodes: Iterable[str], workers: int = 8) -> None:
        raise NotImplementedError

    async def kill(self, node: str) -> Death:
        raise NotImplementedError

    async def supervise(self) -> list[Death]:
        raise NotImplementedError

    def alive(self) -> list[str]:
        raise NotImplementedError

    async def close(self) -> str:
        raise NotImplementedError

    def logs(self) -> str:
        return ""


class ProcessCluster(Cluster):
    """Nodes as OS processes (:mod:`fault_node`) on ``url``; each one is ended by PID."""

    def __init__(self, kind: str, url: str, out: Path, lease: float) -> None:
        self.kind, self.url, self.out, self.lease = kind, url, out, lease
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, int] = {}
        self.deaths = []
        self.restart_crashed = True
        self.client = Manager(url, num_workers=0, node_id=f"client-{_uuid.uuid4().hex[:6]}", lease_time=lease)
        self._all: list[subprocess.Popen[bytes]] = []

    def _spawn(self, node: str) -> subprocess.Popen[bytes]:
        with open(self.out / f"{node}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(NODE_PROGRAM), self.url, node, str(self.lease), str(self.workers[node]),
                 str(self.out)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[node] = proc
        self._all.append(proc)
        return proc

    async def _ready(self, nodes: Iterable[str], timeout: float = 40.0) -> None:
        nodes = list(nodes)

        async def ready() -> bool:
            for n in nodes:
                proc = self.procs[n]
                if proc.poll() is not None:
                    pytest.fail(f"node {n} exited early ({proc.returncode}):\n{self.log(n)}", pytrace=False)
            return all((self.out / f"{n}-{self.procs[n].pid}.ready").exists() for n in nodes)

        await until(ready, timeout, lambda: "nodes not ready:\n" + self.logs())

    async def start(self, nodes: Iterable[str], workers: int = 8) -> None:
        nodes = list(nodes)
        for n in nodes:
            self.workers[n] = workers
            self._spawn(n)
        await self._ready(nodes)

    async def kill(self, node: str) -> Death:
        proc = self.procs[node]
        os.kill(proc.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait, 10)
        death = Death(node, proc.pid, time.time())
        self.deaths.append(death)
        return death

    async def restart(self, node: str) -> None:
        self._spawn(node)
        await self._ready([node])

    async def supervise(self) -> list[Death]:
        """Record nodes that died on their own (the ``crash`` job) and restart them."""
        found = []
        for node, proc in list(self.procs.items()):
            if proc.poll() is None or any(d.inc == proc.pid for d in self.deaths):
                continue
            crashes = [ev.t for ev in self.events() if ev.e == "c" and ev.inc == proc.pid]
            death = Death(node, proc.pid, max(crashes) if crashes else time.time())
            self.deaths.append(death)
            found.append(death)
            if self.restart_crashed:
                self._spawn(node)  # ready soon; not waited for here
        return found

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def log(self, node: str) -> str:
        path = self.out / f"{node}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {node} ---\n{text[-3000:]}"

    def logs(self) -> str:
        return "\n".join(self.log(n) for n in self.procs)

    async def close(self) -> str:
        """SIGTERM every live node, wait for it (SIGKILL after 15 s); the nodes' logs if one misbehaved."""
        for proc in self._all:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(p.poll() is None for p in self._all) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        bad = ""
        for proc in self._all:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                bad = "a node did not stop on SIGTERM within 15 s"
        return bad


class _InProcessNode:
    def __init__(self, mgr: Manager, rec: Recorder) -> None:
        self.mgr, self.rec = mgr, rec
        self.abandon = False
        self.stop = anyio.Event()
        self.done = anyio.Event()


class MemoryCluster(Cluster):
    """Managers sharing one MemoryStore in this process: ``kill`` is ``stop(abandon=True)``. Each node
    runs in a task of its own in ``tg`` (a Manager is stopped by the task that started it)."""

    def __init__(self, out: Path, lease: float) -> None:
        self.kind, self.out, self.lease = "memory", out, lease
        self.store = MemoryStore()
        self.nodes: dict[str, _InProcessNode] = {}
        self.workers: dict[str, int] = {}
        self.deaths = []
        self.restart_crashed = True
        self._inc = 0
        self._crashed: set[int] = set()
        self.client = Manager(self.store, num_workers=0, node_id="client", lease_time=lease)

    async def _run_node(self, node: str, *, task_status: Any) -> None:
        self._inc += 1
        inc = self._inc
        rec = Recorder(self.out, node, inc)

        async def crash() -> None:
            self._crashed.add(inc)
            await anyio.sleep_forever()

        mgr = Manager(self.store, num_workers=self.workers[node], node_id=node, lease_time=self.lease,
                      shutdown_timeout=2.0)
        await mgr.start()
        this = _InProcessNode(mgr, rec)
        try:
            for job in make_jobs(rec, crash):
                await mgr.register_job(job)
            task_status.started(this)
            await this.stop.wait()
        finally:
            try:
                await mgr.stop(abandon=this.abandon)
            finally:
                rec.close()
                this.done.set()

    async def _start_one(self, node: str) -> None:
        self.nodes[node] = await self.tg.start(self._run_node, node)

    async def start(self, nodes: Iterable[str], workers: int = 8) -> None:
        for n in nodes:
            self.workers[n] = workers
            await self._start_one(n)

    async def _end(self, node: str, *, abandon: bool) -> _InProcessNode:
        this = self.nodes.pop(node)
        this.abandon = abandon
        this.stop.set()
        await this.done.wait()
        return this

    async def kill(self, node: str) -> Death:
        this = await self._end(node, abandon=True)
        death = Death(node, this.rec.incarnation, time.time())
        self.deaths.append(death)
        return death

    async def restart(self, node: str) -> None:
        await self._start_one(node)

    async def supervise(self) -> list[Death]:
        found = []
        for node, this in list(self.nodes.items()):
            if this.rec.incarnation in self._crashed:
                found.append(await self.kill(node))
                if self.restart_crashed:
                    await self._start_one(node)
        return found

    def alive(self) -> list[str]:
        return list(self.nodes)

    async def close(self) -> str:
        for node in list(self.nodes):
            await self._end(node, abandon=False)
        return ""

