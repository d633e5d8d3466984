"""pdp.mcp: MCP over streamable HTTP -> the decisions pdp makes, for both revisions."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.mcp import (
    DENIED_CODE,
    HttpRequest,
    McpLimits,
    MethodAction,
    MethodRules,
    RuleError,
    Verdict,
    allowed,
    decision_id_header,
    declared_intent,
    denied_reply,
    loads_strict,
    map_request,
)
from pdp.model import Reason, RequestError, parse_request

AGENT = "spiffe://acme.test/agent/bot"
INTENT = {"purpose": "answer ticket", "tools": ["crm/get_ticket"]}


def call(name: str = "get_ticket", arguments: object = None, **params: object) -> dict:
    body_params: dict = {"name": name, **params}
    if arguments is not None:
        body_params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": body_params}


def post(body: object, headers: dict[str, str] | None = None, **kw: object) -> HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpRequest.build("POST", headers or {}, raw, **kw)  # type: ignore[arg-type]


def mapped(http: HttpRequest, **kw: object):
    return map_request(http, agent=AGENT, server="crm", **kw)  # type: ignore[arg-type]


def only(http: HttpRequest, **kw: object):
    mapping = mapped(http, **kw)
    assert len(mapping.messages) == 1
    return mapping.messages[0]


def error_of(http: HttpRequest, **kw: object) -> RequestError:
    message = only(http, **kw)
    assert message.error is not None, message
    assert message.action is MethodAction.DENY
    assert message.request is None
    return message.error


# --- tools/call -------------------------------------------------------------------


def test_tool_call_2025_becomes_a_pdp_request_with_session_and_intent() -> None:
    body = call("get_ticket", {"ticket_id": "T-1", "limit": 3.0}, _meta={"pdp.dev/intent": INTENT})
    http = post(body, {"Mcp-Session-Id": "s-42", "MCP-Protocol-Version": "2025-11-25"})
    mapping = mapped(http)
    message = mapping.messages[0]
    assert message.error is None and message.action is MethodAction.POLICY
    assert message.jsonrpc_id == 7 and message.method == "tools/call"
    assert message.request == {
        "agent": AGENT,
        "server": "crm",
        "session": "s-42",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-1", "limit": 3},
        "intent": INTENT,
    }
    assert mapping.revision == "2025-11-25" and mapping.session == "s-42"
    # The data is exactly what the one request parser reads.
    request = parse_request(dict(message.request), now=datetime.now(UTC))
    assert request.tool == "get_ticket" and request.intent is not None
    assert mapping.note(message) == {
        "method": "tools/call",
        "http_method": "POST",
        "id": 7,
        "protocol_version": "2025-11-25",
    }


def test_tool_call_2026_with_matching_headers() -> None:
    body = call("get_ticket", {"ticket_id": "T-1"})
    body["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    headers = {
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_ticket",
        "x-pdp-intent": json.dumps(INTENT),
    }
    message = only(post(body, headers))
    assert message.error is None
    assert message.request is not None and message.request["intent"] == INTENT
    assert "session" not in message.request


def test_mcp_name_may_be_base64_encoded() -> None:
    encoded = "=?base64?" + base64.b64encode(b"get_ticket").decode() + "?="
    headers = {"Mcp-Method": "tools/call", "Mcp-Name": encoded}
    assert only(post(call(), headers)).error is None


@pytest.mark.parametrize(
    ("headers", "field", "rule"),
    [
        ({"Mcp-Method": "tools/list"}, "mcp-method", "header_mismatch"),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "delete_ticket"}, "mcp-name", "header_mismatch"),
        ({"Mcp-Method": "tools/call"}, "mcp-name", "required"),
        ({"MCP-Protocol-Version": "2026-07-28"}, "mcp-method", "required"),
        ({"Mcp-Name": "delete_ticket"}, "mcp-name", "header_mismatch"),  # 2025 era: still checked
        ({"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?abc?="}, "mcp-name", "encoding"),
        ({"MCP-Protocol-Version": "latest"}, "mcp-protocol-version", "format"),
    ],
)
def test_header_body_mismatch_is_denied(headers: dict[str, str], field: str, rule: str) -> None:
    error = error_of(post(call(), headers))
    assert (error.field, error.rule) == (field, rule)


def test_protocol_version_header_must_match_the_body_meta() -> None:
    body = call()
    body["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2025-11-25"}
    headers = {
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_ticket",
    }
    assert error_of(post(body, headers)).rule == "header_mismatch"


def test_mcp_name_on_a_method_that_names_nothing_is_a_mismatch() -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    error = error_of(post(body, {"Mcp-Method": "tools/list", "Mcp-Name": "get_ticket"}))
    assert error.rule == "header_mismatch"


def test_repeated_decision_headers_are_denied() -> None:
    http = HttpRequest.build(
        "POST",
        [("mcp-method", "tools/call"), ("Mcp-Method", "tools/list")],
        json.dumps(call()).encode(),
    )
    assert error_of(http).rule == "repeated"


def test_intent_in_meta_and_header_must_agree() -> None:
    body = call(_meta={"pdp.dev/intent": INTENT})
    other = {"purpose": "x", "tools": ["crm/*"]}
    assert error_of(post(body, {"x-pdp-intent": json.dumps(other)})).rule == "conflict"
    same = only(post(body, {"x-pdp-intent": json.dumps(INTENT)}))
    assert same.error is None


@pytest.mark.parametrize(
    ("header", "rule"),
    [("not json", "not_json"), ('["crm/*"]', "type"), ('{"a":1,"a":2}', "duplicate_key")],
)
def test_bad_intent_header(header: str, rule: str) -> None:
    error = error_of(post(call(), {"x-pdp-intent": header}))
    assert (error.field, error.rule) == ("x-pdp-intent", rule)


def test_intent_meta_must_be_an_object() -> None:
    error = error_of(post(call(_meta={"pdp.dev/intent": "read tickets"})))
    assert error.field == "params._meta.pdp.dev/intent"


def test_no_intent_leaves_it_to_the_floor() -> None:
    message = only(post(call()))
    assert message.request is not None and "intent" not in message.request


def test_declared_intent_outside_a_tool_call() -> None:
    """The same reading for a tools/list (an SDK guard filtering it): header and/or
    params._meta, equal when both, a header sent twice refused."""
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    meta = {"pdp.dev/intent": INTENT}
    assert declared_intent(post(listing), None) is None
    assert declared_intent(post(listing), meta) == INTENT
    assert declared_intent(post(listing, {"x-pdp-intent": json.dumps(INTENT)}), None) == INTENT
    other = json.dumps({"purpose": "x", "tools": []})
    with pytest.raises(RequestError) as conflict:
        declared_intent(post(listing, {"x-pdp-intent": other}), meta)
    assert conflict.value.rule == "conflict"
    twice = HttpRequest.build("POST", [("x-pdp-intent", other), ("x-pdp-intent", other)], b"{}")
    with pytest.raises(RequestError) as repeated:
        declared_intent(twice, None)
    assert repeated.value.rule == "repeated"


# --- bad bodies: every one a deny naming the rule ---------------------------------


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (b"{not json", "body", "not_json"),
        (b"\xff\xfe{}", "body", "encoding"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}',
            "body",
            "duplicate_key",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket",'
            b'"arguments":{"ticket_id":"T-1","ticket_id":"T-2"}}}',
            "body",
            "duplicate_key",
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', "body", "not_json"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\\ud800"}}', "body", "surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "body", "depth"),
        (b"", "body", "required"),
        (b'"just a string"', "body", "type"),
        (b'{"id":1,"method":"tools/call"}', "jsonrpc", "required"),
        (b'{"jsonrpc":"1.0","id":1,"method":"tools/call"}', "jsonrpc", "required"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', "id", "type"),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', "id", "type"),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', "id", "type"),
        (b'{"jsonrpc":"2.0","id":1,"method":7}', "method", "type"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}', "extra", "unknown_member"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["get_ticket"]}',
            "params",
            "type",
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', "params.name", "required"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a/b"}}',
            "params.name",
            "charset",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}',
            "params.arguments",
            "type",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":1.5}}}',
            "params.arguments.x",
            "type",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"__entity":{}}}}',
            "params.arguments.__entity",
            "reserved",
        ),
        (b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}', "id", "required"),
        (b'{"jsonrpc":"2.0","id":1}', "method", "required"),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', "method", "required"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":[]}}', "params._meta", "type"),
    ],
)
def test_bad_body_is_a_deny_with_a_reason(body: bytes, field: str, rule: str) -> None:
    error = error_of(post(body))
    assert (error.field, error.rule) == (field, rule)


def test_truncated_body_is_denied() -> None:
    http = post(call(), body_truncated=True)
    error = error_of(http)
    assert error.rule == "truncated" and "x-envoy-auth-partial-body" in error.detail


def test_oversized_body_is_denied() -> None:
    http = post(call(arguments={"ticket_id": "x" * 2000}))
    assert error_of(http, limits=McpLimits(max_body_bytes=1000)).rule == "too_large"


def test_null_arguments_are_no_arguments() -> None:
    body = call()
    body["params"]["arguments"] = None
    message = only(post(body))
    assert message.request is not None and message.request["arguments"] == {}


# --- other methods, HTTP methods, responses -----------------------------------------


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("initialize", MethodAction.ALLOW),
        ("notifications/initialized", MethodAction.ALLOW),
        ("notifications/cancelled", MethodAction.ALLOW),
        ("ping", MethodAction.ALLOW),
        ("tools/list", MethodAction.ALLOW),
        ("server/discover", MethodAction.ALLOW),
        ("resources/list", MethodAction.ALLOW),
        ("resources/read", MethodAction.DENY),
        ("prompts/get", MethodAction.DENY),
        ("completion/complete", MethodAction.DENY),
        ("tasks/get", MethodAction.DENY),
        ("something/new", MethodAction.DENY),
    ],
)
def test_default_method_rules(method: str, action: MethodAction) -> None:
    body: dict = {"jsonrpc": "2.0", "method": method, "params": {}}
    if not method.startswith("notifications/"):
        body["id"] = "a"
    if method in ("resources/read",):
        body["params"] = {"uri": "file:///x"}
    message = only(post(body))
    assert message.error is None and message.request is None
    assert message.action is action


def test_rules_are_configurable_and_checked() -> None:
    rules = MethodRules.with_overrides(
        {"tools/list": "deny", "resources/*": "allow"}, default="deny"
    )
    assert rules.action("tools/list") is MethodAction.DENY
    assert rules.action("resources/read") is MethodAction.ALLOW
    assert rules.action("resources/list") is MethodAction.ALLOW  # exact default entry kept
    assert rules.action("tools/call") is MethodAction.POLICY
    assert (
        MethodRules.with_overrides({"tools/call": "deny"}).action("tools/call") is MethodAction.DENY
    )
    for bad in (
        {"tools/call": "allow"},
        {"resources/read": "policy"},
        {"ping": "maybe"},
        {"res*": "allow"},
    ):
        with pytest.raises(RuleError):
            MethodRules.with_overrides(bad)
    with pytest.raises(RuleError):
        MethodRules.with_overrides({}, default="policy")


def test_denied_tool_calls_by_rule_carry_no_request() -> None:
    rules = MethodRules.with_overrides({"tools/call": "deny"})
    message = only(post(call()), rules=rules)
    assert message.action is MethodAction.DENY and message.error is None and message.request is None


@pytest.mark.parametrize(("verb", "key"), [("GET", "http:GET"), ("DELETE", "http:DELETE")])
def test_get_and_delete_of_the_2025_transport(verb: str, key: str) -> None:
    mapping = mapped(HttpRequest.build(verb, {"Mcp-Session-Id": "s-1"}))
    assert [m.method for m in mapping.messages] == [key]
    assert mapping.messages[0].action is MethodAction.ALLOW and mapping.session == "s-1"


def test_other_http_methods_are_denied() -> None:
    assert error_of(HttpRequest.build("PUT", {}, b"{}")).rule == "http_method"


def test_jsonrpc_response_from_the_client() -> None:
    message = only(post({"jsonrpc": "2.0", "id": 3, "result": {"roots": []}}))
    assert message.method == "jsonrpc:response" and message.action is MethodAction.ALLOW


# --- batches ------------------------------------------------------------------------


def test_batch_decides_every_message() -> None:
    body = [
        call("get_ticket"),
        {"jsonrpc": "2.0", "method": "notifications/progress"},
        call("delete_ticket"),
    ]
    mapping = mapped(post(body))
    assert mapping.batch
    assert [m.action for m in mapping.messages] == [
        MethodAction.POLICY,
        MethodAction.ALLOW,
        MethodAction.POLICY,
    ]
    assert [m.request["tool"] for m in mapping.messages if m.request] == [
        "get_ticket",
        "delete_ticket",
    ]


def test_bad_message_in_a_batch_names_its_index() -> None:
    mapping = mapped(
        post([call(), {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {}}])
    )
    assert mapping.messages[0].error is None
    error = mapping.messages[1].error
    assert error is not None and error.field == "[1].params.name"


@pytest.mark.parametrize(
    ("body", "headers", "rule"),
    [
        ([], {}, "empty_batch"),
        ([call()], {"Mcp-Method": "tools/call"}, "batch"),
        ([call()], {"MCP-Protocol-Version": "2026-07-28"}, "batch"),
        ([call()] * 65, {}, "too_many"),
    ],
)
def test_bad_batches(body: list, headers: dict[str, str], rule: str) -> None:
    assert error_of(post(body, headers)).rule == rule


# --- replies ------------------------------------------------------------------------


def test_denied_reply_is_a_jsonrpc_error_with_reasons_and_decision_id() -> None:
    mapping = mapped(post(call()))
    verdicts = [Verdict("d-1", False, (Reason("floor.intent", "no intent declared"),))]
    reply = denied_reply(mapping, verdicts)
    assert reply.status == 403
    body = json.loads(reply.body)
    assert body["id"] == 7 and body["error"]["code"] == DENIED_CODE
    assert "floor.intent: no intent declared" in body["error"]["message"]
    assert "d-1" in body["error"]["message"]
    assert body["error"]["data"] == {
        "decision": "deny",
        "decision_id": "d-1",
        "reasons": [{"policy": "floor.intent", "message": "no intent declared"}],
    }
    assert not allowed(verdicts)


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (b"{", {}, -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', {}, -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}', {}, -32600),
        (json.dumps(call()).encode(), {"Mcp-Method": "tools/list"}, -32020),
    ],
)
def test_invalid_input_replies_400_with_the_jsonrpc_code(
    body: bytes, headers: dict, code: int
) -> None:
    mapping = mapped(post(body, headers))
    reply = denied_reply(mapping, [Verdict("d-2", False, (Reason("invalid_mcp_request", "x"),))])
    assert reply.status == 400
    assert json.loads(reply.body)["error"]["code"] == code


def test_denied_batch_answers_every_request() -> None:
    body = [
        call("get_ticket"),
        {"jsonrpc": "2.0", "method": "notifications/progress"},
        {**call("delete_ticket"), "id": 8},
    ]
    mapping = mapped(post(body))
    verdicts = [
        Verdict("a", True, (Reason("p", ""),)),
        Verdict("b", True, ()),
        Verdict("c", False, (Reason("no.delete", "never"),)),
    ]
    assert decision_id_header(verdicts) == "a,b,c"
    answers = json.loads(denied_reply(mapping, verdicts).body)
    assert [a["id"] for a in answers] == [7, 8]
    assert "message [2] was denied" in answers[0]["error"]["message"]
    assert answers[1]["error"]["data"]["reasons"] == [{"policy": "no.delete", "message": "never"}]


def test_denied_notification_answers_with_null_id() -> None:
    mapping = mapped(
        post({"jsonrpc": "2.0", "method": "notifications/x"}),
        rules=MethodRules.with_overrides({"notifications/*": "deny"}),
    )
    body = json.loads(denied_reply(mapping, [Verdict("n", False, ())]).body)
    assert body["id"] is None


# --- strict JSON and robustness -----------------------------------------------------


def test_loads_strict_accepts_ordinary_json() -> None:
    assert loads_strict(b'{"a":[1,2,{"b":"\\u00e9"}]}') == {"a": [1, 2, {"b": "é"}]}
    with pytest.raises(RequestError):
        loads_strict(b"\xef\xbb\xbf{}")  # a BOM


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    verb=st.sampled_from(["POST", "GET", "DELETE", "PATCH"]),
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["jsonrpc", "id", "method", "params", "name", "arguments", "_meta", "x"]
                    ),
                    children,
                    max_size=5,
                )
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    headers=st.dictionaries(
        st.sampled_from(
            ["mcp-method", "mcp-name", "x-pdp-intent", "mcp-protocol-version", "mcp-session-id"]
        ),
        st.text(max_size=30),
        max_size=3,
    ),
)
def test_never_raises_and_never_lets_an_error_through(
    verb: str, body: bytes, headers: dict
) -> None:
    mapping = mapped(HttpRequest.build(verb, headers, body))
    assert mapping.messages
    for message in mapping.messages:
        if message.error is not None:
            assert message.action is MethodAction.DENY and message.request is None
        if message.request is not None:
            assert message.action is MethodAction.POLICY and message.method == "tools/call"


# --- signed intents and JWT-SVIDs: passed on as tokens for pdp.proof to verify ----------

JWS = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_a_signed_intent_in_meta_or_header_is_passed_on_as_a_token() -> None:
    for http in (
        post(call(_meta={"pdp.dev/intent": JWS})),
        post(call(), {"x-pdp-intent": JWS}),
        post(call(_meta={"pdp.dev/intent": JWS}), {"x-pdp-intent": f" {JWS} "}),
    ):
        message = only(http)
        assert message.error is None
        assert message.request is not None and message.request["intent"] == {"token": JWS}
    conflict = post(call(_meta={"pdp.dev/intent": JWS}), {"x-pdp-intent": json.dumps(INTENT)})
    assert error_of(conflict).rule == "conflict"


def test_the_agents_jwt_svid_header_is_passed_on() -> None:
    message = only(post(call(), {"x-pdp-agent-svid": JWS}))
    assert message.request is not None and message.request["agent_svid"] == JWS
    twice = HttpRequest.build(
        "POST", [("x-pdp-agent-svid", JWS), ("x-pdp-agent-svid", JWS)], json.dumps(call()).encode()
    )
    assert only(twice).error is not None
