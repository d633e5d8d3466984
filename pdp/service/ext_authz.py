"""The Envoy front door: ``envoy.service.auth.v3.Authorization/Check`` for MCP traffic.

A gateway built on Envoy's ext_authz filter (Envoy, Istio, MCP gateways) asks pdp
about each HTTP request to an MCP server. The caller is the gateway, authenticated by
its X.509-SVID and admitted by the ``callers`` allow-list exactly like a
``pdp.v1.DecisionService`` caller, and bound to the agents it may ask about. What is
asked comes from the ``CheckRequest``:

- **agent**: ``attributes.source.principal``, the URI SAN of the client certificate
  that Envoy verified when it terminated mTLS with the agent, parsed as a SPIFFE ID
  (no principal, or not a SPIFFE ID: deny);
- **server**: the route's ``context_extensions`` key ``mcp_server`` (Envoy never sends
  these upstream and the client cannot set them; missing: deny naming the fix);
- **everything else** from the HTTP request (``with_request_body`` with
  ``pack_as_bytes``), read by :mod:`pdp.mcp`: ``tools/call`` -> tool and arguments,
  intent from ``params._meta["pdp.dev/intent"]`` or ``x-pdp-intent``, session from
  ``Mcp-Session-Id``; other methods by the configured method rules.

Every message is decided on the shared path (:class:`DecisionCore`: the server's
clock, the caller's binding, the engine, the audit record with ``mcp`` noting the
method) and charged to the caller's rate limit like any other decision. An allow answers
``OK`` and adds ``x-pdp-decision-id`` for the upstream's logs; a deny answers a
``denied_response`` whose body is a JSON-RPC error the MCP client surfaces (see
:mod:`pdp.mcp.reply`). Nothing here answers an error status for a request it could read:
Envoy counts errors apart from denies and, with ``failure_mode_allow``, lets them through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id
from pdp.mcp import (
    DECISION_ID_HEADER,
    HttpRequest,
    McpMapping,
    McpMessage,
    MethodAction,
    Verdict,
    decision_id_header,
    denied_reply,
    map_request,
)
from pdp.model import (
    REASON_INVALID_MCP_REQUEST,
    REASON_MCP_METHOD_RULE,
    Effect,
    JsonValue,
    Limits,
    Reason,
    RequestError,
    check_name,
)
from pdp.service.config import McpDoorConfig
from pdp.service.servicer import (
    DecisionServicer,
    PendingCall,
    PreparedRequest,
    parse_message,
    time_remaining,
)

log = logging.getLogger(__name__)

EXT_AUTHZ_SERVICE = ea.DESCRIPTOR.services_by_name["Authorization"].full_name
EXT_AUTHZ_CHECK = f"/{EXT_AUTHZ_SERVICE}/Check"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_OK, _PERMISSION_DENIED = 0, 7  # google.rpc.Code

Context = grpc.aio.ServicerContext[Any, Any]


def http_request(attributes: Any) -> HttpRequest:
    """The HTTP request Envoy describes in ``attributes.request.http``.

    ``header_map`` (``encode_raw_headers: true``) keeps repeated headers apart;
    ``headers`` joins them with ``,`` (then a repeated ``Mcp-Method`` reads as one value
    that matches no method, and is denied as a mismatch)."""
    http = attributes.request.http
    pairs: list[tuple[str, str]] = []
    if http.header_map.headers:
        for header in http.header_map.headers:
            value = (
                header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
            )
            pairs.append((header.key, value))
    else:
        pairs.extend(http.headers.items())
    body = bytes(http.raw_body) if http.raw_body else http.body.encode("utf-8")
    request = HttpRequest.build(http.method or "GET", pairs, body)
    truncated = request.header(PARTIAL_BODY_HEADER) == "true"
    return HttpRequest(request.method, request.headers, request.body, truncated)


def _door_error(field: str, rule: str, detail: str) -> RequestError:
    return RequestError(field, rule, detail)


def _agent(attributes: Any) -> str:
    principal: str = attributes.source.principal
    if not principal:
        raise _door_error(
            "attributes.source.principal",
            "required",
            "is empty: the gateway must terminate mTLS with the agent and require its"
            " client certificate (an X.509-SVID), so Envoy passes its SPIFFE ID",
        )
    try:
        parse_spiffe_id(principal, require_path=True)
    except InvalidSpiffeId as exc:
        raise _door_error(
            "attributes.source.principal",
            "spiffe_id",
            f"{principal[:128]!r} is not an agent SPIFFE ID ({exc}); the client certificate"
            " must be an X.509-SVID (its first URI SAN)",
        ) from None
    return principal


def _server(attributes: Any, config: McpDoorConfig, limits: Limits) -> str:
    key = config.server_key
    if key not in attributes.context_extensions:
        raise _door_error(
            f"attributes.context_extensions.{key}",
            "required",
            f"is not set: the gateway route must name the MCP server with ext_authz"
            f" check_settings.context_extensions {{{key}: NAME}}",
        )
    return check_name(f"context_extensions.{key}", attributes.context_extensions[key], limits)


def _invalid_mapping(method: str, error: RequestError) -> McpMapping:
    return McpMapping(method, (McpMessage("", MethodAction.DENY, error=error),), errors=(error,))


def _verdict_of(message: McpMessage, mapping: McpMapping) -> tuple[Effect, Reason] | None:
    if message.error is not None:
        error = message.error
        return Effect.DENY, Reason(
            REASON_INVALID_MCP_REQUEST, f"{error.field}: {error.detail} (rule: {error.rule})"
        )
    if message.action is MethodAction.POLICY:
        return None
    what = message.method
    if message.action is MethodAction.ALLOW:
        return Effect.ALLOW, Reason(
            REASON_MCP_METHOD_RULE, f"{what} is allowed by the gateway's MCP method rules"
        )
    return Effect.DENY, Reason(
        REASON_MCP_METHOD_RULE,
        f"{what} is denied by the gateway's MCP method rules"
        + (" (tools/call is the only method decided by policy)" if what != "tools/call" else ""),
    )


def prepared_requests(mapping: McpMapping, agent: str, server: str) -> list[PreparedRequest]:
    """What the decision core decides for ``mapping``: one entry per message."""
    base: dict[str, JsonValue] = {}
    if agent:
        base["agent"] = agent
    if server:
        base["server"] = server
    if mapping.session:
        base["session"] = mapping.session
    prepared = []
    for message in mapping.messages:
        data = dict(message.request) if message.request is not None else dict(base)
        prepared.append(PreparedRequest(data, _verdict_of(message, mapping), mapping.note(message)))
    return prepared


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def envoy_response(mapping: McpMapping, verdicts: Sequence[Verdict]) -> Any:
    """The ``CheckResponse`` for Envoy: OK with the decision ids, or a denied response
    whose body the MCP client surfaces."""
    ids = decision_id_header(verdicts)
    if verdicts and all(v.allowed for v in verdicts):
        return ea.CheckResponse(
            status=status_pb2.Status(code=_OK),
            ok_response=ea.OkHttpResponse(headers=[_header(DECISION_ID_HEADER, ids)]),
        )
    reply = denied_reply(mapping, verdicts)
    return ea.CheckResponse(
        status=status_pb2.Status(code=_PERMISSION_DENIED, message="denied by pdp"),
        denied_response=ea.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=reply.status),
            headers=[_header("content-type", "application/json"), _header(DECISION_ID_HEADER, ids)],
            body=reply.body.decode("utf-8"),
        ),
    )


def _verdicts(responses: Sequence[pb.CheckResponse]) -> list[Verdict]:
    return [
        Verdict(
            r.decision_id,
            r.decision == pb.DECISION_ALLOW,
            tuple(Reason(x.policy, x.message) for x in r.reasons),
        )
        for r in responses
    ]


class ExtAuthzServicer:
    """``envoy.service.auth.v3.Authorization`` on pdp's mTLS port."""

    def __init__(self, decisions: DecisionServicer, config: McpDoorConfig) -> None:
        self._decisions = decisions
        self._config = config

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            EXT_AUTHZ_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check, response_serializer=ea.CheckResponse.SerializeToString
                )
            },
        )

    def read(self, data: bytes) -> tuple[McpMapping, str, str]:
        """The MCP mapping of a raw ``CheckRequest`` (never raises), its agent, its server."""
        try:
            message = parse_message(ea.CheckRequest(), data)
        except RequestError as exc:
            return _invalid_mapping("", exc), "", ""
        attributes = message.attributes
        method = attributes.request.http.method.upper()
        agent = server = ""
        try:
            agent = _agent(attributes)
            server = _server(attributes, self._config, self._decisions.core.engine.limits)
            http = http_request(attributes)
        except RequestError as exc:
            return _invalid_mapping(method, exc), agent, server
        mapping = map_request(
            http,
            agent=agent,
            server=server,
            rules=self._config.rules,
            limits=self._config.limits,
            request_limits=self._decisions.core.engine.limits,
        )
        return mapping, agent, server

    async def check(self, data: bytes, context: Context) -> Any:
        admission = await self._decisions.admitted(context, EXT_AUTHZ_CHECK)
        mapping, agent, server = self.read(data)
        prepared = prepared_requests(mapping, agent, server)
        await self._decisions.charge(context, EXT_AUTHZ_CHECK, admission, len(prepared))
        call = PendingCall(
            prepared,
            admission.grant,
            EXT_AUTHZ_CHECK,
            admission.started_ns,
            time_remaining(context),
        )
        try:
            responses = await self._decisions.decide(call)
            return envoy_response(mapping, _verdicts(responses))
        except Exception:
            log.exception("internal error answering ext_authz Check")
            return ea.CheckResponse(
                status=status_pb2.Status(code=_PERMISSION_DENIED, message="pdp internal error"),
                denied_response=ea.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                    body="pdp: internal error; denied",
                ),
            )
