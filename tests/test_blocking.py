"""BlockingManager: the Manager's API without ``await``, in plain sync code (no event loop in the caller)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import anyio
import pytest
from gojob_core import (
    ArgumentError,
    BlockingManager,
    Context,
    Instance,
    InstanceNotFoundError,
    Job,
    LogLevel,
    MemoryStore,
    Query,
    State,
    UnknownJobError,
    WaitTimeoutError,
)

BACKENDS = ["asyncio", "trio"]


def _double(x: int, instance: Instance) -> int:
    instance.infof("doubling %d", x)
    return x * 2


async def _async_add(a: int, b: int) -> int:
    await anyio.sleep(0)
    return a + b


def _fail() -> None:
    raise ValueError("nope")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mgr(backend: str) -> Any:
    with BlockingManager(num_workers=2, backend=backend, autoload_plugins=False) as m:
        yield m


def test_schedule_and_wait(mgr: BlockingManager) -> None:
    job = Job(kind="b.double", executor=_double)
    inst = mgr.schedule_job(job, arguments=("21",))
    assert isinstance(inst, Instance)
    assert inst.state is State.SCHEDULED
    done = mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED
    assert done.result == 42
    assert done.attempts == 1


def test_async_executor_runs_too(mgr: BlockingManager) -> None:
    inst = mgr.schedule_job(Job(kind="b.add", executor=_async_add), arguments=(2, 3))
    assert mgr.wait(inst, timeout=10).result == 5


def test_sync_executor_runs_off_the_callers_thread(mgr: BlockingManager) -> None:
    caller = threading.get_ident()
    inst = mgr.schedule_job(Job(kind="b.thread", executor=lambda: threading.get_ident()))
    assert mgr.wait(inst, timeout=10).result != caller


def test_lookups_history_and_logs(mgr: BlockingManager) -> None:
    job = Job(kind="b.double", executor=_double)
    inst = mgr.schedule_job(job, arguments=(5,))
    mgr.wait(inst, timeout=10)

    assert mgr.lookup_instance(inst).result == 10
    assert mgr.lookup_instance(inst.uuid).uuid == inst.uuid
    found = mgr.lookup_instances(Query(kind="b.double"))
    assert [i.uuid for i in found] == [inst.uuid]
    assert mgr.lookup_instances(Query(kind="b.double", state=State.TERMINATED)) == []

    history = mgr.lookup_instance_history(Query(instance=inst))
    assert [r.state for r in history] == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
    assert all(r.node == mgr.node_id for r in history)

    logs = mgr.lookup_instance_logs(Query(instance=inst))
    assert [(r.level, r.message) for r in logs] == [(LogLevel.INFO, "doubling 5")]

    assert mgr.clear_instance_logs(Query(instance=inst)) == 1
    assert mgr.lookup_instance_logs(Query(instance=inst)) == []
    assert mgr.clear_instance_history(Query(instance=inst)) == 4
    assert mgr.lookup_instance_history(Query(instance=inst)) == []


def test_failure_and_retries(mgr: BlockingManager) -> None:
    job = Job(kind="b.fail", executor=_fail, max_retries=1, backoff_strategy=lambda inst: 0.0)
    done = mgr.wait(mgr.schedule_job(job), timeout=10)
    assert done.state is State.TERMINATED
    assert done.attempts == 2
    assert done.error is not None and "ValueError" in done.error and "nope" in done.error


def test_cancel_queued_instance(mgr: BlockingManager) -> None:
    inst = mgr.schedule_job(Job(kind="b.later", executor=lambda: None), schedule_after=60)
    canceled = mgr.cancel_instance(inst)
    assert canceled.state is State.CANCELED
    assert mgr.wait(inst, timeout=5).state is State.CANCELED
    assert mgr.lookup_instance_history(Query(instance=inst))[-1].state is State.CANCELED


def test_cancel_running_sync_instance(mgr: BlockingManager) -> None:
    started = threading.Event()

    def loop(ctx: Context) -> str:
        started.set()
        while not ctx.cancelled:
            ctx.sleep(0.01)
        return "stopped"

    inst = mgr.schedule_job(Job(kind="b.loop", executor=loop))
    assert started.wait(10)
    mgr.cancel_instance(inst)
    assert mgr.wait(inst, timeout=10).state is State.CANCELED


def test_wait_timeout(mgr: BlockingManager) -> None:
    inst = mgr.schedule_job(Job(kind="b.later", executor=lambda: None), schedule_after=60)
    with pytest.raises(WaitTimeoutError):
        mgr.wait(inst, timeout=0.1)
    with pytest.raises(WaitTimeoutError):
        mgr.wait(inst, timeout=dt.timedelta(milliseconds=100))
    mgr.cancel_instance(inst)


def test_errors_cross_the_thread_boundary(mgr: BlockingManager) -> None:
    with pytest.raises(UnknownJobError, match="b.nosuch"):
        mgr.schedule_registered_job("b.nosuch")
    with pytest.raises(InstanceNotFoundError):
        mgr.lookup_instance("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ArgumentError, match="b.double"):
        mgr.schedule_job(Job(kind="b.double", executor=_double), arguments=("not a number",))
    assert mgr.lookup_instances(Query(kind="b.double")) == []


def test_resize_workers(mgr: BlockingManager) -> None:
    assert mgr.num_workers == 2
    mgr.resize_workers(5)
    assert mgr.num_workers == 5
    assert mgr.manager.num_workers == 5
    mgr.resize_workers(1)
    assert mgr.num_workers == 1
    with pytest.raises(ValueError):
        mgr.resize_workers(-1)
    assert mgr.wait(mgr.schedule_job(Job(kind="b.add", executor=_async_add), arguments=(1, 1)), timeout=10).result == 2


def test_schedule_many(mgr: BlockingManager) -> None:
    job = Job(kind="b.add", executor=_async_add)
    insts = mgr.schedule_many(job, [(1, 2), (3, 4), (5, 6)])
    assert len(insts) == 3
    assert len({i.uuid for i in insts}) == 3
    assert [mgr.wait(i, timeout=10).result for i in insts] == [3, 7, 11]
    # by kind, once registered
    more = mgr.schedule_many("b.add", iter([(10, 10)]))
    assert mgr.wait(more[0], timeout=10).result == 20


def test_registry(mgr: BlockingManager) -> None:
    job = Job(kind="b.reg", executor=lambda: "ok")
    assert mgr.register_job(job) is job
    assert mgr.lookup_job("b.reg") is job
    assert [j.kind for j in mgr.registered_jobs()] == ["b.reg"]
    assert mgr.wait(mgr.schedule_registered_job("b.reg"), timeout=10).result == "ok"
    mgr.unregister_job("b.reg")
    assert mgr.registered_jobs() == []
    with pytest.raises(UnknownJobError):
        mgr.lookup_job("b.reg")


def test_many_caller_threads(mgr: BlockingManager) -> None:
    job = Job(kind="b.add", executor=_async_add)
    mgr.register_job(job)
    results: list[int] = []
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            inst = mgr.schedule_registered_job("b.add", arguments=(i, i))
            results.append(mgr.wait(inst, timeout=20).result)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(results) == [2 * i for i in range(8)]


# -- lifecycle -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda m: m.schedule_job(Job(kind="b.x", executor=lambda: None)),
    lambda m: m.schedule_registered_job("b.x"),
    lambda m: m.schedule_many("b.x", [()]),
    lambda m: m.lookup_instances(),
    lambda m: m.lookup_instance("some-uuid"),
    lambda m: m.lookup_instance_history(),
    lambda m: m.lookup_instance_logs(),
    lambda m: m.clear_instance_history(Query()),
    lambda m: m.clear_instance_logs(Query()),
    lambda m: m.wait("some-uuid"),
    lambda m: m.cancel_instance("some-uuid"),
    lambda m: m.resize_workers(3),
    lambda m: m.register_job(Job(kind="b.x", executor=lambda: None)),
    lambda m: m.unregister_job("b.x"),
])
def test_methods_before_start_raise_runtime_error(call: Any) -> None:
    mgr = BlockingManager(autoload_plugins=False)
    with pytest.raises(RuntimeError, match="not started"):
        call(mgr)


def test_methods_after_stop_raise_runtime_error(backend: str) -> None:
    with BlockingManager(backend=backend, autoload_plugins=False) as mgr:
        mgr.lookup_instances()
    with pytest.raises(RuntimeError, match="not started"):
        mgr.lookup_instances()


def test_context_manager_returns_itself_and_stops(backend: str) -> None:
    bm = BlockingManager(backend=backend, num_workers=1, autoload_plugins=False)
    with bm as mgr:
        assert mgr is bm
        assert mgr.manager.running
    assert not bm.manager.running


def test_context_manager_stops_on_error(backend: str) -> None:
    bm = BlockingManager(backend=backend, autoload_plugins=False)
    with pytest.raises(KeyError):
        with bm:
            raise KeyError("boom")
    assert not bm.manager.running


def test_start_twice_raises_and_stop_twice_is_harmless(backend: str) -> None:
    mgr = BlockingManager(backend=backend, autoload_plugins=False)
    mgr.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            mgr.start()
    finally:
        mgr.stop()
    mgr.stop()
    mgr.stop()


RESTART_BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("restart_backend", RESTART_BACKENDS)
def test_restart_keeps_the_store(restart_backend: str) -> None:
    store = MemoryStore()
    mgr = BlockingManager(store, backend=restart_backend, num_workers=2, autoload_plugins=False)
    with mgr:
        first = mgr.wait(mgr.schedule_job(Job(kind="b.add", executor=_async_add), arguments=(1, 2)), timeout=10)
        time.sleep(0.1)  # the idle dispatcher waits on the store's wake-up when the node stops
    with mgr:
        assert mgr.lookup_instance(first).result == 3
        second = mgr.wait(mgr.schedule_registered_job("b.add", arguments=(2, 2)), timeout=10)
        assert second.result == 4


@pytest.mark.parametrize("restart_backend", RESTART_BACKENDS)
def test_restart_with_a_url_store(restart_backend: str) -> None:
    mgr = BlockingManager(backend=restart_backend, num_workers=1, autoload_plugins=False)
    with mgr:
        time.sleep(0.1)  # the idle dispatcher waits on the store's wake-up when the node stops
    with mgr:
        assert mgr.manager.running
        assert mgr.wait(mgr.schedule_job(Job(kind="b.add", executor=_async_add), arguments=(1, 2)),
                        timeout=3).result == 3


def test_options_reach_the_manager() -> None:
    mgr = BlockingManager(num_workers=3, node_id="blocking-node", autoload_plugins=False)
    assert mgr.node_id == "blocking-node"
    assert mgr.num_workers == 3
    assert mgr.manager.node_id == "blocking-node"


def test_trio_backend_runs_on_trio() -> None:
    seen: list[str] = []

    async def which() -> str:
        import sniffio

        seen.append(sniffio.current_async_library())
        return seen[-1]

    with BlockingManager(backend="trio", autoload_plugins=False) as mgr:
        assert mgr.wait(mgr.schedule_job(Job(kind="b.which", executor=which)), timeout=10).result == "trio"
    with BlockingManager(backend="asyncio", autoload_plugins=False) as mgr:
        assert mgr.wait(mgr.schedule_job(Job(kind="b.which", executor=which)), timeout=10).result == "asyncio"


class FailingStartStore(MemoryStore):
    starts = 0

    async def start(self) -> None:
        type(self).starts += 1
        if type(self).starts == 1:
            raise OSError("cannot connect")


def test_failed_start_raises_and_can_be_retried(backend: str) -> None:
    FailingStartStore.starts = 0
    mgr = BlockingManager(FailingStartStore(), backend=backend, autoload_plugins=False)
    with pytest.raises(OSError, match="cannot connect"):
        mgr.start()
    with pytest.raises(RuntimeError, match="not started"):
        mgr.lookup_instances()
    mgr.start()  # the store connects the second time
    try:
        assert mgr.lookup_instances() == []
    finally:
        mgr.stop()


def test_stop_waits_for_a_running_sync_executor(backend: str) -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.3)
        finished.set()

    with BlockingManager(backend=backend, autoload_plugins=False) as mgr:
        inst = mgr.schedule_job(Job(kind="b.work", executor=work))
        deadline = time.monotonic() + 10
        while mgr.lookup_instance(inst).state is not State.PROCESSING and time.monotonic() < deadline:
            time.sleep(0.01)
    assert finished.is_set()  # graceful stop let it finish
