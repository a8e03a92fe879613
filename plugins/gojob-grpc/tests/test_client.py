"""The Python client against a real ``gojob serve`` node: every call, and every kind of bad request."""

from __future__ import annotations

import datetime as dt
import math

import anyio
import gojob_core as gojob
import grpc
import pytest
from grpc_nodes import Node

from gojob_grpc import Client, DeadlineExceededError, InvalidArgumentError, NotFoundError, RpcError, UnavailableError
from gojob_grpc.proto.gojob.v1 import jobs_pb2 as pb
from gojob_grpc.proto.gojob.v1 import jobs_pb2_grpc as pb_grpc

MISSING = "00000000-0000-4000-8000-000000000000"


async def test_every_call(node: Node) -> None:
    async with node.client() as c:
        info = await c.health()
        assert (info.status, info.node_id, info.store) == ("SERVING", "main", "memory")
        kinds = {j.kind: j for j in await c.registered_jobs()}
        assert kinds["sum"].signature == "(a: int, b: int) -> int" and kinds["sum"].description == "add two integers"

        # arguments as a tuple, a dict, one value; coerced on the node to the executor's hints
        positional = await c.schedule("sum", ("40", 2))
        keywords = await c.schedule_registered_job("greet", arguments={"name": "ada", "when": dt.date(2026, 5, 1)})
        single = await c.schedule("sleep", 0.01)
        assert (positional.args, keywords.kwargs, single.args) == ([40, 2], {"name": "ada", "when": "2026-05-01"},
                                                                   [0.01])
        assert isinstance(positional, gojob.Instance) and positional.state is gojob.State.SCHEDULED
        done = await c.wait(positional, timeout=10)
        assert (done.state, done.result, done.attempts, done.node) == (gojob.State.COMPLETED, 42, 1, "main")
        assert (await c.wait(keywords.uuid)).result == "hello, ada on 2026-05-01"
        await c.wait(single)

        assert (await c.lookup_instance(positional.uuid)).result == 42
        found = await c.lookup_instances(gojob.Query(kind="sum", state=gojob.State.COMPLETED))
        assert positional.uuid in [i.uuid for i in found]
        assert [i.uuid for i in await c.lookup_instances(kind="greet", limit=1)] == [keywords.uuid]
        history = await c.lookup_instance_history(positional)
        assert [r.state for r in history] == [gojob.State.CREATED, gojob.State.SCHEDULED, gojob.State.PROCESSING,
                                              gojob.State.COMPLETED]
        assert all(isinstance(r, gojob.StateRecord) and r.node == "main" for r in history)
        logs = await c.lookup_instance_logs(single.uuid)
        assert [(r.level, r.message) for r in logs] == [(gojob.LogLevel.INFO, "sleeping 0.01s"),
                                                        (gojob.LogLevel.INFO, "woke up")]

        # timing options: at (a datetime or epoch seconds), after (seconds or a timedelta), cron
        at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        later = await c.schedule("sum", (1, 2), schedule_at=at, priority=-3, max_retries=2,
                                 timeout=dt.timedelta(seconds=9))
        assert math.isclose(later.ready_ts, at.timestamp(), abs_tol=1e-6)
        assert (later.priority, later.max_retries, later.timeout) == (-3, 2, 9.0)
        after = await c.schedule("sum", (1, 2), schedule_after=dt.timedelta(minutes=5))
        assert after.ready_ts > later.created_ts + 290
        cron = await c.schedule("sum", (5, 6), crontab_spec="0 3 * * *", timezone="Europe/Paris")
        assert (cron.crontab_spec, cron.timezone, cron.is_recurring) == ("0 3 * * *", "Europe/Paris", True)
        for inst in (later, after, cron):
            assert (await c.cancel_instance(inst)).state is gojob.State.CANCELED

        w = await c.get_workers()
        assert (w.num_workers, w.node_id) == (4, "main")
        assert (await c.resize_workers(2)).num_workers == 2
        assert (await c.resize_workers(4)).num_workers == 4


