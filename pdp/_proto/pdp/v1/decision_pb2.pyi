# mypy: ignore-errors
import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_DENY: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]

class ToolAnswer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_ANSWER_DENY: _ClassVar[ToolAnswer]
    TOOL_ANSWER_ALLOW: _ClassVar[ToolAnswer]
    TOOL_ANSWER_DEPENDS_ON_ARGUMENTS: _ClassVar[ToolAnswer]
DECISION_DENY: Decision
DECISION_ALLOW: Decision
TOOL_ANSWER_DENY: ToolAnswer
TOOL_ANSWER_ALLOW: ToolAnswer
TOOL_ANSWER_DEPENDS_ON_ARGUMENTS: ToolAnswer

class Intent(_message.Message):
    __slots__ = ("purpose", "tools", "expires_at", "token")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    token: str
    def __init__(self, purpose: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("agent", "server", "tool", "arguments", "intent", "session", "gateway", "time", "agent_svid", "tool_digest")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_SVID_FIELD_NUMBER: _ClassVar[int]
    TOOL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    agent: str
    server: str
    tool: str
    arguments: _struct_pb2.Struct
    intent: Intent
    session: str
    gateway: str
    time: _timestamp_pb2.Timestamp
    agent_svid: str
    tool_digest: str
    def __init__(self, agent: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., intent: _Optional[_Union[Intent, _Mapping]] = ..., session: _Optional[str] = ..., gateway: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_svid: _Optional[str] = ..., tool_digest: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("policy", "message")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    message: str
    def __init__(self, policy: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("decision", "reasons", "decision_id", "policy_version", "errors")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    decision_id: str
    policy_version: str
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., decision_id: _Optional[str] = ..., policy_version: _Optional[str] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CheckRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CheckRequest, _Mapping]]] = ...) -> None: ...

class CheckBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[CheckResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[CheckResponse, _Mapping]]] = ...) -> None: ...

class AllowedToolsRequest(_message.Message):
    __slots__ = ("agent", "server", "intent", "session", "agent_svid")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_SVID_FIELD_NUMBER: _ClassVar[int]
    agent: str
    server: str
    intent: Intent
    session: str
    agent_svid: str
    def __init__(self, agent: _Optional[str] = ..., server: _Optional[str] = ..., intent: _Optional[_Union[Intent, _Mapping]] = ..., session: _Optional[str] = ..., agent_svid: _Optional[str] = ...) -> None: ...

class ToolVerdict(_message.Message):
    __slots__ = ("tool", "answer", "reasons", "errors")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    tool: str
    answer: ToolAnswer
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tool: _Optional[str] = ..., answer: _Optional[_Union[ToolAnswer, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class AllowedToolsResponse(_message.Message):
    __slots__ = ("tools", "policy_version", "decision_id", "reasons")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[ToolVerdict]
    policy_version: str
    decision_id: str
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    def __init__(self, tools: _Optional[_Iterable[_Union[ToolVerdict, _Mapping]]] = ..., policy_version: _Optional[str] = ..., decision_id: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ...) -> None: ...
