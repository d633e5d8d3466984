"""The guard in front of a real MCP server (the official `mcp` SDK, streamable HTTP on
loopback), asking a real pdp over mTLS: the agent sees only the tools it may call, an
allowed call reaches the tool, a denied one does not (the tools count their calls), and
a pdp that stops answering turns into denials, not hangs."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from pdp.client import AsyncClient, ClientIdentity
from pdp.client.mcp_guard import (
    DECISION_META_KEY,
    PdpGuard,
    TlsPeerProtocol,
    agent_from_header,
    agent_from_tls_peer,
)
from pdp.gateway.sample_server import build_sample_server
from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.devca import DevCA, IssuedCert
from pdp.mcp import INTENT_HEADER
from pdp.service import DecisionServer
from tests.service.conftest import REPO, Pki, ServeProcess

SUPPORT = "spiffe://acme.test/agent/support-bot"
INTENT = {
    "purpose": "support.triage",
    "tools": ["crm/*"],
    "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
}


def crm_server(calls: Counter[str], guard: PdpGuard) -> MCPServer:
    return build_sample_server(calls, middleware=[guard])


class Served:
    """An MCPServer's streamable HTTP app under uvicorn on a loopback port, in a thread."""

    def __init__(self, app: MCPServer) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            app.streamable_http_app(), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def guarded(
    server: DecisionServer, gateway_identity: ClientIdentity
) -> Iterator[tuple[Served, Counter[str], DecisionServer]]:
    calls: Counter[str] = Counter()
    # Built outside uvicorn's event loop: the client makes its channel on first use.
    pdp = AsyncClient(server.address, gateway_identity, timeout=2)
    guard = PdpGuard(pdp, server="crm", agent=agent_from_header())
    served = Served(crm_server(calls, guard))
    yield served, calls, server
    served.stop()


def agent_session(url: str, agent: str | None = SUPPORT, intent: Any = INTENT) -> Client:
    headers = {}
    if agent is not None:
        headers["x-pdp-agent"] = agent
    if intent is not None:
        headers[INTENT_HEADER] = json.dumps(intent)
    http = httpx2.AsyncClient(headers=headers, timeout=30)
    return Client(streamable_http_client(url, http_client=http))


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_filtered_list_allowed_call_and_denied_call(
    guarded: tuple[Served, Counter[str], DecisionServer],
) -> None:
    served, calls, _ = guarded

    async def scenario() -> tuple[list[str], Any, Any]:
        async with agent_session(served.url) as agent:
            listed = await agent.list_tools()
            allowed = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            denied = await agent.call_tool("delete_ticket", {"ticket_id": "T-1"})
            return sorted(t.name for t in listed.tools), allowed, denied

    names, allowed, denied = run(scenario())
    assert "delete_ticket" not in names and "get_ticket" in names
    assert not allowed.is_error and "printer on fire" in allowed.content[0].text
    assert denied.is_error
    decision = denied.meta[DECISION_META_KEY]
    assert decision["decision"] == "deny" and decision["decision_id"]
    assert [r["policy"] for r in decision["reasons"]] == ["support.never_delete"]
    assert decision["decision_id"] in denied.content[0].text
    assert calls == Counter({"get_ticket": 1})  # the denied tool never ran


def test_intent_in_meta_and_no_intent(
    guarded: tuple[Served, Counter[str], DecisionServer],
) -> None:
    served, calls, _ = guarded

    async def scenario() -> tuple[Any, list[str], Any]:
        async with agent_session(served.url, intent=None) as agent:
            with_meta = await agent.call_tool(
                "get_ticket", {"ticket_id": "T-2"}, meta={"pdp.dev/intent": INTENT}
            )
            listed = await agent.list_tools()  # no intent: the floor denies every tool
            without = await agent.call_tool("get_ticket", {"ticket_id": "T-3"})
            return with_meta, [t.name for t in listed.tools], without

    with_meta, names, without = run(scenario())
    assert not with_meta.is_error
    assert names == []
    assert without.is_error
    assert without.meta[DECISION_META_KEY]["reasons"][0]["policy"] == "floor.intent_required"
    assert calls == Counter({"get_ticket": 1})


