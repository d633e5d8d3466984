"""Request parsing: every invalid-input rule names its field and rule, never crashes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pdp.model import Limits, RequestError, parse_request

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "agent": "spiffe://acme.test/agent/support-bot",
    "server": "crm",
    "tool": "get_ticket",
    "arguments": {"ticket_id": "T-123"},
    "intent": {
        "purpose": "support.triage",
        "tools": ["crm/get_ticket", "crm/*"],
        "expires_at": "2026-12-01T00:00:00Z",
    },
    "session": "sess-42",
    "gateway": "spiffe://acme.test/gateway/edge",
    "time": "2026-11-23T10:00:00Z",
}


def test_parses_the_documented_example() -> None:
    request = parse_request(GOOD, now=NOW)
    assert request.agent == GOOD["agent"]
    assert request.intent is not None
    assert request.intent.tools == ("crm/get_ticket", "crm/*")
    assert request.intent.expires_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert request.time == NOW
    assert request.to_json()["intent"]["expires_at"] == "2026-12-01T00:00:00.000Z"


def test_time_defaults_to_now_and_intent_is_optional() -> None:
    data = {k: v for k, v in GOOD.items() if k not in ("time", "intent")}
    request = parse_request(data, now=NOW)
    assert request.time == NOW
    assert request.intent is None


def test_integral_floats_become_integers() -> None:
    # protobuf Struct carries every number as a double
    request = parse_request({**GOOD, "arguments": {"n": 3.0, "xs": [1.0, {"m": 2.0}]}}, now=NOW)
    assert request.arguments == {"n": 3, "xs": [1, {"m": 2}]}
    assert isinstance(request.arguments["n"], int)


def nest(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("not an object", [], "request", "type"),  # type: ignore[list-item]
    ("unknown field", {**GOOD, "admin": True}, "admin", "unknown_field"),
    ("unknown field with an empty name", {**GOOD, "": None}, "''", "unknown_field"),
    ("unknown field, long name", {**GOOD, "a" * 500: 1}, repr("a" * 64), "unknown_field"),
    ("missing agent", {k: v for k, v in GOOD.items() if k != "agent"}, "agent", "required"),
    ("agent not spiffe", {**GOOD, "agent": "https://acme.test/x"}, "agent", "spiffe_id"),
    ("agent trailing newline", {**GOOD, "agent": "spiffe://acme.test/a\n"}, "agent", "spiffe_id"),
    ("agent uppercase td", {**GOOD, "agent": "spiffe://ACME.test/a"}, "agent", "spiffe_id"),
    ("agent kelvin sign", {**GOOD, "agent": "spiffe://\u212aacme.test/a"}, "agent", "spiffe_id"),
    ("agent root id", {**GOOD, "agent": "spiffe://acme.test"}, "agent", "spiffe_id"),
    ("agent dot segment", {**GOOD, "agent": "spiffe://acme.test/a/../b"}, "agent", "spiffe_id"),
    ("agent too long", {**GOOD, "agent": "spiffe://acme.test/" + "a" * 2040}, "agent", "too_long"),
    ("agent not a string", {**GOOD, "agent": 7}, "agent", "type"),
    ("missing server", {k: v for k, v in GOOD.items() if k != "server"}, "server", "required"),
    ("server with slash", {**GOOD, "server": "crm/x"}, "server", "charset"),
    ("tool wildcard", {**GOOD, "tool": "*"}, "tool", "charset"),
    ("tool too long", {**GOOD, "tool": "t" * 257}, "tool", "too_long"),
    ("arguments not object", {**GOOD, "arguments": [1]}, "arguments", "type"),
    ("arguments too deep", {**GOOD, "arguments": nest(17)}, "arguments" + ".a" * 16, "depth"),
    ("hostile nesting", {**GOOD, "arguments": nest(5000)}, "arguments" + ".a" * 16, "depth"),
    ("string too long", {**GOOD, "arguments": {"q": "x" * 8193}}, "arguments.q", "too_long"),
    (
        "multibyte string too long",
        {**GOOD, "arguments": {"q": "é" * 4097}},
        "arguments.q",
        "too_long",
    ),
    (
        "key too long",
        {**GOOD, "arguments": {"k" * 257: 1}},
        "arguments." + "k" * 32 + "…",
        "too_long",
    ),
    (
        "entity escape",
        {**GOOD, "arguments": {"x": {"__entity": {"type": "Agent", "id": "a"}}}},
        "arguments.x.__entity",
        "reserved",
    ),
    (
        "extension escape",
        {**GOOD, "arguments": {"__extn": {"fn": "ip", "arg": "1.2.3.4"}}},
        "arguments.__extn",
        "reserved",
    ),
    ("float", {**GOOD, "arguments": {"amount": 1.5}}, "arguments.amount", "type"),
    ("null", {**GOOD, "arguments": {"amount": None}}, "arguments.amount", "type"),
    ("nan", {**GOOD, "arguments": {"amount": float("nan")}}, "arguments.amount", "type"),
    ("huge int", {**GOOD, "arguments": {"n": 2**63}}, "arguments.n", "range"),
    ("array element", {**GOOD, "arguments": {"xs": ["ok", None]}}, "arguments.xs[1]", "type"),
    (
        "too many items",
        {**GOOD, "arguments": {"xs": list(range(1025))}},
        "arguments.xs",
        "too_many",
    ),
    ("intent not object", {**GOOD, "intent": "all"}, "intent", "type"),
    (
        "intent unknown field",
        {**GOOD, "intent": {"purpose": "p", "tools": [], "admin": 1}},
        "intent.admin",
        "unknown_field",
    ),
    (
        "intent tools not list",
        {**GOOD, "intent": {"purpose": "p", "tools": "crm/*"}},
        "intent.tools",
        "type",
    ),
    (
        "intent tool without server",
        {**GOOD, "intent": {"purpose": "p", "tools": ["get"]}},
        "intent.tools[0]",
        "format",
    ),
    (
        "intent tool bad chars",
        {**GOOD, "intent": {"purpose": "p", "tools": ["crm/a b"]}},
        "intent.tools[0]",
        "charset",
    ),
    (
        "intent global wildcard",
        {**GOOD, "intent": {"purpose": "p", "tools": ["*/*"]}},
        "intent.tools[0]",
        "charset",
    ),
    (
        "intent bad expiry",
        {**GOOD, "intent": {"purpose": "p", "tools": [], "expires_at": "soon"}},
        "intent.expires_at",
        "format",
    ),
    (
        "intent naive expiry",
        {**GOOD, "intent": {"purpose": "p", "tools": [], "expires_at": "2026-12-01T00:00:00"}},
        "intent.expires_at",
        "format",
    ),
    ("bad time", {**GOOD, "time": 12}, "time", "type"),
    ("gateway not spiffe", {**GOOD, "gateway": "edge"}, "gateway", "spiffe_id"),
    ("session too long", {**GOOD, "session": "s" * 300}, "session", "too_long"),
]


@pytest.mark.parametrize(
    ("data", "field", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_requests_name_field_and_rule(data: Any, field: str, rule: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(data, now=NOW)
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert field in str(caught.value)


def test_encoded_size_limit_is_configurable() -> None:
    data = {**GOOD, "arguments": {f"k{i}": "x" * 100 for i in range(20)}}
    parse_request(data, now=NOW)
    with pytest.raises(RequestError) as caught:
        parse_request(data, now=NOW, limits=Limits(max_arguments_bytes=1024))
    assert caught.value.rule == "too_large"
