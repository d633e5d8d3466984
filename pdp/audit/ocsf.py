"""Audit records as OCSF events, for a SIEM (``pdp audit export --format ocsf``).

A decision or refused call becomes one OCSF 1.8.0 **API Activity** event (class 6003,
category 6 Application Activity) with the ``security_control`` profile: the tool call
is the API operation, the agent the actor, the gateway that asked the source endpoint,
and the outcome ``action_id`` / ``disposition_id`` / ``policy``. "Authorize Session"
(3003) describes privileges granted to a session at login, not one decision per call,
so it is not used. The field-by-field mapping is the table in README.md ("SIEM
export"), which a test checks every exported event against.

The record's ``decision_id`` is ``metadata.uid`` (and ``api.request.uid``), and its
chain members ``seq``, ``prev_hash`` and ``hash`` are kept under ``unmapped.pdp``, so an
exported event can be traced back to the line of the verified log it came from.
``policy_reload``, ``segment`` and ``checkpoint`` lines have no OCSF counterpart here
and are not exported (``--format jsonl`` passes every line through unchanged).

Pure: a dict in, a dict (or ``None``) out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pdp import __version__
from pdp.audit.record import KIND_DECISION, KIND_REFUSAL, RECORD_VERSION

OCSF_VERSION = "1.8.0"
API_ACTIVITY = 6003
APPLICATION_ACTIVITY = 6
ACTIVITY_OTHER = 99  # API Activity knows Create/Read/Update/Delete; authorizing is none
SEVERITY_INFORMATIONAL, SEVERITY_LOW = 1, 2
ACTION_ALLOWED, ACTION_DENIED = 1, 2
DISPOSITION_ALLOWED, DISPOSITION_BLOCKED = 1, 2
STATUS_SUCCESS, STATUS_FAILURE = 1, 2
PRODUCT = {"name": "pdp", "vendor_name": "pdp", "version": __version__}


class NotExportable(ValueError):
    """The line is not a decision or refusal record of ``pdp.audit/v1``."""


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _epoch_ms(value: object) -> int:
    try:
        when = datetime.fromisoformat(_text(value))
    except ValueError:
        raise NotExportable(f"time {value!r:.40} is not RFC 3339") from None
    if when.tzinfo is None:
        raise NotExportable(f"time {value!r:.40} has no time zone")
    return int(when.timestamp() * 1000)


def _peer_ip(peer: str) -> str | None:
    """``ipv4:10.0.0.7:53412`` / ``ipv6:[::1]:53412`` (gRPC's peer string) -> the IP."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


def to_ocsf(record: Mapping[str, Any]) -> dict[str, Any]:
    """The OCSF event for one decision or refusal record; raises :class:`NotExportable`."""
    if record.get("v") != RECORD_VERSION:
        raise NotExportable(f"not a {RECORD_VERSION} record")
    kind = record.get("kind")
    if kind not in (KIND_DECISION, KIND_REFUSAL):
        raise NotExportable(f"kind {kind!r:.40} has no OCSF event")
    decision_id = _text(record.get("decision_id"))
    if not decision_id:
        raise NotExportable("decision_id is missing")
    request = record.get("request") if isinstance(record.get("request"), dict) else {}
    assert isinstance(request, dict)
    caller = record.get("caller") if isinstance(record.get("caller"), dict) else None
    gateway = _text(caller.get("spiffe_id")) if caller else ""
    agent = _text(request.get("agent"))
    server, tool = _text(request.get("server")), _text(request.get("tool"))
    method = _text(record.get("method"))
    chain = {k: record[k] for k in ("seq", "prev_hash", "hash") if k in record}
    pdp: dict[str, Any] = {
        "decision_id": decision_id,
        "kind": kind,
        "instance_id": _text(record.get("instance_id")),
        "method": method,
        **chain,
    }
    if kind == KIND_DECISION:
        allowed = record.get("decision") == "allow"
        reasons = [r for r in record.get("reasons") or [] if isinstance(r, dict)]
        first = reasons[0] if reasons else {}
        code = _text(first.get("policy"), "none")
        detail = _text(first.get("message"))
        version = _text(record.get("policy_version"))
        policy = {"uid": code, "name": code, "desc": detail, "version": version}
        authorizations = [
            {"decision": "allow" if allowed else "deny", "policy": {"uid": _text(r.get("policy"))}}
            for r in reasons
        ] or [{"decision": "allow" if allowed else "deny"}]
        message = f"{'allow' if allowed else 'deny'} {agent} {server}/{tool}: {code}"
        pdp.update(
            {
                "decision": record.get("decision"),
                "reasons": reasons,
                "policy_version": version,
                "latency_us": record.get("latency_us"),
                "arguments": request.get("arguments"),
                "arguments_redacted": record.get("arguments_redacted", False),
            }
        )
        if "intent" in request:
            pdp["intent"] = request["intent"]
        if isinstance(record.get("shadow"), dict):
            pdp["shadow"] = record["shadow"]
        src_endpoint: dict[str, Any] = {"name": gateway or "unknown"}
    else:
        allowed = False
        refusal = record.get("refusal") if isinstance(record.get("refusal"), dict) else {}
        assert isinstance(refusal, dict)
        code = _text(refusal.get("code"), "refused")
        detail = _text(refusal.get("message"))
        policy = {"uid": code, "name": code, "desc": detail}
        authorizations = [{"decision": "deny"}]
        message = f"refused {method or 'call'}: {code}"
        pdp["refusal"] = refusal
        src_endpoint = {"name": gateway or "unauthenticated"}
        ip = _peer_ip(_text(record.get("peer")))
        if ip:
            src_endpoint["ip"] = ip
    actor: dict[str, Any] = {
        "app_name": agent or gateway or "unauthenticated",
        "authorizations": authorizations,
    }
    if agent:
        actor["app_uid"] = agent
    if isinstance(request.get("session"), str):
        actor["session"] = {"uid": request["session"]}
    event: dict[str, Any] = {
        "class_uid": API_ACTIVITY,
        "class_name": "API Activity",
        "category_uid": APPLICATION_ACTIVITY,
        "category_name": "Application Activity",
        "activity_id": ACTIVITY_OTHER,
        "activity_name": "Authorize",
        "type_uid": API_ACTIVITY * 100 + ACTIVITY_OTHER,
        "type_name": "API Activity: Authorize",
        "severity_id": SEVERITY_INFORMATIONAL if allowed else SEVERITY_LOW,
        "time": _epoch_ms(record.get("time")),
        "message": message,
        "status_id": STATUS_SUCCESS if allowed else STATUS_FAILURE,
        "status_code": code,
        "status_detail": detail,
        "metadata": {
            "product": PRODUCT,
            "version": OCSF_VERSION,
            "uid": decision_id,
            "log_name": RECORD_VERSION,
            "original_time": _text(record.get("time")),
            "profiles": ["security_control"],
        },
        "actor": actor,
        "api": {
            "operation": f"{server}/{tool}" if server or tool else method or "unknown",
            "service": {"name": server or "pdp"},
            "request": {"uid": decision_id},
        },
        "src_endpoint": src_endpoint,
        "dst_endpoint": {"name": _text(record.get("instance_id"), "pdp"), "svc_name": "pdp"},
        "action_id": ACTION_ALLOWED if allowed else ACTION_DENIED,
        "action": "Allowed" if allowed else "Denied",
        "disposition_id": DISPOSITION_ALLOWED if allowed else DISPOSITION_BLOCKED,
        "disposition": "Allowed" if allowed else "Blocked",
        "policy": policy,
        "is_alert": False,
        "unmapped": {"pdp": pdp},
    }
    if server or tool:
        event["resources"] = [{"type": "mcp_tool", "name": tool, "uid": f"{server}/{tool}"}]
    return event
