"""Between the wire (pdp.v1 messages) and the model (request JSON data, Decision).

A ``CheckRequest`` becomes the same JSON-shaped dict that ``pdp check`` reads, and
:func:`pdp.model.parse_request` validates it: one parser for every entry point. This
module only decodes transport types (Struct values, Timestamps); every rule about
what a valid request is lives in the model.
"""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.model import Decision, JsonValue, Limits, RequestError

# Struct nesting is bounded by protobuf's recursion limit when decoding (100), but the
# model allows far less; stop converting there instead of building a deep copy first.
_DEPTH_SLACK = 1


def _timestamp(field_name: str, value: timestamp_pb2.Timestamp) -> str:
    try:
        return value.ToJsonString()
    except (ValueError, OverflowError) as exc:
        raise RequestError(field_name, "range", f"timestamp out of range: {exc}") from None


def _value(value: struct_pb2.Value, path: str, depth: int, max_depth: int) -> JsonValue:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        # A double; pdp.model turns integral ones into ints and rejects the others.
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value, path, depth + 1, max_depth)
    if kind == "list_value":
        if depth + 1 > max_depth:
            raise RequestError(path, "depth", f"nesting is deeper than {max_depth - _DEPTH_SLACK}")
        return [
            _value(item, f"{path}[{index}]", depth + 1, max_depth)
            for index, item in enumerate(value.list_value.values)
        ]
    if kind == "null_value":
        return None  # the model rejects it with a reason the caller can act on
    raise RequestError(path, "type", "a Struct value with no kind set")


def _struct(
    message: struct_pb2.Struct, path: str, depth: int, max_depth: int
) -> dict[str, JsonValue]:
    if depth > max_depth:
        raise RequestError(path, "depth", f"nesting is deeper than {max_depth - _DEPTH_SLACK}")
    return {
        key: _value(item, f"{path}.{key}", depth, max_depth) for key, item in message.fields.items()
    }


def request_data(message: pb.CheckRequest, limits: Limits) -> dict[str, JsonValue]:
    """The ``pdp check`` JSON form of ``message``; raises RequestError for undecodable
    transport values. Empty strings are left out so the model reports missing fields."""
    data: dict[str, JsonValue] = {}
    if message.agent:
        data["agent"] = message.agent
    if message.server:
        data["server"] = message.server
    if message.tool:
        data["tool"] = message.tool
    if message.HasField("arguments"):
        data["arguments"] = _struct(
            message.arguments, "arguments", 0, limits.max_depth + _DEPTH_SLACK
        )
    if message.HasField("intent"):
        intent = message.intent
        intent_data: dict[str, JsonValue] = {}
        if intent.token:
            intent_data["token"] = intent.token
        # With a token, these are sent only if set, so that the model can refuse the mix.
        if not intent.token or intent.purpose:
            intent_data["purpose"] = intent.purpose
        if not intent.token or intent.tools:
            intent_data["tools"] = list(intent.tools)
        if intent.HasField("expires_at"):
            intent_data["expires_at"] = _timestamp("intent.expires_at", intent.expires_at)
        data["intent"] = intent_data
    if message.session:
        data["session"] = message.session
    if message.gateway:
        data["gateway"] = message.gateway
    if message.HasField("time"):
        data["time"] = _timestamp("time", message.time)
    if message.agent_svid:
        data["agent_svid"] = message.agent_svid
    return data


def check_response(decision: Decision, decision_id: str) -> pb.CheckResponse:
    return pb.CheckResponse(
        decision=pb.DECISION_ALLOW if decision.allowed else pb.DECISION_DENY,
        reasons=[pb.Reason(policy=r.policy, message=r.message) for r in decision.reasons],
        decision_id=decision_id,
        policy_version=decision.policy_version,
        errors=list(decision.errors),
    )
