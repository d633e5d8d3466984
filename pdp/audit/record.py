"""Audit records: one JSON object per decision or refused call, format ``pdp.audit/v1``.

The record is built once, redacted once, and the same bytes go to every sink. It
carries the request exactly as :meth:`pdp.model.Request.to_json` renders it (arguments
redacted), so replay feeds ``record["request"]`` back through :func:`pdp.model.parse_request`.
See ``RECORD.md`` beside this file for the field table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pdp.audit.ids import new_decision_id
from pdp.audit.redact import Redactor
from pdp.model import REASON_AUDIT_UNAVAILABLE, Caller, Decision, Request, deny, format_time

RECORD_VERSION = "pdp.audit/v1"

KIND_DECISION = "decision"
# The method of DecisionService/AllowedTools: its decision record lists every tool's answer.
METHOD_ALLOWED_TOOLS = "/pdp.v1.DecisionService/AllowedTools"
KIND_REFUSAL = "refusal"
KIND_POLICY_RELOAD = "policy_reload"
# Lines that are records (not segment or checkpoint chain lines): listeners get them.
RECORD_KINDS = frozenset({KIND_DECISION, KIND_REFUSAL, KIND_POLICY_RELOAD})

# REASON_AUDIT_UNAVAILABLE (from pdp.model, re-exported here) is the reason a decision
# carries when its audit record could not be made durable.

# Suggested refusal codes (gRPC status names in snake case); any short string is accepted.
REFUSAL_UNAUTHENTICATED = "unauthenticated"
REFUSAL_PERMISSION_DENIED = "permission_denied"
REFUSAL_INVALID_ARGUMENT = "invalid_argument"
REFUSAL_RESOURCE_EXHAUSTED = "resource_exhausted"
REFUSAL_UNAVAILABLE = "unavailable"

__all__ = [
    "KIND_DECISION",
    "KIND_POLICY_RELOAD",
    "KIND_REFUSAL",
    "REASON_AUDIT_UNAVAILABLE",
    "RECORD_VERSION",
    "audit_unavailable",
    "build_decision_record",
    "build_policy_reload_record",
    "build_refusal_record",
    "new_decision_id",
]


def _caller_json(caller: Caller | None) -> dict[str, str] | None:
    if caller is None:
        return None
    return {
        "spiffe_id": caller.spiffe_id,
        "serial": caller.serial,
        "trust_domain": caller.trust_domain,
    }


def _request_json(request: Request, redactor: Redactor) -> tuple[dict[str, Any], list[str]]:
    out = request.to_json()
    arguments, masked = redactor.arguments(request.server, request.tool, request.arguments)
    out["arguments"] = arguments
    paths = [f"request.{p}" for p in masked]
    if "intent" in out:
        out["intent"], intent_masked = redactor.value(out["intent"], "request.intent")
        paths.extend(intent_masked)
    return out, paths


def _token_digest(token: Any) -> dict[str, str]:
    text = token if isinstance(token, str) else json.dumps(token, default=str)
    return {"sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()}


def _without_tokens(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its tokens (``intent.token``, ``agent_svid``) replaced by their
    SHA-256: a token is a bearer credential and is never written to the log."""
    out = dict(data)
    intent = out.get("intent")
    if isinstance(intent, Mapping) and "token" in intent:
        out["intent"] = {**intent, "token": _token_digest(intent["token"])}
    if "agent_svid" in out:
        out["agent_svid"] = _token_digest(out["agent_svid"])
    return out


def _raw_request_json(
    data: Mapping[str, Any], redactor: Redactor
) -> tuple[dict[str, Any], list[str]]:
    """A request that failed to parse, as received (bounded by the service), redacted,
    its tokens replaced by their hashes."""
    data = _without_tokens(data)
    rest = {k: v for k, v in data.items() if k != "arguments"}
    out, masked = redactor.value(rest, "request")
    paths = list(masked)
    arguments = data.get("arguments")
    if isinstance(arguments, Mapping):
        server, tool = str(data.get("server", "")), str(data.get("tool", ""))
        out["arguments"], argument_paths = redactor.arguments(server, tool, arguments)
        paths.extend(f"request.{p}" for p in argument_paths)
    elif arguments is not None:
        out["arguments"], argument_paths = redactor.value(arguments, "request.arguments")
        paths.extend(argument_paths)
    return out, paths


def _decision_json(
    decision: Decision, redactor: Redactor, prefix: str = ""
) -> tuple[dict[str, Any], list[str]]:
    # Cedar error texts and policy reasons can quote argument values: scrub them too.
    out = decision.to_json()
    masked: list[str] = []
    for index, reason in enumerate(out["reasons"]):
        text = redactor.text(reason["message"])
        if text != reason["message"]:
            reason["message"] = text
            masked.append(f"{prefix}reasons[{index}].message")
    for index, error in enumerate(out["errors"]):
        text = redactor.text(error)
        if text != error:
            out["errors"][index] = text
            masked.append(f"{prefix}errors[{index}]")
    return out, masked