async def test_watch_instances(node: Node) -> None:
    async with node.client() as c, c.watch_instances(kind="sum", states=["PROCESSING", "completed"]) as events:
        inst = await c.schedule("sum", (2, 2))
        other = await c.schedule("sleep", 0)  # another kind: filtered out
        seen = []
        with anyio.fail_after(10):
            async for ev in events:
                seen.append(ev)
                if ev.state.is_final:
                    break
        await c.wait(other)
    assert [(e.uuid, e.state) for e in seen] == [(inst.uuid, gojob.State.PROCESSING),
                                                  (inst.uuid, gojob.State.COMPLETED)]
    assert seen[-1].instance.result == 4 and seen[-1].node == "main" and seen[-1].attempt == 1
    assert seen[0].timestamp <= seen[1].timestamp


async def _count(c: Client) -> int:
    return len(await c.lookup_instances())


async def test_bad_requests_name_the_field_and_write_nothing(node: Node) -> None:
    async with node.client() as c:
        before = await _count(c)
        cases = [
            (dict(kind="no.such.job"), NotFoundError, "kind", "unknown job kind 'no.such.job'"),
            (dict(kind=""), InvalidArgumentError, "kind", "a job kind is required"),
            (dict(kind="sum", arguments=(1,)), InvalidArgumentError, "arguments", "missing b"),
            (dict(kind="sum", arguments=("x", 1)), InvalidArgumentError, "arguments", "'a'"),
            (dict(kind="sum", arguments={"a": 1, "c": 2}), InvalidArgumentError, "arguments", "unknown keyword"),
            (dict(kind="sum", arguments=(1, 2), crontab_spec="not a spec"), InvalidArgumentError, "crontab_spec",
             "invalid crontab_spec"),
            (dict(kind="sum", arguments=(1, 2), crontab_spec="* * * * *", timezone="Nowhere/City"),
             InvalidArgumentError, "timezone", "unknown timezone"),
            (dict(kind="sum", arguments=(1, 2), schedule_after=-1), InvalidArgumentError, "schedule_after",
             "must not be negative"),
            (dict(kind="sum", arguments=(1, 2), schedule_after=math.inf), InvalidArgumentError, "schedule_after", ""),
            (dict(kind="sum", arguments=(1, 2), schedule_after=5, crontab_spec="* * * * *"), InvalidArgumentError,
             "crontab_spec", "give at most one of"),
            (dict(kind="sum", arguments=(1, 2), timeout=0), InvalidArgumentError, "timeout", "must be positive"),
            (dict(kind="sum", arguments=(1, 2), timeout=math.nan), InvalidArgumentError, "timeout", ""),
            (dict(kind="sum", arguments=(1, 2), max_retries=-2), InvalidArgumentError, "max_retries", ""),
        ]
        for kwargs, error, field, text in cases:
            kind = kwargs.pop("kind")
            with pytest.raises(error) as info:
                await c.schedule(kind, **kwargs)
            assert info.value.field == field, (kwargs, info.value)
            assert info.value.details.startswith(f"{field}: ") and text in info.value.details, info.value.details
        with pytest.raises(InvalidArgumentError) as info:
            await c.schedule("sum", ("x", 1))
        assert (info.value.parameter, info.value.error_type) == ("a", "ArgumentError")

        for call in (c.lookup_instance, c.cancel_instance, c.wait, c.lookup_instance_history,
                     c.lookup_instance_logs):
            with pytest.raises(NotFoundError) as info:
                await call(MISSING)
            assert info.value.field == "uuid" and MISSING in info.value.details
        with pytest.raises(InvalidArgumentError, match="uuid: an instance uuid is required"):
            await c.lookup_instance("")
        for n, text in ((-1, "must be a non-negative integer"), (5000, "must be at most 1024")):
            with pytest.raises(InvalidArgumentError) as info:
                await c.resize_workers(n)
            assert info.value.field == "num_workers" and text in info.value.details
        with pytest.raises(InvalidArgumentError, match="timeout: must be a non-negative"):
            await c.wait(MISSING, timeout=-1)
        with pytest.raises(InvalidArgumentError, match="query.since: since .* is after until"):
            await c.lookup_instances(since=2_000_000_000.0, until=1_000_000_000.0)
        assert (await c.get_workers()).num_workers == 4
        assert await _count(c) == before  # nothing was half-written
        assert (await c.health()).status == "SERVING"


