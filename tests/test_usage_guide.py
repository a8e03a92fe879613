"""Every example of go-job's "Feature Overview and Usage Guide", translated, checking its outcome."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from dataclasses import dataclass

import anyio
import gojob_core as gojob
import pytest
from gojob_core import Job, Manager, Query, State

pytestmark = pytest.mark.anyio


async def states_of(mgr: Manager, inst: gojob.Instance) -> list[State]:
    return [h.state for h in await mgr.lookup_instance_history(Query(instance=inst))]


async def messages_of(mgr: Manager, inst: gojob.Instance) -> list[str]:
    return [log.message for log in await mgr.lookup_instance_logs(Query(instance=inst))]


# -- Arbitrary function execution -------------------------------------------------------------------
async def test_simple_function_no_input_no_return(capsys: pytest.CaptureFixture[str]) -> None:
    job = Job(kind="hello (no input and no return)", executor=lambda: print("Hello, world!"))
    async with Manager() as mgr:
        inst = await mgr.schedule_job(job)
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED and done.result is None and done.attempts == 1
    assert "Hello, world!" in capsys.readouterr().out


@pytest.mark.parametrize("arguments", [(42, 58), ("42", "58")])
async def test_function_with_arguments(arguments: tuple[object, object]) -> None:
    seen: list[tuple[object, object]] = []

    def add(x: int, y: int) -> None:
        seen.append((x, y))
        print(x + y)

    job = Job(kind="sum (two input and no output)", executor=add)
    async with Manager() as mgr:
        done = await mgr.wait(await mgr.schedule_job(job, arguments=arguments), timeout=10)
    assert done.state is State.COMPLETED
    assert seen == [(42, 58)]  # strings were converted to the executor's types


async def test_function_with_arguments_and_result() -> None:
    job = Job(kind="concat (two input and one output)", executor=lambda a, b: a + ", " + b,
              complete_processor=lambda ji, res: ji.infof("%s", res[0]))
    async with Manager() as mgr:
        inst = await mgr.schedule_job(job, arguments=("Hello", "world"))
        done = await mgr.wait(inst, timeout=10)
        assert done.result == "Hello, world"
        assert await messages_of(mgr, inst) == ["Hello, world"]


@dataclass
class ConcatString:
    A: str
    B: str
    S: str = ""


def concat_struct(param: ConcatString) -> ConcatString:
    param.S = param.A + ", " + param.B
    return param


@pytest.mark.parametrize("arg", [ConcatString(A="Hello", B="world!"), '{"A": "Hello", "B": "world!"}',
                                 {"A": "Hello", "B": "world!"}])
async def test_function_with_struct_input_and_output(arg: object) -> None:
    results: list[object] = []
    job = Job(kind="concat (one struct input and one struct output)", executor=concat_struct,
              complete_processor=lambda ji, res: (results.append(res[0]), ji.infof("%s", res[0])))
    async with Manager() as mgr:
        inst = await mgr.schedule_job(job, arguments=(arg,))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.COMPLETED
        assert results == [ConcatString(A="Hello", B="world!", S="Hello, world!")]
        assert done.result == {"A": "Hello", "B": "world!", "S": "Hello, world!"}  # kept in JSON form
        assert await messages_of(mgr, inst) == ["ConcatString(A='Hello', B='world!', S='Hello, world!')"]
    if isinstance(arg, ConcatString):
        assert arg.S == ""  # the caller's object was not touched: the instance holds its own copy


# -- Auto-injected arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("arguments", [("?", dt.timedelta(hours=1)), (dt.timedelta(hours=1),), ("?", 3600)])
async def test_context_injection_stops_a_sleeping_job(arguments: tuple[object, ...]) -> None:
    """The seed's "sleep" job: ten steps, each checking the context; cancel stops it early."""
    started = threading.Event()
    returned_early = threading.Event()
    seen: list[object] = []

    def sleep(ctx: gojob.Context, d: dt.timedelta) -> None:
        seen.append(d)
        started.set()
        steps = 10
        for _ in range(steps):
            if ctx.cancelled:
                returned_early.set()
                return
            ctx.sleep(d.total_seconds() / steps)
        returned_early.set()

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="sleep", executor=sleep), arguments=arguments)
        with anyio.fail_after(10):
            while not started.is_set():
                await anyio.sleep(0.01)
        await mgr.cancel_instance(inst)
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.CANCELED
        with anyio.fail_after(10):
            while not returned_early.is_set():
                await anyio.sleep(0.01)
    assert seen == [dt.timedelta(hours=1)]


