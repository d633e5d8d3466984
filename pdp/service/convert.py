"""Between the wire (pdp.v1 messages) and the model (request JSON data, Decision).

A ``CheckRequest`` becomes the same JSON-shaped dict that ``pdp check`` reads, and
:func:`pdp.model.parse_request` validates it: one parser for every entry point. This
module only decodes transport types (Struct values, Timestamps); every rule about
what a valid request is lives in the model.

Decoding is bounded by the same limits, so that an invalid request costs about what a
valid one does: before any Struct is converted, its wire size is compared with what the
largest valid ``arguments`` can take, and the conversion keeps a running lower bound of
the JSON size the model will measure, checks each collection's length and each
string's length before copying it, and stops at the first limit it breaks
(:class:`OversizeRequest`, with the first bytes of the offending value for the record).
A 3 MB ``arguments`` of 150,000 keys is refused after reading about 64 KiB of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.identity.spiffe_id import MAX_SPIFFE_ID_BYTES
from pdp.model import (
    MAX_TOKEN_FIELD_BYTES,
    Decision,
    JsonValue,
    Limits,
    Reason,
    RequestError,
    ToolAnswer,
    ToolListing,
)

# A Struct's wire size is at most this many times the compact JSON size of the same
# value (the worst case is a list of small numbers: 11 bytes on the wire for "0,"),
# so a wire size above it cannot be within ``max_arguments_bytes``.
WIRE_TO_JSON_FACTOR = 6
# How much of an offending value a record keeps.
EXCERPT_CHARS = 64


class OversizeRequest(RequestError):
    """A request over a size, depth or count limit, found while decoding it (before it
    was converted whole). ``excerpt`` holds the first characters of the offending
    value, for the audit record."""

    def __init__(self, field: str, rule: str, detail: str, excerpt: str = "") -> None:
        super().__init__(field, rule, detail)
        self.excerpt = excerpt[:EXCERPT_CHARS]


def _timestamp(field_name: str, value: timestamp_pb2.Timestamp) -> str:
    try:
        return value.ToJsonString()
    except (ValueError, OverflowError) as exc:
        raise RequestError(field_name, "range", f"timestamp out of range: {exc}") from None


def _bounded_string(field_name: str, value: str, max_bytes: int) -> str:
    # A character is at least one UTF-8 byte: longer in characters is too long in bytes
    # (the model measures bytes exactly for the others).
    if len(value) > max_bytes:
        raise OversizeRequest(field_name, "too_long", f"is longer than {max_bytes} bytes", value)
    return value


def struct_excerpt(keys: Any) -> str:
    """The first keys of a Struct, for the record of a request that broke a limit."""
    out: list[str] = []
    size = 0
    for key in keys:
        out.append(str(key)[:EXCERPT_CHARS])
        size += len(out[-1]) + 2
        if size >= EXCERPT_CHARS:
            break
    return "{" + ", ".join(out)[:EXCERPT_CHARS]


class _ArgumentsReader:
    """Converts one ``arguments`` Struct within the limits, or raises at the first one
    it breaks. ``left`` is what remains of ``max_arguments_bytes`` after a lower bound
    of the compact JSON encoding of everything converted so far."""

    __slots__ = ("left", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.left = limits.max_arguments_bytes

    def _spend(self, size: int, path: str, excerpt: str) -> None:
        self.left -= size
        if self.left < 0:
            raise OversizeRequest(
                "arguments",
                "too_large",
                f"encoded size exceeds {self.limits.max_arguments_bytes} bytes"
                f" (stopped reading at {path})",
                excerpt,
            )

    def value(self, value: struct_pb2.Value, path: str, depth: int) -> JsonValue:
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            text = value.string_value
            limit = self.limits.max_string_bytes
            if len(text) > limit:
                raise OversizeRequest(
                    path, "too_long", f"string is longer than {limit} bytes", text
                )
            self._spend(len(text) + 2, path, text)
            return text
        if kind == "number_value":
            number = value.number_value
            if not math.isfinite(number):
                # As the model words it for any non-integral number; a NaN must never
                # reach a record (JSON cannot hold it).
                raise RequestError(
                    path,
                    "type",
                    "non-integer numbers are not supported (Cedar has no floats); send a string",
                )
            self._spend(1, path, "")
            # A double; pdp.model turns integral ones into ints and rejects the others.
            return number
        if kind == "bool_value":
            self._spend(4, path, "")
            return value.bool_value
        if kind == "struct_value":
            return self.struct(value.struct_value, path, depth + 1)
        if kind == "list_value":
            return self.list(value.list_value, path, depth + 1)
        if kind == "null_value":
            self._spend(4, path, "")
            return None  # the model rejects it with a reason the caller can act on
        raise RequestError(path, "type", "a Struct value with no kind set")

    def _collection(self, count: int, path: str, depth: int, excerpt: Any) -> None:
        limits = self.limits
        if depth >= limits.max_depth:
            raise OversizeRequest(path, "depth", f"nesting is deeper than {limits.max_depth}")
        if count > limits.max_collection_items:
            raise OversizeRequest(
                path,
                "too_many",
                f"has more than {limits.max_collection_items} entries",
                excerpt() if callable(excerpt) else "",
            )
        self._spend(2 + max(count - 1, 0), path, "")

    def struct(self, message: struct_pb2.Struct, path: str, depth: int) -> dict[str, JsonValue]:
        fields = message.fields
        self._collection(len(fields), path, depth, lambda: struct_excerpt(fields))
        max_key = self.limits.max_name_bytes
        out: dict[str, JsonValue] = {}
        for key, item in fields.items():
            if len(key) > max_key:
                raise OversizeRequest(
                    f"{path}.{key[:32]}…", "too_long", f"key is longer than {max_key} bytes", key
                )
            self._spend(len(key) + 3, path, key)
            out[key] = self.value(item, f"{path}.{key}", depth)
        return out

    def list(self, message: struct_pb2.ListValue, path: str, depth: int) -> list[JsonValue]:
        values = message.values
        self._collection(len(values), path, depth, None)
        return [self.value(item, f"{path}[{index}]", depth) for index, item in enumerate(values)]


def arguments_data(message: struct_pb2.Struct, limits: Limits) -> dict[str, JsonValue]:
    """``arguments`` as JSON data, within ``limits`` (see the module docstring)."""
    wire = message.ByteSize()
    if wire > WIRE_TO_JSON_FACTOR * limits.max_arguments_bytes + 64:
        raise OversizeRequest(
            "arguments",
            "too_large",
            f"{wire} bytes on the wire cannot be within the encoded size limit of"
            f" {limits.max_arguments_bytes} bytes",
            struct_excerpt(message.fields),
        )
    return _ArgumentsReader(limits).struct(message, "arguments", 0)


def request_data(
    message: pb.CheckRequest,
    limits: Limits,
    into: dict[str, JsonValue] | None = None,
    *,
    gateway: str | None = None,
) -> dict[str, JsonValue]:
    """The ``pdp check`` JSON form of ``message``; raises RequestError for undecodable
    transport values and :class:`OversizeRequest` for values over the limits. Empty
    strings are left out so the model reports missing fields. ``gateway``, when given,
    replaces the message's (the service sets the authenticated caller).

    ``into`` receives the fields as they are decoded, small ones first, so that after a
    failure it holds what was read (each field within its limit) for the record."""
    data: dict[str, JsonValue] = {} if into is None else into
    if gateway is not None:
        data["gateway"] = gateway
    elif message.gateway:
        data["gateway"] = _bounded_string("gateway", message.gateway, MAX_SPIFFE_ID_BYTES)
    if message.agent:
        data["agent"] = _bounded_string("agent", message.agent, MAX_SPIFFE_ID_BYTES)
    for name in ("server", "tool", "session"):
        text: str = getattr(message, name)
        if text:
            data[name] = _bounded_string(name, text, limits.max_name_bytes)
    if message.HasField("time"):
        data["time"] = _timestamp("time", message.time)
    if message.agent_svid:
        data["agent_svid"] = _bounded_string(
            "agent_svid", message.agent_svid, MAX_TOKEN_FIELD_BYTES
        )
    if message.tool_digest:
        data["tool_digest"] = _bounded_string("tool_digest", message.tool_digest, 128)
    if message.HasField("intent"):
        intent = message.intent
        if len(intent.tools) > limits.max_intent_tools:
            raise OversizeRequest(
                "intent.tools",
                "too_many",
                f"has more than {limits.max_intent_tools} entries",
                ", ".join(intent.tools[:4]),
            )
        max_tool = 2 * limits.max_name_bytes + 1
        intent_data: dict[str, JsonValue] = {}
        if intent.token:
            intent_data["token"] = _bounded_string(
                "intent.token", intent.token, MAX_TOKEN_FIELD_BYTES
            )
        # With a token, these are sent only if set, so that the model can refuse the mix.
        if not intent.token or intent.purpose:
            intent_data["purpose"] = _bounded_string(
                "intent.purpose", intent.purpose, limits.max_name_bytes
            )
        if not intent.token or intent.tools:
            intent_data["tools"] = [
                _bounded_string(f"intent.tools[{index}]", tool, max_tool)
                for index, tool in enumerate(intent.tools)
            ]
        if intent.HasField("expires_at"):
            intent_data["expires_at"] = _timestamp("intent.expires_at", intent.expires_at)
        data["intent"] = intent_data
    if message.HasField("arguments"):
        data["arguments"] = arguments_data(message.arguments, limits)
    return data


def check_response(decision: Decision, decision_id: str) -> pb.CheckResponse:
    return pb.CheckResponse(
        decision=pb.DECISION_ALLOW if decision.allowed else pb.DECISION_DENY,
        reasons=[pb.Reason(policy=r.policy, message=r.message) for r in decision.reasons],
        decision_id=decision_id,
        policy_version=decision.policy_version,
        errors=list(decision.errors),
    )


def listing_data(message: pb.AllowedToolsRequest, limits: Limits) -> dict[str, JsonValue]:
    """The request JSON of an AllowedTools call (agent, server, intent, session), in
    the shape of ``pdp tools``' input; the same decoding as :func:`request_data`."""
    check = pb.CheckRequest(
        agent=message.agent,
        server=message.server,
        session=message.session,
        agent_svid=message.agent_svid,
    )
    if message.HasField("intent"):
        check.intent.CopyFrom(message.intent)
    return request_data(check, limits)


_TOOL_ANSWERS = {
    ToolAnswer.ALLOW: pb.TOOL_ANSWER_ALLOW,
    ToolAnswer.DENY: pb.TOOL_ANSWER_DENY,
    ToolAnswer.DEPENDS_ON_ARGUMENTS: pb.TOOL_ANSWER_DEPENDS_ON_ARGUMENTS,
}


def allowed_tools_response(
    listing: ToolListing | None,
    decision_id: str,
    policy_version: str,
    refused: Sequence[Reason] = (),
) -> pb.AllowedToolsResponse:
    """The answer: every tool's verdict, or no tool and why (``refused``)."""
    verdicts = listing.verdicts if listing is not None and not refused else ()
    return pb.AllowedToolsResponse(
        tools=[
            pb.ToolVerdict(
                tool=verdict.tool,
                answer=_TOOL_ANSWERS[verdict.answer],
                reasons=[pb.Reason(policy=r.policy, message=r.message) for r in verdict.reasons],
                errors=list(verdict.errors),
            )
            for verdict in verdicts
        ],
        policy_version=policy_version,
        decision_id=decision_id,
        reasons=[pb.Reason(policy=r.policy, message=r.message) for r in refused],
    )
