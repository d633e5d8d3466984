"""Fuzz targets: one function per parser facing callers, each checking its properties.

Every target takes raw bytes (what an attacker controls) and raises AssertionError when a
property breaks; any other exception escaping a target is a bug too. The properties:

* never an allow from malformed input: whatever does not parse is a deny;
* never an unhandled exception: parsers raise only their documented error type,
  the decision path never raises and never answers ``internal_error``;
* well-formed input gets the same decision through every path (JSON, protobuf,
  the service's decision core).

Used by the Hypothesis properties (tests/fuzz/test_*.py), by the corpus replay
(tests/fuzz/test_corpus.py) and by coverage-guided fuzzing (scripts/fuzz.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from joserfc.jwk import ECKey

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit.chain import ChainError, parse_line
from pdp.engine import Engine, load_policies
from pdp.identity.spiffe_id import InvalidSpiffeId, SpiffeIdPattern, parse_spiffe_id
from pdp.mcp.mapping import HttpRequest, McpMapping, map_request
from pdp.model import (
    REASON_INTERNAL_ERROR,
    REASON_INVALID_REQUEST,
    Caller,
    Decision,
    Request,
    RequestError,
    parse_request,
)
from pdp.proof import REASON_CODES as PROOF_REASON_CODES
from pdp.proof import ProofConfig, Prover
from pdp.proof.jose import TokenRejected, read_token
from pdp.proof.sign import intent_claims, sign_token
from pdp.replay.records import read_record
from pdp.service.convert import request_data
from pdp.service.gate import CallerGrant
from pdp.service.servicer import CHECK_METHOD, DecisionCore, FixedEngine, PendingCall
from pdp.service.sink import DecisionEvent
from tests.conftest import EXAMPLE_POLICIES

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
GATEWAY = "spiffe://pdp.test/gateway/edge"


@functools.cache
def engine() -> Engine:
    return Engine(load_policies(EXAMPLE_POLICIES))


class _AcceptingSink:
    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        return [True] * len(events)

    def record_refusal(self, event: Any) -> None:
        pass


@functools.cache
def core() -> DecisionCore:
    return DecisionCore(
        FixedEngine(engine()), _AcceptingSink(), new_id=lambda: "fuzz", clock=lambda: NOW
    )


BOUND_AGENTS = ("spiffe://acme.test/agent/*", "spiffe://partner.test/agent/*")
GRANT = CallerGrant(Caller(GATEWAY), tuple(SpiffeIdPattern(p) for p in BOUND_AGENTS))


def outcome(decision: Decision) -> tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]:
    return (
        decision.effect.value,
        tuple((r.policy, r.message) for r in decision.reasons),
        decision.errors,
    )


def _assert_not_internal(decision: Decision, where: str) -> None:
    codes = [r.policy for r in decision.reasons]
    assert REASON_INTERNAL_ERROR not in codes, f"{where}: internal_error {decision.reasons}"


def service_decision(message: pb.CheckRequest | bytes) -> pb.CheckResponse:
    call = PendingCall((message,), GRANT, CHECK_METHOD, 0, None)
    return core().decide_calls([call])[0][0]


# -- the request parser and the decision on parsed JSON -------------------------------


def check_request_data(data: Any) -> None:
    """Any JSON value as a request: parse or a named error; the decision agrees."""
    decision = engine().decide_json(data, now=NOW)
    _assert_not_internal(decision, "decide_json")
    try:
        request = parse_request(data, now=NOW, limits=engine().limits)
    except RequestError as exc:
        assert not decision.allowed, f"malformed request allowed: {exc}"
        assert [r.policy for r in decision.reasons] == [REASON_INVALID_REQUEST]
        assert exc.field and exc.rule and exc.detail
        return
    assert outcome(decision) == outcome(engine().decide(request))
    check_same_through_service(data, request, decision)


def check_same_through_service(data: Any, request: Request, decision: Decision) -> None:
    """A parsed request decided through the protobuf path (as the service decodes it)
    gets the JSON path's decision, when the request has a protobuf form."""
    try:
        message = json_format.ParseDict(data, pb.CheckRequest())
    except (json_format.ParseError, ValueError, TypeError, RecursionError):
        return  # e.g. integers beyond a double's precision, which only JSON can carry
    try:
        via_proto = parse_request(request_data(message, engine().limits), now=NOW)
    except RequestError:
        via_proto = None
    if via_proto is None or via_proto.arguments != request.arguments:
        return
    if not GRANT.may_ask_about(request.agent):
        return  # the service denies it as caller_not_bound, before any policy  # Struct numbers are doubles: only exactly representable values compare
    # The service decides at its own clock (a caller's time is ignored): compare with
    # the request at that time.
    decision = engine().decide(dataclasses.replace(request, time=NOW))
    response = service_decision(message.SerializeToString())
    assert response.decision == (pb.DECISION_ALLOW if decision.allowed else pb.DECISION_DENY), (
        f"service path decided {response.decision} for {request}, JSON path {decision}"
    )