def test_unidentified_agent_sees_nothing_and_calls_nothing(
    guarded: tuple[Served, Counter[str], DecisionServer],
) -> None:
    served, calls, _ = guarded

    async def scenario() -> tuple[list[str], Any]:
        async with agent_session(served.url, agent=None) as agent:
            listed = await agent.list_tools()
            called = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            return [t.name for t in listed.tools], called

    names, called = run(scenario())
    assert names == [] and called.is_error
    assert called.meta[DECISION_META_KEY]["reasons"][0]["policy"] == "guard_no_agent"
    assert not calls


def test_pdp_stopped_mid_test_gives_denials_not_hangs(
    guarded: tuple[Served, Counter[str], DecisionServer],
) -> None:
    served, calls, pdp = guarded

    async def scenario() -> tuple[Any, float, Any, list[str]]:
        async with agent_session(served.url) as agent:
            before = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            pdp.stop(0)
            started = time.monotonic()
            after = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            elapsed = time.monotonic() - started
            listed = await agent.list_tools(cache_mode="refresh")
            return before, elapsed, after, [t.name for t in listed.tools]

    before, elapsed, after, names = run(scenario())
    assert not before.is_error
    assert after.is_error
    assert after.meta[DECISION_META_KEY]["reasons"][0]["policy"] in {
        "pdp_unreachable",
        "pdp_timeout",
    }
    assert elapsed < 30  # bounded by the client's deadline (2 s here), never a hang
    assert names == []
    assert calls == Counter({"get_ticket": 1})


# --- the agent identified by its own X.509-SVID, the MCP server terminating mTLS ------


