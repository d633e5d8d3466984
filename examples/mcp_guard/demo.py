"""One command: the guarded "crm" MCP server and an agent that lists its tools and
calls two of them, against a running `pdp serve --dev` (e.g. `make run`).

    .venv/bin/python examples/mcp_guard/demo.py [--pdp 127.0.0.1:8443] [--state-dir .pdp-state]

The agent (spiffe://acme.test/agent/support-bot, intent "support.triage" over crm/*)
sees only the tools pdp lets it call, gets get_ticket's answer, and a denial with
pdp's reasons and decision_id for delete_ticket, which never runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from pdp.client import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crm_server import CALLS, build

AGENT = "spiffe://acme.test/agent/support-bot"


def start(args: argparse.Namespace) -> tuple[uvicorn.Server, threading.Thread, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build(args.pdp, args.state_dir).streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("the MCP server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/mcp"


async def agent(url: str) -> None:
    intent = {
        "purpose": "support.triage",
        "tools": ["crm/*"],
        "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    # A gateway in front of the MCP server would set x-pdp-agent from the agent's SVID.
    headers = {"x-pdp-agent": AGENT, "x-pdp-intent": json.dumps(intent)}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as session,
    ):
        listed = await session.list_tools()
        print(f"tools the agent sees: {sorted(t.name for t in listed.tools)}")
        for tool in ("get_ticket", "delete_ticket"):
            result = await session.call_tool(tool, {"ticket_id": "T-123"})
            verdict = "DENIED" if result.is_error else "ok"
            print(f"{tool}: {verdict}: {result.content[0].text}")
    print(f"tools that actually ran: {dict(CALLS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdp", default="127.0.0.1:8443", metavar="HOST:PORT")
    parser.add_argument("--state-dir", default=".pdp-state")
    args = parser.parse_args()
    for noisy in ("httpx2", "mcp"):  # keep the output to what the agent sees
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        server, thread, url = start(args)
    except ClientError as exc:  # e.g. no dev credentials yet
        sys.exit(f"demo: {exc}")
    try:
        asyncio.run(agent(url))
    finally:
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    main()
