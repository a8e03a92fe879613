"""The typed async client of ``gojob.v1.JobService``: what jobctl uses, usable from application code.

It returns the core's own types (:class:`gojob_core.Instance`, :class:`~gojob_core.StateRecord`,
:class:`~gojob_core.LogRecord`), so code written against a Manager reads the same against a node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import math
import os
import pathlib
import uuid as _uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from gojob_core import Instance, LogRecord, Query, Schedule, State, StateRecord, Trigger, UnserializableArgumentError
from gojob_core.abc import CorruptRecord

from ._convert import (
    datetime_of,
    instance_from_pb,
    log_from_pb,
    query_to_pb,
    record_from_pb,
    schedule_from_pb,
    state_from_pb,
    state_to_pb,
    trigger_to_pb,
    ts_from_pb,
    ts_to_pb,
)
from .errors import RpcError, UnavailableError, from_grpc
from .proto.gojob.v1 import jobs_pb2 as pb
from .proto.gojob.v1 import jobs_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_TARGET", "Client", "InstanceEvent", "InstanceWatch", "JobInfo", "NodeInfo", "WorkersInfo"]

DEFAULT_TARGET = "127.0.0.1:50051"
_WATCH_READY_KEY = "gojob-watch"
_DEFAULT: Any = object()


@dataclasses.dataclass(frozen=True, slots=True)
class JobInfo:
    """A job registered on a node (its executor stays on the node; this is what it looks like)."""

    kind: str
    description: str
    priority: int
    max_retries: int
    timeout: float | None
    crontab_spec: str | None
    timezone: str | None
    #: the executor's parameters, e.g. ``"(a: int, b: int)"``
    signature: str


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """What Health answers: who the node is and how it is doing."""

    status: str
    node_id: str
    store: str
    num_workers: int
    running: int
    registered_jobs: int
    core_version: str
    server_version: str


@dataclasses.dataclass(frozen=True, slots=True)
class WorkersInfo:
    """A node's worker pool: its size and how many instances it runs now."""

    num_workers: int
    running: int
    node_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceEvent:
    """One state change made on the node serving a watch."""

    uuid: str
    kind: str
    state: State
    timestamp: _dt.datetime
    attempt: int
    node: str
    #: the instance as the node had it at the change (``instance.state`` is ``state``)
    instance: Instance


