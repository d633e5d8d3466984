"""DecisionService/AllowedTools through pdp.client against a real server: one verdict
per tool of the server, agreeing with Check; one audit record; refusals and failures
give no tools at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pdp.audit.record import METHOD_ALLOWED_TOOLS, build_decision_record
from pdp.client import (
    FAILURE_UNREACHABLE,
    Client,
    ClientIdentity,
    Intent,
    ToolAnswer,
    ToolCall,
)
from pdp.replay.records import LineKind, Skipped, read_record
from pdp.service import DecisionServer
from tests.audit.helpers import CALLER, INSTANCE, REDACTOR
from tests.service.conftest import PARTNER_GATEWAY_ID, Pki, RecordingSink

from .conftest import SERVER_ID, write_identity

SUPPORT = "spiffe://acme.test/agent/support-bot"
VALID_ARGUMENTS = {  # as each tool's input schema in policies/entities.json requires
    "get_ticket": {"ticket_id": "T-1"},
    "delete_ticket": {"ticket_id": "T-1"},
    "search_tickets": {"query": "printer"},
}
INTENT = Intent("support.triage", ("crm/*",), datetime.now(UTC) + timedelta(hours=1))


def test_verdicts_agree_with_check_and_are_audited_once(
    server: DecisionServer, sink: RecordingSink, gateway_identity: ClientIdentity
) -> None:
    with Client(server.address, gateway_identity) as pdp:
        listing = pdp.allowed_tools(SUPPORT, "crm", intent=INTENT, session="s-1")
        assert listing.failure is None and listing.decision_id and listing.policy_version
        answers = {v.tool: v.answer for v in listing.verdicts}
        assert answers["get_ticket"] is ToolAnswer.ALLOW
        assert answers["delete_ticket"] is ToolAnswer.DENY
        assert "delete_ticket" not in listing.callable_tools()
        recorded = len(sink.decisions)
        for verdict in listing.verdicts:
            if verdict.answer is ToolAnswer.DEPENDS_ON_ARGUMENTS:
                continue
            arguments = VALID_ARGUMENTS[verdict.tool]
            answer = pdp.check(ToolCall(SUPPORT, "crm", verdict.tool, arguments, INTENT))
            assert answer.allowed == (verdict.answer is ToolAnswer.ALLOW), verdict
    listed = [e for e in sink.decisions if e.method == METHOD_ALLOWED_TOOLS]
    assert len(listed) == 1 and recorded == 1
    event = listed[0]
    assert event.decision_id == listing.decision_id
    assert event.data["gateway"] == "spiffe://pdp.test/gateway/edge"
    assert event.tools is not None and [t["tool"] for t in event.tools] == sorted(answers)


def test_the_record_lists_every_answer_and_replay_skips_it() -> None:
    from pdp.engine import Engine, load_policies
    from pdp.engine.tools import allowed_tools
    from pdp.model import Request
    from tests.service.conftest import POLICIES

    engine = Engine(load_policies(POLICIES))
    now = datetime.now(UTC)
    template = Request(SUPPORT, "crm", "", {}, now, INTENT)
    listing = allowed_tools(engine, template)
    record = build_decision_record(
        "id-1", template, engine.decide(Request(SUPPORT, "crm", "get_ticket", {}, now, INTENT)),
        CALLER, 1, INSTANCE, REDACTOR, method=METHOD_ALLOWED_TOOLS,
        tools=[v.to_json() for v in listing.verdicts],
    )  # fmt: skip
    assert [t["answer"] for t in record["tools"]] == [v.answer.value for v in listing.verdicts]
    line = read_record("log:1", json.dumps(record))
    assert isinstance(line, Skipped) and line.kind is LineKind.EVENT


def test_a_caller_not_bound_to_the_agent_gets_no_tools(
    pki: Pki, server: DecisionServer, sink: RecordingSink, tmp_path: Path
) -> None:
    files = write_identity(tmp_path / "partner", pki.partner_gateway, pki.ca.bundle_pem)
    identity = ClientIdentity.files(files["cert"], files["key"], files["bundle"], SERVER_ID)
    with Client(server.address, identity) as pdp:
        listing = pdp.allowed_tools(SUPPORT, "crm", intent=INTENT)
    identity.close()
    assert listing.verdicts == () and listing.callable_tools() == ()
    assert [r.policy for r in listing.reasons] == ["caller_not_bound"]
    assert PARTNER_GATEWAY_ID in listing.reasons[0].message
    assert sink.decisions[-1].method == METHOD_ALLOWED_TOOLS


def test_invalid_requests_and_unknown_servers(
    server: DecisionServer, gateway_identity: ClientIdentity
) -> None:
    with Client(server.address, gateway_identity) as pdp:
        invalid = pdp.allowed_tools("not-a-spiffe-id", "crm", intent=INTENT)
        assert invalid.verdicts == () and invalid.reasons[0].policy == "invalid_request"
        assert "agent" in invalid.reasons[0].message
        unknown = pdp.allowed_tools(SUPPORT, "nowhere", intent=INTENT)
        assert unknown.verdicts == () and unknown.reasons == () and unknown.decision_id
        as_json = pdp.allowed_tools(
            SUPPORT, "crm", intent={"purpose": "support.triage", "tools": ["crm/get_ticket"]}
        )
        assert as_json.callable_tools() == ("get_ticket",)  # the floor: outside the intent


def test_an_unrecorded_listing_gives_no_tools(
    make_server: Callable[..., DecisionServer], gateway_identity: ClientIdentity
) -> None:
    failing = RecordingSink(fail=True)
    server = make_server(sink=failing)
    with Client(server.address, gateway_identity) as pdp:
        listing = pdp.allowed_tools(SUPPORT, "crm", intent=INTENT)
    assert listing.verdicts == ()
    assert [r.policy for r in listing.reasons] == ["audit_unavailable"]


def test_unreachable_pdp_lists_nothing(gateway_identity: ClientIdentity) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"127.0.0.1:{port}", gateway_identity, timeout=3) as pdp:
        listing = pdp.allowed_tools(SUPPORT, "crm", intent=INTENT)
    assert listing.verdicts == () and listing.failure == FAILURE_UNREACHABLE


class DeferredRecordingSink(RecordingSink):
    """Shaped like the durable audit log: Check hands records over and is called back;
    AllowedTools waits for its one record, which must not happen on the event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.waited_on: list[str] = []

    def record_decisions(self, events: Any, timeout: float | None) -> Any:
        import threading

        self.waited_on.append(threading.current_thread().name)
        return super().record_decisions(events, timeout)

    def submit_decisions(self, events: Any, timeout: float | None, on_settled: Any) -> Any:
        flags = super().record_decisions(events, timeout)
        on_settled()
        return _Settled(list(flags))


class _Settled:
    wait_s = 5.0

    def __init__(self, flags: list[bool]) -> None:
        self._flags = flags

    def flags(self) -> list[bool]:
        return self._flags


def test_a_listing_waits_for_its_record_on_a_pool_thread_with_a_durable_sink(
    make_server: Callable[..., DecisionServer], gateway_identity: ClientIdentity
) -> None:
    sink = DeferredRecordingSink()
    server = make_server(sink=sink)
    with Client(server.address, gateway_identity) as pdp:
        listing = pdp.allowed_tools(SUPPORT, "crm", intent=INTENT)
    assert listing.verdicts and sink.decisions[-1].method == METHOD_ALLOWED_TOOLS
    assert sink.waited_on and all(name.startswith("pdp-rpc") for name in sink.waited_on)
