"""Turning audit lines (``pdp.audit/v1``) into recorded decisions that can be decided again.

Only ``kind: "decision"`` records are replayed. Refusals (calls refused before any
policy ran), ``policy_reload`` records, the chain's ``segment`` and ``checkpoint``
lines, and decisions the service made without consulting the policies
(``caller_not_bound``, ``internal_error``, ``audit_unavailable``, and the MCP door's
``invalid_mcp_request`` and ``mcp_method_rule``) are classified and
counted, never re-decided. Anything else
(not JSON, another format, a decision record missing a field) is :class:`Unreadable`.

The recorded request is taken as it was logged, including its ``time``; the service
always fills ``gateway`` with the authenticated caller's SPIFFE ID, and when a record
lacks it the caller's ID is put back so that policies on ``context.gateway`` see it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pdp.audit.record import (
    KIND_DECISION,
    KIND_POLICY_RELOAD,
    KIND_REFUSAL,
    METHOD_ALLOWED_TOOLS,
    RECORD_VERSION,
)
from pdp.model import (
    REASON_AUDIT_UNAVAILABLE,
    REASON_CALLER_NOT_BOUND,
    REASON_INTERNAL_ERROR,
    REASON_INVALID_MCP_REQUEST,
    REASON_MCP_METHOD_RULE,
    Decision,
    Effect,
    JsonValue,
    Reason,
    RequestError,
    parse_time,
)
from pdp.proof import REASON_CODES as PROOF_REASON_CODES

# Service-level denies: the policies never saw these requests, so a different policy
# set cannot change them. Token checks (pdp.proof) are among them.
SERVICE_REASONS = frozenset(
    {
        REASON_CALLER_NOT_BOUND,
        REASON_AUDIT_UNAVAILABLE,
        REASON_INTERNAL_ERROR,
        # MCP messages the gateway's method rules decided, or that could not be read.
        REASON_INVALID_MCP_REQUEST,
        REASON_MCP_METHOD_RULE,
    }
    | PROOF_REASON_CODES
)
CHAIN_KINDS = frozenset({"segment", "checkpoint"})


class LineKind(StrEnum):
    DECISION = "decision"
    REFUSAL = "refusal"
    SERVICE = "service"  # a decision record the policies did not make
    CHAIN = "chain"  # segment and checkpoint lines of the hash chain
    EVENT = "event"  # policy_reload records: no decision (counted with the chain lines)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line that is not a usable audit record; ``at`` is ``file:line`` or a stream seq."""

    at: str
    error: str


@dataclass(frozen=True, slots=True)
class Skipped:
    at: str
    kind: LineKind
    # SERVICE lines: the decision the service made without the policies (posture counts
    # these denies; replay never re-decides them).
    decision: RecordedDecision | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """One decision record: the request as logged and the decision that was made."""

    at: str
    decision_id: str
    time: datetime  # the recorded request time: the "now" of the re-decision
    request: Mapping[str, JsonValue]  # as logged (redacted arguments), gateway filled
    decision: Decision
    arguments_redacted: bool
    shadow: Decision | None = None

    @property
    def agent(self) -> str:
        return _text(self.request.get("agent"))

    @property
    def tool(self) -> str:
        """``server/tool`` as requested (possibly an invalid name: it is only a label)."""
        return f"{_text(self.request.get('server'))}/{_text(self.request.get('tool'))}"


ReadLine = RecordedDecision | Skipped | Unreadable


def _text(value: object) -> str:
    return value if isinstance(value, str) else "?"


class _BadRecord(ValueError):
    pass


def _reasons(value: object, where: str) -> tuple[Reason, ...]:
    if not isinstance(value, list):
        raise _BadRecord(f"{where} is not a list")
    out = []
    for item in value:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("policy"), str)
            and isinstance(item.get("message", ""), str)
        ):
            raise _BadRecord(f"{where} holds an entry that is not {{policy, message}}")
        out.append(Reason(item["policy"], item.get("message", "")))
    return tuple(out)


def decision_of(data: Mapping[str, Any], where: str = "") -> Decision:
    """A :class:`Decision` from its JSON form (``Decision.to_json``, as records hold it)."""
    effect = data.get("decision")
    if effect not in ("allow", "deny"):
        raise _BadRecord(f"{where}decision is not 'allow' or 'deny'")
    version = data.get("policy_version")
    if not isinstance(version, str):
        raise _BadRecord(f"{where}policy_version is missing")
    errors = data.get("errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise _BadRecord(f"{where}errors is not a list of strings")
    return Decision(
        Effect(effect), _reasons(data.get("reasons"), f"{where}reasons"), version, tuple(errors)
    )


def _recorded(at: str, data: dict[str, Any]) -> RecordedDecision:
    decision_id = data.get("decision_id")
    if not isinstance(decision_id, str) or not decision_id:
        raise _BadRecord("decision_id is missing")
    decision = decision_of(data)
    request = data.get("request")
    if not isinstance(request, dict):
        raise _BadRecord("request is missing")
    redacted = data.get("arguments_redacted", False)
    if not isinstance(redacted, bool):
        raise _BadRecord("arguments_redacted is not a boolean")
    try:
        if request.get("time") is not None:
            when = parse_time("request.time", request["time"])
        else:
            when = parse_time("time", data.get("time"))
    except RequestError as exc:
        raise _BadRecord(f"no usable time: {exc}") from None
    caller = data.get("caller")
    if not request.get("gateway") and isinstance(caller, dict):
        spiffe_id = caller.get("spiffe_id")
        if isinstance(spiffe_id, str) and spiffe_id:
            request = {**request, "gateway": spiffe_id}
    if isinstance(data.get("rejected"), dict):
        # The request broke a limit and its body was not kept whole (only bounded facts):
        # replay meets the refusal again (an unknown field makes it invalid_request).
        request = {**request, "rejected": data["rejected"]}
    shadow_data = data.get("shadow")
    shadow = decision_of(shadow_data, "shadow.") if isinstance(shadow_data, dict) else None
    return RecordedDecision(at, decision_id, when, request, decision, redacted, shadow)


def read_record(at: str, raw: bytes | str) -> ReadLine:
    """Classifies one audit line. Never raises."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return Unreadable(at, f"not JSON: {str(exc)[:120]}")
    if not isinstance(data, dict):
        return Unreadable(at, "not a JSON object")
    if data.get("v") != RECORD_VERSION:
        return Unreadable(at, f"not a {RECORD_VERSION} record (v = {data.get('v')!r:.40})")
    kind = data.get("kind")
    if kind == KIND_REFUSAL:
        return Skipped(at, LineKind.REFUSAL)
    if kind in CHAIN_KINDS:
        return Skipped(at, LineKind.CHAIN)
    if kind == KIND_POLICY_RELOAD:
        return Skipped(at, LineKind.EVENT)
    if kind != KIND_DECISION:
        return Unreadable(at, f"unknown record kind {kind!r:.40}")
    if data.get("method") == METHOD_ALLOWED_TOOLS:
        return Skipped(at, LineKind.EVENT)  # a tool listing, not a call to re-decide
    try:
        record = _recorded(at, data)
    except _BadRecord as exc:
        return Unreadable(at, f"decision record: {exc}")
    if any(reason.policy in SERVICE_REASONS for reason in record.decision.reasons):
        return Skipped(at, LineKind.SERVICE, record)
    return record