def request_json(raw: bytes) -> None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return
    check_request_data(data)


# -- the protobuf decode path of the service ----------------------------------------


def check_request_bytes(raw: bytes) -> None:
    """Arbitrary bytes as a Check call's body: answered, never internal_error; an allow
    only for bytes that decode to a request the engine allows."""
    response = service_decision(raw)
    assert REASON_INTERNAL_ERROR not in [r.policy for r in response.reasons]
    if response.decision != pb.DECISION_ALLOW:
        return
    message = pb.CheckRequest()
    try:
        message.ParseFromString(raw)
    except (DecodeError, RecursionError) as exc:
        raise AssertionError(f"undecodable bytes allowed: {exc}") from None
    data = request_data(message, engine().limits)
    data["gateway"] = GATEWAY
    assert engine().decide(parse_request(data, now=NOW)).allowed


# -- SPIFFE IDs ------------------------------------------------------------------------


def spiffe_id_text(text: str) -> None:
    try:
        parsed = parse_spiffe_id(text)
    except InvalidSpiffeId as exc:
        assert str(exc), "InvalidSpiffeId without a message"
        parsed = None
    if parsed is not None:
        assert str(parsed) == text, f"{text!r} parsed as {parsed}"
        assert text.isascii() and text.startswith("spiffe://")
    try:
        pattern = SpiffeIdPattern(text)
    except ValueError:
        return
    if parsed is not None and not parsed.is_root:
        assert pattern.matches(text)


def spiffe_id(raw: bytes) -> None:
    spiffe_id_text(raw.decode("utf-8", "replace"))


# -- audit lines -----------------------------------------------------------------------


def audit_line(raw: bytes) -> None:
    try:
        parse_line(raw)
    except ChainError as exc:
        assert exc.code in {"malformed", "hash_mismatch"}, exc.code
    read_record("fuzz:1", raw)


# -- tokens: signed intents and JWT-SVIDs ------------------------------------------------

ISSUER = "https://approvals.acme.test"
AUDIENCE = "spiffe://pdp.test/pdp"
AGENT = "spiffe://acme.test/agent/finance-bot"
_ISSUER_KEY = ECKey.generate_key("P-256", parameters={"kid": "fuzz-issuer"})
_AGENT_KEY = ECKey.generate_key("P-256", parameters={"kid": "fuzz-agent"})


class _StaticKeys:
    def __init__(self, keys: Mapping[str, Mapping[str, Any]]) -> None:
        self._keys = keys

    def keys_for(self, name: str) -> Any:
        return self._keys.get(name)

    def close(self) -> None:
        pass


def prover() -> Prover:
    """A fresh prover (its jti memory empty) trusting the fuzz issuer and agent keys."""
    public = {k.kid: k for k in (_ISSUER_KEY, _AGENT_KEY)}
    return Prover(
        ProofConfig(),
        audience=lambda: AUDIENCE,
        issuers=_StaticKeys({ISSUER: {"fuzz-issuer": public["fuzz-issuer"]}}),
        jwt_bundles=_StaticKeys({"acme.test": {"fuzz-agent": public["fuzz-agent"]}}),
    )


