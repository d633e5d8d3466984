"""The decision service end to end over real mTLS sockets: answers, limits, failures."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.engine import Engine
from pdp.service import DecisionServer, RefusalCode
from pdp.service.config import ServiceLimits

from .conftest import (
    GATEWAY_ID,
    PARTNER_GATEWAY_ID,
    ClientFactory,
    Pki,
    RecordingSink,
    ServerFactory,
    example_request,
    rpc_error,
    to_message,
)


def reasons(response: pb.CheckResponse) -> list[str]:
    return [r.policy for r in response.reasons]


def is_uuid7(text: str) -> bool:
    return uuid.UUID(text).version == 7


# --- answers ----------------------------------------------------------------------


def test_check_answers_like_pdp_check(
    server: DecisionServer, connect: ClientFactory, engine: Engine, sink: RecordingSink
) -> None:
    client = connect(server)
    for name in ("support-get-ticket", "support-delete-ticket"):
        data = example_request(name)
        response = client.check(data)
        expected = engine.decide_json({**data, "gateway": GATEWAY_ID}, now=datetime.now(UTC))
        assert response.decision == (pb.DECISION_ALLOW if expected.allowed else pb.DECISION_DENY)
        assert [(r.policy, r.message) for r in response.reasons] == [
            (r.policy, r.message) for r in expected.reasons
        ]
        assert response.policy_version == engine.version
        assert is_uuid7(response.decision_id)
    assert len({e.decision_id for e in sink.decisions}) == 2  # one event per decision


def test_gateway_is_the_authenticated_caller(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    data = {**example_request(), "gateway": "spiffe://acme.test/gateway/forged"}
    connect(server).check(data)
    (event,) = sink.decisions
    assert event.caller.spiffe_id == GATEWAY_ID
    assert event.data["gateway"] == GATEWAY_ID
    assert event.request is not None and event.request.gateway == GATEWAY_ID
    assert event.method == "/pdp.v1.DecisionService/Check"
    assert event.latency_us >= 0


def test_check_batch_answers_in_order(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    allow, deny = example_request("support-get-ticket"), example_request("support-delete-ticket")
    broken = {**allow, "agent": "not-a-spiffe-id"}
    unbound = {**allow, "agent": "spiffe://partner.test/agent/helper"}
    batch = [allow, deny, broken, allow, unbound]
    responses = connect(server).check_batch(batch).responses
    assert [r.decision for r in responses] == [
        pb.DECISION_ALLOW,
        pb.DECISION_DENY,
        pb.DECISION_DENY,
        pb.DECISION_ALLOW,
        pb.DECISION_DENY,
    ]
    assert reasons(responses[2]) == ["invalid_request"]
    assert reasons(responses[4]) == ["caller_not_bound"]
    ids = [r.decision_id for r in responses]
    assert len(set(ids)) == 5 and all(is_uuid7(i) for i in ids)
    assert [e.decision_id for e in sink.decisions] == ids
    assert sink.decisions[2].request is None
    assert sink.decisions[2].data["agent"] == "not-a-spiffe-id"


def test_empty_batch(server: DecisionServer, connect: ClientFactory) -> None:
    assert list(connect(server).check_batch([]).responses) == []


def test_caller_not_bound_is_a_deny(
    server: DecisionServer, connect: ClientFactory, pki: Pki
) -> None:
    # The partner gateway is bound to partner.test agents only.
    response = connect(server, pki.partner_gateway).check(example_request())
    assert response.decision == pb.DECISION_DENY
    assert reasons(response) == ["caller_not_bound"]
    assert PARTNER_GATEWAY_ID in response.reasons[0].message
    helper = {**example_request(), "agent": "spiffe://partner.test/agent/helper"}
    response = connect(server, pki.partner_gateway).check(helper)
    assert "caller_not_bound" not in reasons(response)


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"agent": "spiffe://acme.test/agent/bot\n"}, "agent", "spiffe_id"),
        ({"server": ""}, "server", "required"),
        ({"tool": "a/b"}, "tool", "charset"),
        ({"arguments": {"ratio": 1.5}}, "arguments.ratio", "type"),
        ({"arguments": {"nothing": None}}, "arguments.nothing", "type"),
        ({"intent": {"tools": ["crm"]}}, "intent.tools[0]", "format"),
    ],
)
def test_invalid_requests_are_denied_naming_field_and_rule(
    server: DecisionServer,
    connect: ClientFactory,
    change: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    client = connect(server)
    response = client.check({**example_request(), **change})
    assert response.decision == pb.DECISION_DENY
    assert reasons(response) == ["invalid_request"]
    assert response.reasons[0].message.startswith(f"{field}:")
    assert f"(rule: {rule})" in response.reasons[0].message
    assert client.check(example_request()).decision == pb.DECISION_ALLOW  # still serving


def test_struct_numbers_become_integers(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    data = {**example_request(), "arguments": {"ticket_id": "T-1", "page": {"n": 3}}}
    connect(server).check(data)
    request = sink.decisions[0].request
    assert request is not None
    assert request.arguments == {"ticket_id": "T-1", "page": {"n": 3}}
    assert isinstance(request.arguments["page"]["n"], int)


def test_malformed_message_is_an_invalid_request_deny(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    client = connect(server)
    response = client.check_raw(b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert response.decision == pb.DECISION_DENY
    assert reasons(response) == ["invalid_request"]
    assert "not a valid pdp.v1.CheckRequest" in response.reasons[0].message
    assert is_uuid7(response.decision_id)
    assert sink.decisions[0].request is None
    assert client.check(example_request()).decision == pb.DECISION_ALLOW


@pytest.mark.parametrize(
    ("levels", "rule"),
    [
        (20, "depth"),  # deeper than Limits.max_depth (16): the model's rule
        (200, "malformed"),  # deeper than protobuf's decoder allows: undecodable
    ],
)
def test_deeply_nested_arguments_are_denied_not_crashed(
    server: DecisionServer, connect: ClientFactory, levels: int, rule: str
) -> None:
    nested: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels):
        nested = {"n": nested}
    client = connect(server)
    message = to_message(example_request())
    # json_format would refuse to build the deep message; assemble the bytes by hand.
    data = message.SerializeToString() + _arguments_field(nested)
    response = client.check_raw(data)
    assert reasons(response) == ["invalid_request"]
    assert f"(rule: {rule})" in response.reasons[0].message
    assert client.check(example_request()).decision == pb.DECISION_ALLOW


def _arguments_field(value: dict[str, Any]) -> bytes:
    """CheckRequest field 4 (arguments, a Struct) encoded by hand, any depth."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def length_delimited(field: int, payload: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    def struct(obj: dict[str, Any]) -> bytes:
        entries = b""
        for key, item in obj.items():
            if isinstance(item, dict):
                encoded_value = length_delimited(5, struct(item))  # Value.struct_value
            else:
                encoded_value = length_delimited(3, item.encode())  # Value.string_value
            entry = length_delimited(1, key.encode()) + length_delimited(2, encoded_value)
            entries += length_delimited(1, entry)  # Struct.fields map entry
        return entries

    return length_delimited(4, struct(value))