@pytest.mark.parametrize("arguments", [("?",), (gojob.PLACEHOLDER,), ()])
async def test_instance_injection(arguments: tuple[object, ...]) -> None:
    def info(ji: gojob.Instance) -> None:
        ji.infof("%s (%s): attempts %d", ji.uuid, ji.kind, ji.attempts)

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="info (with special instance argument)", executor=info),
                                      arguments=arguments)
        await mgr.wait(inst, timeout=10)
        assert await messages_of(mgr, inst) == [f"{inst.uuid} (info (with special instance argument)): attempts 1"]


async def test_manager_and_worker_injection() -> None:
    got: list[object] = []

    async def who(mgr: gojob.Manager, w: gojob.Worker, ji: gojob.Instance) -> str:
        got.extend([mgr, w, ji])
        return f"{mgr.node_id}/{w.id}"

    async with Manager(num_workers=1) as mgr:
        inst = await mgr.schedule_job(Job(kind="who", executor=who))
        done = await mgr.wait(inst, timeout=10)
        assert got[0] is mgr and isinstance(got[1], gojob.Worker) and got[2] == inst
        assert done.result == f"{mgr.node_id}/{mgr.workers[0].id}"


# -- Job scheduling ---------------------------------------------------------------------------------
async def test_execute_immediately_and_at_a_past_time() -> None:
    async with Manager() as mgr:
        job = Job(kind="now", executor=lambda: "ran")
        a = await mgr.schedule_job(job)
        b = await mgr.schedule_job(job, schedule_at=dt.datetime(2025, 12, 25, 9, 0, 0, tzinfo=dt.UTC))
        assert (await mgr.wait(a, timeout=10)).result == "ran"
        assert (await mgr.wait(b, timeout=10)).result == "ran"


async def test_schedule_at_a_future_time() -> None:
    async with Manager() as mgr:
        job = Job(kind="later", executor=lambda: None)
        future = dt.datetime.now() + dt.timedelta(minutes=10)  # naive: local time
        inst = await mgr.schedule_job(job, schedule_at=future)
        assert abs(inst.ready_at.timestamp() - future.timestamp()) < 0.001
        await anyio.sleep(0.3)
        assert (await mgr.lookup_instance(inst)).state is State.SCHEDULED
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.4)
        inst2 = await mgr.schedule_job(job, schedule_at=soon)
        done = await mgr.wait(inst2, timeout=10)
        assert done.started_at is not None and done.started_at >= soon - dt.timedelta(milliseconds=20)


@pytest.mark.parametrize("delay", [0.5, dt.timedelta(milliseconds=500)])
async def test_schedule_after_a_delay(delay: object) -> None:
    async with Manager() as mgr:
        t0 = time.time()
        inst = await mgr.schedule_job(Job(kind="delayed", executor=lambda: None), schedule_after=delay)
        done = await mgr.wait(inst, timeout=10)
        assert done.started_ts is not None and done.started_ts - t0 >= 0.48


@pytest.mark.parametrize("spec", ["0 0 * * *", "0 9 * * 1-5", "*/30 * * * *"])
async def test_recurring_cron_schedules(spec: str) -> None:
    from croniter import croniter

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind=f"cron {spec}", executor=lambda: None), crontab_spec=spec,
                                      timezone="UTC")
        expected = croniter(spec, dt.datetime.now(dt.UTC)).get_next(dt.datetime)
        assert inst.ready_at == expected and inst.is_recurring and inst.state is State.SCHEDULED
        again = await mgr.schedule_job(mgr.lookup_job(f"cron {spec}"), crontab_spec=spec, timezone="UTC")
        assert again.uuid == inst.uuid  # the same schedule is not doubled
        assert len(await mgr.lookup_instances(Query(kind=f"cron {spec}"))) == 1