class TlsServed(Served):
    def __init__(self, app: MCPServer, tls: dict[str, Any]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            app.streamable_http_app(), host="127.0.0.1", port=self.port, log_level="warning",
            http=TlsPeerProtocol, ssl_cert_reqs=ssl.CERT_REQUIRED, **tls,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        self.url = f"https://127.0.0.1:{self.port}/mcp"


def tls_agent(url: str, svid: IssuedCert, server_roots: bytes, tmp: Path) -> Client:
    context = ssl.create_default_context(cadata=server_roots.decode("ascii"))
    context.check_hostname = False  # the test server's SVID names 127.0.0.1 as an IP SAN
    (tmp / "agent.pem").write_bytes(svid.chain_pem)
    (tmp / "agent.key").write_bytes(svid.key_pem)
    context.load_cert_chain(tmp / "agent.pem", tmp / "agent.key")
    headers = {INTENT_HEADER: json.dumps(INTENT), "x-pdp-agent": SUPPORT}  # header ignored
    http = httpx2.AsyncClient(headers=headers, timeout=30, verify=context)
    return Client(streamable_http_client(url, http_client=http))


def test_agent_identified_by_its_svid_on_the_mcp_connection(
    pki: Pki, server: DecisionServer, gateway_identity: ClientIdentity, tmp_path: Path
) -> None:
    """Agents connect over mTLS; the guard takes the SPIFFE ID from the verified peer
    SVID, never from a header. An SVID for the same agent ID issued by another trust
    domain's CA, trusted for TLS on this listener, is not believed: the bundle of the
    ID's own trust domain must verify it."""
    acme = DevCA.create("acme.test")
    support = acme.issue_svid(SUPPORT)
    forged = pki.partner.issue_svid(SUPPORT)  # partner.test's CA signing an acme.test ID
    mcp_svid = pki.ca.issue_svid("spiffe://pdp.test/mcp/crm", ip_addresses=("127.0.0.1",))
    (tmp_path / "mcp.pem").write_bytes(mcp_svid.chain_pem)
    (tmp_path / "mcp.key").write_bytes(mcp_svid.key_pem)
    (tmp_path / "agents.pem").write_bytes(acme.bundle_pem + pki.partner.bundle_pem)
    bundles = TrustDomainBundles({"acme.test": [acme.root], "partner.test": [pki.partner.root]})
    calls: Counter[str] = Counter()
    pdp = AsyncClient(server.address, gateway_identity, timeout=2)
    guard = PdpGuard(pdp, server="crm", agent=agent_from_tls_peer(lambda: bundles))
    served = TlsServed(crm_server(calls, guard), {
        "ssl_certfile": str(tmp_path / "mcp.pem"), "ssl_keyfile": str(tmp_path / "mcp.key"),
        "ssl_ca_certs": str(tmp_path / "agents.pem"),
    })  # fmt: skip

    async def scenario(svid: IssuedCert) -> tuple[list[str], Any]:
        async with tls_agent(served.url, svid, pki.ca.bundle_pem, tmp_path) as agent:
            listed = await agent.list_tools()
            called = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            return sorted(t.name for t in listed.tools), called

    try:
        names, called = run(scenario(support))
        assert "get_ticket" in names and "delete_ticket" not in names
        assert not called.is_error
        names, called = run(scenario(forged))
        assert names == [] and called.is_error
        assert called.meta[DECISION_META_KEY]["reasons"][0]["policy"] == "guard_no_agent"
    finally:
        served.stop()
    assert calls == Counter({"get_ticket": 1})


def test_the_example_runs_against_pdp_serve_dev(dev_server: ServeProcess) -> None:
    """examples/mcp_guard/demo.py, the README's one command, against `pdp serve --dev`."""
    shown = subprocess.run(
        [sys.executable, "examples/mcp_guard/demo.py", "--pdp", f"127.0.0.1:{dev_server.port}",
         "--state-dir", str(dev_server.state_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "tools the agent sees: ['get_ticket', 'search_tickets']" in shown.stdout
    assert "get_ticket: ok: ticket T-123" in shown.stdout
    assert "delete_ticket: DENIED" in shown.stdout and "support.never_delete" in shown.stdout
    assert "tools that actually ran: {'get_ticket': 1}" in shown.stdout


def test_lists_after_tools_list_changed_are_filtered_too(
    server: DecisionServer, gateway_identity: ClientIdentity
) -> None:
    """A tool the server adds later (what notifications/tools/list_changed announces)
    is shown on the next tools/list only if pdp lets the agent call it."""
    calls: Counter[str] = Counter()
    pdp = AsyncClient(server.address, gateway_identity, timeout=2)
    crm = MCPServer("crm", middleware=[PdpGuard(pdp, server="crm", agent=agent_from_header())])

    @crm.tool()
    def get_ticket(ticket_id: str) -> str:
        calls["get_ticket"] += 1
        return ticket_id

    served = Served(crm)

    def delete_ticket(ticket_id: str) -> str:
        calls["delete_ticket"] += 1
        return ticket_id

    def search_tickets(query: str) -> list[str]:
        return [query]

    async def scenario() -> tuple[list[str], list[str]]:
        async with agent_session(served.url) as agent:
            before = await agent.list_tools()
            crm.add_tool(delete_ticket)  # added while the agent is connected
            crm.add_tool(search_tickets)
            after = await agent.list_tools(cache_mode="refresh")
            return sorted(t.name for t in before.tools), sorted(t.name for t in after.tools)

    try:
        before, after = run(scenario())
    finally:
        served.stop()
    assert before == ["get_ticket"]
    assert after == ["get_ticket", "search_tickets"]  # delete_ticket stays hidden


def test_proof_of_the_agent_is_forwarded_where_pdp_requires_it(
    make_server: Callable[..., DecisionServer],
    gateway_identity: ClientIdentity,
    tmp_path: Path,
) -> None:
    """pdp requires a JWT-SVID of support agents: the guard forwards the one the gateway
    put in a header; without it nothing is listed and nothing runs."""
    from joserfc.jwk import ECKey

    from pdp.proof import ProofConfig, Requirement
    from pdp.proof.sign import sign_token

    key = ECKey.generate_key("P-256", parameters={"kid": "acme-jwt-1"})
    bundle = tmp_path / "acme.jwt.json"
    bundle.write_text(json.dumps({"keys": [{**key.as_dict(private=False), "use": "jwt-svid"}]}))
    proof = ProofConfig(
        jwt_bundles={"acme.test": bundle},
        require_agent_proof=Requirement(groups=("support",)),
        key_check_interval_s=0,
    )
    pdp_server = make_server(proof=proof)
    issued = int(time.time())
    svid = sign_token(
        {"sub": SUPPORT, "aud": ["spiffe://pdp.test/pdp"], "iat": issued, "exp": issued + 300},
        key,
    )
    calls: Counter[str] = Counter()
    pdp = AsyncClient(pdp_server.address, gateway_identity, timeout=2)
    guard = PdpGuard(pdp, server="crm", agent=agent_from_header(),
                     agent_svid=agent_from_header("x-pdp-agent-svid"))  # fmt: skip
    served = Served(crm_server(calls, guard))

    async def scenario(headers: dict[str, str]) -> tuple[list[str], Any]:
        http = httpx2.AsyncClient(
            headers={"x-pdp-agent": SUPPORT, INTENT_HEADER: json.dumps(INTENT), **headers},
            timeout=30,
        )
        async with Client(streamable_http_client(served.url, http_client=http)) as agent:
            listed = await agent.list_tools()
            called = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            return sorted(t.name for t in listed.tools), called

    try:
        unproven_names, unproven = run(scenario({}))
        names, proven = run(scenario({"x-pdp-agent-svid": svid}))
    finally:
        served.stop()
    assert unproven_names == [] and unproven.is_error
    assert unproven.meta[DECISION_META_KEY]["reasons"][0]["policy"] == "agent_unproven"
    assert "get_ticket" in names and not proven.is_error
    assert calls == Counter({"get_ticket": 1})


def test_a_tool_changed_since_it_was_pinned_is_denied_and_never_runs(
    make_server: Callable[..., DecisionServer],
    gateway_identity: ClientIdentity,
    tmp_path: Path,
) -> None:
    """The rug pull through the guard: the inventory pins get_ticket's digest as
    approved; the server now lists it with another description. The guard sends the
    digest of what the server listed, so pdp denies it (tool_changed) and it never runs;
    the unchanged search_tickets keeps working."""
    import shutil

    from pdp.engine import Engine, load_policies
    from pdp.model import tool_digest
    from tests.conftest import EXAMPLE_POLICIES

    calls: Counter[str] = Counter()
    pdp = AsyncClient("127.0.0.1:1", gateway_identity, timeout=2)  # replaced below
    guard = PdpGuard(pdp, server="crm", agent=agent_from_header())
    crm = crm_server(calls, guard)
    listed = {tool.name: tool for tool in asyncio.run(crm.list_tools())}

    def pinned(name: str, description: str | None) -> str:
        schema = listed[name].model_dump(by_alias=True, exclude_none=True)["inputSchema"]
        return tool_digest(description, schema)

    root = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, root, ignore=shutil.ignore_patterns("floor", "*.test.yaml"))
    inventory = json.loads((root / "entities.json").read_text())
    tools = inventory["servers"]["crm"]["tools"]
    tools["get_ticket"]["digest"] = pinned("get_ticket", "Reads one ticket (as approved).")
    tools["search_tickets"]["digest"] = pinned(
        "search_tickets", listed["search_tickets"].description
    )
    (root / "entities.json").write_text(json.dumps(inventory))
    pdp_server = make_server(engine_=Engine(load_policies(root)))
    guard.client = AsyncClient(pdp_server.address, gateway_identity, timeout=2)
    served = Served(crm)

    async def scenario() -> tuple[Any, Any]:
        async with agent_session(served.url) as agent:
            await agent.list_tools()
            changed = await agent.call_tool("get_ticket", {"ticket_id": "T-1"})
            unchanged = await agent.call_tool("search_tickets", {"query": "printer"})
            return changed, unchanged

    try:
        changed, unchanged = run(scenario())
    finally:
        served.stop()
    assert changed.is_error
    decision = changed.meta[DECISION_META_KEY]
    assert [r["policy"] for r in decision["reasons"]] == ["tool_changed"]
    assert not unchanged.is_error
    assert calls == Counter({"search_tickets": 1})  # the changed tool never ran
