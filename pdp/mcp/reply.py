"""What an MCP client gets back when pdp decides about its request.

A deny is an HTTP error carrying a JSON-RPC error response (``application/json``),
not a tool result with ``isError``:

- it works for every method (``initialize``, ``resources/read``, a batch), where a
  ``CallToolResult`` only fits ``tools/call``;
- the MCP SDK clients surface a JSON-RPC error body on HTTP >= 400 as the error of
  the pending call (Python: ``mcp.MCPError`` with ``.message`` and ``.data``), so the
  agent sees the reasons, while an ``isError`` result would tell the model that the
  tool ran and failed, and a 200 would read as success to every proxy and log in
  between;
- the call never reached the server, and a protocol error says exactly that.

``error.data`` holds ``decision: "deny"``, ``decision_id`` (to find the audit record)
and ``reasons`` (``[{policy, message}]``). Codes: ``-32700`` (body not JSON),
``-32600`` / ``-32602`` (not a valid JSON-RPC request / params), ``-32020``
(``Mcp-Method``/``Mcp-Name`` header mismatch, as MCP 2026-07-28 defines it), and
:data:`DENIED_CODE` for a decision by policy or method rule: application codes lie
outside JSON-RPC's reserved ``-32768..-32000``. HTTP status: 400 for input that breaks
a rule, 403 for a deny.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pdp.mcp.mapping import McpMapping, McpMessage
from pdp.model import JsonValue, Reason

DENIED_CODE = -31001  # pdp denied the request (policy or method rule)
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020
DECISION_ID_HEADER = "x-pdp-decision-id"
_PARSE_RULES = frozenset({"not_json", "encoding", "duplicate_key", "depth", "surrogate"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """pdp's answer about one :class:`McpMessage`."""

    decision_id: str
    allowed: bool
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class DeniedReply:
    status: int  # HTTP status
    body: bytes  # JSON-RPC error response(s), application/json
    decision_ids: tuple[str, ...]


def allowed(verdicts: Sequence[Verdict]) -> bool:
    """One deny denies the whole HTTP request (a batch is forwarded whole or not at all)."""
    return bool(verdicts) and all(v.allowed for v in verdicts)


def decision_id_header(verdicts: Sequence[Verdict]) -> str:
    """The ``x-pdp-decision-id`` value: the ids of every decision, comma-separated."""
    return ",".join(v.decision_id for v in verdicts if v.decision_id)


def _code(message: McpMessage) -> int:
    error = message.error
    if error is None:
        return DENIED_CODE
    if error.rule == "header_mismatch":
        return HEADER_MISMATCH
    if error.rule in _PARSE_RULES and (error.field == "body" or error.field.startswith("[")):
        return PARSE_ERROR
    if ".params" in f".{error.field}":
        return INVALID_PARAMS
    return INVALID_REQUEST


def _text(message: McpMessage, verdict: Verdict) -> str:
    what = message.method or "request"
    reasons = "; ".join(
        f"{r.policy}: {r.message}" if r.message else r.policy for r in verdict.reasons
    )
    return f"pdp denied {what}: {reasons} (decision_id {verdict.decision_id})"


def _error_response(
    message: McpMessage, verdict: Verdict, text: str | None = None
) -> dict[str, JsonValue]:
    data: dict[str, JsonValue] = {
        "decision": "deny",
        "decision_id": verdict.decision_id,
        "reasons": [r.to_json() for r in verdict.reasons],
    }
    return {
        "jsonrpc": "2.0",
        "id": message.jsonrpc_id,
        "error": {
            "code": _code(message) if not verdict.allowed else DENIED_CODE,
            "message": text or _text(message, verdict),
            "data": data,
        },
    }


def denied_reply(mapping: McpMapping, verdicts: Sequence[Verdict]) -> DeniedReply:
    """The answer to a denied request: one JSON-RPC error per request message (a batch
    answers as a batch), or a single error with ``id: null`` when nothing had an id."""
    pairs = list(zip(mapping.messages, verdicts, strict=True))
    invalid = any(m.error is not None for m in mapping.messages)
    first_deny = next((i for i, (_, v) in enumerate(pairs) if not v.allowed), 0)
    responses: list[dict[str, JsonValue]] = []
    for message, verdict in pairs:
        if not message.is_request:
            continue
        if verdict.allowed:
            text = (
                f"pdp denied this batch: message [{first_deny}] was denied"
                f" (decision_id {pairs[first_deny][1].decision_id}); nothing was sent"
            )
            responses.append(_error_response(message, verdict, text))
        else:
            responses.append(_error_response(message, verdict))
    if not responses:
        message, verdict = pairs[first_deny]
        responses.append(_error_response(message, verdict))
    body: JsonValue = responses if mapping.batch and len(responses) > 1 else responses[0]
    return DeniedReply(
        400 if invalid else 403,
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        tuple(v.decision_id for v in verdicts),
    )