# -- Monitoring -----------------------------------------------------------------------------------------
async def test_complete_terminate_and_state_change_processors() -> None:
    def work(fail: bool) -> str:
        if fail:
            raise ValueError("bad input")
        return "fine"

    terminated: list[BaseException] = []

    def on_terminate(ji: gojob.Instance, err: BaseException) -> BaseException:
        ji.errorf("Error: %s", err)
        terminated.append(err)
        return err

    job = Job(kind="observed", executor=work,
              complete_processor=lambda ji, res: ji.infof("Result: %s", res),
              terminate_processor=on_terminate,
              state_change_processor=lambda ji, state: ji.infof("State changed to: %s", state))
    async with Manager() as mgr:
        ok = await mgr.schedule_job(job, arguments=(False,))
        bad = await mgr.schedule_job(job, arguments=(True,))
        assert (await mgr.wait(ok, timeout=10)).state is State.COMPLETED
        failed = await mgr.wait(bad, timeout=10)
        assert failed.state is State.TERMINATED and failed.error == "ValueError: bad input"
        assert [type(e) for e in terminated] == [ValueError]
        assert await messages_of(mgr, ok) == [
            "State changed to: CREATED", "State changed to: SCHEDULED", "State changed to: PROCESSING",
            "Result: ['fine']", "State changed to: COMPLETED"]
        assert await messages_of(mgr, bad) == [
            "State changed to: CREATED", "State changed to: SCHEDULED", "State changed to: PROCESSING",
            "Error: bad input", "State changed to: TERMINATED"]
        levels = [log.level for log in await mgr.lookup_instance_logs(Query(instance=bad))]
        assert gojob.LogLevel.ERROR in levels


async def test_lookup_instances_all_and_terminated_by_kind() -> None:
    def sum_job(a: int, b: int) -> int:
        if a < 0:
            raise ValueError("negative")
        return a + b

    async with Manager() as mgr:
        job = Job(kind="sum", executor=sum_job)
        other = Job(kind="other", executor=lambda: None)
        insts = [await mgr.schedule_job(job, arguments=(a, 1)) for a in (1, -1, 2, -2)]
        o = await mgr.schedule_job(other)
        later = await mgr.schedule_job(other, schedule_after=60)
        for i in [*insts, o]:
            await mgr.wait(i, timeout=10)
        everything = await mgr.lookup_instances(Query())
        assert {i.uuid for i in everything} == {i.uuid for i in [*insts, o, later]}
        terminated = await mgr.lookup_instances(Query(kind="sum", state=State.TERMINATED))
        assert {i.uuid for i in terminated} == {insts[1].uuid, insts[3].uuid}
        assert all(i.kind == "sum" and i.state is State.TERMINATED for i in terminated)
        scheduled = await mgr.lookup_instances(Query(state=State.SCHEDULED))
        assert [i.uuid for i in scheduled] == [later.uuid]


async def test_state_history_and_log_history_by_instance() -> None:
    def work(ji: gojob.Instance) -> None:
        ji.infof("step %d", 1)
        ji.warnf("step %d", 2)

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="hist", executor=work))
        await mgr.wait(inst, timeout=10)
        states = await mgr.lookup_instance_history(Query(instance=inst))
        assert [s.state for s in states] == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
        assert [s.timestamp for s in states] == sorted(s.timestamp for s in states)
        logs = await mgr.lookup_instance_logs(Query(instance=inst))
        assert [(log.level, log.message) for log in logs] == [(gojob.LogLevel.INFO, "step 1"),
                                                              (gojob.LogLevel.WARN, "step 2")]
        t = logs[0].timestamp
        assert await mgr.lookup_instance_logs(Query(instance=inst, since=t + dt.timedelta(seconds=60))) == []
        assert len(await mgr.lookup_instance_logs(Query(instance=inst, until=t))) == 1


# -- Retries, termination handling, backoff ---------------------------------------------------------
def flaky_factory() -> tuple[list[int], object]:
    calls: list[int] = []

    def flaky(ji: gojob.Instance) -> None:
        calls.append(ji.attempts)
        raise RuntimeError(f"attempt {ji.attempts} failed")

    return calls, flaky


