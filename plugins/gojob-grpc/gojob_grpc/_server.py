"""The node's gRPC server: ``gojob.v1.JobService`` over a running Manager, plus ``/metrics``.

:class:`JobServer` can be run by hand next to a Manager; :class:`ServerPlugin` runs one through the
Manager's lifecycle hooks; ``gojob serve`` runs one in a process of its own. All of them run on the
Manager's event loop, which must be asyncio (grpc.aio runs on asyncio only).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import functools
import hmac
import inspect
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import grpc
import grpc.aio
from gojob_core import (
    ArgumentError,
    Instance,
    InstanceNotFoundError,
    Manager,
    ScheduleError,
    ScheduleNotFoundError,
    State,
    StoreError,
    UnknownJobError,
    WaitTimeoutError,
    hookimpl,
)

from ._convert import (
    BadField,
    instance_to_pb,
    log_to_pb,
    query_from_pb,
    record_to_pb,
    schedule_to_pb,
    state_from_pb,
    state_to_pb,
    trigger_from_pb,
    ts_from_pb,
    ts_to_pb,
)
from .errors import ERROR_KEY, FIELD_KEY, PARAMETER_KEY
from .hookspecs import add_hookspecs
from .proto.gojob.v1 import jobs_pb2 as pb
from .proto.gojob.v1 import jobs_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    import pluggy
    from prometheus_client.exposition import WSGIServer

__all__ = ["DEFAULT_LISTEN", "JobServer", "ServerPlugin", "parse_hostport"]

_log = logging.getLogger("gojob.grpc")

DEFAULT_LISTEN = "127.0.0.1:50051"
#: the initial-metadata key a WatchInstances stream sends once it is subscribed
WATCH_READY_KEY = "gojob-watch"
_T = TypeVar("_T")
_SCHEDULE_FIELDS = ("crontab_spec", "timezone", "schedule_at", "schedule_after", "timeout", "max_retries", "priority",
                   "misfire_grace_time", "coalesce", "max_runs", "jitter", "trigger", "schedule id", "start", "end",
                   "every", "at")
_CLOSED = object()


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "0.0.0+unknown"


# -- addresses and credentials ----------------------------------------------------------------------------
def parse_hostport(value: str, *, what: str = "listen address") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into (host, port); raises ValueError naming ``what``."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep) and rest.startswith(":")
    else:
        host, sep, port_text = text.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not ok or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} must be host:port (e.g. 127.0.0.1:50051 or [::1]:50051), got {value!r}")
    return host, int(port_text)


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_pem(value: str | os.PathLike[str] | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {os.fspath(value)!r}: {exc.strerror}") from None


def check_token(token: str | None) -> str | None:
    """A bearer token must be visible ASCII without spaces (it travels in a gRPC metadata value)."""
    if token is None:
        return None
    if not isinstance(token, str) or not token or any(not ("!" <= c <= "~") for c in token):
        raise ValueError("the token must be a non-empty string of visible ASCII characters (no spaces)")
    return token


# -- errors -------------------------------------------------------------------------------------------
class _Reject(Exception):
    """How a call ends when it cannot be served: a status code, the field at fault, a message."""

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None,
                 error_type: str | None = None, parameter: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.error_type = error_type
        self.parameter = parameter

    @property
    def details(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        md = []
        for key, value in ((FIELD_KEY, self.field), (ERROR_KEY, self.error_type), (PARAMETER_KEY, self.parameter)):
            if value and value.isascii() and value.isprintable():
                md.append((key, value))
        return tuple(md)


def _schedule_field(message: str) -> str | None:
    """The schedule option a core ScheduleError message names first (its messages always name it)."""
    import re

    best: tuple[int, str] | None = None
    for name in _SCHEDULE_FIELDS:
        m = re.search(rf"\b{name}\b", message)
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), name)
    return best[1] if best else None


def _translate(exc: Exception, manager: Manager) -> _Reject:
    code = grpc.StatusCode
    if isinstance(exc, _Reject):
        return exc
    if isinstance(exc, BadField):
        return _Reject(code.INVALID_ARGUMENT, exc.message, field=exc.field)
    if isinstance(exc, UnknownJobError):
        return _Reject(code.NOT_FOUND, str(exc), field="kind", error_type="UnknownJobError")
    if isinstance(exc, InstanceNotFoundError):
        return _Reject(code.NOT_FOUND, str(exc), field="uuid", error_type="InstanceNotFoundError")
    if isinstance(exc, ScheduleNotFoundError):
        return _Reject(code.NOT_FOUND, str(exc), field="id", error_type="ScheduleNotFoundError")
    if isinstance(exc, ArgumentError):
        return _Reject(code.INVALID_ARGUMENT, str(exc), field="arguments", error_type=type(exc).__name__,
                       parameter=exc.parameter)
    if isinstance(exc, ScheduleError):
        return _Reject(code.INVALID_ARGUMENT, str(exc), field=_schedule_field(str(exc)), error_type="ScheduleError")
    if isinstance(exc, WaitTimeoutError):
        return _Reject(code.DEADLINE_EXCEEDED, str(exc), field="timeout", error_type="WaitTimeoutError")
    if isinstance(exc, (StoreError, OSError)):
        _log.warning("store failure while serving a call: %r", exc)
        return _Reject(code.UNAVAILABLE, f"the store failed: {exc}", error_type=type(exc).__name__)
    if not manager.running:
        return _Reject(code.UNAVAILABLE, f"node {manager.node_id} is stopping; use another node of the cluster")
    _log.error("internal error while serving a call", exc_info=exc)
    return _Reject(code.INTERNAL, f"internal error ({type(exc).__name__}); see the log of node {manager.node_id}",
                   error_type=type(exc).__name__)


def _unary(fn: Callable[[JobServicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Any:
    """Run a unary handler; every failure becomes a status with a message naming the field."""

    @functools.wraps(fn)
    async def handler(self: JobServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            reject = _translate(exc, self.manager)
        await _abort(context, reject)

    return handler


async def _abort(context: grpc.aio.ServicerContext, reject: _Reject) -> None:
    await context.abort(reject.code, reject.details, trailing_metadata=reject.trailing_metadata)


# -- watch ---------------------------------------------------------------------------------------------
class _Subscriber:
    """One WatchInstances stream: its filters and the events waiting to be sent."""

    def __init__(self, kind: str, uuids: frozenset[str], states: frozenset[State], limit: int) -> None:
        self.kind = kind
        self.uuids = uuids
        self.states = states
        self.limit = limit
        self.items: collections.deque[pb.InstanceEvent] = collections.deque()
        self.wakeup = anyio.Event()
        self.dropped = 0
        self.closed = False

    def matches(self, kind: str, uuid: str, state: State) -> bool:
        return ((not self.kind or kind == self.kind) and (not self.uuids or uuid in self.uuids)
                and (not self.states or state in self.states))

    def push(self, event: pb.InstanceEvent) -> None:
        if self.dropped or len(self.items) >= self.limit:
            self.dropped += 1  # a reader this far behind gets an error, not a stream with holes
        else:
            self.items.append(event)
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()

    async def next(self) -> pb.InstanceEvent | object:
        while not self.items:
            if self.closed or self.dropped:
                return _CLOSED
            self.wakeup = anyio.Event()
            await self.wakeup.wait()
        return self.items.popleft()


class _WatchHub:
    """Fans the Manager's state-change hook out to the open WatchInstances streams of this node."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.subscribers: set[_Subscriber] = set()

    def publish(self, instance: Instance, state: State) -> None:
        if not self.subscribers:
            return
        event: pb.InstanceEvent | None = None
        for sub in tuple(self.subscribers):
            if sub.matches(instance.kind, instance.uuid, state):
                if event is None:
                    event = pb.InstanceEvent(uuid=instance.uuid, kind=instance.kind, state=state_to_pb(state),
                                             attempt=int(instance.attempts), node=self.node_id)
                    ts_to_pb(time.time(), event.timestamp)
                    instance_to_pb(instance, state, event.instance)
                sub.push(event)

    def close(self) -> None:
        for sub in tuple(self.subscribers):
            sub.close()


