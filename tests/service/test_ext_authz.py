"""The ext_authz door on a real server socket: Envoy-shaped CheckRequests over mTLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as ea
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.mcp import DENIED_CODE
from pdp.model import DEFAULT_LIMITS
from pdp.service import DecisionServer
from pdp.service.ext_authz import EXT_AUTHZ_CHECK
from pdp.service.servicer import CHECK_METHOD
from tests.service.conftest import TIMEOUT, Pki, RecordingSink, ServerFactory, rpc_error

AGENT = "spiffe://acme.test/agent/support-bot"
INTENT = {"purpose": "support.triage", "tools": ["crm/get_ticket"]}


def tool_call(
    name: str = "get_ticket", arguments: Any = None, intent: Any = INTENT, id_: Any = 1
) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments or {"ticket_id": "T-1"}}
    if intent is not None:
        params["_meta"] = {"pdp.dev/intent": intent}
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


def envoy_request(
    body: Any = None,
    *,
    principal: str = AGENT,
    server: str | None = "crm",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    raw_headers: list[tuple[str, str]] | None = None,
    raw_body: bytes | None = None,
) -> ea.CheckRequest:
    http = ac.AttributeContext.HttpRequest(method=method, path="/mcp", host="gateway")
    if raw_headers is not None:
        for key, value in raw_headers:
            http.header_map.headers.add(key=key, raw_value=value.encode())
    else:
        http.headers.update({"content-type": "application/json", **(headers or {})})
    if raw_body is not None:
        http.raw_body = raw_body
    elif body is not None:
        http.raw_body = json.dumps(body).encode()
    request = ea.CheckRequest()
    request.attributes.request.http.CopyFrom(http)
    request.attributes.source.principal = principal
    if server is not None:
        request.attributes.context_extensions["mcp_server"] = server
    return request


class Door:
    def __init__(self, server: DecisionServer, svid: Any, roots: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=svid.key_pem, certificate_chain=svid.chain_pem
        )
        self.channel = grpc.secure_channel(server.address, credentials)
        self._check = self.channel.unary_unary(
            EXT_AUTHZ_CHECK,
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=ea.CheckResponse.FromString,
        )

    def check(self, request: ea.CheckRequest | bytes) -> ea.CheckResponse:
        response: ea.CheckResponse = self._check(request, timeout=TIMEOUT)
        return response


@pytest.fixture
def door_factory(pki: Pki) -> Iterator[Any]:
    doors: list[Door] = []

    def make(server: DecisionServer, svid: Any = None) -> Door:
        door = Door(server, svid or pki.gateway, pki.ca.bundle_pem)
        doors.append(door)
        return door

    yield make
    for door in doors:
        door.channel.close()


@pytest.fixture
def door(server: DecisionServer, door_factory: Any) -> Door:
    return door_factory(server)


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def denial(response: ea.CheckResponse) -> tuple[int, dict[str, Any]]:
    assert response.status.code != 0
    assert response.WhichOneof("http_response") == "denied_response"
    denied = response.denied_response
    assert headers_of(denied.headers)["content-type"] == "application/json"
    return denied.status.code, json.loads(denied.body)


def test_allowed_tool_call_adds_the_decision_id(door: Door, sink: RecordingSink) -> None:
    response = door.check(envoy_request(tool_call(), headers={"mcp-session-id": "s-1"}))
    assert response.status.code == 0
    decision_id = headers_of(response.ok_response.headers)["x-pdp-decision-id"]
    [event] = sink.decisions
    assert event.decision_id == decision_id and event.decision.allowed
    assert event.method == EXT_AUTHZ_CHECK
    assert event.caller.spiffe_id == "spiffe://pdp.test/gateway/edge"
    assert event.request is not None and event.request.agent == AGENT
    assert event.request.session == "s-1" and event.request.gateway == event.caller.spiffe_id
    assert event.mcp == {"method": "tools/call", "http_method": "POST", "id": 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (tool_call(intent=None), "floor.intent_required"),
        (tool_call("search_tickets", {"query": "printer"}), "floor.tool_outside_intent"),
        (
            tool_call("delete_ticket", intent={"purpose": "x", "tools": ["crm/*"]}),
            "support.never_delete",
        ),
    ],
)
def test_policy_denies_reach_the_client_as_jsonrpc_errors(
    door: Door, sink: RecordingSink, body: Any, reason: str
) -> None:
    status, answer = denial(door.check(envoy_request(body)))
    assert status == 403
    assert answer["id"] == 1 and answer["error"]["code"] == DENIED_CODE
    data = answer["error"]["data"]
    assert reason in [r["policy"] for r in data["reasons"]]
    assert reason in answer["error"]["message"]
    [event] = sink.decisions
    assert event.decision_id == data["decision_id"] and not event.decision.allowed


def test_housekeeping_is_allowed_by_rule_and_audited(door: Door, sink: RecordingSink) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    assert door.check(envoy_request(init)).status.code == 0
    assert (
        door.check(envoy_request(method="GET", headers={"mcp-session-id": "s-9"})).status.code == 0
    )
    status, answer = denial(
        door.check(
            envoy_request(
                {
                    "jsonrpc": "2.0",
                    "id": 5,
                    "method": "resources/read",
                    "params": {"uri": "file:///etc/passwd"},
                }
            )
        )
    )
    assert status == 403 and answer["error"]["data"]["reasons"][0]["policy"] == "mcp_method_rule"
    notes = [e.mcp for e in sink.decisions]
    assert [n["method"] for n in notes] == ["initialize", "http:GET", "resources/read"]
    assert [e.decision.allowed for e in sink.decisions] == [True, True, False]
    assert all(e.decision.reasons[0].policy == "mcp_method_rule" for e in sink.decisions)
    assert sink.decisions[1].data["session"] == "s-9"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (envoy_request(tool_call(), principal=""), "attributes.source.principal"),
        (envoy_request(tool_call(), principal="CN=agent,O=acme"), "attributes.source.principal"),
        (envoy_request(tool_call(), server=None), "attributes.context_extensions.mcp_server"),
        (envoy_request(tool_call(), server="a/b"), "context_extensions.mcp_server"),
        (
            envoy_request(
                raw_body=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket","name":"delete_ticket"}}'
            ),
            "body",
        ),
        (envoy_request(raw_body=b"not json"), "body"),
        (envoy_request(tool_call(), headers={"x-envoy-auth-partial-body": "true"}), "body"),
        (envoy_request(tool_call(), headers={"mcp-method": "tools/list"}), "mcp-method"),
        (
            envoy_request(
                tool_call(), headers={"mcp-method": "tools/call", "mcp-name": "delete_ticket"}
            ),
            "mcp-name",
        ),
        (
            envoy_request(
                tool_call(),
                raw_headers=[
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "get_ticket"),
                    ("mcp-name", "delete_ticket"),
                ],
            ),
            "mcp-name",
        ),
    ],
)
def test_bad_input_is_a_deny_naming_the_problem(
    door: Door, sink: RecordingSink, request_: ea.CheckRequest, field: str
) -> None:
    status, answer = denial(door.check(request_))
    assert status == 400
    [reason] = answer["error"]["data"]["reasons"]
    assert reason["policy"] == "invalid_mcp_request"
    assert reason["message"].startswith(f"{field}:")
    [event] = sink.decisions
    assert not event.decision.allowed and event.request is None


def test_undecodable_check_request_is_denied_and_recorded(door: Door, sink: RecordingSink) -> None:
    status, answer = denial(door.check(b"\xff\xff\xff"))
    assert status == 400 and "envoy.service.auth.v3.CheckRequest" in answer["error"]["message"]
    assert len(sink.decisions) == 1


def test_batch_one_deny_denies_all(door: Door, sink: RecordingSink) -> None:
    intent = {"purpose": "x", "tools": ["crm/get_ticket", "crm/delete_ticket"]}
    body = [tool_call(intent=intent, id_=1), tool_call("delete_ticket", intent=intent, id_=2)]
    status, answer = denial(door.check(envoy_request(body)))
    assert status == 403
    assert [a["id"] for a in answer] == [1, 2]
    assert [e.decision.allowed for e in sink.decisions] == [True, False]
    assert all(e.mcp["batch"] == 2 for e in sink.decisions)


def test_allowed_batch(door: Door, sink: RecordingSink) -> None:
    body = [tool_call(id_=1), {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}]
    response = door.check(envoy_request(body))
    assert response.status.code == 0
    ids = headers_of(response.ok_response.headers)["x-pdp-decision-id"].split(",")
    assert ids == [e.decision_id for e in sink.decisions]


def test_agent_outside_the_gateways_binding(door: Door, sink: RecordingSink) -> None:
    for body in (tool_call(), {"jsonrpc": "2.0", "id": 0, "method": "ping"}):
        status, answer = denial(
            door.check(envoy_request(body, principal="spiffe://other.test/agent/x"))
        )
        assert status == 403
        assert answer["error"]["data"]["reasons"][0]["policy"] == "caller_not_bound"


def test_a_caller_off_the_allow_list_is_refused(
    server: DecisionServer, door_factory: Any, pki: Pki, sink: RecordingSink
) -> None:
    error = rpc_error(lambda: door_factory(server, pki.stranger).check(envoy_request(tool_call())))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert sink.decisions == [] and sink.refusals[0].method == EXT_AUTHZ_CHECK


def test_decision_service_still_answers_beside_the_door(door: Door) -> None:
    assert CHECK_METHOD != EXT_AUTHZ_CHECK


def test_rate_limit_applies_to_the_door(
    make_server: ServerFactory, door_factory: Any, sink: RecordingSink
) -> None:
    from pdp.service import RateLimit

    server = make_server(sink=sink, rate_limit=RateLimit(decisions_per_second=0.001, burst=1))
    door = door_factory(server)
    assert door.check(envoy_request(tool_call())).status.code == 0
    error = rpc_error(lambda: door.check(envoy_request(tool_call())))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_mcp_section_of_the_config_file() -> None:
    from pdp.mcp import MethodAction
    from pdp.service.config import ConfigError, config_from_mapping

    config = config_from_mapping(
        {
            "mcp": {
                "server_key": "route_server",
                "methods": {"resources/*": "allow", "tools/list": "deny"},
                "default": "deny",
                "max_body_bytes": 4096,
            }
        }
    )
    assert config.mcp.server_key == "route_server"
    assert config.mcp.rules.action("resources/read") is MethodAction.ALLOW
    assert config.mcp.rules.action("tools/list") is MethodAction.DENY
    assert config.mcp.rules.action("initialize") is MethodAction.ALLOW  # defaults kept
    assert config.mcp.limits.max_body_bytes == 4096
    for bad, fragment in (
        ({"methods": {"tools/call": "allow"}}, "mcp.methods"),
        ({"methods": {"ping": "sometimes"}}, "mcp.methods"),
        ({"default": "policy"}, "mcp.methods"),
        ({"max_body_bytes": 0}, "mcp.max_body_bytes"),
        ({"server_key": ""}, "mcp.server_key"),
        ({"typo": 1}, "mcp.typo"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            config_from_mapping({"mcp": bad})


def test_configured_rules_and_server_key_are_used(
    make_server: ServerFactory, door_factory: Any, sink: RecordingSink
) -> None:
    from pdp.mcp import MethodRules
    from pdp.service.config import McpDoorConfig

    mcp = McpDoorConfig(
        server_key="route_server", rules=MethodRules.with_overrides({"tools/list": "deny"})
    )
    door = door_factory(make_server(sink=sink, mcp=mcp))
    request = envoy_request({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, server=None)
    request.attributes.context_extensions["route_server"] = "crm"
    status, answer = denial(door.check(request))
    assert status == 403 and "tools/list is denied" in answer["error"]["message"]
    assert sink.decisions[0].data["server"] == "crm"


def test_door_records_are_not_replayed_as_policy_decisions() -> None:
    from pdp.audit.record import build_decision_record
    from pdp.audit.redact import Redactor
    from pdp.model import Caller, Decision, Effect, Reason
    from pdp.replay.records import LineKind, Skipped, read_record

    caller = Caller("spiffe://pdp.test/gateway/edge")
    for code in ("mcp_method_rule", "invalid_mcp_request"):
        record = build_decision_record(
            "d-1",
            {"agent": AGENT, "server": "crm", "gateway": caller.spiffe_id},
            Decision(Effect.ALLOW, (Reason(code, "initialize is allowed"),), "v1"),
            caller,
            5,
            "i",
            Redactor(),
            method=EXT_AUTHZ_CHECK,
            mcp={"method": "initialize", "http_method": "POST", "id": 0},
        )
        assert record["mcp"] == {"method": "initialize", "http_method": "POST", "id": 0}
        assert read_record("log:1", json.dumps(record)) == Skipped("log:1", LineKind.SERVICE)


# Just what ExtAuthzServicer.read needs from the decision servicer: the request limits.
_DECISIONS = SimpleNamespace(core=SimpleNamespace(engine=SimpleNamespace(limits=DEFAULT_LIMITS)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda principal, server, method, headers, body: envoy_request(
                principal=principal,
                server=server,
                method=method,
                headers=headers,
                raw_body=body,
            ).SerializeToString(),
            st.sampled_from([AGENT, "", "spiffe://acme.test", "CN=x", "spiffe://a.test/x/../y"]),
            st.one_of(st.none(), st.sampled_from(["crm", "", "a/b", "x" * 300])),
            st.sampled_from(["POST", "GET", "DELETE", "PUT", ""]),
            st.dictionaries(
                st.sampled_from(["mcp-method", "mcp-name", "x-pdp-intent", "mcp-session-id"]),
                st.text(max_size=20),
                max_size=3,
            ),
            st.binary(max_size=200),
        ),
    )
)
def test_reading_any_check_request_never_raises(data: bytes) -> None:
    from pdp.service.config import McpDoorConfig
    from pdp.service.ext_authz import ExtAuthzServicer, prepared_requests

    door = ExtAuthzServicer(_DECISIONS, McpDoorConfig())  # type: ignore[arg-type]
    mapping, agent, server = door.read(data)
    prepared = prepared_requests(mapping, agent, server)
    assert len(prepared) == len(mapping.messages) >= 1
    for message, entry in zip(mapping.messages, prepared, strict=True):
        # Only a well-formed tools/call goes to the policies; everything else has a verdict.
        assert (entry.verdict is None) == (message.request is not None)