def valid_intent_token(now: datetime = NOW, **changes: Any) -> str:
    claims = intent_claims(
        issuer=ISSUER,
        agent=AGENT,
        audience=AUDIENCE,
        purpose="pay.invoice-78",
        tools=["payments/create_payment"],
        now=now,
        jti="fuzz-jti",
    )
    claims.update(changes)
    return sign_token(claims, _ISSUER_KEY)


def valid_agent_svid(now: datetime = NOW, **changes: Any) -> str:
    issued = int(now.timestamp())
    claims = {"sub": AGENT, "aud": [AUDIENCE], "iat": issued, "exp": issued + 300, **changes}
    return sign_token(claims, _AGENT_KEY)


def _payment(**fields: Any) -> Request:
    return parse_request(
        {"agent": AGENT, "server": "payments", "tool": "get_balance", **fields}, now=NOW
    )


def _meaning(token: str) -> tuple[Any, Any]:
    """What a token says: its decoded header and claims (None if unreadable)."""
    try:
        read = read_token(token, 1 << 20)
    except TokenRejected:
        return None, None
    return dict(read.header), dict(read.claims)


def check_intent_token(token: str, original: str | None = None) -> None:
    """Any text as a signed intent: denied with a reason of pdp.proof's, never raises;
    accepted only when it says exactly what a validly signed token said."""
    try:
        request = _payment(intent={"token": token})
    except RequestError:
        return  # refused before any token check (empty, too long for the request)
    proven, denial = prover().prove(request, NOW)
    if denial is not None:
        assert denial.code in PROOF_REASON_CODES, denial
        assert proven.intent is None and not proven.proof.intent_issuer
        assert proven.proof.intent_token is not None and proven.proof.intent_token.sha256
        if len(token) >= 16:  # shorter text occurs in any record by chance ("0")
            assert token not in json.dumps(proven.to_json())
        return
    assert original is not None, f"an unsigned or forged token was accepted: {token[:80]!r}"
    assert _meaning(token) == _meaning(original), "a changed token was accepted"
    assert proven.proof.intent_issuer == ISSUER


def check_agent_svid(token: str, original: str | None = None) -> None:
    try:
        request = _payment(agent_svid=token, intent={"purpose": "p", "tools": ["payments/*"]})
    except RequestError:
        return
    proven, denial = prover().prove(request, NOW)
    if denial is not None:
        assert denial.code in PROOF_REASON_CODES, denial
        assert not proven.proof.agent_proven
        return
    assert original is not None, f"an unsigned or forged JWT-SVID was accepted: {token[:80]!r}"
    assert _meaning(token) == _meaning(original), "a changed JWT-SVID was accepted"
    assert proven.proof.agent_proven


def intent_token(raw: bytes) -> None:
    check_intent_token(raw.decode("utf-8", "replace"))


def agent_svid(raw: bytes) -> None:
    check_agent_svid(raw.decode("utf-8", "replace"))


# -- the MCP body mapping of the gateway doors -----------------------------------------

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def check_mcp_http(http: HttpRequest, agent: str = AGENT, server: str = "crm") -> McpMapping:
    """Any HTTP request: mapped without raising; a message is an error or request data,
    and request data either parses or is refused with a named error (never allowed)."""
    mapping = map_request(http, agent=agent, server=server)
    assert mapping.messages, "a mapping without any decision"
    for message in mapping.messages:
        if message.error is not None:
            assert message.error.field and message.error.rule
            continue
        if message.request is None:
            continue
        decision = engine().decide_json(dict(message.request), now=NOW)
        _assert_not_internal(decision, "mcp request")
    return mapping


def mcp_body(raw: bytes) -> None:
    check_mcp_http(HttpRequest.build("POST", MCP_HEADERS, raw))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "request_json": request_json,
    "check_request_bytes": check_request_bytes,
    "spiffe_id": spiffe_id,
    "audit_line": audit_line,
    "intent_token": intent_token,
    "agent_svid": agent_svid,
    "mcp_body": mcp_body,
}