async def test_malformed_messages(node: Node) -> None:
    """Requests the typed client would never send, straight through the generated stub."""
    async with grpc.aio.insecure_channel(node.target) as channel:
        stub = pb_grpc.JobServiceStub(channel)

        async def rejected(call: object, request: object) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request, timeout=10)  # type: ignore[operator]
            return info.value

        before = len((await stub.ListInstances(pb.ListInstancesRequest(), timeout=10)).instances)
        for text, reason in (("{bad json", "not valid JSON"), ("5", "must be a JSON array"),
                             ('[1, NaN]', "not valid JSON"), ("[" * 100_000 + "]" * 100_000, "not valid JSON")):
            err = await rejected(stub.Schedule, pb.ScheduleRequest(kind="sum", arguments_json=text))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert err.details().startswith("arguments_json: ") and reason in err.details()
        bad_time = pb.ScheduleRequest(kind="sum", arguments_json="[1, 2]")
        bad_time.schedule_at.seconds, bad_time.schedule_at.nanos = 10**12, 0
        err = await rejected(stub.Schedule, bad_time)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("schedule_at: invalid")
        bad_time.schedule_at.seconds, bad_time.schedule_at.nanos = 0, -5
        assert "nanos" in (await rejected(stub.Schedule, bad_time)).details()
        bad_state = pb.ListInstancesRequest()
        bad_state.query.states.append(99)
        err = await rejected(stub.ListInstances, bad_state)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("query.states: unknown")
        meta = dict(err.trailing_metadata() or ())
        assert meta["gojob-field"] == "query.states"
        watch = stub.WatchInstances(pb.WatchInstancesRequest(states=[42]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await watch.read()
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "states" in info.value.details()
        assert len((await stub.ListInstances(pb.ListInstancesRequest(), timeout=10)).instances) == before


async def test_wait_deadline_and_unreachable_node(node: Node) -> None:
    async with node.client() as c:
        inst = await c.schedule("sum", (1, 2), schedule_after=3600)
        with pytest.raises(DeadlineExceededError) as info:
            await c.wait(inst, timeout=0.1)
        assert info.value.field == "timeout" and "is still SCHEDULED" in info.value.details
        await c.cancel_instance(inst)
    from gojob_core.testing.servers import free_port

    async with Client(f"127.0.0.1:{free_port()}", timeout=5) as nobody:
        with pytest.raises(UnavailableError) as unavailable:
            await nobody.health()
        assert isinstance(unavailable.value, RpcError) and unavailable.value.code is grpc.StatusCode.UNAVAILABLE


async def test_client_checks_before_sending() -> None:
    async with Client("127.0.0.1:1") as c:
        with pytest.raises(gojob.UnserializableArgumentError, match="cannot be sent"):
            await c.schedule("sum", (object(), 1))
        with pytest.raises(gojob.UnserializableArgumentError):
            await c.schedule("sum", (math.nan, 1))
        with pytest.raises(ValueError, match="schedule_at"):
            await c.schedule("sum", (1, 2), schedule_at="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not connected"):
        await Client("127.0.0.1:1").health()


async def test_a_call_the_node_tears_down_is_unavailable_not_a_cancel_of_the_caller() -> None:
    """grpc.aio ends a call with CancelledError when a stopping node's server tears it down (seen under
    load). The caller was not cancelled: it must get UnavailableError, not a CancelledError that looks
    like its own cancellation. A caller that is itself cancelled still gets the cancellation."""
    import asyncio

    client = Client("127.0.0.1:1")

    async def torn_down(request: object, **kwargs: object) -> None:
        raise asyncio.CancelledError

    client._method = lambda name: torn_down  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(UnavailableError, match="Wait: the node ended the call"):
        await client.wait("some-uuid")

    started = anyio.Event()

    async def hangs(request: object, **kwargs: object) -> None:
        started.set()
        await anyio.sleep(30)

    client._method = lambda name: hangs  # type: ignore[method-assign,assignment,return-value]
    with anyio.move_on_after(5) as outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.wait, "some-uuid")
            await started.wait()
            tg.cancel_scope.cancel()  # the caller's own cancellation passes through untouched
    assert not outer.cancelled_caught