async def test_retry_policy_job_level_and_override() -> None:
    calls, flaky = flaky_factory()
    job = Job(kind="flaky", executor=flaky, max_retries=1, backoff_strategy=lambda ji: 0.01)
    async with Manager() as mgr:
        a = await mgr.wait(await mgr.schedule_job(job), timeout=10)
        assert a.state is State.TERMINATED and a.attempts == 2 and calls == [1, 2]
        assert a.error == "RuntimeError: attempt 2 failed"
        b = await mgr.wait(await mgr.schedule_job(job, max_retries=2), timeout=10)
        assert b.attempts == 3 and calls == [1, 2, 1, 2, 3]
        assert await states_of(mgr, b) == [State.CREATED, State.SCHEDULED,
                                           State.PROCESSING, State.TERMINATED, State.SCHEDULED,
                                           State.PROCESSING, State.TERMINATED, State.SCHEDULED,
                                           State.PROCESSING, State.TERMINATED]


async def test_retry_then_success() -> None:
    def sometimes(ji: gojob.Instance) -> str:
        if ji.attempts < 3:
            raise ConnectionError("try again")
        return "third time lucky"

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="eventually", executor=sometimes, max_retries=5,
                                          backoff_strategy=lambda ji: 0.01))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.COMPLETED and done.attempts == 3 and done.result == "third time lucky"


async def test_terminate_processor_skips_retry_on_timeout_only() -> None:
    async def slow(ji: gojob.Instance, seconds: float) -> None:
        await anyio.sleep(seconds)
        raise ValueError("not a timeout")

    def no_retry_on_deadline(ji: gojob.Instance, err: BaseException) -> BaseException | None:
        if isinstance(err, TimeoutError):
            ji.infof("Job (%s) terminated due to deadline exceeded: %s", ji.kind, err)
            return None
        return err

    job = Job(kind="deadline", executor=slow, max_retries=2, backoff_strategy=lambda ji: 0.01)
    async with Manager() as mgr:
        timed = await mgr.schedule_job(job, arguments=(30,), timeout=0.2, terminate_processor=no_retry_on_deadline)
        done = await mgr.wait(timed, timeout=10)
        assert done.state is State.COMPLETED and done.attempts == 1  # cleared: no retry
        assert (await messages_of(mgr, timed))[0].startswith("Job (deadline) terminated due to deadline exceeded")
        assert await states_of(mgr, timed) == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
        other = await mgr.schedule_job(job, arguments=(0,), timeout=5, terminate_processor=no_retry_on_deadline)
        done = await mgr.wait(other, timeout=10)
        assert done.state is State.TERMINATED and done.attempts == 3  # other errors are retried


async def test_terminate_processor_replaces_the_error() -> None:
    def boom() -> None:
        raise KeyError("raw")

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="replace", executor=boom,
                                          terminate_processor=lambda ji, err: RuntimeError(f"wrapped {err!r}")))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.TERMINATED and done.error == "RuntimeError: wrapped KeyError('raw')"


async def test_backoff_strategy_really_waits() -> None:
    calls, flaky = flaky_factory()
    backoff = [0.3, 0.6]

    def strategy(ji: gojob.Instance) -> dt.timedelta:
        # the seed's example, scaled down: attempts * base * jitter
        return dt.timedelta(seconds=backoff[ji.attempts - 1] * (0.8 + 0.4 * random.random()))

    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="backoff", executor=flaky), max_retries=2, backoff_strategy=strategy)
        await mgr.wait(inst, timeout=10)
        starts = [h.ts for h in await mgr.lookup_instance_history(Query(instance=inst, state=State.PROCESSING))]
        assert len(starts) == 3
        assert starts[1] - starts[0] >= 0.3 * 0.8 - 0.01
        assert starts[2] - starts[1] >= 0.6 * 0.8 - 0.01


