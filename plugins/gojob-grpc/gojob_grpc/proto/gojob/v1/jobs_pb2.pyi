import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    STATE_CREATED: _ClassVar[State]
    STATE_SCHEDULED: _ClassVar[State]
    STATE_PROCESSING: _ClassVar[State]
    STATE_COMPLETED: _ClassVar[State]
    STATE_TERMINATED: _ClassVar[State]
    STATE_CANCELED: _ClassVar[State]
    STATE_TIMED_OUT: _ClassVar[State]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARN: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]
STATE_UNSPECIFIED: State
STATE_CREATED: State
STATE_SCHEDULED: State
STATE_PROCESSING: State
STATE_COMPLETED: State
STATE_TERMINATED: State
STATE_CANCELED: State
STATE_TIMED_OUT: State
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARN: LogLevel
LOG_LEVEL_ERROR: LogLevel

class Instance(_message.Message):
    __slots__ = ("uuid", "kind", "state", "args_json", "kwargs_json", "priority", "attempts", "max_retries", "timeout", "created_at", "ready_at", "started_at", "finished_at", "result_json", "error", "node", "cancel_requested", "crontab_spec", "timezone", "schedule_id", "abandoned")
    UUID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CRONTAB_SPEC_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    kind: str
    state: State
    args_json: str
    kwargs_json: str
    priority: int
    attempts: int
    max_retries: int
    timeout: float
    created_at: _timestamp_pb2.Timestamp
    ready_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    result_json: str
    error: str
    node: str
    cancel_requested: bool
    crontab_spec: str
    timezone: str
    schedule_id: str
    abandoned: int
    def __init__(self, uuid: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., args_json: _Optional[str] = ..., kwargs_json: _Optional[str] = ..., priority: _Optional[int] = ..., attempts: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., node: _Optional[str] = ..., cancel_requested: _Optional[bool] = ..., crontab_spec: _Optional[str] = ..., timezone: _Optional[str] = ..., schedule_id: _Optional[str] = ..., abandoned: _Optional[int] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("uuid", "kind", "states", "since", "until", "limit")
    UUID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    kind: str
    states: _containers.RepeatedScalarFieldContainer[State]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, uuid: _Optional[str] = ..., kind: _Optional[str] = ..., states: _Optional[_Iterable[_Union[State, str]]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class StateRecord(_message.Message):
    __slots__ = ("uuid", "kind", "state", "timestamp", "attempt", "node", "detail")
    UUID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    kind: str
    state: State
    timestamp: _timestamp_pb2.Timestamp
    attempt: int
    node: str
    detail: str
    def __init__(self, uuid: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("uuid", "kind", "level", "message", "timestamp", "attempt", "node")
    UUID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    kind: str
    level: LogLevel
    message: str
    timestamp: _timestamp_pb2.Timestamp
    attempt: int
    node: str
    def __init__(self, uuid: _Optional[str] = ..., kind: _Optional[str] = ..., level: _Optional[_Union[LogLevel, str]] = ..., message: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("kind", "description", "priority", "max_retries", "timeout", "crontab_spec", "timezone", "signature")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CRONTAB_SPEC_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    description: str
    priority: int
    max_retries: int
    timeout: float
    crontab_spec: str
    timezone: str
    signature: str
    def __init__(self, kind: _Optional[str] = ..., description: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[float] = ..., crontab_spec: _Optional[str] = ..., timezone: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "node_id", "store", "num_workers", "running", "registered_jobs", "core_version", "server_version")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_JOBS_FIELD_NUMBER: _ClassVar[int]
    CORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    status: str
    node_id: str
    store: str
    num_workers: int
    running: int
    registered_jobs: int
    core_version: str
    server_version: str
    def __init__(self, status: _Optional[str] = ..., node_id: _Optional[str] = ..., store: _Optional[str] = ..., num_workers: _Optional[int] = ..., running: _Optional[int] = ..., registered_jobs: _Optional[int] = ..., core_version: _Optional[str] = ..., server_version: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class ScheduleRequest(_message.Message):
    __slots__ = ("kind", "arguments_json", "schedule_at", "schedule_after", "crontab_spec", "timezone", "priority", "max_retries", "timeout")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_AFTER_FIELD_NUMBER: _ClassVar[int]
    CRONTAB_SPEC_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    arguments_json: str
    schedule_at: _timestamp_pb2.Timestamp
    schedule_after: float
    crontab_spec: str
    timezone: str
    priority: int
    max_retries: int
    timeout: float
    def __init__(self, kind: _Optional[str] = ..., arguments_json: _Optional[str] = ..., schedule_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schedule_after: _Optional[float] = ..., crontab_spec: _Optional[str] = ..., timezone: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[float] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: Query
    def __init__(self, query: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class GetInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: Query
    def __init__(self, query: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[StateRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[StateRecord, _Mapping]]] = ...) -> None: ...

class GetLogsRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: Query
    def __init__(self, query: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class GetLogsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("uuid", "timeout")
    UUID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    timeout: float
    def __init__(self, uuid: _Optional[str] = ..., timeout: _Optional[float] = ...) -> None: ...

class GetWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResizeWorkersRequest(_message.Message):
    __slots__ = ("num_workers",)
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    num_workers: int
    def __init__(self, num_workers: _Optional[int] = ...) -> None: ...

class Workers(_message.Message):
    __slots__ = ("num_workers", "running", "node_id")
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    num_workers: int
    running: int
    node_id: str
    def __init__(self, num_workers: _Optional[int] = ..., running: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class WatchInstancesRequest(_message.Message):
    __slots__ = ("kind", "uuids", "states")
    KIND_FIELD_NUMBER: _ClassVar[int]
    UUIDS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    uuids: _containers.RepeatedScalarFieldContainer[str]
    states: _containers.RepeatedScalarFieldContainer[State]
    def __init__(self, kind: _Optional[str] = ..., uuids: _Optional[_Iterable[str]] = ..., states: _Optional[_Iterable[_Union[State, str]]] = ...) -> None: ...

class InstanceEvent(_message.Message):
    __slots__ = ("uuid", "kind", "state", "timestamp", "attempt", "node", "instance")
    UUID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    kind: str
    state: State
    timestamp: _timestamp_pb2.Timestamp
    attempt: int
    node: str
    instance: Instance
    def __init__(self, uuid: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class CorruptRecord(_message.Message):
    __slots__ = ("key", "reason", "raw")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    key: str
    reason: str
    raw: str
    def __init__(self, key: _Optional[str] = ..., reason: _Optional[str] = ..., raw: _Optional[str] = ...) -> None: ...

class ListCorruptRequest(_message.Message):
    __slots__ = ("raw_limit",)
    RAW_LIMIT_FIELD_NUMBER: _ClassVar[int]
    raw_limit: int
    def __init__(self, raw_limit: _Optional[int] = ...) -> None: ...

class ListCorruptResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[CorruptRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[CorruptRecord, _Mapping]]] = ...) -> None: ...

class DropCorruptRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DropCorruptResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("cron", "timezone", "every", "at", "start", "end")
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    cron: str
    timezone: str
    every: float
    at: _timestamp_pb2.Timestamp
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, cron: _Optional[str] = ..., timezone: _Optional[str] = ..., every: _Optional[float] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScheduleInfo(_message.Message):
    __slots__ = ("id", "kind", "state", "trigger", "description", "args_json", "kwargs_json", "priority", "max_retries", "timeout", "misfire_grace_time", "coalesce", "max_runs", "jitter", "runs", "next_fire_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_GRACE_TIME_FIELD_NUMBER: _ClassVar[int]
    COALESCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIRE_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    state: str
    trigger: Trigger
    description: str
    args_json: str
    kwargs_json: str
    priority: int
    max_retries: int
    timeout: float
    misfire_grace_time: float
    coalesce: str
    max_runs: int
    jitter: float
    runs: int
    next_fire_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., description: _Optional[str] = ..., args_json: _Optional[str] = ..., kwargs_json: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[float] = ..., misfire_grace_time: _Optional[float] = ..., coalesce: _Optional[str] = ..., max_runs: _Optional[int] = ..., jitter: _Optional[float] = ..., runs: _Optional[int] = ..., next_fire_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddScheduleRequest(_message.Message):
    __slots__ = ("kind", "trigger", "id", "arguments_json", "priority", "max_retries", "timeout", "misfire_grace_time", "coalesce", "max_runs", "jitter", "paused")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_GRACE_TIME_FIELD_NUMBER: _ClassVar[int]
    COALESCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    trigger: Trigger
    id: str
    arguments_json: str
    priority: int
    max_retries: int
    timeout: float
    misfire_grace_time: float
    coalesce: str
    max_runs: int
    jitter: float
    paused: bool
    def __init__(self, kind: _Optional[str] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., id: _Optional[str] = ..., arguments_json: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[float] = ..., misfire_grace_time: _Optional[float] = ..., coalesce: _Optional[str] = ..., max_runs: _Optional[int] = ..., jitter: _Optional[float] = ..., paused: _Optional[bool] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("kind", "state")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    state: str
    def __init__(self, kind: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_run_at")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    next_run_at: _timestamp_pb2.Timestamp
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ..., next_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScheduleIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UpdateScheduleRequest(_message.Message):
    __slots__ = ("id", "trigger", "arguments_json", "priority", "max_retries", "timeout", "misfire_grace_time", "coalesce", "max_runs", "jitter")
    ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_GRACE_TIME_FIELD_NUMBER: _ClassVar[int]
    COALESCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    trigger: Trigger
    arguments_json: str
    priority: int
    max_retries: int
    timeout: float
    misfire_grace_time: float
    coalesce: str
    max_runs: int
    jitter: float
    def __init__(self, id: _Optional[str] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., arguments_json: _Optional[str] = ..., priority: _Optional[int] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[float] = ..., misfire_grace_time: _Optional[float] = ..., coalesce: _Optional[str] = ..., max_runs: _Optional[int] = ..., jitter: _Optional[float] = ...) -> None: ...

class RemoveScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
