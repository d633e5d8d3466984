"""What a client sends and gets back, and the one conversion to and from the wire."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.client.errors import InvalidRequestError
from pdp.model import Intent, JsonValue, Reason, ToolAnswer, ToolVerdict


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One question for pdp: may ``agent`` call ``server``/``tool`` with ``arguments``?

    ``arguments`` must be JSON data (numbers integral: Cedar has no floats). The
    caller's own SPIFFE ID is what pdp records as the gateway; it must be allowed to
    ask about ``agent`` (the server's ``callers`` configuration).

    ``intent_token`` is a signed intent (compact JWS) instead of ``intent``;
    ``agent_svid`` the agent's JWT-SVID for pdp's audience (README: "Signed intents
    and proof of the agent"). Both are credentials: they are left out of ``repr``.
    """

    agent: str
    server: str
    tool: str
    arguments: Mapping[str, JsonValue] = field(default_factory=dict)
    intent: Intent | None = None
    session: str = ""
    intent_token: str = field(default="", repr=False)
    agent_svid: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """pdp's answer, or the client's deny when there is none.

    ``failure`` is None for an answer from pdp; otherwise it is the ``FAILURE_*``
    code (also the single reason's ``policy``) and ``decision_id`` is empty: there is
    no audit record of a call that never reached pdp.
    """

    allowed: bool
    reasons: tuple[Reason, ...]
    decision_id: str = ""
    policy_version: str = ""
    errors: tuple[str, ...] = ()
    failure: str | None = None

    @classmethod
    def failed(cls, code: str, detail: str) -> CheckResult:
        return cls(False, (Reason(code, detail),), failure=code)

    def to_json(self) -> dict[str, Any]:
        """The output shape of ``pdp check``, plus ``decision_id``."""
        return {
            "decision": "allow" if self.allowed else "deny",
            "reasons": [reason.to_json() for reason in self.reasons],
            "errors": list(self.errors),
            "policy_version": self.policy_version,
            "decision_id": self.decision_id,
        }


def check_request(request: ToolCall | Mapping[str, Any]) -> pb.CheckRequest:
    """The wire form of a :class:`ToolCall` or of ``pdp check`` request JSON; raises
    :class:`InvalidRequestError` when it cannot be encoded at all."""
    if not isinstance(request, ToolCall):
        if not isinstance(request, Mapping):
            raise InvalidRequestError("the request is not a pdp.v1.CheckRequest: not an object")
        try:
            return json_format.ParseDict(dict(request), pb.CheckRequest())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"the request is not a pdp.v1.CheckRequest: {exc}") from None
    message = pb.CheckRequest(
        agent=request.agent, server=request.server, tool=request.tool, session=request.session
    )
    try:
        message.arguments.update(dict(request.arguments))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"arguments are not JSON data: {exc}") from None
    if request.intent is not None and request.intent_token:
        raise InvalidRequestError("send intent or intent_token (a signed intent), not both")
    if request.intent_token:
        message.intent.token = request.intent_token
    if request.agent_svid:
        message.agent_svid = request.agent_svid
    if request.intent is not None:
        message.intent.purpose = request.intent.purpose
        message.intent.tools.extend(request.intent.tools)
        if request.intent.expires_at is not None:
            message.intent.expires_at.FromDatetime(request.intent.expires_at)
    return message


def check_result(response: pb.CheckResponse) -> CheckResult:
    """An answer from pdp. Only the one value meaning allow allows (an unknown enum
    value from a newer or broken server is a deny)."""
    return CheckResult(
        allowed=response.decision == pb.DECISION_ALLOW,
        reasons=tuple(Reason(r.policy, r.message) for r in response.reasons),
        decision_id=response.decision_id,
        policy_version=response.policy_version,
        errors=tuple(response.errors),
    )


@dataclass(frozen=True, slots=True)
class AllowedToolsResult:
    """pdp's answer per tool of a server (``verdicts``), or none and why (``reasons``:
    a refusal such as ``caller_not_bound``, or the client's ``FAILURE_*`` code, then
    also in ``failure``). Fail closed: no verdict means no tool may be called."""

    verdicts: tuple[ToolVerdict, ...]
    policy_version: str = ""
    decision_id: str = ""
    reasons: tuple[Reason, ...] = ()
    failure: str | None = None

    @classmethod
    def failed(cls, code: str, detail: str) -> AllowedToolsResult:
        return cls((), reasons=(Reason(code, detail),), failure=code)

    def callable_tools(self) -> tuple[str, ...]:
        """Tools some arguments may be allowed for (``allow`` or ``depends_on_arguments``;
        the call itself must still be checked)."""
        return tuple(v.tool for v in self.verdicts if v.answer is not ToolAnswer.DENY)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tools": [verdict.to_json() for verdict in self.verdicts],
            "policy_version": self.policy_version,
            "decision_id": self.decision_id,
        }
        if self.reasons:
            out["reasons"] = [reason.to_json() for reason in self.reasons]
        return out


_ANSWERS = {
    pb.TOOL_ANSWER_ALLOW: ToolAnswer.ALLOW,
    pb.TOOL_ANSWER_DEPENDS_ON_ARGUMENTS: ToolAnswer.DEPENDS_ON_ARGUMENTS,
}


IntentLike = Intent | Mapping[str, Any]  # an Intent, or its JSON {purpose, tools, expires_at}


def allowed_tools_request(
    agent: str, server: str, intent: IntentLike | None, session: str, agent_svid: str = ""
) -> pb.AllowedToolsRequest:
    message = pb.AllowedToolsRequest(
        agent=agent, server=server, session=session, agent_svid=agent_svid
    )
    if isinstance(intent, Mapping):
        try:
            json_format.ParseDict(dict(intent), message.intent)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"the intent is not a pdp.v1.Intent: {exc}") from None
    elif intent is not None:
        message.intent.purpose = intent.purpose
        message.intent.tools.extend(intent.tools)
        if intent.expires_at is not None:
            message.intent.expires_at.FromDatetime(intent.expires_at)
    return message


def allowed_tools_result(response: pb.AllowedToolsResponse) -> AllowedToolsResult:
    """Only the values meaning allow and depends_on_arguments count as such: anything
    else from a newer or broken server is a deny."""
    return AllowedToolsResult(
        verdicts=tuple(
            ToolVerdict(
                verdict.tool,
                _ANSWERS.get(verdict.answer, ToolAnswer.DENY),
                tuple(Reason(r.policy, r.message) for r in verdict.reasons),
                tuple(verdict.errors),
            )
            for verdict in response.tools
        ),
        policy_version=response.policy_version,
        decision_id=response.decision_id,
        reasons=tuple(Reason(r.policy, r.message) for r in response.reasons),
    )