async def test_default_backoff_is_exponential_with_jitter() -> None:
    calls, flaky = flaky_factory()
    async with Manager() as mgr:
        inst = await mgr.schedule_job(Job(kind="default-backoff", executor=flaky), max_retries=2)
        await mgr.wait(inst, timeout=20)
        starts = [h.ts for h in await mgr.lookup_instance_history(Query(instance=inst, state=State.PROCESSING))]
        first, second = starts[1] - starts[0], starts[2] - starts[1]
        assert 0.5 * 0.8 - 0.01 <= first and 1.0 * 0.8 - 0.01 <= second  # 0.5 s, then 1 s, +/-20%


# -- Priorities and worker scaling ---------------------------------------------------------------------
async def test_priority_jobs_run_before_background_ones() -> None:
    order: list[str] = []
    high = Job(kind="urgent-task", priority=0, executor=lambda: order.append("urgent"))
    low = Job(kind="background-task", priority=200, executor=lambda: order.append("background"))
    normal = Job(kind="normal-task", executor=lambda: order.append("normal"))
    async with Manager(num_workers=1) as mgr:
        await mgr.resize_workers(0)
        insts = [await mgr.schedule_job(low), await mgr.schedule_job(normal, priority=200),
                 await mgr.schedule_job(normal), await mgr.schedule_job(high)]
        await mgr.resize_workers(1)
        for inst in insts:
            await mgr.wait(inst, timeout=10)
    assert order == ["normal", "urgent", "background", "normal"]


async def test_worker_pool_resizes() -> None:
    async with Manager(num_workers=5) as mgr:
        assert mgr.num_workers == 5 and len(mgr.workers) == 5
        await mgr.resize_workers(10)
        assert mgr.num_workers == 10 and len(mgr.workers) == 10
        await mgr.resize_workers(3)
        assert mgr.num_workers == 3
        with anyio.fail_after(5):
            while len(mgr.workers) != 3:
                await anyio.sleep(0.01)


async def test_real_world_scaling_example() -> None:
    # the guide's rule: grow the pool by two when more than twice its size is waiting
    async with Manager(num_workers=2) as mgr:
        await mgr.resize_workers(0)  # hold the work while we look
        job = Job(kind="scale", executor=lambda: None)
        insts = await mgr.schedule_many(job, [() for _ in range(10)])
        queue = await mgr.lookup_instances(Query(state=State.SCHEDULED))
        assert len(queue) == 10
        current = 2
        if len(queue) > current * 2:
            await mgr.resize_workers(current + 2)
        assert mgr.num_workers == 4
        for inst in insts:
            assert (await mgr.wait(inst, timeout=10)).state is State.COMPLETED
        assert await mgr.lookup_instances(Query(state=State.SCHEDULED)) == []


async def test_schedule_many_returns_every_instance() -> None:
    async with Manager() as mgr:
        job = Job(kind="many", executor=lambda a, b: a * b)
        insts = await mgr.schedule_many(job, [(1, 2), (3, 4), [5, 6]])
        results = [(await mgr.wait(i, timeout=10)).result for i in insts]
        assert results == [2, 12, 30]


async def test_unregister_job() -> None:
    async with Manager(autoload_plugins=False) as mgr:  # installed plugins contribute jobs of their own
        job = Job(kind="gone", executor=lambda: None)
        await mgr.register_job(job)
        assert [j.kind for j in mgr.registered_jobs()] == ["gone"]
        await mgr.unregister_job("gone")
        assert mgr.registered_jobs() == []
        with pytest.raises(gojob.UnknownJobError, match="'gone'"):
            await mgr.schedule_registered_job("gone")


async def test_results_of_tuple_and_none() -> None:
    got: list[list[object]] = []
    async with Manager() as mgr:
        job = Job(kind="divmod", executor=lambda a, b: divmod(a, b), complete_processor=lambda ji, r: got.append(r))
        done = await mgr.wait(await mgr.schedule_job(job, arguments=(7, 2)), timeout=10)
        assert done.result == [3, 1] and got == [[3, 1]]
        job2 = Job(kind="none", executor=lambda: None, complete_processor=lambda ji, r: got.append(r))
        await mgr.wait(await mgr.schedule_job(job2), timeout=10)
        assert got[-1] == []