def build_decision_record(
    decision_id: str,
    request: Request | Mapping[str, Any],
    decision: Decision,
    caller: Caller,
    latency_us: int,
    instance_id: str,
    redactor: Redactor,
    shadow: Decision | None = None,
    *,
    time: datetime | None = None,
    method: str = "",
    caller_time: str | None = None,
    rejected: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    mcp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one decided request. ``time`` defaults to now (UTC).

    ``caller_time`` is the ``time`` the caller sent to the service, which decides at
    its own clock instead: kept apart from ``request.time`` (the time decided at), as
    evidence of what was asked.

    ``request`` is the parsed :class:`Request`, or the data as received when it could
    not be parsed (the decision is then an ``invalid_request`` deny, and replay meets
    the same parse error). ``shadow`` is the decision of a policy set evaluated
    alongside without being enforced (dry run), so a rollout can be judged from the log.
    ``rejected`` (a ``pdp.service.sink.RejectedBody``, matched by its attributes) gives
    the bounded facts about a request that broke a rule, kept instead of its body.
    ``mcp`` says what an MCP front door read (JSON-RPC method and id, HTTP method).
    """
    if isinstance(request, Request):
        request_json, masked = _request_json(request, redactor)
    else:
        request_json, masked = _raw_request_json(request, redactor)
    decision_json, decision_masked = _decision_json(decision, redactor)
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "kind": KIND_DECISION,
        "decision_id": decision_id,
        "time": format_time(time or datetime.now(UTC)),
        "instance_id": instance_id,
        "decision": decision_json["decision"],
        "reasons": decision_json["reasons"],
        "errors": decision_json["errors"],
        "policy_version": decision_json["policy_version"],
        "latency_us": int(latency_us),
        "caller": _caller_json(caller),
        "request": request_json,
    }
    if method:
        record["method"] = method
    if caller_time is not None:
        record["caller_time"] = caller_time
    if tools is not None:
        # AllowedTools: each tool's answer; reasons can quote policy text, not arguments.
        record["tools"] = [dict(tool) for tool in tools]
    if mcp:
        record["mcp"], mcp_masked = redactor.value(dict(mcp), "mcp")
        masked.extend(mcp_masked)
    masked.extend(decision_masked)
    if shadow is not None:
        record["shadow"], shadow_masked = _decision_json(shadow, redactor, "shadow.")
        masked.extend(shadow_masked)
    if rejected is not None:
        record["rejected"] = _rejected_json(rejected, request_json, redactor, masked)
    return _with_masks(record, masked)


def _rejected_json(
    rejected: Any, request_json: Mapping[str, Any], redactor: Redactor, masked: list[str]
) -> dict[str, Any]:
    excerpt, excerpt_masked = redactor.excerpt(
        str(request_json.get("server", "")),
        str(request_json.get("tool", "")),
        rejected.field,
        rejected.excerpt,
    )
    if excerpt_masked:
        masked.append("rejected.excerpt")
    return {
        "bytes": int(rejected.size),
        "sha256": rejected.sha256,
        "field": rejected.field,
        "rule": rejected.rule,
        "excerpt": excerpt,
        "detail_kept": bool(rejected.kept),
    }


def _with_masks(record: dict[str, Any], masked: list[str]) -> dict[str, Any]:
    """Says in the record which paths redaction masked (and whether arguments were)."""
    record["arguments_redacted"] = any(p.startswith("request.arguments") for p in masked)
    if masked:
        record["redacted"] = masked
    return record


def build_refusal_record(
    decision_id: str,
    code: str,
    message: str,
    *,
    caller: Caller | None,
    instance_id: str,
    redactor: Redactor,
    request: Request | None = None,
    method: str = "",
    peer: str = "",
    time: datetime | None = None,
) -> dict[str, Any]:
    """The record of a call refused before (or instead of) evaluation.

    ``code`` names why (``unauthenticated``, ``permission_denied``, ``invalid_argument``,
    ``resource_exhausted``, ``unavailable``…); ``caller`` is ``None`` when the peer was
    not authenticated; ``request`` is given when it had already been parsed.
    """
    safe_message = redactor.text(message)
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "kind": KIND_REFUSAL,
        "decision_id": decision_id,
        "time": format_time(time or datetime.now(UTC)),
        "instance_id": instance_id,
        "refusal": {"code": code, "message": safe_message},
        "caller": _caller_json(caller),
    }
    masked: list[str] = []
    if safe_message != message:
        masked.append("refusal.message")
    if method:
        record["method"] = method
    if peer:
        record["peer"] = peer
    if request is not None:
        record["request"], request_masked = _request_json(request, redactor)
        masked.extend(request_masked)
    return _with_masks(record, masked)


def build_policy_reload_record(
    *,
    directory: str,
    role: str,
    ok: bool,
    version: str,
    candidate_version: str,
    detail: str,
    duration_ms: float,
    instance_id: str,
    redactor: Redactor,
    time: datetime | None = None,
) -> dict[str, Any]:
    """The record of one policy reload attempt, accepted or rejected.

    ``role`` is ``active`` or ``shadow``; ``version`` is the version in force after the
    attempt (the old one when it was rejected), ``candidate_version`` the version of the
    set that was tried ("" when it did not even load); ``detail`` says why it was
    rejected (``file:line: message`` diagnostics, failing tests) or ``unchanged``.
    """
    text = redactor.text(detail)
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "kind": KIND_POLICY_RELOAD,
        "time": format_time(time or datetime.now(UTC)),
        "instance_id": instance_id,
        "role": role,
        "directory": directory,
        "ok": bool(ok),
        "version": version,
        "candidate_version": candidate_version,
        "detail": text,
        "duration_ms": round(float(duration_ms), 3),
    }
    if text != detail:
        record["redacted"] = ["detail"]
    return record


def audit_unavailable(decision: Decision, detail: str = "") -> Decision:
    """The deny that replaces ``decision`` when its audit record is not durable."""
    message = "the audit log is unavailable; decisions are denied until it recovers"
    if detail:
        message = f"{message} ({detail})"
    return deny(decision.policy_version, REASON_AUDIT_UNAVAILABLE, message)
