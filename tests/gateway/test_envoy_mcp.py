"""End to end with real parts: an ``mcp`` SDK client with its X.509-SVID -> Envoy
(mTLS, ext_authz over mTLS with Envoy's own SVID) -> pdp -> an ``mcp`` SDK server.

Shown here: an allowed tool call returns the tool's result; calls outside the intent,
without intent, forbidden by policy or by the floor reach the agent as an ``MCPError``
naming the reason, and never reach the server (it counts its calls); both MCP
revisions (2025-11-25 with its initialize and session, 2026-07-28 with Mcp-Method /
Mcp-Name headers); the audit log holds every decision with caller = Envoy's SPIFFE ID
and agent = the client's; pdp down -> Envoy fails closed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import MCPError

from pdp.audit import Audit, AuditConfig, AuditDecisionSink, FileSinkConfig, PipelineConfig
from pdp.audit.pipeline import DeliveryMode
from pdp.engine import Engine, load_policies
from pdp.gateway.agent import agent_ssl_context, call_tool, mcp_error
from pdp.gateway.envoy import EnvoyProcess, EnvoySettings, render_envoy_config
from pdp.gateway.sample_server import SampleServer
from pdp.identity.devca import DevCA, IssuedCert
from pdp.identity.sources import StaticFileSource
from pdp.mcp import DENIED_CODE
from pdp.service import CallerBinding, DecisionServer, RateLimit, ServerOptions, ServiceConfig
from tests.audit.helpers import log_lines

REPO = Path(__file__).resolve().parents[2]
PDP_TD, AGENT_TD = "pdp.test", "acme.test"
PDP_ID = f"spiffe://{PDP_TD}/pdp"
ENVOY_ID = f"spiffe://{PDP_TD}/gateway/envoy"
AGENT_ID = f"spiffe://{AGENT_TD}/agent/support-bot"
READ_INTENT = {"purpose": "support.triage", "tools": ["crm/get_ticket"]}

pytestmark = pytest.mark.timeout(240)


@dataclass
class Gateway:
    pdp: DecisionServer
    envoy: EnvoyProcess
    mcp: SampleServer
    audit_dir: Path
    agent_ssl: ssl.SSLContext
    tmp: Path
    pdp_ca: DevCA
    agent_ca: DevCA

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.envoy.port}/mcp"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _agent_ssl(tmp: Path, agent: IssuedCert, pdp_ca: DevCA) -> ssl.SSLContext:
    return agent_ssl_context(
        _write(tmp / "agent.pem", agent.chain_pem),
        _write(tmp / "agent.key", agent.key_pem),
        _write(tmp / "pdp-td.pem", pdp_ca.bundle_pem),
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    pdp_ca, agent_ca = DevCA.create(PDP_TD), DevCA.create(AGENT_TD)
    pdp_svid = pdp_ca.issue_svid(PDP_ID, ip_addresses=("127.0.0.1",))
    # The agent verifies Envoy as an HTTPS server on 127.0.0.1: the SVID carries that IP too.
    envoy_svid = pdp_ca.issue_svid(ENVOY_ID, ip_addresses=("127.0.0.1",))
    agent_svid = agent_ca.issue_svid(AGENT_ID)
    identity = StaticFileSource(
        _write(tmp / "pdp.pem", pdp_svid.chain_pem),
        _write(tmp / "pdp.key", pdp_svid.key_pem),
        {PDP_TD: _write(tmp / "pdp-bundle.pem", pdp_ca.bundle_pem)},
    )
    audit_dir = tmp / "audit"
    audit = Audit(
        AuditConfig(
            FileSinkConfig(audit_dir),
            instance_id="e2e",
            pipeline=PipelineConfig(mode=DeliveryMode.SYNC),
        )
    )
    config = ServiceConfig(
        listen="127.0.0.1:0",
        policies=REPO / "policies",
        callers=(CallerBinding(f"spiffe://{PDP_TD}/gateway/*", (f"spiffe://{AGENT_TD}/agent/*",)),),
        rate_limit=RateLimit(decisions_per_second=10_000, burst=10_000),
        server=ServerOptions(threads=4, shutdown_grace_s=1),
    )
    with identity:
        pdp = DecisionServer(
            config,
            Engine(load_policies(REPO / "policies")),
            identity,
            sink=AuditDecisionSink(audit),
        ).start()
        mcp = SampleServer().start()
        settings = EnvoySettings(
            gateway_cert=_write(tmp / "envoy.pem", envoy_svid.chain_pem),
            gateway_key=_write(tmp / "envoy.key", envoy_svid.key_pem),
            agent_bundle=_write(tmp / "agent-bundle.pem", agent_ca.bundle_pem),
            agent_trust_domain=AGENT_TD,
            pdp_bundle=tmp / "pdp-bundle.pem",
            pdp_id=PDP_ID,
            pdp_port=pdp.port,
            mcp_port=mcp.port,
            mcp_server="crm",
        )
        envoy = EnvoyProcess(render_envoy_config(settings), work_dir=tmp)
        try:
            envoy.start()
            yield Gateway(
                pdp,
                envoy,
                mcp,
                audit_dir,
                _agent_ssl(tmp, agent_svid, pdp_ca),
                tmp,
                pdp_ca,
                agent_ca,
            )
        finally:
            envoy.stop()
            mcp.stop()
            pdp.stop(0)
            audit.close()


def call(gateway: Gateway, tool: str, arguments: dict[str, Any], **kw: Any) -> Any:
    return asyncio.run(call_tool(gateway.url, gateway.agent_ssl, tool, arguments, **kw))


def denied(gateway: Gateway, tool: str, arguments: dict[str, Any], **kw: Any) -> MCPError:
    try:
        result = call(gateway, tool, arguments, **kw)
    except BaseException as exc:
        error = mcp_error(exc)
        if error is None:
            raise
        return error
    raise AssertionError(f"{tool} was not denied: {result}")


def decisions(gateway: Gateway) -> list[dict[str, Any]]:
    return [line for line in log_lines(gateway.audit_dir) if line["kind"] == "decision"]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
def test_allowed_call_returns_the_tools_result(gateway: Gateway, mode: str) -> None:
    before = gateway.mcp.calls["get_ticket"]
    result = call(gateway, "get_ticket", {"ticket_id": "T-7"}, intent=READ_INTENT, mode=mode)
    assert not result.is_error
    assert "ticket T-7: printer on fire" in result.content[0].text
    assert gateway.mcp.calls["get_ticket"] == before + 1
    # The upstream got pdp's decision id: the allow records of these calls.
    seen = [
        r
        for r in decisions(gateway)
        if r["decision_id"] in gateway.mcp.decision_ids
        and r["mcp"]["method"] == "tools/call"
        and r["request"]["arguments"] == {"ticket_id": "T-7"}
    ]
    assert seen and all(r["decision"] == "allow" for r in seen)
    assert all(r["caller"]["spiffe_id"] == ENVOY_ID for r in seen)


@pytest.mark.parametrize(
    ("tool", "arguments", "intent", "reason"),
    [
        ("search_tickets", {"query": "printer"}, READ_INTENT, "floor.tool_outside_intent"),
        ("get_ticket", {"ticket_id": "T-1"}, None, "floor.intent_required"),
        (
            "delete_ticket",
            {"ticket_id": "T-1"},
            {"purpose": "x", "tools": ["crm/*"]},
            "support.never_delete",
        ),
        ("export_all", {}, {"purpose": "x", "tools": ["crm/*"]}, "unknown_tool"),
    ],
)
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_denied_calls_name_the_reason_and_never_reach_the_server(
    gateway: Gateway, tool: str, arguments: dict[str, Any], intent: Any, reason: str, mode: str
) -> None:
    before = dict(gateway.mcp.calls)
    error = denied(gateway, tool, arguments, intent=intent, mode=mode)
    assert error.code == DENIED_CODE
    assert reason in error.message
    data = error.data
    assert reason in [r["policy"] for r in data["reasons"]]
    assert dict(gateway.mcp.calls) == before  # the server never ran anything
    [record] = [r for r in decisions(gateway) if r["decision_id"] == data["decision_id"]]
    assert record["decision"] == "deny"
    assert record["caller"]["spiffe_id"] == ENVOY_ID
    assert record["request"]["agent"] == AGENT_ID
    assert record["request"]["tool"] == tool
    assert record["mcp"]["method"] == "tools/call"


def test_every_request_is_an_audited_decision_with_envoy_as_caller(gateway: Gateway) -> None:
    call(gateway, "get_ticket", {"ticket_id": "T-9"}, intent=READ_INTENT)
    records = decisions(gateway)
    methods = {r["mcp"]["method"] for r in records}
    assert {"initialize", "notifications/initialized", "tools/call"} <= methods
    for record in records:
        assert record["caller"]["spiffe_id"] == ENVOY_ID
        assert record["request"]["agent"] == AGENT_ID
        assert record["method"] == "/envoy.service.auth.v3.Authorization/Check"
    allowed = [
        r for r in records if r["mcp"]["method"] == "tools/call" and r["decision"] == "allow"
    ]
    assert allowed and allowed[-1]["request"]["session"]  # 2025-11-25: Mcp-Session-Id


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"mcp-method": "tools/list"}, -32020),  # the body calls a tool the header hides
        ({"mcp-method": "tools/call", "mcp-name": "get_ticket"}, -32020),
    ],
)
def test_header_body_mismatch_is_denied_at_the_gateway(
    gateway: Gateway, headers: dict[str, str], code: int
) -> None:
    """A raw POST (2026-07-28 style): headers say one thing, the body calls delete_ticket."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "delete_ticket",
            "arguments": {"ticket_id": "T-1"},
            "_meta": {"pdp.dev/intent": {"purpose": "x", "tools": ["crm/*"]}},
        },
    }
    before = dict(gateway.mcp.calls)
    with httpx2.Client(verify=gateway.agent_ssl, timeout=30) as http:
        response = http.post(
            gateway.url,
            json=body,
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                **headers,
            },
        )
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"]["code"] == code
    assert answer["error"]["data"]["reasons"][0]["policy"] == "invalid_mcp_request"
    assert response.headers["x-pdp-decision-id"] == answer["error"]["data"]["decision_id"]
    assert dict(gateway.mcp.calls) == before