class Client:
    """An async client of one gojob node; use it as ``async with Client(target, ...) as client``.

    :param target: ``host:port`` of a node (default: ``$GOJOB_TARGET``, else ``127.0.0.1:50051``).
    :param token: bearer token the node requires (default: ``$GOJOB_TOKEN``, else none).
    :param tls: False (plain text), True (TLS, the system's CA roots), or the PEM of a CA or of the
        node's own (self-signed) certificate, as a path or bytes.
    :param tls_server_name: the name to check the node's certificate against, when it is not the
        target's host name.
    :param timeout: default deadline of each call in seconds (None: no deadline). ``wait`` and
        ``watch_instances`` have none unless given.

    Failed calls raise the subclasses of :class:`gojob_grpc.RpcError` (``InvalidArgumentError``,
    ``NotFoundError``, ``UnauthenticatedError``, ``UnavailableError``, ``DeadlineExceededError``).
    """

    def __init__(self, target: str | None = None, *, token: str | None = None,
                 tls: bool | str | os.PathLike[str] | bytes = False, tls_server_name: str | None = None,
                 timeout: float | None = 30.0, options: Iterable[tuple[str, Any]] = ()) -> None:
        self.target = target or os.environ.get("GOJOB_TARGET") or DEFAULT_TARGET
        token = token if token is not None else (os.environ.get("GOJOB_TOKEN") or None)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls
        self._options = list(options)
        if tls_server_name:
            self._options.append(("grpc.ssl_target_name_override", tls_server_name))
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.JobServiceStub | None = None

    def __repr__(self) -> str:
        return f"<gojob_grpc.Client {self.target}{' tls' if self._tls is not False else ''}>"

    # -- connection ----------------------------------------------------------------------------------
    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the channel (lazily: the first call connects). ``async with`` does this for you."""
        if self._channel is not None:
            return
        if self._tls is False:
            channel = grpc.aio.insecure_channel(self.target, options=self._options)
        else:
            roots = None
            if isinstance(self._tls, bytes):
                roots = self._tls
            elif self._tls is not True:
                with open(self._tls, "rb") as f:
                    roots = f.read()
            channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(root_certificates=roots),
                                              options=self._options)
        self._channel = channel
        self._stub = pb_grpc.JobServiceStub(channel)

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _method(self, name: str) -> Any:
        if self._stub is None:
            raise RuntimeError("the client is not connected: use 'async with Client(...) as client' "
                               "or 'await client.connect()'")
        return getattr(self._stub, name)

    async def _call(self, name: str, request: Any, timeout: float | None = _DEFAULT) -> Any:
        method = self._method(name)
        try:
            return await method(request, timeout=self.timeout if timeout is _DEFAULT else timeout,
                                metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        except asyncio.CancelledError:
            if _caller_cancelled():
                raise
            raise _cut_off(name) from None

    # -- the node --------------------------------------------------------------------------------------
    async def health(self) -> NodeInfo:
        """The node's id, store, pool and versions; ``status`` is ``"SERVING"`` or ``"STOPPING"``."""
        r = await self._call("Health", pb.HealthRequest())
        return NodeInfo(status=r.status, node_id=r.node_id, store=r.store, num_workers=r.num_workers,
                        running=r.running, registered_jobs=r.registered_jobs, core_version=r.core_version,
                        server_version=r.server_version)

    async def registered_jobs(self) -> list[JobInfo]:
        """The jobs registered on the node, by kind."""
        r = await self._call("ListJobs", pb.ListJobsRequest())
        return [JobInfo(kind=j.kind, description=j.description, priority=j.priority, max_retries=j.max_retries,
                        timeout=j.timeout if j.HasField("timeout") else None,
                        crontab_spec=j.crontab_spec if j.HasField("crontab_spec") else None,
                        timezone=j.timezone if j.HasField("timezone") else None, signature=j.signature)
                for j in r.jobs]

    async def get_workers(self) -> WorkersInfo:
        """The size of the node's worker pool and how many instances it runs now."""
        return _workers(await self._call("GetWorkers", pb.GetWorkersRequest()))

    async def resize_workers(self, num_workers: int) -> WorkersInfo:
        """Grow or shrink the node's worker pool (a retiring worker finishes its instance first)."""
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or not -2**31 <= num_workers < 2**31:
            raise ValueError(f"num_workers must be an integer, got {num_workers!r}")
        return _workers(await self._call("ResizeWorkers", pb.ResizeWorkersRequest(num_workers=num_workers)))

    # -- scheduling ------------------------------------------------------------------------------------
    async def schedule(self, kind: str, arguments: Any = (), *,
                       schedule_at: _dt.datetime | float | None = None,
                       schedule_after: float | _dt.timedelta | None = None,
                       crontab_spec: str | None = None, timezone: str | None = None, priority: int | None = None,
                       max_retries: int | None = None, timeout: float | _dt.timedelta | None = None) -> Instance:
        """Schedule an instance of the job registered under ``kind`` on the node.

        ``arguments`` as for ``Manager.schedule_job``: a tuple or list (positional), a dict
        (keyword), or one value. They travel as JSON (datetimes, dates and times as ISO text,
        timedeltas as seconds, UUIDs, Decimals and paths as text, enums by value, dataclasses as
        objects) and the node coerces them to the executor's type hints. The options override the
        job's defaults; give at most one of ``schedule_at`` (a datetime, naive ones are local time
        here, or epoch seconds), ``schedule_after`` (seconds or a timedelta) and ``crontab_spec``.
        """
        if isinstance(arguments, (tuple, list)):
            payload: Any = list(arguments)
        elif isinstance(arguments, dict):
            payload = arguments
        else:
            payload = [arguments]
        request = pb.ScheduleRequest(kind=kind, arguments_json=_encode_arguments(kind, payload))
        if schedule_at is not None:
            if isinstance(schedule_at, _dt.datetime):
                ts_to_pb(schedule_at.timestamp(), request.schedule_at)  # naive: local time, as in the core
            elif isinstance(schedule_at, (int, float)) and not isinstance(schedule_at, bool) \
                    and math.isfinite(schedule_at):
                ts_to_pb(float(schedule_at), request.schedule_at)
            else:
                raise ValueError(f"schedule_at must be a datetime or epoch seconds, got {schedule_at!r}")
        if schedule_after is not None:
            request.schedule_after = _secs(schedule_after, "schedule_after")
        if crontab_spec is not None:
            request.crontab_spec = crontab_spec
        if timezone is not None:
            request.timezone = timezone
        if priority is not None:
            request.priority = priority
        if max_retries is not None:
            request.max_retries = max_retries
        if timeout is not None:
            request.timeout = _secs(timeout, "timeout")
        return instance_from_pb(await self._call("Schedule", request))

    async def schedule_registered_job(self, kind: str, **options: Any) -> Instance:
        """The same as :meth:`schedule` (the Manager's name for it)."""
        return await self.schedule(kind, **options)

    # -- schedules -------------------------------------------------------------------------------------
    async def add_schedule(self, kind: str, trigger: Trigger, *, id: str | None = None,  # noqa: A002
                           arguments: Any = (), paused: bool = False, **options: Any) -> Schedule:
        """Add a schedule of the job registered under ``kind`` (options as for ``Manager.add_schedule``:
        ``priority``, ``max_retries``, ``timeout``, ``misfire_grace_time``, ``coalesce``, ``max_runs``,
        ``jitter``)."""
        request = pb.AddScheduleRequest(kind=kind, id=id or "", paused=paused)
        trigger_to_pb(trigger, request.trigger)
        _schedule_request(request, kind, arguments, options)
        return schedule_from_pb(await self._call("AddSchedule", request))

    async def list_schedules(self, *, kind: str | None = None, state: str | None = None) -> list[Schedule]:
        """Every schedule in the store (of one kind, in one state), by id."""
        reply = await self._call("ListSchedules", pb.ListSchedulesRequest(kind=kind or "", state=state or ""))
        return [schedule_from_pb(m) for m in reply.schedules]

    async def next_run_time(self) -> _dt.datetime | None:
        """The earliest next fire time over every active schedule, or None."""
        reply = await self._call("ListSchedules", pb.ListSchedulesRequest())
        return datetime_of(ts_from_pb(reply.next_run_at, "next_run_at")) if reply.HasField("next_run_at") else None

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return schedule_from_pb(await self._call("GetSchedule", pb.ScheduleIdRequest(id=schedule_id)))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        return schedule_from_pb(await self._call("PauseSchedule", pb.ScheduleIdRequest(id=schedule_id)))

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        return schedule_from_pb(await self._call("ResumeSchedule", pb.ScheduleIdRequest(id=schedule_id)))

    async def update_schedule(self, schedule_id: str, *, trigger: Trigger | None = None, arguments: Any = None,
                              **options: Any) -> Schedule:
        """Change a schedule from its next fire on (options as for ``Manager.update_schedule``)."""
        request = pb.UpdateScheduleRequest(id=schedule_id)
        if trigger is not None:
            trigger_to_pb(trigger, request.trigger)
        _schedule_request(request, "", arguments, options)
        return schedule_from_pb(await self._call("UpdateSchedule", request))

    async def remove_schedule(self, schedule_id: str) -> None:
        await self._call("RemoveSchedule", pb.ScheduleIdRequest(id=schedule_id))

    # -- queries ---------------------------------------------------------------------------------------
    async def lookup_instances(self, query: Query | None = None, **filters: Any) -> list[Instance]:
        """Instances in the store matching ``query`` (or ``Query(**filters)``), oldest first."""
        q = _query(query, filters)
        r = await self._call("ListInstances", pb.ListInstancesRequest(query=query_to_pb(q, pb.Query())))
        return [instance_from_pb(m) for m in r.instances]

    async def lookup_instance(self, instance: Instance | str) -> Instance:
        """The instance as the store has it now; raises NotFoundError."""
        return instance_from_pb(await self._call("GetInstance", pb.GetInstanceRequest(uuid=_uuid_of(instance))))

    async def lookup_instance_history(self, query: Query | Instance | str | None = None,
                                      **filters: Any) -> list[StateRecord]:
        """State records matching the query (an Instance or uuid means ``Query(instance=...)``), by time."""
        q = _query(query, filters)
        r = await self._call("GetHistory", pb.GetHistoryRequest(query=query_to_pb(q, pb.Query())))
        return [record_from_pb(m) for m in r.records]

    async def lookup_instance_logs(self, query: Query | Instance | str | None = None,
                                   **filters: Any) -> list[LogRecord]:
        """Log records matching the query (an Instance or uuid means ``Query(instance=...)``), by time."""
        q = _query(query, filters)
        r = await self._call("GetLogs", pb.GetLogsRequest(query=query_to_pb(q, pb.Query())))
        return [log_from_pb(m) for m in r.records]

    # -- control ---------------------------------------------------------------------------------------
    async def cancel_instance(self, instance: Instance | str) -> Instance:
        """Cancel an instance wherever it is (queued, delayed, recurring or running); returns it."""
        return instance_from_pb(await self._call("Cancel", pb.CancelRequest(uuid=_uuid_of(instance))))

    async def wait(self, instance: Instance | str, timeout: float | _dt.timedelta | None = None) -> Instance:
        """Wait until the instance is final and return it; DeadlineExceededError after ``timeout`` s."""
        request = pb.WaitRequest(uuid=_uuid_of(instance))
        deadline = None
        if timeout is not None:
            request.timeout = _secs(timeout, "timeout")
            deadline = request.timeout + 10.0  # the node answers DEADLINE_EXCEEDED itself, with a message
        return instance_from_pb(await self._call("Wait", request, timeout=deadline))

    def watch_instances(self, *, kind: str | None = None, uuids: Iterable[Instance | str] = (),
                        states: Iterable[State | str] | None = None) -> InstanceWatch:
        """State changes made on the node this client talks to, as they happen.

        ``async with client.watch_instances(kind="sum") as events: async for event in events: ...``.
        Once the ``async with`` is entered the node is subscribed: no later change is missed. Only
        changes made by that node are reported (a node sees its own scheduling, runs and cancels, not
        those of other nodes sharing the store). The stream ends with UnavailableError when the node
        stops, and with an RpcError (RESOURCE_EXHAUSTED) if the reader falls too far behind.
        """
        request = pb.WatchInstancesRequest(kind=kind or "", uuids=[_uuid_of(u) for u in uuids])
        if states is not None:
            request.states.extend(state_to_pb(State.parse(s)) for s in states)
        return InstanceWatch(self, request)

    # -- corrupt records ---------------------------------------------------------------------------------
    async def corrupt_records(self, *, raw_limit: int | None = None) -> list[CorruptRecord]:
        """The records the store set aside because it could not read them (``Store.corrupt_records``).

        ``raw_limit`` cuts each record's ``raw`` to that many characters on the node (None: all of it).
        """
        if raw_limit is not None and (not isinstance(raw_limit, int) or isinstance(raw_limit, bool)
                                      or not 0 < raw_limit < 2**32):
            raise ValueError(f"raw_limit must be a positive integer, got {raw_limit!r}")
        r = await self._call("ListCorrupt", pb.ListCorruptRequest(raw_limit=raw_limit or 0))
        return [CorruptRecord(m.key, m.reason, m.raw) for m in r.records]

    async def drop_corrupt_record(self, key: str) -> bool:
        """Forget a set-aside record (``Store.drop_corrupt_record``): an operator's decision, taken after
        reading its ``raw`` (and scheduling its work again if need be). False if there is no such record."""
        if not isinstance(key, str):
            raise TypeError(f"expected the key of a corrupt record (a string), got {key!r}")
        return bool((await self._call("DropCorrupt", pb.DropCorruptRequest(key=key))).dropped)