# -- the service ------------------------------------------------------------------------------------------
class JobServicer(pb_grpc.JobServiceServicer):
    """gojob.v1.JobService over one Manager (see jobs.proto for the contract of each call)."""

    def __init__(self, manager: Manager, hub: _WatchHub, *, max_workers: int, watch_buffer: int) -> None:
        self.manager = manager
        self.hub = hub
        self.max_workers = max_workers
        self.watch_buffer = watch_buffer
        self.stopping = anyio.Event()
        self.versions = (_version("gojob-core"), _version("gojob-grpc"))  # reading metadata is slow: once

    # -- helpers --
    @staticmethod
    def _uuid(value: str, field: str = "uuid") -> str:
        if not value.strip():
            raise BadField(field, "an instance uuid is required")
        if len(value) > 200:
            raise BadField(field, f"not an instance uuid (a string of {len(value)} characters)")
        return value

    async def _unless_stopping(self, call: Awaitable[_T]) -> _T:
        """Await ``call``, unless the node begins to stop first (then the caller gets UNAVAILABLE)."""
        outcome: list[tuple[_T | None, Exception | None]] = []
        async with anyio.create_task_group() as tg:
            async def watch_stop() -> None:
                await self.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_stop)
            try:  # caught here: raised through the task group it would come out as an ExceptionGroup
                outcome.append((await call, None))
            except Exception as exc:
                outcome.append((None, exc))
            tg.cancel_scope.cancel()
        if not outcome:
            raise _Reject(grpc.StatusCode.UNAVAILABLE,
                          f"node {self.manager.node_id} is stopping; wait on another node of the cluster")
        result, error = outcome[0]
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _workers(self) -> pb.Workers:
        mgr = self.manager
        return pb.Workers(num_workers=mgr.num_workers, node_id=mgr.node_id,
                          running=sum(1 for w in mgr.workers if w.current is not None))

    # -- calls --
    @_unary
    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        mgr = self.manager
        w = self._workers()
        return pb.HealthResponse(status="SERVING" if mgr.running and not self.stopping.is_set() else "STOPPING",
                                 node_id=mgr.node_id, store=mgr.store.name, num_workers=w.num_workers,
                                 running=w.running, registered_jobs=len(mgr.registered_jobs()),
                                 core_version=self.versions[0], server_version=self.versions[1])

    @_unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        out = pb.ListJobsResponse()
        for job in self.manager.registered_jobs():
            info = out.jobs.add(kind=job.kind, description=job.description or "", priority=job.priority,
                                max_retries=job.max_retries, signature=_signature(job.executor))
            if job.timeout is not None:
                info.timeout = _seconds(job.timeout)
            if job.crontab_spec:
                info.crontab_spec = job.crontab_spec
            if job.timezone is not None:
                info.timezone = str(getattr(job.timezone, "key", job.timezone))
        return out

    @_unary
    async def Schedule(self, request: pb.ScheduleRequest, context: grpc.aio.ServicerContext) -> pb.Instance:
        if not request.kind:
            raise BadField("kind", "a job kind is required")
        options: dict[str, Any] = {"arguments": _arguments(request.arguments_json)}
        if request.HasField("schedule_at"):
            options["schedule_at"] = ts_from_pb(request.schedule_at, "schedule_at")
        if request.HasField("schedule_after"):
            options["schedule_after"] = request.schedule_after
        if request.crontab_spec:
            options["crontab_spec"] = request.crontab_spec
        if request.timezone:
            options["timezone"] = request.timezone
        timing = [n for n in ("schedule_at", "schedule_after", "crontab_spec") if n in options]
        if len(timing) > 1:
            raise BadField(timing[1], f"give at most one of schedule_at, schedule_after, crontab_spec, not "
                                      f"{' and '.join(timing)}")
        for name in ("priority", "max_retries", "timeout"):
            if request.HasField(name):
                options[name] = getattr(request, name)
        inst = await self.manager.schedule_registered_job(request.kind, **options)
        return instance_to_pb(inst)

    # -- schedules -------------------------------------------------------------------------------------
    @staticmethod
    def _schedule_options(request: Any) -> dict[str, Any]:
        """The options a schedule request gives (those left unset are not in the result)."""
        options: dict[str, Any] = {}
        if request.arguments_json:
            options["arguments"] = _arguments(request.arguments_json)
        for name in ("priority", "max_retries", "timeout", "misfire_grace_time", "max_runs", "jitter"):
            if request.HasField(name):
                options[name] = getattr(request, name)
        if request.coalesce:
            options["coalesce"] = request.coalesce
        return options

    @_unary
    async def AddSchedule(self, request: pb.AddScheduleRequest,
                          context: grpc.aio.ServicerContext) -> pb.ScheduleInfo:
        if not request.kind:
            raise BadField("kind", "a job kind is required")
        if not request.HasField("trigger"):
            raise BadField("trigger", "a trigger is required (cron, every or at)")
        options = self._schedule_options(request)
        if request.id:
            options["id"] = request.id
        sched = await self.manager.add_schedule(request.kind, trigger_from_pb(request.trigger),
                                                paused=request.paused, **options)
        return schedule_to_pb(sched)

    @_unary
    async def ListSchedules(self, request: pb.ListSchedulesRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListSchedulesResponse:
        if request.state and request.state not in ("active", "paused", "finished"):
            raise BadField("state", f"must be active, paused or finished, got {request.state!r}")
        found = await self.manager.list_schedules(kind=request.kind or None, state=request.state or None)
        reply = pb.ListSchedulesResponse(schedules=[schedule_to_pb(s) for s in found])
        times = [s.next_fire_ts for s in await self.manager.list_schedules(state="active")
                 if s.next_fire_ts is not None]
        if times:
            ts_to_pb(min(times), reply.next_run_at)
        return reply

    def _schedule_id(self, request: Any) -> str:
        if not request.id:
            raise BadField("id", "a schedule id is required")
        return str(request.id)

    @_unary
    async def GetSchedule(self, request: pb.ScheduleIdRequest, context: grpc.aio.ServicerContext) -> pb.ScheduleInfo:
        return schedule_to_pb(await self.manager.get_schedule(self._schedule_id(request)))

    @_unary
    async def PauseSchedule(self, request: pb.ScheduleIdRequest,
                            context: grpc.aio.ServicerContext) -> pb.ScheduleInfo:
        return schedule_to_pb(await self.manager.pause_schedule(self._schedule_id(request)))

    @_unary
    async def ResumeSchedule(self, request: pb.ScheduleIdRequest,
                             context: grpc.aio.ServicerContext) -> pb.ScheduleInfo:
        return schedule_to_pb(await self.manager.resume_schedule(self._schedule_id(request)))

    @_unary
    async def UpdateSchedule(self, request: pb.UpdateScheduleRequest,
                             context: grpc.aio.ServicerContext) -> pb.ScheduleInfo:
        options = self._schedule_options(request)
        if request.HasField("trigger"):
            options["trigger"] = trigger_from_pb(request.trigger)
        return schedule_to_pb(await self.manager.update_schedule(self._schedule_id(request), **options))

    @_unary
    async def RemoveSchedule(self, request: pb.ScheduleIdRequest,
                             context: grpc.aio.ServicerContext) -> pb.RemoveScheduleResponse:
        await self.manager.remove_schedule(self._schedule_id(request))
        return pb.RemoveScheduleResponse()

    @_unary
    async def ListInstances(self, request: pb.ListInstancesRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListInstancesResponse:
        found = await self.manager.lookup_instances(query_from_pb(request.query))
        out = pb.ListInstancesResponse()
        for inst in found:
            instance_to_pb(inst, out=out.instances.add())
        return out

    @_unary
    async def GetInstance(self, request: pb.GetInstanceRequest, context: grpc.aio.ServicerContext) -> pb.Instance:
        return instance_to_pb(await self.manager.lookup_instance(self._uuid(request.uuid)))

    async def _require_instance(self, uuid: str) -> None:
        if uuid:
            await self.manager.lookup_instance(self._uuid(uuid, "query.uuid"))

    @_unary
    async def GetHistory(self, request: pb.GetHistoryRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetHistoryResponse:
        query = query_from_pb(request.query)
        records = await self.manager.lookup_instance_history(query)
        if not records:  # say "no such instance" rather than answer an empty history for it
            await self._require_instance(request.query.uuid)
        return pb.GetHistoryResponse(records=[record_to_pb(r) for r in records])

    @_unary
    async def GetLogs(self, request: pb.GetLogsRequest, context: grpc.aio.ServicerContext) -> pb.GetLogsResponse:
        query = query_from_pb(request.query)
        records = await self.manager.lookup_instance_logs(query)
        if not records:
            await self._require_instance(request.query.uuid)
        return pb.GetLogsResponse(records=[log_to_pb(r) for r in records])

    @_unary
    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.Instance:
        return instance_to_pb(await self.manager.cancel_instance(self._uuid(request.uuid)))

    @_unary
    async def Wait(self, request: pb.WaitRequest, context: grpc.aio.ServicerContext) -> pb.Instance:
        uuid = self._uuid(request.uuid)
        timeout = None
        if request.HasField("timeout"):
            timeout = request.timeout
            if not (math.isfinite(timeout) and timeout >= 0):
                raise BadField("timeout", f"must be a non-negative number of seconds, got {timeout!r}")
        return instance_to_pb(await self._unless_stopping(self.manager.wait(uuid, timeout)))

    @_unary
    async def GetWorkers(self, request: pb.GetWorkersRequest, context: grpc.aio.ServicerContext) -> pb.Workers:
        return self._workers()

    @_unary
    async def ResizeWorkers(self, request: pb.ResizeWorkersRequest,
                            context: grpc.aio.ServicerContext) -> pb.Workers:
        n = request.num_workers
        if n < 0:
            raise BadField("num_workers", f"must be a non-negative integer, got {n}")
        if n > self.max_workers:
            raise BadField("num_workers", f"must be at most {self.max_workers} on this node, got {n}")
        await self.manager.resize_workers(n)
        return self._workers()

    @_unary
    async def ListCorrupt(self, request: pb.ListCorruptRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListCorruptResponse:
        limit = request.raw_limit or None
        out = pb.ListCorruptResponse()
        for rec in await self.manager.store.corrupt_records():
            raw = _text(rec.raw)
            out.records.add(key=_text(rec.key), reason=_text(rec.reason), raw=raw[:limit] if limit else raw)
        return out

    @_unary
    async def DropCorrupt(self, request: pb.DropCorruptRequest,
                          context: grpc.aio.ServicerContext) -> pb.DropCorruptResponse:
        key = request.key
        if not key.strip():
            raise BadField("key", "the key of a corrupt record is required (ListCorrupt gives them)")
        dropped = bool(await self.manager.store.drop_corrupt_record(key))
        if dropped:
            _log.info("corrupt record %r dropped from the store at the request of %s", key, context.peer())
        return pb.DropCorruptResponse(dropped=dropped)

    async def WatchInstances(self, request: pb.WatchInstancesRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.InstanceEvent]:
        try:
            states = frozenset(state_from_pb(v, "states") for v in request.states)
            if self.stopping.is_set() or not self.manager.running:
                raise _Reject(grpc.StatusCode.UNAVAILABLE, f"node {self.manager.node_id} is stopping")
        except Exception as exc:
            await _abort(context, _translate(exc, self.manager))
            return
        sub = _Subscriber(request.kind, frozenset(request.uuids), states, self.watch_buffer)
        self.hub.subscribers.add(sub)
        try:
            await context.send_initial_metadata(((WATCH_READY_KEY, "subscribed"),))
            while True:
                event = await sub.next()
                if event is _CLOSED:
                    break
                yield event  # type: ignore[misc]
        finally:
            self.hub.subscribers.discard(sub)
        if sub.dropped:
            await _abort(context, _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          f"this watcher fell {sub.limit} events behind and {sub.dropped} were "
                                          "dropped; watch again (and read what was missed with ListInstances)"))
        else:
            await _abort(context, _Reject(grpc.StatusCode.UNAVAILABLE,
                                          f"node {self.manager.node_id} is stopping; watch another node"))


def _arguments(text: str) -> tuple[Any, ...] | dict[str, Any]:
    """The schedule arguments from their JSON text: an array (positional) or an object (keywords)."""
    if not text.strip():
        return ()

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise BadField("arguments_json", f"not valid JSON: {exc}") from None
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return value
    raise BadField("arguments_json", "must be a JSON array (positional arguments) or a JSON object "
                                     f"(keyword arguments), got a JSON {type(value).__name__}")


def _text(value: object) -> str:
    """Text a protobuf string field takes (valid UTF-8): what cannot be encoded is escaped."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a surrogateescape decoding
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _Text(str):
    """An annotation kept as text (``from __future__ import annotations``), shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _signature(fn: Callable[..., Any]) -> str:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(...)"

    def plain(annotation: Any) -> Any:
        return _Text(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=plain(p.annotation)) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=plain(sig.return_annotation)))


def _seconds(value: float | _dt.timedelta) -> float:
    return value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)