def test_oversized_message_is_resource_exhausted(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = make_server(limits=ServiceLimits(max_message_bytes=16 * 1024))
    client = connect(server)
    big = {**example_request(), "arguments": {"blob": "x" * 20_000}}
    error = rpc_error(lambda: client.check(big))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.check(example_request()).decision == pb.DECISION_ALLOW


def test_arguments_over_the_model_limit_are_denied(
    server: DecisionServer, connect: ClientFactory
) -> None:
    big = {**example_request(), "arguments": {f"k{i}": "x" * 8000 for i in range(9)}}
    response = connect(server).check(big)
    assert reasons(response) == ["invalid_request"]
    assert "(rule: too_large)" in response.reasons[0].message


def test_batch_over_the_limit_is_refused(
    make_server: ServerFactory, connect: ClientFactory, sink: RecordingSink
) -> None:
    server = make_server(sink=sink, limits=ServiceLimits(max_batch=3))
    client = connect(server)
    error = rpc_error(lambda: client.check_batch([example_request()] * 4))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 3" in (error.details() or "")
    assert sink.refusals[-1].code is RefusalCode.RESOURCE_EXHAUSTED
    assert len(client.check_batch([example_request()] * 3).responses) == 3


def test_rate_limit_per_caller(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    from pdp.service import RateLimit

    server = make_server(sink=sink, rate_limit=RateLimit(decisions_per_second=0.01, burst=3))
    gateway = connect(server)
    for _ in range(3):
        gateway.check(example_request())
    error = rpc_error(lambda: gateway.check(example_request()))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in (error.details() or "")
    refusal = sink.refusals[-1]
    assert refusal.code is RefusalCode.RESOURCE_EXHAUSTED
    assert refusal.caller is not None and refusal.caller.spiffe_id == GATEWAY_ID
    assert refusal.refusal_id in (error.details() or "")
    # Another caller has its own bucket.
    other = connect(server, pki.svid("spiffe://pdp.test/gateway/other"))
    assert other.check(example_request()).decision == pb.DECISION_ALLOW


# --- failure is a deny --------------------------------------------------------------


def test_sink_failure_turns_the_answer_into_audit_unavailable(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    sink.fail = True
    response = connect(server).check(example_request())
    assert response.decision == pb.DECISION_DENY
    assert reasons(response) == ["audit_unavailable"]
    assert is_uuid7(response.decision_id)
    sink.fail = False
    sink.error = RuntimeError("disk on fire")
    responses = connect(server).check_batch([example_request()] * 2).responses
    assert [reasons(r) for r in responses] == [["audit_unavailable"]] * 2


def test_sink_sees_the_remaining_deadline(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    connect(server).check(example_request(), timeout=5)
    connect(server).check(example_request(), timeout=None)
    assert sink.timeouts[0] is not None and 3 < sink.timeouts[0] <= 5
    assert sink.timeouts[1] is None


class _BrokenEngine(Engine):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.compiled, engine.limits)

    def decide_batch(self, requests: Any) -> Any:
        raise MemoryError("simulated")


def test_internal_error_is_a_deny(
    make_server: ServerFactory, connect: ClientFactory, engine: Engine, sink: RecordingSink
) -> None:
    server = make_server(sink=sink, engine_=_BrokenEngine(engine))
    client = connect(server)
    response = client.check(example_request())
    assert response.decision == pb.DECISION_DENY
    assert reasons(response) == ["internal_error"]
    assert sink.decisions[0].decision.reasons[0].policy == "internal_error"
    batch = client.check_batch([example_request()] * 3).responses
    assert [reasons(r) for r in batch] == [["internal_error"]] * 3
    # Invalid requests are still told apart (they never reach the engine)...
    bad = client.check({**example_request(), "agent": "x"})
    assert reasons(bad) == ["invalid_request"]


def test_expired_deadline_is_not_decided(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    error = rpc_error(lambda: connect(server).check(example_request(), timeout=0.000001))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


# --- health and reflection ---------------------------------------------------------


def test_health_and_reflection_over_mtls(server: DecisionServer, connect: ClientFactory) -> None:
    channel = connect(server).channel
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "pdp.v1.DecisionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter(
        [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="pdp.v1.DecisionService"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="pdp.v1.AuditService"),
        ]
    )
    listed, described, audit = list(stub.ServerReflectionInfo(requests, timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"pdp.v1.DecisionService", "pdp.v1.AuditService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto
    assert audit.file_descriptor_response.file_descriptor_proto


def test_health_requires_an_authenticated_peer(
    server: DecisionServer, connect: ClientFactory, pki: Pki
) -> None:
    forged = pki.partner.issue_svid("spiffe://pdp.test/gateway/edge")
    health = health_pb2_grpc.HealthStub(connect(server, forged).channel)
    error = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # Any authenticated peer may ask, allow-listed or not.
    health = health_pb2_grpc.HealthStub(connect(server, pki.stranger).channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1


def test_stop_reports_not_serving_and_refuses_new_calls(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = make_server()
    client = connect(server)
    assert client.check(example_request()).decision == pb.DECISION_ALLOW
    server.stop(grace=1)
    # The port is closed now, so read the health servicer's table directly.
    table = server.health._server_status
    statuses = {table.get(s) for s in ("", "pdp.v1.DecisionService")}
    assert statuses == {health_pb2.HealthCheckResponse.NOT_SERVING}
    error = rpc_error(lambda: client.check(example_request(), timeout=2))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_arguments_outside_the_tool_schema_are_denied_over_mtls(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    # The rule lives in the engine: the gRPC front door gets it with nothing of its own,
    # for one call and inside a batch, and the record carries the reasons.
    client = connect(server)
    bad = {**example_request(), "arguments": {"ticket_id": "T-1", "admin": True}}
    response = client.check(bad)
    assert response.decision == pb.DECISION_DENY
    assert [(r.policy, r.message) for r in response.reasons] == [
        (
            "invalid_arguments",
            "arguments.admin: is not a declared argument (rule: additionalProperties)",
        )
    ]
    hostile = {**example_request(), "arguments": {"ticket_id": "T-1\x1b]0;pwned\x07"}}
    batch = client.check_batch([example_request(), hostile])
    assert [r.decision for r in batch.responses] == [pb.DECISION_ALLOW, pb.DECISION_DENY]
    assert batch.responses[1].reasons[0].message == (
        "arguments.ticket_id: contains control character U+001B (ESC) at 3"
        " (rule: control_character)"
    )
    recorded = [e.decision for e in sink.decisions]
    assert [r.policy for r in recorded[0].reasons] == ["invalid_arguments"]
