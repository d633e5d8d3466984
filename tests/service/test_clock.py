"""The service decides at its own clock: a request's ``time`` is ignored for the
decision (and kept apart in the record), over the real gRPC server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit import Audit, AuditConfig, FileSinkConfig
from pdp.audit.service_sink import AuditDecisionSink
from pdp.engine import Engine, load_policies
from pdp.identity.spiffe_id import SpiffeIdPattern
from pdp.model import Caller, format_time
from pdp.service.gate import CallerGrant
from pdp.service.servicer import DecisionCore, FixedEngine, PendingCall
from tests.audit.helpers import log_lines
from tests.conftest import PolicyDirFactory

from .conftest import (
    GATEWAY_ID,
    ClientFactory,
    RecordingSink,
    ServerFactory,
    example_request,
)

INTENT = {"purpose": "support.triage", "tools": ["crm/get_ticket"]}


def _backdated(expired_ago: timedelta, sent_ago: timedelta) -> dict[str, Any]:
    """The example request with an intent that expired ``expired_ago`` and a ``time``
    from before that expiry."""
    now = datetime.now(UTC)
    data = example_request()
    data["intent"] = {**data["intent"], "expires_at": format_time(now - expired_ago)}
    data["time"] = format_time(now - sent_ago)
    return data


def test_backdated_time_does_not_revive_an_expired_intent(
    server: Any, connect: ClientFactory, sink: RecordingSink
) -> None:
    data = _backdated(timedelta(hours=1), timedelta(days=30))
    client = connect(server)
    started = datetime.now(UTC)
    for response in (client.check(data), *client.check_batch([data, data]).responses):
        assert response.decision == pb.DECISION_DENY
        assert [r.policy for r in response.reasons] == ["floor.intent_expired"]
    # The same request with no time and a live intent is allowed: only the clock denied it.
    live = {**data, "intent": {**data["intent"], "expires_at": "2099-01-01T00:00:00Z"}}
    del live["time"]
    assert client.check(live).decision == pb.DECISION_ALLOW
    event = sink.decisions[0]
    assert event.request is not None
    assert event.request.time >= started - timedelta(seconds=1)  # decided at the server's clock
    assert event.caller_time == data["time"]
    assert "time" not in event.data
    assert sink.decisions[-1].caller_time is None


def test_backdated_time_does_not_step_around_a_time_window_policy(
    make_server: ServerFactory,
    make_policy_dir: PolicyDirFactory,
    connect: ClientFactory,
    sink: RecordingSink,
) -> None:
    cutoff = int((datetime.now(UTC) - timedelta(days=1)).timestamp())
    policies = make_policy_dir(
        {
            "read.cedar": f"""
@id("support.read")
@reason("support may read")
permit (principal in AgentGroup::"support", action in Action::"read", resource);

@id("crm.retired")
@reason("the CRM was retired yesterday")
forbid (principal, action, resource == McpServer::"crm")
when {{ context.time.epoch >= {cutoff} }};
"""
        }
    )
    server = make_server(sink=sink, engine_=Engine(load_policies(policies)))
    request = {
        "agent": "spiffe://acme.test/agent/bot",
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-1"},
        "intent": INTENT,
        "time": format_time(datetime.fromtimestamp(cutoff, UTC) - timedelta(days=7)),
    }
    client = connect(server)
    for response in (client.check(request), *client.check_batch([request]).responses):
        assert response.decision == pb.DECISION_DENY
        assert [r.policy for r in response.reasons] == ["crm.retired"]


def test_the_record_keeps_the_sent_time_apart_from_the_time_decided_at(
    make_server: ServerFactory, connect: ClientFactory, tmp_path: Path
) -> None:
    audit = Audit(AuditConfig(FileSinkConfig(tmp_path / "audit"), instance_id="clock-test"))
    server = make_server(sink=AuditDecisionSink(audit))
    data = _backdated(timedelta(hours=1), timedelta(days=30))
    connect(server).check(data)
    server.stop(5)
    assert audit.close()
    (record,) = [r for r in log_lines(tmp_path / "audit") if r["kind"] == "decision"]
    assert record["caller_time"] == data["time"]
    assert record["request"]["time"] != data["time"]
    decided_at = datetime.fromisoformat(record["request"]["time"].replace("Z", "+00:00"))
    assert abs(decided_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert record["decision"] == "deny"


def test_a_front_door_handing_request_data_decides_at_the_server_clock(engine: Engine) -> None:
    # A door with its own wire format (Envoy ext_authz, MCP) hands DecisionCore request
    # data in the JSON shape of `pdp check`: the same clock rule applies to it.
    sink = RecordingSink()
    core = DecisionCore(FixedEngine(engine), sink, new_id=lambda: "door-1")
    data = _backdated(timedelta(hours=1), timedelta(days=30))
    grant = CallerGrant(
        Caller(GATEWAY_ID, "1", "pdp.test"), (SpiffeIdPattern("spiffe://acme.test/agent/*"),)
    )
    sent = dict(data)
    ((response,),) = core.decide_calls(
        [PendingCall((data,), grant, "/door/Check", time.perf_counter_ns(), None)]
    )
    assert response.decision == pb.DECISION_DENY
    assert [r.policy for r in response.reasons] == ["floor.intent_expired"]
    assert data == sent  # the door's data is not changed
    (event,) = sink.decisions
    assert event.caller_time == data["time"] and event.data["gateway"] == GATEWAY_ID
    # Data that breaks a rule is an invalid_request deny like a bad CheckRequest.
    broken = {**data, "agent": "not-a-spiffe-id"}
    ((response,),) = core.decide_calls(
        [PendingCall((broken,), grant, "/door/Check", time.perf_counter_ns(), None)]
    )
    assert [r.policy for r in response.reasons] == ["invalid_request"]
    assert sink.decisions[-1].caller_time == data["time"]
