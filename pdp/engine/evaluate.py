"""Deciding requests against compiled policies.

``decide`` is pure: no I/O, no clock (the request carries its time), no shared
mutable state, so one :class:`Engine` serves every thread. Every failure mode is
a deny with a reason; nothing here raises on bad input.

The hot path calls cedarpy's extension entry point ``_internal.is_authorized_batch``
directly: the public wrapper copies each request, re-encodes the context and
builds result objects we would throw away. cedarpy is pinned exactly in
pyproject.toml, and ``tests/engine/test_cedarpy_contract.py`` guards this contract.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cedarpy import _internal

from pdp.engine.store import CompiledPolicies
from pdp.model import (
    DEFAULT_LIMITS,
    REASON_DEFAULT_DENY,
    REASON_EVALUATION_ERROR,
    REASON_INVALID_REQUEST,
    Decision,
    Effect,
    JsonValue,
    Limits,
    Reason,
    Request,
    RequestError,
    deny,
    parse_request,
)

_POLICY_ERROR_RE = re.compile(
    r"\Aerror while evaluating policy `(?P<id>[^`]*)`: (?P<msg>.*)\Z", re.S
)
_DEFAULT_DENY = Reason(REASON_DEFAULT_DENY, "no policy permits this call")


def cedar_context(request: Request) -> dict[str, JsonValue]:
    """The Cedar ``context`` record for a request (documented in policies/README.md)."""
    when = request.time
    trust_domain, _, path = request.agent[len("spiffe://") :].partition("/")
    context: dict[str, JsonValue] = {
        "input": request.arguments,
        "tool": {
            "server": request.server,
            "name": request.tool,
            "ref": f"{request.server}/{request.tool}",
            "server_wildcard": f"{request.server}/*",
        },
        "agent": {"trust_domain": trust_domain, "path": "/" + path},
        "gateway": request.gateway,
        "session": request.session,
        "time": {"epoch": int(when.timestamp()), "hour": when.hour, "weekday": when.weekday()},
    }
    intent = request.intent
    if intent is not None:
        record: dict[str, JsonValue] = {"purpose": intent.purpose, "tools": list(intent.tools)}
        if intent.expires_at is not None:
            record["expires_at"] = int(intent.expires_at.timestamp())
        context["intent"] = record
    return context


def cedar_request(request: Request) -> dict[str, Any]:
    return {
        "principal": {"type": "Agent", "id": request.agent},
        "action": {"type": "Action", "id": f"{request.server}/{request.tool}"},
        "resource": {"type": "McpServer", "id": request.server},
        "context": json.dumps(cedar_context(request), ensure_ascii=False, separators=(",", ":")),
    }


class Engine:
    """Decides requests with one immutable :class:`CompiledPolicies`."""

    __slots__ = ("_entities", "_policies", "compiled", "limits")

    def __init__(self, compiled: CompiledPolicies, limits: Limits = DEFAULT_LIMITS) -> None:
        self.compiled = compiled
        self.limits = limits
        self._policies = compiled.policies
        self._entities = compiled.entities._inner

    @property
    def version(self) -> str:
        return self.compiled.version

    def decide(self, request: Request) -> Decision:
        return self.decide_batch((request,))[0]

    def decide_batch(self, requests: Sequence[Request]) -> list[Decision]:
        """Decides many requests in one Cedar call; answers are in request order."""
        if not requests:
            return []
        try:
            raw = _internal.is_authorized_batch(
                [cedar_request(r) for r in requests],
                self.compiled.policy_set,
                self._entities,
                None,
                False,
            )
        except Exception as exc:
            return [
                deny(self.version, REASON_EVALUATION_ERROR, f"policy evaluation failed: {exc}")
                for _ in requests
            ]
        return [self._interpret(text) for text in raw]

    def decide_json(self, data: JsonValue, *, now: datetime) -> Decision:
        """Parses untrusted request data and decides it; a broken request is a deny."""
        try:
            request = parse_request(data, now=now, limits=self.limits)
        except RequestError as exc:
            return self.invalid(exc)
        return self.decide(request)

    def invalid(self, error: RequestError) -> Decision:
        return deny(
            self.version,
            REASON_INVALID_REQUEST,
            f"{error.field}: {error.detail} (rule: {error.rule})",
        )

    def _reason(self, policy_id: str) -> Reason:
        unit = self._policies.get(policy_id)
        return Reason(policy_id, unit.reason if unit else "")

    def _interpret(self, text: str) -> Decision:
        try:
            result = json.loads(text)
            diagnostics = result.get("diagnostics") or {}
            determining = diagnostics.get("reason") or []
            errors = diagnostics.get("errors") or []
            verdict = result["decision"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return deny(self.version, REASON_EVALUATION_ERROR, f"unreadable Cedar result: {exc}")
        if errors:
            # Cedar skips a policy that errors; a skipped forbid could let a permit through,
            # so any evaluation error denies, naming the policy and the error.
            reasons = [self._reason(p) for p in determining if verdict == "Deny"]
            reasons += [self._error_reason(e) for e in errors]
            return Decision(Effect.DENY, tuple(reasons), self.version, tuple(errors))
        if verdict == "Allow":
            return Decision(
                Effect.ALLOW, tuple(self._reason(p) for p in sorted(determining)), self.version
            )
        if determining:
            return Decision(
                Effect.DENY, tuple(self._reason(p) for p in sorted(determining)), self.version
            )
        return Decision(Effect.DENY, (_DEFAULT_DENY,), self.version)

    def _error_reason(self, error: str) -> Reason:
        match = _POLICY_ERROR_RE.match(error)
        if match is None:
            return Reason(REASON_EVALUATION_ERROR, error)
        return Reason(match.group("id"), f"evaluation error: {match.group('msg')}")