class InstanceWatch:
    """An open WatchInstances stream: an async context manager and an async iterator of InstanceEvents."""

    def __init__(self, client: Client, request: pb.WatchInstancesRequest) -> None:
        self._client = client
        self._request = request
        self._call: Any = None

    async def __aenter__(self) -> InstanceWatch:
        call = self._client._method("WatchInstances")(self._request, timeout=None, metadata=self._client._metadata)
        self._call = call
        try:
            md = await call.initial_metadata()
            if not any(k == _WATCH_READY_KEY for k, _ in (md or ())):
                await call.read()  # the node refused the stream: this raises its status
                raise RpcError(await call.code(), await call.details() or "the node ended the watch")
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise from_grpc(exc) from None
        except BaseException:
            call.cancel()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def __aiter__(self) -> InstanceWatch:
        return self

    async def __anext__(self) -> InstanceEvent:
        if self._call is None:
            raise RuntimeError("enter the watch first: 'async with client.watch_instances() as events'")
        try:
            m = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        except asyncio.CancelledError:
            if _caller_cancelled():
                raise
            raise _cut_off("WatchInstances") from None
        if m is grpc.aio.EOF:
            raise StopAsyncIteration
        return InstanceEvent(uuid=m.uuid, kind=m.kind, state=state_from_pb(m.state),
                             timestamp=datetime_of(m.timestamp.seconds + m.timestamp.nanos / 1e9),  # type: ignore
                             attempt=m.attempt, node=m.node, instance=instance_from_pb(m.instance))


