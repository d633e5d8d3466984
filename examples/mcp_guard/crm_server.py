"""An MCP server ("crm", built with the official `mcp` SDK) with pdp in front of its tools.

Run `pdp serve --dev` first (e.g. `make run`), then `python examples/mcp_guard/demo.py`
(which starts this server and an agent), or this server alone:

    .venv/bin/python examples/mcp_guard/crm_server.py --port 8765

The guard is the three lines marked "pdp" below. The server acts as pdp's gateway with
the dev gateway SVID of `pdp serve --dev`, which may ask about agents of acme.test.
"""

from __future__ import annotations

import argparse
from collections import Counter

import uvicorn
from mcp.server.mcpserver import MCPServer

from pdp.client import AsyncClient, ClientIdentity
from pdp.client.mcp_guard import PdpGuard, agent_from_header

CALLS: Counter[str] = Counter()  # how often each tool actually ran


def build(pdp_target: str = "127.0.0.1:8443", state_dir: str = ".pdp-state") -> MCPServer:
    pdp = AsyncClient(pdp_target, ClientIdentity.dev(state_dir))  # pdp: fail closed by default
    # pdp: who the agent is. Here a header that a gateway in front of this server sets;
    # where agents connect directly over mTLS, use agent_from_tls_peer (see README).
    guard = PdpGuard(pdp, server="crm", agent=agent_from_header("x-pdp-agent"))
    crm = MCPServer("crm", middleware=[guard])  # pdp: every tools/call and tools/list

    @crm.tool()
    def get_ticket(ticket_id: str) -> str:
        """Read one support ticket."""
        CALLS["get_ticket"] += 1
        return f"ticket {ticket_id}: the printer is on fire"

    @crm.tool()
    def search_tickets(query: str, limit: int = 10) -> list[str]:
        """Search support tickets."""
        CALLS["search_tickets"] += 1
        return [f"T-1 ({query})"][:limit]

    @crm.tool()
    def delete_ticket(ticket_id: str) -> str:
        """Delete a ticket for good."""
        CALLS["delete_ticket"] += 1
        return f"deleted {ticket_id}"

    return crm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pdp", default="127.0.0.1:8443", metavar="HOST:PORT")
    parser.add_argument("--state-dir", default=".pdp-state")
    args = parser.parse_args()
    app = build(args.pdp, args.state_dir).streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
