# mypy: ignore-errors
import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("agent", "server", "tool", "decision", "caller", "include_refusals", "include_reloads")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REFUSALS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RELOADS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    server: str
    tool: str
    decision: str
    caller: str
    include_refusals: bool
    include_reloads: bool
    def __init__(self, agent: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., decision: _Optional[str] = ..., caller: _Optional[str] = ..., include_refusals: _Optional[bool] = ..., include_reloads: _Optional[bool] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("record_json", "kind", "seq", "decision_id", "decision", "agent", "server", "tool", "caller", "policy_version")
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    record_json: str
    kind: str
    seq: int
    decision_id: str
    decision: str
    agent: str
    server: str
    tool: str
    caller: str
    policy_version: str
    def __init__(self, record_json: _Optional[str] = ..., kind: _Optional[str] = ..., seq: _Optional[int] = ..., decision_id: _Optional[str] = ..., decision: _Optional[str] = ..., agent: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., caller: _Optional[str] = ..., policy_version: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("serving", "checks", "policy_version", "policies", "shadow_policy_version", "last_reload", "last_rejected_reload", "watchers", "version")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_FIELD_NUMBER: _ClassVar[int]
    LAST_REJECTED_RELOAD_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    checks: _containers.RepeatedCompositeFieldContainer[HealthCheck]
    policy_version: str
    policies: int
    shadow_policy_version: str
    last_reload: ReloadAttempt
    last_rejected_reload: ReloadAttempt
    watchers: int
    version: str
    def __init__(self, serving: _Optional[bool] = ..., checks: _Optional[_Iterable[_Union[HealthCheck, _Mapping]]] = ..., policy_version: _Optional[str] = ..., policies: _Optional[int] = ..., shadow_policy_version: _Optional[str] = ..., last_reload: _Optional[_Union[ReloadAttempt, _Mapping]] = ..., last_rejected_reload: _Optional[_Union[ReloadAttempt, _Mapping]] = ..., watchers: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("name", "ok", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class ReloadAttempt(_message.Message):
    __slots__ = ("time", "role", "directory", "ok", "version", "candidate_version", "detail", "duration_ms")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    role: str
    directory: str
    ok: bool
    version: str
    candidate_version: str
    detail: str
    duration_ms: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., role: _Optional[str] = ..., directory: _Optional[str] = ..., ok: _Optional[bool] = ..., version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., detail: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...
