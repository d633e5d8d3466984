"""An agent's side of an MCP call through the gateway: the ``mcp`` SDK client over mTLS
with the agent's X.509-SVID, the intent in ``params._meta["pdp.dev/intent"]``."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, cast

import httpx2
from mcp import MCPError
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, RequestParamsMeta

from pdp.mcp import INTENT_META_KEY


def agent_ssl_context(cert: Path, key: Path, gateway_bundle: Path) -> ssl.SSLContext:
    """TLS for the agent: its SVID as client certificate, the gateway's trust anchors."""
    context = ssl.create_default_context(cafile=str(gateway_bundle))
    context.load_cert_chain(str(cert), str(key))
    return context


async def call_tool(
    url: str,
    tls: ssl.SSLContext,
    tool: str,
    arguments: dict[str, Any],
    *,
    intent: dict[str, Any] | None,
    mode: str = "legacy",
) -> CallToolResult:
    """One tool call as a fresh MCP client (``mode``: "legacy" = 2025-11-25 handshake,
    or "2026-07-28"). A denial raises :class:`mcp.MCPError` (see :func:`mcp_error`)."""
    async with httpx2.AsyncClient(verify=tls, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            # An extra _meta item: RequestParamsMeta allows them (extra_items=Any), mypy not yet.
            meta = (
                cast(RequestParamsMeta, {INTENT_META_KEY: intent}) if intent is not None else None
            )
            return await client.call_tool(tool, arguments, meta=meta)


def mcp_error(error: BaseException) -> MCPError | None:
    """The :class:`mcp.MCPError` in ``error``, also from inside the SDK's task groups."""
    if isinstance(error, MCPError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = mcp_error(inner)
            if found is not None:
                return found
    return None
