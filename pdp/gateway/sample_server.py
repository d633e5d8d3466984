"""A sample MCP server (``crm``) built with the ``mcp`` SDK, for the gateway demo, tests
and benchmarks: the tools of the example inventory, plus one that is not in it.

It counts every tool call it runs, so a test can prove that a denied call never got
here. It serves streamable HTTP (both revisions the SDK speaks) on loopback, in a
thread of its own (its own event loop), on a free port unless told otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

SERVER_NAME = "crm"


def build_sample_server(calls: Counter[str], middleware: Sequence[Any] = ()) -> MCPServer:
    """The sample ``crm`` server; ``middleware``: ``mcp`` ServerMiddleware in front of
    it (e.g. pdp's own guard, :class:`pdp.client.mcp_guard.PdpGuard`)."""
    server: MCPServer = MCPServer(SERVER_NAME, log_level="WARNING", middleware=list(middleware))

    @server.tool()
    def get_ticket(ticket_id: str) -> str:
        """Reads one support ticket."""
        calls["get_ticket"] += 1
        return f"ticket {ticket_id}: printer on fire (open)"

    @server.tool()
    def search_tickets(query: str) -> str:
        """Searches tickets."""
        calls["search_tickets"] += 1
        return f"2 tickets match {query!r}"

    @server.tool()
    def delete_ticket(ticket_id: str) -> str:
        """Deletes a ticket."""
        calls["delete_ticket"] += 1
        return f"ticket {ticket_id} deleted"

    @server.tool()
    def export_all() -> str:
        """Exports every ticket (not in pdp's inventory: the floor forbids it)."""
        calls["export_all"] += 1
        return "all tickets exported"

    return server


class _SeenDecisionIds:
    """ASGI middleware keeping the ``x-pdp-decision-id`` of every request (what an
    upstream would log to find pdp's audit record)."""

    def __init__(self, app: Any, seen: list[str]) -> None:
        self._app = app
        self._seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            for name, value in scope.get("headers", ()):
                if name == b"x-pdp-decision-id":
                    self._seen.append(value.decode("latin-1"))
        await self._app(scope, receive, send)


class SampleServer:
    """The sample server on ``host``:``port`` (0: a free one) until :meth:`stop`.
    ``calls`` counts the tool calls it ran; ``decision_ids`` the ``x-pdp-decision-id``
    headers it received."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.calls: Counter[str] = Counter()
        self.decision_ids: list[str] = []
        self.host = host
        self._socket = socket.create_server((host, port))
        self.port: int = self._socket.getsockname()[1]
        app = build_sample_server(self.calls).streamable_http_app(host=host)
        config = uvicorn.Config(
            _SeenDecisionIds(app, self.decision_ids), log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="mcp-sample-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self, timeout: float = 30.0) -> SampleServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sample MCP server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m pdp.gateway.sample_server [--host H] [--port P]``: serve until stopped."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    app = build_sample_server(Counter()).streamable_http_app(host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
