"""Bad input fails at the call with an error naming kind, parameter and value; nothing is half-written."""

from __future__ import annotations

import threading
import time

import anyio
import gojob_core as gojob
import pytest
from gojob_core import Job, Manager, Query, State

pytestmark = pytest.mark.anyio


def add(a: int, b: int) -> int:
    return a + b


async def assert_store_empty(mgr: Manager) -> None:
    assert await mgr.lookup_instances(Query()) == []
    assert await mgr.lookup_instance_history(Query()) == []


async def test_unknown_kind() -> None:
    async with Manager() as mgr:
        await mgr.register_job(Job(kind="known", executor=add))
        with pytest.raises(gojob.UnknownJobError) as err:
            await mgr.schedule_registered_job("nope", arguments=(1, 2))
        assert "'nope'" in str(err.value) and "known" in str(err.value)
        assert isinstance(err.value, LookupError)
        await assert_store_empty(mgr)


@pytest.mark.parametrize("arguments", [(1,), (1, 2, 3)])
async def test_wrong_arity(arguments: tuple[int, ...]) -> None:
    async with Manager() as mgr:
        with pytest.raises(gojob.ArgumentError) as err:
            await mgr.schedule_job(Job(kind="sum", executor=add), arguments=arguments)
        message = str(err.value)
        assert "'sum'" in message and "a, b" in message and repr(arguments) in message
        await assert_store_empty(mgr)


async def test_uncoercible_value() -> None:
    async with Manager() as mgr:
        with pytest.raises(gojob.ArgumentError) as err:
            await mgr.schedule_job(Job(kind="sum", executor=add), arguments=(1, "forty"))
        message = str(err.value)
        assert "'sum'" in message and "'b'" in message and "'forty'" in message
        assert err.value.kind == "sum" and err.value.parameter == "b" and err.value.value == "forty"
        await assert_store_empty(mgr)


async def test_unserializable_argument() -> None:
    def takes_anything(x: object) -> None:
        pass

    async with Manager() as mgr:
        with pytest.raises(gojob.UnserializableArgumentError) as err:
            await mgr.schedule_job(Job(kind="obj", executor=takes_anything), arguments=(threading.Lock(),))
        assert "'obj'" in str(err.value) and "'x'" in str(err.value)
        await assert_store_empty(mgr)


@pytest.mark.parametrize("spec", ["not a cron", "61 * * * *", "* * * *", ""])
async def test_invalid_crontab(spec: str) -> None:
    async with Manager() as mgr:
        with pytest.raises(gojob.ScheduleError) as err:
            await mgr.schedule_job(Job(kind="cron", executor=add), arguments=(1, 2), crontab_spec=spec)
        assert "'cron'" in str(err.value) and repr(spec) in str(err.value)
        await assert_store_empty(mgr)


@pytest.mark.parametrize("options", [{"schedule_after": -1}, {"schedule_after": "soon"},
                                     {"schedule_at": "tomorrow"}, {"timeout": -5}, {"timeout": 0},
                                     {"max_retries": -1}, {"priority": "high"},
                                     {"schedule_after": 1, "crontab_spec": "* * * * *"},
                                     {"crontab_spec": "* * * * *", "timezone": "Mars/Olympus"},
                                     {"backoff_strategy": 3}])
async def test_bad_schedule_options(options: dict[str, object]) -> None:
    async with Manager() as mgr:
        with pytest.raises(gojob.ScheduleError) as err:
            await mgr.schedule_job(Job(kind="opts", executor=add), arguments=(1, 2), **options)
        assert "'opts'" in str(err.value)
        await assert_store_empty(mgr)


async def test_schedule_many_is_all_or_nothing() -> None:
    async with Manager() as mgr:
        with pytest.raises(gojob.ArgumentError) as err:
            await mgr.schedule_many(Job(kind="sum", executor=add), [(1, 2), (3, 4), (5, "six"), (7, 8)])
        assert "'six'" in str(err.value)
        await assert_store_empty(mgr)


@pytest.mark.parametrize("kwargs", [{"kind": ""}, {"kind": "x", "executor": 42}, {"kind": "x", "max_retries": -1},
                                    {"kind": "x", "priority": 1.5}, {"kind": "x", "complete_processor": "no"}])
def test_invalid_job_definition(kwargs: dict[str, object]) -> None:
    kwargs.setdefault("executor", add)
    with pytest.raises(gojob.InvalidJobError):
        Job(**kwargs)  # type: ignore[arg-type]


async def test_two_jobs_with_one_kind() -> None:
    async with Manager() as mgr:
        await mgr.register_job(Job(kind="dup", executor=add))
        await mgr.register_job(Job(kind="dup", executor=add))  # the same definition again: fine
        with pytest.raises(gojob.InvalidJobError, match="'dup'"):
            await mgr.register_job(Job(kind="dup", executor=lambda a, b: a - b))
        with pytest.raises(gojob.InvalidJobError, match="'dup'"):
            await mgr.schedule_job(Job(kind="dup", executor=add, priority=3), arguments=(1, 2))
        await assert_store_empty(mgr)