def _ssl_for(gateway: Gateway, name: str, svid: IssuedCert) -> ssl.SSLContext:
    folder = gateway.tmp / name
    folder.mkdir(exist_ok=True)
    return _agent_ssl(folder, svid, gateway.pdp_ca)


def test_an_agent_with_a_forged_svid_is_refused_by_envoy(gateway: Gateway) -> None:
    """A self-made CA for the agents' trust domain: Envoy's SPIFFE validator refuses the
    handshake; nothing reaches pdp or the server."""
    forged = DevCA.create(AGENT_TD).issue_svid(AGENT_ID)
    tls = _ssl_for(gateway, "forged", forged)
    before, records = dict(gateway.mcp.calls), len(decisions(gateway))
    with pytest.raises(Exception) as info:
        asyncio.run(
            call_tool(gateway.url, tls, "get_ticket", {"ticket_id": "T-1"}, intent=READ_INTENT)
        )
    assert mcp_error(info.value) is None  # not a JSON-RPC answer: no TLS session at all
    assert dict(gateway.mcp.calls) == before
    assert len(decisions(gateway)) == records


def test_an_agent_outside_envoys_binding_gets_nothing(gateway: Gateway) -> None:
    """A genuine SVID of the agents' trust domain, but not under /agent/: pdp's binding
    of Envoy (agents spiffe://acme.test/agent/*) denies even the handshake."""
    other = gateway.agent_ca.issue_svid(f"spiffe://{AGENT_TD}/batch/job")
    tls = _ssl_for(gateway, "other", other)
    before = dict(gateway.mcp.calls)
    try:
        asyncio.run(
            call_tool(gateway.url, tls, "get_ticket", {"ticket_id": "T-1"}, intent=READ_INTENT)
        )
    except BaseException as exc:
        error = mcp_error(exc)
        assert error is not None, exc
        assert "caller_not_bound" in error.message
    else:
        raise AssertionError("an unbound agent was served")
    assert dict(gateway.mcp.calls) == before
    denied_records = [
        r
        for r in decisions(gateway)
        if r["request"].get("agent") == f"spiffe://{AGENT_TD}/batch/job"
    ]
    assert denied_records and all(r["decision"] == "deny" for r in denied_records)
    assert denied_records[0]["mcp"]["method"] == "initialize"


def test_pdp_down_fails_closed(gateway: Gateway) -> None:
    """Last in this module: it stops pdp."""
    gateway.pdp.stop(0)
    before = dict(gateway.mcp.calls)
    error = denied(gateway, "get_ticket", {"ticket_id": "T-1"}, intent=READ_INTENT)
    assert error.code == -32603  # the SDK's reading of Envoy's plain 403
    assert dict(gateway.mcp.calls) == before
    stats = gateway.envoy.stats("ext_authz")
    assert any(name.endswith("ext_authz.error") and value > 0 for name, value in stats.items())
