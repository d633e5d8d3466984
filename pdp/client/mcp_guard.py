"""pdp in front of an MCP server built with the official ``mcp`` SDK (PyPI ``mcp`` 2.x).

    from mcp.server.mcpserver import MCPServer
    from pdp.client import AsyncClient, ClientIdentity
    from pdp.client.mcp_guard import PdpGuard, agent_from_header

    pdp = AsyncClient("pdp.internal:8443", ClientIdentity.workload_api(PDP_ID))
    server = MCPServer("crm", middleware=[PdpGuard(pdp, server="crm", agent=...)])

The guard is a ``ServerMiddleware``: it sees every inbound MCP message before the SDK
validates or dispatches it, and

* asks pdp before every ``tools/call``, with the agent's SPIFFE ID, this server's name
  in the inventory, the tool, its arguments, the agent's declared intent
  (``params._meta["pdp.dev/intent"]`` or the ``x-pdp-intent`` header, the same JSON
  object ``{purpose, tools, expires_at}``) and the session (``Mcp-Session-Id``). A
  deny is answered as a tool result with ``isError: true`` whose text gives pdp's
  reasons and ``decision_id`` (so the agent's model can see why), the same in
  ``_meta["pdp.dev/decision"]``; the tool does not run. When pdp cannot answer, the
  client's fail-closed deny (``pdp_unreachable``, ``pdp_timeout``…) is answered the
  same way.
* filters ``tools/list`` results to the tools pdp's ``AllowedTools`` says the agent may
  call under its intent (``allow``, or ``depends_on_arguments``: the call itself is
  still checked). A client that follows ``notifications/tools/list_changed`` lists
  again and is filtered again; when pdp cannot answer, the list is empty.
* pins tools: every call carries the ``tool_digest`` of the tool as this server last
  listed it (description and input schema), so a tool changed since its digest was
  pinned in the inventory (``pdp schema from-mcp --inventory``) is denied
  ``tool_changed`` and does not run. A tool not listed since the guard started is
  decided without a digest.

Who the agent is comes from ``agent(ctx)``: the caller's X.509-SVID when the MCP server
terminates mutual TLS itself (:func:`agent_from_tls_peer` with :func:`tls_peer_app`),
or a header set by a gateway the server trusts (:func:`agent_from_header`; only behind
a gateway that sets it and strips any client-sent copy). No agent: every call is denied
and the list is empty.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pdp.client.client import AsyncClient
from pdp.client.values import CheckResult
from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.peer import PeerAuthError, PeerVerifier
from pdp.mcp import (
    METHOD_HEADER,
    NAME_HEADER,
    SESSION_HEADER,
    HttpRequest,
    declared_intent,
    map_request,
)
from pdp.model import REASON_INVALID_REQUEST, Reason, RequestError, tool_digest

DECISION_META_KEY = "pdp.dev/decision"

REASON_NO_AGENT = "guard_no_agent"  # no agent identity: nothing is asked, all is denied

AgentOf = Callable[[Any], "str | None"]


def _headers(ctx: Any) -> Mapping[str, str]:
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    return headers if headers is not None else {}


def _http_request(ctx: Any, message: Mapping[str, Any]) -> HttpRequest:
    """The MCP message as pdp.mcp reads any front door's: the HTTP headers it came
    with (none over stdio, where the body's own method and name stand in for them)."""
    request = getattr(ctx, "request", None)
    raw = getattr(getattr(request, "headers", None), "raw", None)
    if raw is not None:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
    else:
        headers = [(METHOD_HEADER, str(message.get("method", "")))]
        name = (message.get("params") or {}).get("name")
        if isinstance(name, str):
            headers.append((NAME_HEADER, name))
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return HttpRequest.build("POST", headers, body)


def agent_from_header(name: str = "x-pdp-agent") -> AgentOf:
    """The agent's SPIFFE ID from a header that a trusted gateway in front of the MCP
    server sets (and strips from clients). Never use it where clients reach the
    server directly: whoever sends the header would choose their identity."""
    lowered = name.lower()

    def agent(ctx: Any) -> str | None:
        return _headers(ctx).get(lowered)

    return agent


@dataclass(frozen=True, slots=True)
class _Denial:
    reasons: tuple[Reason, ...]
    decision_id: str
    policy_version: str

    def result(self, tool: str) -> dict[str, Any]:
        why = "; ".join(f"{r.policy}: {r.message}" for r in self.reasons)
        reference = f" (decision {self.decision_id})" if self.decision_id else ""
        return {
            "content": [
                {"type": "text", "text": f"pdp denied the call to {tool}{reference}: {why}"}
            ],
            "isError": True,
            "resultType": "complete",  # required by 2026-07-28 clients, ignored by older ones
            "_meta": {
                DECISION_META_KEY: {
                    "decision": "deny",
                    "reasons": [r.to_json() for r in self.reasons],
                    "decision_id": self.decision_id,
                    "policy_version": self.policy_version,
                }
            },
        }


CallNext = Callable[[Any], Awaitable[Any]]


class PdpGuard:
    """``ServerMiddleware`` that puts pdp in front of every tool of one MCP server.

    ``client``: an :class:`AsyncClient` (fail closed by default); ``server``: this
    server's name in pdp's inventory; ``agent``: how to learn the calling agent's
    SPIFFE ID from the request context (see the module docstring).
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        server: str,
        agent: AgentOf,
        agent_svid: AgentOf | None = None,
    ) -> None:
        self.client = client
        self.server = server
        self._agent = agent
        self._agent_svid = agent_svid
        # The digest of each tool as this server last listed it (tools/list, before
        # filtering): sent with every call of that tool, so a tool whose description or
        # input schema changed since its digest was pinned in the inventory is denied
        # (tool_changed). A tool not listed yet is decided without one.
        self._listed_digests: dict[str, str] = {}

    def _proof_of(self, ctx: Any) -> str:
        """The agent's JWT-SVID for pdp, forwarded where pdp requires proof of the agent
        (``agent_svid=``, e.g. :func:`agent_from_header` on the header that carries it)."""
        if self._agent_svid is None:
            return ""
        try:
            return self._agent_svid(ctx) or ""
        except Exception:  # an unreadable proof is no proof
            return ""

    async def __call__(self, ctx: Any, call_next: CallNext) -> Any:
        if ctx.method == "tools/call":
            return await self._call(ctx, call_next)
        if ctx.method == "tools/list":
            return await self._list(ctx, call_next)
        return await call_next(ctx)

    def _agent_of(self, ctx: Any) -> str | None:
        try:
            agent = self._agent(ctx)
        except Exception:  # an identity we cannot read is no identity
            return None
        return agent or None

    async def _call(self, ctx: Any, call_next: CallNext) -> Any:
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        tool = params.get("name")
        if not isinstance(tool, str):
            return await call_next(ctx)  # the SDK answers a malformed call (-32602)
        denial = await self._decide(ctx, params, tool)
        if denial is not None:
            return denial.result(tool)
        return await call_next(ctx)

    async def _decide(self, ctx: Any, params: Mapping[str, Any], tool: str) -> _Denial | None:
        agent = self._agent_of(ctx)
        if agent is None:
            return _Denial((Reason(REASON_NO_AGENT, "the calling agent is not identified"),),
                           "", "")  # fmt: skip
        message = {"jsonrpc": "2.0", "id": _request_id(ctx), "method": "tools/call",
                   "params": dict(params)}  # fmt: skip
        mapping = map_request(_http_request(ctx, message), agent=agent, server=self.server)
        mapped = mapping.messages[0]
        if mapped.error is not None:
            error = mapped.error
            detail = f"{error.field}: {error.detail} (rule: {error.rule})"
            return _Denial((Reason(REASON_INVALID_REQUEST, detail),), "", "")
        if mapped.request is None:  # a method rule, not the policies, decides: never here
            return _Denial((Reason(REASON_INVALID_REQUEST, "not a tool call"),), "", "")
        request = dict(mapped.request)
        digest = self._listed_digests.get(tool)
        if digest:
            request["tool_digest"] = digest
        proof = self._proof_of(ctx)
        if proof:
            request["agent_svid"] = proof
        try:
            result: CheckResult = await self.client.check(request)
        except Exception as exc:  # e.g. a request pdp.v1 cannot encode: never run the tool
            return _Denial((Reason(REASON_INVALID_REQUEST, str(exc)),), "", "")
        if result.allowed:
            return None
        return _Denial(result.reasons, result.decision_id, result.policy_version)

    async def _list(self, ctx: Any, call_next: CallNext) -> Any:
        result = await call_next(ctx)
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return result
        for tool in tools:
            if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
                digest = tool_digest(tool.get("description"), tool.get("inputSchema"))
                self._listed_digests[tool["name"]] = digest
        callable_tools = await self._callable_tools(ctx)
        result["tools"] = [
            tool for tool in tools
            if isinstance(tool, Mapping) and tool.get("name") in callable_tools
        ]  # fmt: skip
        return result

    async def _callable_tools(self, ctx: Any) -> frozenset[str]:
        agent = self._agent_of(ctx)
        if agent is None:
            return frozenset()
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        meta = params.get("_meta")
        http = _http_request(ctx, {"jsonrpc": "2.0", "id": _request_id(ctx),
                                   "method": "tools/list", "params": dict(params)})  # fmt: skip
        try:
            intent = declared_intent(http, meta if isinstance(meta, Mapping) else None)
        except RequestError:
            return frozenset()  # a malformed intent lists nothing (a call would be denied)
        try:
            listing = await self.client.allowed_tools(
                agent,
                self.server,
                intent=intent if isinstance(intent, Mapping) else None,
                session=http.header(SESSION_HEADER) or "",
                agent_svid=self._proof_of(ctx),
            )
        except Exception:  # e.g. an intent pdp.v1 cannot encode
            return frozenset()
        return frozenset(listing.callable_tools())


def _request_id(ctx: Any) -> str | int:
    request_id = getattr(ctx, "request_id", None)
    return request_id if isinstance(request_id, str | int) else 0


# --- the agent's identity from the mTLS peer, where the MCP server terminates TLS ----


def agent_from_tls_peer(bundles: Callable[[], TrustDomainBundles]) -> AgentOf:
    """The agent's SPIFFE ID from the X.509-SVID it presented to this MCP server,
    verified by pdp's own SVID rules against the bundle of *its* trust domain among
    ``bundles()`` (called per request, so a rotated or removed bundle applies at once).

    Needs the peer certificate in the ASGI scope: serve the app with uvicorn and
    ``http=TlsPeerProtocol`` (uvicorn itself does not put it there), and
    ``ssl_cert_reqs=ssl.CERT_REQUIRED``. Python before 3.13 gives the leaf only, so the
    agent's SVID must be issued directly by a root of its trust domain's bundle.
    """
    verifier = PeerVerifier(bundles)

    def agent(ctx: Any) -> str | None:
        request = getattr(ctx, "request", None)
        scope = getattr(request, "scope", None) or {}
        tls = scope.get("extensions", {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or []
        if not chain:
            return None
        try:
            caller = verifier.authenticate(chain[0].encode("ascii"), b"", datetime.now(UTC))
        except PeerAuthError:
            return None
        return caller.spiffe_id

    return agent


@functools.cache
def _tls_peer_protocol() -> type[Any]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TlsPeerProtocol(H11Protocol):
        """uvicorn's HTTP/1.1 protocol that fills the ASGI TLS extension's
        ``client_cert_chain`` (the peer's leaf, PEM) on every request of a TLS
        connection, which uvicorn does not."""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                return
            leaf = ssl.DER_cert_to_PEM_cert(der)
            inner = self.app

            async def with_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
                extensions = scope.setdefault("extensions", {})
                extensions["tls"] = {"client_cert_chain": [leaf]}
                await inner(scope, receive, send)

            self.app = with_peer

    return TlsPeerProtocol


def __getattr__(name: str) -> Any:
    # uvicorn is imported only by those who serve with it.
    if name == "TlsPeerProtocol":
        return _tls_peer_protocol()
    raise AttributeError(name)