async def test_unknown_instance() -> None:
    async with Manager() as mgr:
        for call in (mgr.lookup_instance, mgr.cancel_instance, mgr.wait):
            with pytest.raises(gojob.InstanceNotFoundError, match="no-such-uuid"):
                await call("no-such-uuid")


async def test_bad_worker_counts() -> None:
    with pytest.raises(ValueError, match="-1"):
        Manager(num_workers=-1)
    async with Manager() as mgr:
        with pytest.raises(ValueError, match="'many'"):
            await mgr.resize_workers("many")  # type: ignore[arg-type]
        assert mgr.num_workers == 4


async def test_not_started() -> None:
    mgr = Manager()
    with pytest.raises(RuntimeError, match="not running"):
        await mgr.schedule_job(Job(kind="x", executor=add), arguments=(1, 2))


async def test_wait_times_out() -> None:
    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="later", executor=add), arguments=(1, 2), schedule_after=60)
        with pytest.raises(gojob.WaitTimeoutError, match="SCHEDULED"):
            await mgr.wait(inst, timeout=0.1)


# -- executors that misbehave -----------------------------------------------------------------------------
async def test_executor_that_raises() -> None:
    def broken(x: int) -> None:
        raise ZeroDivisionError(f"cannot divide {x}")

    async with Manager() as mgr:
        done = await mgr.wait(await mgr.schedule_job(Job(kind="broken", executor=broken), arguments=(3,)),
                              timeout=10)
        assert done.state is State.TERMINATED and done.error == "ZeroDivisionError: cannot divide 3"
        hist = await mgr.lookup_instance_history(Query(instance=done))
        assert hist[-1].state is State.TERMINATED and hist[-1].detail == "ZeroDivisionError: cannot divide 3"


async def test_async_executor_that_hangs_is_cancelled_at_its_timeout() -> None:
    cancelled = anyio.Event()

    async def hang() -> None:
        try:
            await anyio.sleep(3600)
        finally:
            cancelled.set()

    async with Manager() as mgr:
        t0 = time.monotonic()
        inst = await mgr.schedule_job(Job(kind="hang", executor=hang, timeout=0.3))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.TIMED_OUT and "timed out" in (done.error or "")
        assert 0.25 <= time.monotonic() - t0 < 5
        assert cancelled.is_set()  # the coroutine really was cancelled


async def test_sync_executor_sees_its_deadline() -> None:
    saw: list[object] = []

    def patient(ctx: gojob.Context) -> str:
        saw.append(ctx.remaining())
        while not ctx.cancelled:
            ctx.sleep(0.05)
        saw.append(ctx.reason)
        return "stopped"

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="patient", executor=patient, timeout=0.3))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.TIMED_OUT
        with anyio.fail_after(5):
            while len(saw) < 2:
                await anyio.sleep(0.01)
        assert isinstance(saw[0], float) and 0 < saw[0] <= 0.3
        assert saw[1] == "timed out"


async def test_sync_executor_ignoring_its_deadline_frees_the_worker() -> None:
    release = threading.Event()

    def stubborn() -> None:
        release.wait(10)

    async with Manager(num_workers=1) as mgr:
        inst = await mgr.schedule_job(Job(kind="stubborn", executor=stubborn, timeout=0.2))
        assert (await mgr.wait(inst, timeout=10)).state is State.TIMED_OUT
        nxt = await mgr.schedule_job(Job(kind="next", executor=add), arguments=(1, 2))
        assert (await mgr.wait(nxt, timeout=5)).result == 3  # the one worker moved on
        release.set()


async def test_processor_that_raises_is_logged_not_fatal() -> None:
    def bad_processor(ji: gojob.Instance, results: list[object]) -> None:
        raise RuntimeError("processor bug")

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="p", executor=add, complete_processor=bad_processor), arguments=(1, 2))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.COMPLETED and done.result == 3
        logs = await mgr.lookup_instance_logs(Query(instance=inst))
        assert [log.message for log in logs] == ["complete_processor raised RuntimeError: processor bug"]


async def test_a_store_on_a_backend_it_does_not_run_on(anyio_backend: str) -> None:
    class AsyncioOnly(gojob.MemoryStore):
        ANYIO_BACKENDS = ("asyncio",)
        name = "asyncio-only"

    if anyio_backend == "asyncio":
        async with Manager(AsyncioOnly()) as mgr:
            assert mgr.running
    else:
        with pytest.raises(gojob.StoreError, match="asyncio-only store runs on asyncio only, not on trio"):
            async with Manager(AsyncioOnly()):
                pass


async def test_a_store_with_an_unknown_finish_mode() -> None:
    class Odd(gojob.MemoryStore):
        FINISH_MODE = "sometimes"
        name = "odd"

    with pytest.raises(gojob.StoreError, match="odd store's FINISH_MODE is 'sometimes'"):
        async with Manager(Odd()):
            pass