# -- authentication --------------------------------------------------------------------------------------
class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>``; others end UNAUTHENTICATED, unread."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode("ascii")

    def _allowed(self, metadata: Any) -> bool:
        given = [v for k, v in (metadata or ()) if k == "authorization"]
        if len(given) != 1:
            return False
        value = given[0] if isinstance(given[0], bytes) else str(given[0]).encode("utf-8", "replace")
        return hmac.compare_digest(value, self._expected)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or self._allowed(handler_call_details.invocation_metadata):
            return handler
        method = handler_call_details.method

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            _log.warning("refused a call to %s from %s: missing or wrong token", method, context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid token: send the metadata 'authorization: Bearer <token>'")

        # the request is never deserialized (request_deserializer=None): nothing of it is read
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(deny)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(deny)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.stream_stream_rpc_method_handler(deny)


# -- undecodable requests -------------------------------------------------------------------------------
class _Undecodable:
    """What a request's bytes decode to when they are not a message of the method's request type."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Refused(Exception):
    """Ends a synchronous handler whose request stream held an undecodable message (its status is set)."""


class _RequestCheck(grpc.aio.ServerInterceptor):
    """Bytes that do not decode as the method's request message end the call INVALID_ARGUMENT.

    grpc.aio decodes a request before the handler runs, and a decoding error there ends the call with
    UNKNOWN and a traceback in the log. Here every method's deserializer is wrapped so that it never
    raises (it returns an :class:`_Undecodable`), and its handler so that it refuses such a request
    with one warning line instead of running: every method of the server, unary or streaming, the
    plugins' services too. It runs inside the token check, which refuses a call without reading it.
    """

    def __init__(self) -> None:
        self._checked: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._checked.get(method)
        if cached is None or cached[0] is not handler:  # wrapped once per method, not once per call
            cached = (handler, _checked_handler(handler, method))
            self._checked[method] = cached
        return cached[1]


def _message_name(deserializer: Callable[[bytes], Any]) -> str | None:
    owner = getattr(deserializer, "__self__", None)  # a generated Message.FromString
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", None)
    return name if isinstance(name, str) and name else None


def _checked_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserializer = handler.request_deserializer
    name = _message_name(deserializer)

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # whatever the deserializer raises, the bytes are the caller's fault
            return _Undecodable(exc)

    def refusal(context: Any, bad: _Undecodable) -> _Reject:
        reason = " ".join(str(bad.error).split())[:300] or type(bad.error).__name__
        what = f"is not a valid {name}" if name else "cannot be decoded"
        reject = _Reject(grpc.StatusCode.INVALID_ARGUMENT, f"the request {what}: {reason}",
                         error_type=type(bad.error).__name__)
        _log.warning("refused a call to %s from %s: %s", method, context.peer(), reject.message)
        return reject

    async def abort(context: grpc.aio.ServicerContext, bad: _Undecodable) -> None:
        await _abort(context, refusal(context, bad))

    def mark(context: Any, bad: _Undecodable) -> None:  # a synchronous handler cannot await abort()
        reject = refusal(context, bad)
        context.set_code(reject.code)
        context.set_details(reject.details)
        context.set_trailing_metadata(reject.trailing_metadata)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary_request(handler.unary_unary, abort, mark, stream=False),
                                                   decode, handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_unary_request(handler.unary_stream, abort, mark, stream=True),
                                                    decode, handler.response_serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_stream_request(handler.stream_unary, abort, mark, stream=False),
                                                    decode, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(_stream_request(handler.stream_stream, abort, mark, stream=True),
                                                 decode, handler.response_serializer)


def _unary_request(behavior: Callable[..., Any], abort: Callable[..., Awaitable[None]],
                   mark: Callable[..., None], *, stream: bool) -> Callable[..., Any]:
    """``behavior`` refusing an undecodable request; of the same kind (grpc.aio calls each kind its way)."""
    if inspect.isasyncgenfunction(behavior):
        async def async_gen(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await abort(context, request)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        return async_gen
    if inspect.iscoroutinefunction(behavior):
        async def coroutine(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                await abort(context, request)
            return await behavior(request, context)
        return coroutine
    if stream:
        def sync_gen(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                mark(context, request)
                return
            yield from behavior(request, context)
        return sync_gen

    def sync(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            mark(context, request)
            return None
        return behavior(request, context)
    return sync


def _stream_request(behavior: Callable[..., Any], abort: Callable[..., Awaitable[None]],
                    mark: Callable[..., None], *, stream: bool) -> Callable[..., Any]:
    """``behavior`` reading a request stream that refuses the call at its first undecodable message."""
    async def checked(requests: Any, context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await abort(context, request)
            yield request

    def checked_sync(requests: Any, context: Any) -> Any:
        for request in requests:
            if isinstance(request, _Undecodable):
                mark(context, request)
                raise _Refused
            yield request

    if inspect.isasyncgenfunction(behavior):
        async def async_gen(requests: Any, context: Any) -> AsyncIterator[Any]:
            async with contextlib.aclosing(behavior(checked(requests, context), context)) as responses:
                async for response in responses:
                    yield response
        return async_gen
    if inspect.iscoroutinefunction(behavior):
        async def coroutine(requests: Any, context: Any) -> Any:
            return await behavior(checked(requests, context), context)
        return coroutine
    if stream:
        def sync_gen(requests: Any, context: Any) -> Any:
            try:
                yield from behavior(checked_sync(requests, context), context)
            except _Refused:
                return
        return sync_gen

    def sync(requests: Any, context: Any) -> Any:
        try:
            return behavior(checked_sync(requests, context), context)
        except _Refused:
            return None
    return sync


# -- the server ---------------------------------------------------------------------------------------------
class JobServer:
    """Serves ``gojob.v1.JobService`` for a running Manager, and optionally Prometheus ``/metrics``.

    :param manager: the Manager to serve; it must run on asyncio (grpc.aio runs on asyncio only).
    :param listen: ``host:port`` to bind (default ``127.0.0.1:50051``, loopback only); port 0 picks a
        free port, read it from :attr:`port` after :meth:`start`.
    :param token: if given, every call must carry ``authorization: Bearer <token>``.
    :param tls_cert, tls_key: PEM certificate chain and private key (paths or bytes) to serve TLS.
    :param metrics: ``host:port`` for an HTTP server of ``/metrics`` (the Manager's registry), or None.
    :param max_workers: the largest pool a ResizeWorkers call may ask for.
    :param grace: seconds in-flight calls get to finish when the server stops.
    :param watch_buffer: events a WatchInstances reader may fall behind before its stream is ended.
    """

    def __init__(self, manager: Manager, *, listen: str = DEFAULT_LISTEN, token: str | None = None,
                 tls_cert: str | os.PathLike[str] | bytes | None = None,
                 tls_key: str | os.PathLike[str] | bytes | None = None, metrics: str | None = None,
                 max_workers: int = 1024, grace: float = 5.0, watch_buffer: int = 1000) -> None:
        self.manager = manager
        self.host, self._want_port = parse_hostport(listen)
        self.metrics_host, self._want_metrics_port = (parse_hostport(metrics, what="metrics address")
                                                      if metrics else (None, None))
        self.token = check_token(token)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate (tls_cert) and its private key (tls_key)")
        self._tls = (_read_pem(tls_cert, "TLS certificate"), _read_pem(tls_key, "TLS key")) \
            if tls_cert is not None and tls_key is not None else None
        self.max_workers = max_workers
        self.grace = grace
        self.watch_buffer = watch_buffer
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._hub = _WatchHub(manager.node_id)
        self._server: grpc.aio.Server | None = None
        self._servicer: JobServicer | None = None
        self._serving = False
        self._metrics: tuple[WSGIServer, threading.Thread] | None = None

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def address(self) -> str:
        """Where the server listens, ``host:port`` (the real port once started)."""
        return _format_hostport(self.host, self.port if self.port is not None else self._want_port)

    @property
    def metrics_address(self) -> str | None:
        if self.metrics_host is None:
            return None
        port = self.metrics_port if self.metrics_port is not None else self._want_metrics_port
        return _format_hostport(self.metrics_host, port or 0)

    def publish(self, instance: Instance, state: State) -> None:
        """Feed a state change of this node to the open WatchInstances streams."""
        self._hub.publish(instance, state)

    async def bind(self) -> None:
        """Make the server and bind its port (and the /metrics port) without serving yet.

        :meth:`start` does this when it has not been done. ``gojob serve`` binds before it starts the
        Manager, so that a busy port fails the node before it claims any work.
        """
        if self._server is not None:
            return
        _require_asyncio()
        if not _is_loopback(self.host):
            if self._tls is None:
                _log.warning("serving gojob.v1 on %s without TLS: calls%s travel in clear text", self.address,
                             " and the token" if self.token else "")
            if self.token is None:
                _log.warning("serving gojob.v1 on %s without a token: anyone who can reach it can schedule "
                             "and cancel jobs", self.address)
        # the token check first (outermost): a call without the token is refused before it is read
        interceptors: list[grpc.aio.ServerInterceptor] = [_TokenCheck(self.token)] if self.token else []
        interceptors.append(_RequestCheck())
        # SO_REUSEPORT off: a second node on a busy port must fail, not share the port silently
        server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        servicer = JobServicer(self.manager, self._hub, max_workers=self.max_workers,
                               watch_buffer=self.watch_buffer)
        pb_grpc.add_JobServiceServicer_to_server(servicer, server)
        hook = getattr(self.manager.plugins.pm.hook, "gojob_grpc_add_services", None)
        if hook is not None:
            hook(server=server, manager=self.manager)
        address = _format_hostport(self.host, self._want_port)
        try:
            if self._tls is not None:
                port = server.add_secure_port(address, grpc.ssl_server_credentials([(self._tls[1], self._tls[0])]))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise OSError(f"cannot listen on {address}: the address is in use or not available here")
        if self.metrics_host is not None:
            self._metrics = _start_metrics(self.manager, self.metrics_host, self._want_metrics_port or 0)
            self.metrics_port = int(self._metrics[0].server_port)
        self.port = port
        self._server, self._servicer = server, servicer

    async def start(self) -> None:
        """Bind (unless :meth:`bind` did) and start serving."""
        if self._serving:
            raise RuntimeError(f"the gRPC server of node {self.manager.node_id} is already started")
        await self.bind()
        assert self._server is not None
        try:
            await self._server.start()
        except BaseException:
            await self.stop(0)
            raise
        self._serving = True
        _log.info("node %s serves gojob.v1 on %s%s%s", self.manager.node_id, self.address,
                  " (TLS)" if self._tls else "", " (token required)" if self.token else "")

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: end Wait and WatchInstances calls, give the others ``grace`` seconds."""
        server, servicer, serving = self._server, self._servicer, self._serving
        self._server = self._servicer = None
        self._serving = False
        if servicer is not None:
            servicer.stopping.set()
        self._hub.close()
        try:
            if server is not None and serving:
                await server.stop(self.grace if grace is None else grace)
        finally:
            await self._stop_metrics()

    async def _stop_metrics(self) -> None:
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            httpd, thread = metrics
            await anyio.to_thread.run_sync(httpd.shutdown)
            httpd.server_close()
            thread.join(5)

    async def __aenter__(self) -> JobServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _start_metrics(manager: Manager, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's HTTP server (a daemon thread) on ``host:port``, serving the Manager's registry."""
    from prometheus_client import start_http_server

    try:
        return start_http_server(port, addr=host, registry=manager.metrics.registry)
    except OSError as exc:
        raise OSError(f"cannot serve /metrics on {_format_hostport(host, port)}: {exc.strerror or exc}") from None


def _require_asyncio() -> None:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("the gojob gRPC server runs on asyncio only (grpc.aio): run the Manager on anyio's "
                           "asyncio backend, not on trio") from None


# -- the plugin -----------------------------------------------------------------------------------------
class ServerPlugin:
    """Serve the gRPC API from a Manager the application already runs: pass it as a plugin.

    ``Manager(plugins=[ServerPlugin(listen="127.0.0.1:50051", token=...)])`` starts the server once
    the Manager has started (and after every other plugin's start hook) and stops it when the Manager
    begins to stop. The options are those of :class:`JobServer`; :attr:`server` is the running one.
    One ServerPlugin serves one Manager.
    """

    def __init__(self, *, listen: str = DEFAULT_LISTEN, token: str | None = None,
                 tls_cert: str | os.PathLike[str] | bytes | None = None,
                 tls_key: str | os.PathLike[str] | bytes | None = None, metrics: str | None = None,
                 max_workers: int = 1024, grace: float = 5.0, watch_buffer: int = 1000) -> None:
        # check what can be checked now, so that a bad option fails here and not at Manager start
        parse_hostport(listen)
        if metrics:
            parse_hostport(metrics, what="metrics address")
        check_token(token)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate (tls_cert) and its private key (tls_key)")
        self.options: dict[str, Any] = {"listen": listen, "token": token, "tls_cert": tls_cert, "tls_key": tls_key,
                                        "metrics": metrics, "max_workers": max_workers, "grace": grace,
                                        "watch_buffer": watch_buffer}
        self.server: JobServer | None = None
        self._manager: Manager | None = None

    def _server_for(self, manager: Manager) -> JobServer:
        if self._manager is not None and self._manager is not manager:
            raise RuntimeError("a ServerPlugin serves one Manager; give each Manager its own")
        self._manager = manager
        if self.server is None:
            self.server = JobServer(manager, **self.options)
        return self.server

    async def bind(self, manager: Manager) -> JobServer:
        """Bind the server's ports before the Manager starts (optional; the start hook does it otherwise)."""
        server = self._server_for(manager)
        await server.bind()
        return server

    @hookimpl
    def gojob_addhooks(self, pluginmanager: pluggy.PluginManager) -> None:
        add_hookspecs(pluginmanager)

    @hookimpl(trylast=True)
    def gojob_manager_started(self, manager: Manager) -> Awaitable[None]:
        return self._start(self._server_for(manager))

    async def _start(self, server: JobServer) -> None:
        try:
            await server.start()
        except Exception as exc:
            # said here as well: a failing start hook fails Manager.start(), which may report it poorly
            _log.error("the gRPC server of node %s cannot start: %s: %s", server.manager.node_id,
                       type(exc).__name__, exc)
            raise

    @hookimpl
    def gojob_manager_stopping(self, manager: Manager) -> Awaitable[None] | None:
        if self.server is None or manager is not self._manager:
            return None
        return self.server.stop()

    @hookimpl
    def gojob_instance_state_changed(self, manager: Manager, instance: Instance, state: State) -> None:
        server = self.server
        if server is not None and manager is self._manager:
            server.publish(instance, state)