# -- helpers ------------------------------------------------------------------------------------------
def _caller_cancelled() -> bool:
    """Whether the calling task is itself being cancelled (then a CancelledError is its own)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _cut_off(name: str) -> UnavailableError:
    """grpc.aio ends a call with CancelledError when the node's server tears it down while stopping
    (seen under load); the caller was not cancelled, so it gets the error a stopping node gives."""
    return UnavailableError(grpc.StatusCode.UNAVAILABLE,
                            f"{name}: the node ended the call (it is stopping, or the connection broke)")


def _workers(r: pb.Workers) -> WorkersInfo:
    return WorkersInfo(num_workers=r.num_workers, running=r.running, node_id=r.node_id)


def _uuid_of(instance: Instance | str) -> str:
    if isinstance(instance, Instance):
        return instance.uuid
    if isinstance(instance, str):
        return instance
    raise TypeError(f"expected an Instance or a uuid string, got {instance!r}")


def _query(query: Query | Instance | str | None, filters: dict[str, Any]) -> Query:
    if query is not None and filters:
        raise TypeError("give a Query or filter keywords, not both")
    if isinstance(query, (Instance, str)):
        return Query(instance=query)
    return query if query is not None else Query(**filters)


def _secs(value: float | _dt.timedelta, what: str) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{what} must be seconds (a number) or a timedelta, got {value!r}")


def _to_json(value: Any) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (_uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} values cannot travel as JSON")


def _encode_arguments(kind: str, payload: Any) -> str:
    try:
        return json.dumps(payload, default=_to_json, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise UnserializableArgumentError(f"job {kind!r}: arguments {payload!r:.200} cannot be sent to the node: "
                                          f"{exc}", kind=kind, value=payload) from None


def _schedule_request(request: Any, kind: str, arguments: Any, options: dict[str, Any]) -> None:
    """Fill the arguments and options of an add or update request (None and absent: not given)."""
    if arguments is not None and arguments != ():
        payload = list(arguments) if isinstance(arguments, (tuple, list)) else (
            arguments if isinstance(arguments, dict) else [arguments])
        request.arguments_json = _encode_arguments(kind, payload)
    for name, value in options.items():
        if name not in ("priority", "max_retries", "timeout", "misfire_grace_time", "coalesce", "max_runs", "jitter"):
            raise TypeError(f"unexpected schedule option {name!r}")
        if value is None:
            continue
        if name in ("timeout", "misfire_grace_time", "jitter"):
            value = _secs(value, name)
        setattr(request, name, value)
