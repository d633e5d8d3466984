"""MCP over streamable HTTP, as pdp reads it: pure mapping, no grpc, no Envoy, no SDK.

Every front door that sees MCP traffic (the Envoy ext_authz door in pdp.service, an
MCP SDK guard, fuzzing) reads requests with the same code::

    http = HttpRequest.build("POST", headers, body)
    mapping = map_request(http, agent=spiffe_id, server="crm", rules=MethodRules())
    for message in mapping.messages:
        message.request   # pdp request data for a tools/call, decided by policy
        message.action    # or ALLOW / DENY by the method rule
        message.error     # or why the message breaks a rule (a deny)
    reply = denied_reply(mapping, verdicts)   # the body an MCP client surfaces

``strict_json.loads_strict`` is the one JSON reader for untrusted MCP bodies and headers
(duplicate keys, NaN, lone surrogates refused).
"""

from pdp.mcp.mapping import (
    DEFAULT_MCP_LIMITS,
    INTENT_HEADER,
    INTENT_META_KEY,
    METHOD_HEADER,
    NAME_HEADER,
    PROTOCOL_VERSION_HEADER,
    REVISION_2025_11_25,
    REVISION_2026_07_28,
    SESSION_HEADER,
    HttpRequest,
    McpLimits,
    McpMapping,
    McpMessage,
    declared_intent,
    map_request,
)
from pdp.mcp.reply import (
    DECISION_ID_HEADER,
    DENIED_CODE,
    DeniedReply,
    Verdict,
    allowed,
    decision_id_header,
    denied_reply,
)
from pdp.mcp.rules import DEFAULT_METHOD_RULES, MethodAction, MethodRules, RuleError
from pdp.mcp.strict_json import loads_strict

__all__ = [
    "DECISION_ID_HEADER",
    "DEFAULT_MCP_LIMITS",
    "DEFAULT_METHOD_RULES",
    "DENIED_CODE",
    "INTENT_HEADER",
    "INTENT_META_KEY",
    "METHOD_HEADER",
    "NAME_HEADER",
    "PROTOCOL_VERSION_HEADER",
    "REVISION_2025_11_25",
    "REVISION_2026_07_28",
    "SESSION_HEADER",
    "DeniedReply",
    "HttpRequest",
    "McpLimits",
    "McpMapping",
    "McpMessage",
    "MethodAction",
    "MethodRules",
    "RuleError",
    "Verdict",
    "allowed",
    "decision_id_header",
    "declared_intent",
    "denied_reply",
    "loads_strict",
    "map_request",
]
