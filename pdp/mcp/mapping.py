"""An MCP request over streamable HTTP -> the decisions pdp must make about it.

:func:`map_request` reads one HTTP request (method, headers, body) the way an MCP
server would, and returns one :class:`McpMessage` per decision: a ``tools/call`` as a
pdp request (agent, server, tool, arguments, intent, session) for the policies; any
other message with the action its :class:`~pdp.mcp.rules.MethodRules` rule gives; and
anything unreadable as an error naming the MCP or JSON-RPC rule it breaks. It never
raises and never decides: the caller (a gateway door, an SDK guard) decides, audits and
answers. Pure: no I/O, no clock, no grpc.

Both transport revisions in use are read:

- 2025-11-25: ``initialize``, ``Mcp-Session-Id`` (-> the request's session), ``GET``
  for the SSE stream, ``DELETE`` of a session; JSON-RPC batches from older clients
  (2025-03-26) are read element by element.
- 2026-07-28 (a ``MCP-Protocol-Version`` of that date or later, or any ``Mcp-Method``
  header): every POST carries ``Mcp-Method`` and, for ``tools/call``,
  ``resources/read`` and ``prompts/get``, ``Mcp-Name``. They are required then, and
  whenever present (any revision) they must equal the body: a gateway that routes on
  headers would otherwise see one call while the server runs another. Batches do not
  exist in this revision and are refused.

The decision is always made from the body. The agent's intent travels as
``params._meta["pdp.dev/intent"]`` and/or the ``x-pdp-intent`` header (the same JSON
object: ``{purpose, tools, expires_at}``); if both are given they must be equal. A
signed intent is the compact JWS string in the same places (pdp.proof verifies it).
The agent's JWT-SVID (proof that the agent takes part) travels in ``x-pdp-agent-svid``
(``Authorization`` belongs to the MCP server's own OAuth).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pdp.mcp.rules import (
    HTTP_DELETE,
    HTTP_GET,
    JSONRPC_RESPONSE,
    MethodAction,
    MethodRules,
)
from pdp.mcp.strict_json import loads_strict
from pdp.model import (
    DEFAULT_LIMITS,
    JsonValue,
    Limits,
    RequestError,
    check_arguments,
    check_name,
    normalize_numbers,
)

INTENT_META_KEY = "pdp.dev/intent"
INTENT_HEADER = "x-pdp-intent"
AGENT_SVID_HEADER = "x-pdp-agent-svid"
SESSION_HEADER = "mcp-session-id"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
PROTOCOL_VERSION_HEADER = "mcp-protocol-version"
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
REVISION_2025_11_25 = "2025-11-25"
REVISION_2026_07_28 = "2026-07-28"
# Methods whose target is mirrored in Mcp-Name (2026-07-28), and the params member it mirrors.
NAMED_METHODS: Mapping[str, str] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}
# Headers a decision depends on: sent twice, which one would the server read?
SINGLE_HEADERS = (
    INTENT_HEADER,
    AGENT_SVID_HEADER,
    SESSION_HEADER,
    METHOD_HEADER,
    NAME_HEADER,
    PROTOCOL_VERSION_HEADER,
)
_REQUEST_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})
_RESPONSE_MEMBERS = frozenset({"jsonrpc", "id", "result", "error"})
# A signed intent: a JWS in compact serialization (three base64url parts); pdp.proof
# reads and verifies it.
_COMPACT_JWS = re.compile(r"\A[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
_ENCODED_HEADER = re.compile(r"\A=\?base64\?([A-Za-z0-9+/=]*)\?=\Z")
_REVISION = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


@dataclass(frozen=True, slots=True)
class McpLimits:
    """Bounds on one HTTP request, before pdp.model.Limits bound each tool call."""

    max_body_bytes: int = 1024 * 1024
    max_batch: int = 64  # JSON-RPC messages in one batch (each one is a decision)
    max_header_bytes: int = 16 * 1024  # x-pdp-intent and the other decision headers


DEFAULT_MCP_LIMITS = McpLimits()


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request as the gateway saw it. ``headers``: lower-case names, every
    value as sent (a repeated header has several); ``body_truncated``: the gateway
    passed only a prefix of the body (Envoy's ``x-envoy-auth-partial-body: true``)."""

    method: str
    headers: Mapping[str, tuple[str, ...]]
    body: bytes = b""
    body_truncated: bool = False

    @classmethod
    def build(
        cls,
        method: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes = b"",
        *,
        body_truncated: bool = False,
    ) -> HttpRequest:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        collected: dict[str, list[str]] = {}
        for name, value in pairs:
            collected.setdefault(name.lower(), []).append(value)
        return cls(
            method.upper(),
            {name: tuple(values) for name, values in collected.items()},
            body,
            body_truncated,
        )

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class McpMessage:
    """One decision to make. ``method`` is the JSON-RPC method, ``http:GET`` /
    ``http:DELETE``, ``jsonrpc:response`` or ``""`` when the request is unreadable.
    ``request`` (the pdp request data) is set for a ``tools/call`` to decide by policy;
    ``error`` is set when the message breaks a rule (a deny with that reason)."""

    method: str
    action: MethodAction
    jsonrpc_id: str | int | None = None
    request: Mapping[str, JsonValue] | None = None
    error: RequestError | None = None

    @property
    def is_request(self) -> bool:
        """True for a JSON-RPC request (an id is set): it expects an answer."""
        return self.jsonrpc_id is not None


@dataclass(frozen=True, slots=True)
class McpMapping:
    """Every decision one HTTP request needs (at least one), and what it was."""

    http_method: str
    messages: tuple[McpMessage, ...]
    revision: str = ""  # MCP-Protocol-Version (header, else the body's _meta), "" if none
    batch: bool = False
    session: str = ""
    errors: tuple[RequestError, ...] = field(default=())  # whole-request problems

    def note(self, message: McpMessage) -> dict[str, JsonValue]:
        """What the audit record says about ``message`` beyond the pdp request."""
        out: dict[str, JsonValue] = {"method": message.method, "http_method": self.http_method}
        if message.jsonrpc_id is not None:
            out["id"] = message.jsonrpc_id
        if self.revision:
            out["protocol_version"] = self.revision
        if self.batch:
            out["batch"] = len(self.messages)
        if message.action is not MethodAction.POLICY:
            out["rule"] = message.action.value
        return out


def _error(field_name: str, rule: str, detail: str) -> RequestError:
    return RequestError(field_name, rule, detail)


def _decode_header(name: str, value: str) -> str:
    """An ``Mcp-*`` header value: plain, or ``=?base64?...?=`` for values unsafe in HTTP."""
    match = _ENCODED_HEADER.fullmatch(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _error(name, "encoding", "is not valid =?base64?...?= UTF-8") from None


def _single_headers(http: HttpRequest, limits: McpLimits) -> RequestError | None:
    for name in SINGLE_HEADERS:
        values = http.headers.get(name, ())
        if len(values) > 1:
            return _error(name, "repeated", "is sent more than once; send it once")
        if values and len(values[0].encode("utf-8", "surrogatepass")) > limits.max_header_bytes:
            return _error(name, "too_long", f"is longer than {limits.max_header_bytes} bytes")
    return None


def _revision(http: HttpRequest, body_meta: JsonValue) -> tuple[str, RequestError | None]:
    header = http.header(PROTOCOL_VERSION_HEADER)
    meta_version = None
    if isinstance(body_meta, dict):
        meta_version = body_meta.get(PROTOCOL_VERSION_META_KEY)
    if header is not None and not _REVISION.fullmatch(header):
        return "", _error(PROTOCOL_VERSION_HEADER, "format", "must be a date, e.g. 2025-11-25")
    if meta_version is not None:
        if not isinstance(meta_version, str) or not _REVISION.fullmatch(meta_version):
            return "", _error(
                f"params._meta.{PROTOCOL_VERSION_META_KEY}", "format", "must be a date string"
            )
        if header is not None and header != meta_version:
            return "", _error(
                PROTOCOL_VERSION_HEADER,
                "header_mismatch",
                f"says {header} but params._meta says {meta_version}",
            )
    return header or meta_version or "", None


def _header_era(http: HttpRequest, revision: str) -> bool:
    """True when Mcp-Method/Mcp-Name are required (2026-07-28 and later)."""
    return revision >= REVISION_2026_07_28 or http.header(METHOD_HEADER) is not None


def _intent(
    http: HttpRequest, meta: Mapping[str, JsonValue] | None, limits: McpLimits
) -> JsonValue:
    header = http.header(INTENT_HEADER)
    from_header: JsonValue = None
    if header is not None and _COMPACT_JWS.fullmatch(header.strip()):
        from_header = {"token": header.strip()}  # a signed intent
    elif header is not None:
        from_header = loads_strict(header, field=INTENT_HEADER, max_depth=8)
        if not isinstance(from_header, dict):
            raise _error(
                INTENT_HEADER,
                "type",
                "must be a JSON object {purpose, tools, expires_at} or a signed intent (JWS)",
            )
    from_meta = meta.get(INTENT_META_KEY) if meta is not None else None
    if isinstance(from_meta, str) and _COMPACT_JWS.fullmatch(from_meta):
        from_meta = {"token": from_meta}
    if from_meta is not None and not isinstance(from_meta, dict):
        raise _error(
            f"params._meta.{INTENT_META_KEY}",
            "type",
            "must be an object {purpose, tools, expires_at} or a signed intent (JWS string)",
        )
    if from_header is not None and from_meta is not None and from_header != from_meta:
        raise _error(
            INTENT_HEADER,
            "conflict",
            f"differs from params._meta.{INTENT_META_KEY}; send one intent",
        )
    return from_meta if from_meta is not None else from_header


def declared_intent(
    http: HttpRequest,
    meta: Mapping[str, JsonValue] | None,
    limits: McpLimits = DEFAULT_MCP_LIMITS,
) -> JsonValue:
    """The intent declared with one MCP message (``x-pdp-intent`` and/or
    ``params._meta["pdp.dev/intent"]``, equal when both are sent), or None; raises
    RequestError. For a front door that needs it outside a ``tools/call``, e.g. an SDK
    guard filtering ``tools/list``; a ``tools/call`` gets it from :func:`map_request`."""
    problem = _single_headers(http, limits)
    if problem is not None:
        raise problem
    return _intent(http, meta, limits)


def _prefixed(exc: RequestError, prefix: str) -> RequestError:
    return _error(f"{prefix}.{exc.field}", exc.rule, exc.detail)


def _tool_call(
    params: Mapping[str, JsonValue],
    meta: Mapping[str, JsonValue] | None,
    http: HttpRequest,
    base: Mapping[str, JsonValue],
    limits: McpLimits,
    request_limits: Limits,
) -> dict[str, JsonValue]:
    if "name" not in params:
        raise _error("params.name", "required", "tools/call needs the tool's name")
    tool = check_name("params.name", params["name"], request_limits)
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _error("params.arguments", "type", "must be a JSON object")
    try:
        if check_arguments(arguments, request_limits):
            arguments = normalize_numbers(arguments)
    except RequestError as exc:
        raise _prefixed(exc, "params") from None
    data: dict[str, JsonValue] = {**base, "tool": tool, "arguments": arguments}
    intent = _intent(http, meta, limits)
    if intent is not None:
        data["intent"] = intent
    agent_svid = http.header(AGENT_SVID_HEADER)
    if agent_svid is not None:
        data["agent_svid"] = agent_svid.strip()
    return data


def _check_headers(
    http: HttpRequest, method: str, params: Mapping[str, JsonValue], header_era: bool
) -> None:
    header_method = http.header(METHOD_HEADER)
    if header_method is None:
        if header_era:
            raise _error(METHOD_HEADER, "required", f"is required by MCP {REVISION_2026_07_28}")
    elif _decode_header(METHOD_HEADER, header_method) != method:
        raise _error(
            METHOD_HEADER,
            "header_mismatch",
            f"says {header_method[:64]!r} but the body's method is {method[:64]!r}",
        )
    header_name = http.header(NAME_HEADER)
    member = NAMED_METHODS.get(method)
    if member is None:
        if header_name is not None:
            raise _error(NAME_HEADER, "header_mismatch", f"is set but {method} names nothing")
        return
    if header_name is None:
        if header_era:
            raise _error(
                NAME_HEADER, "required", f"is required for {method} by MCP {REVISION_2026_07_28}"
            )
        return
    body_name = params.get(member)
    if _decode_header(NAME_HEADER, header_name) != body_name:
        raise _error(
            NAME_HEADER,
            "header_mismatch",
            f"says {header_name[:64]!r} but params.{member} is {str(body_name)[:64]!r}",
        )


def _jsonrpc_id(value: JsonValue) -> str | int:
    # MCP: "MUST be a string or integer", and not null.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _error("id", "type", "must be a string or an integer")
    return value


def _message(
    value: JsonValue,
    http: HttpRequest,
    base: Mapping[str, JsonValue],
    rules: MethodRules,
    limits: McpLimits,
    request_limits: Limits,
    header_era: bool,
    prefix: str,
) -> McpMessage:
    """One JSON-RPC message -> one decision to make (never raises)."""
    jsonrpc_id: str | int | None = None
    method = ""
    try:
        if not isinstance(value, dict):
            raise _error(prefix or "body", "type", "a JSON-RPC message must be a JSON object")
        if "id" in value:
            jsonrpc_id = _jsonrpc_id(value["id"])
        if value.get("jsonrpc") != "2.0":
            raise _error("jsonrpc", "required", 'must be "2.0"')
        if "method" not in value:
            if jsonrpc_id is None or ("result" in value) == ("error" in value):
                raise _error(
                    "method",
                    "required",
                    "a request needs a method; a response an id and exactly one of result or error",
                )
            unknown = set(value) - _RESPONSE_MEMBERS
            if unknown:
                raise _error(sorted(unknown)[0], "unknown_member", "is not a JSON-RPC member")
            if http.header(METHOD_HEADER) is not None or http.header(NAME_HEADER) is not None:
                raise _error(METHOD_HEADER, "header_mismatch", "is set on a JSON-RPC response")
            return McpMessage(JSONRPC_RESPONSE, rules.action(JSONRPC_RESPONSE), jsonrpc_id)
        method_value = value["method"]
        if not isinstance(method_value, str) or not method_value:
            raise _error("method", "type", "must be a non-empty string")
        method = method_value
        unknown = set(value) - _REQUEST_MEMBERS
        if unknown:
            raise _error(sorted(unknown)[0], "unknown_member", "is not a JSON-RPC member")
        params = value.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _error("params", "type", "must be a JSON object (MCP uses named params)")
        meta = params.get("_meta")
        if meta is not None and not isinstance(meta, dict):
            raise _error("params._meta", "type", "must be a JSON object")
        _check_headers(http, method, params, header_era)
        action = rules.action(method)
        if action is not MethodAction.POLICY:
            return McpMessage(method, action, jsonrpc_id)
        if jsonrpc_id is None:
            raise _error("id", "required", f"{method} is a request; a notification cannot call")
        data = _tool_call(params, meta, http, base, limits, request_limits)
        return McpMessage(method, action, jsonrpc_id, request=data)
    except RequestError as exc:
        error = _prefixed(exc, prefix) if prefix and exc.field != prefix else exc
        return McpMessage(method, MethodAction.DENY, jsonrpc_id, error=error)


def _base(agent: str, server: str, session: str) -> dict[str, JsonValue]:
    base: dict[str, JsonValue] = {"agent": agent, "server": server}
    if session:
        base["session"] = session
    return base


def _invalid(
    http: HttpRequest, error: RequestError, revision: str = "", session: str = ""
) -> McpMapping:
    return McpMapping(
        http.method,
        (McpMessage("", MethodAction.DENY, error=error),),
        revision,
        session=session,
        errors=(error,),
    )


def map_request(
    http: HttpRequest,
    *,
    agent: str,
    server: str,
    rules: MethodRules | None = None,
    limits: McpLimits = DEFAULT_MCP_LIMITS,
    request_limits: Limits = DEFAULT_LIMITS,
) -> McpMapping:
    """The decisions ``http`` needs. ``agent`` and ``server`` are taken as given (the
    caller knows who authenticated and which server the route names; pdp.model checks
    them again). Never raises."""
    rules = rules if rules is not None else MethodRules()
    problem = _single_headers(http, limits)
    session = http.header(SESSION_HEADER) or ""
    if problem is not None:
        return _invalid(http, problem, session=session)
    base = _base(agent, server, session)
    if http.method in ("GET", "DELETE"):
        key = HTTP_GET if http.method == "GET" else HTTP_DELETE
        revision, _ = _revision(http, None)
        return McpMapping(
            http.method, (McpMessage(key, rules.action(key)),), revision, session=session
        )
    if http.method != "POST":
        return _invalid(
            http,
            _error(
                "method",
                "http_method",
                f"HTTP {http.method[:16]} is not part of MCP streamable HTTP",
            ),
            session=session,
        )
    if http.body_truncated:
        return _invalid(
            http,
            _error(
                "body",
                "truncated",
                f"the gateway passed only the first {len(http.body)} bytes"
                " (x-envoy-auth-partial-body: true); a partial body cannot be decided",
            ),
            session=session,
        )
    if len(http.body) > limits.max_body_bytes:
        return _invalid(
            http,
            _error("body", "too_large", f"is larger than {limits.max_body_bytes} bytes"),
            session=session,
        )
    if not http.body:
        return _invalid(http, _error("body", "required", "a POST needs a JSON-RPC body"))
    try:
        value = loads_strict(http.body)
    except RequestError as exc:
        return _invalid(http, exc, session=session)
    if isinstance(value, list):
        return _batch(http, value, base, rules, limits, request_limits, session)
    params = value.get("params") if isinstance(value, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    revision, problem = _revision(http, meta)
    if problem is not None:
        return _invalid(http, problem, session=session)
    message = _message(
        value, http, base, rules, limits, request_limits, _header_era(http, revision), ""
    )
    return McpMapping(http.method, (message,), revision, session=session)


def _batch(
    http: HttpRequest,
    items: list[Any],
    base: Mapping[str, JsonValue],
    rules: MethodRules,
    limits: McpLimits,
    request_limits: Limits,
    session: str,
) -> McpMapping:
    revision, problem = _revision(http, None)
    if problem is not None:
        return _invalid(http, problem, session=session)
    if not items:
        return _invalid(http, _error("body", "empty_batch", "a JSON-RPC batch cannot be empty"))
    if _header_era(http, revision):
        return _invalid(
            http,
            _error(
                "body",
                "batch",
                f"JSON-RPC batches are not part of MCP {REVISION_2026_07_28}"
                " (and Mcp-Method cannot describe one)",
            ),
            revision,
            session,
        )
    if len(items) > limits.max_batch:
        return _invalid(
            http,
            _error(
                "body",
                "too_many",
                f"batch has {len(items)} messages; the limit is {limits.max_batch}",
            ),
            revision,
            session,
        )
    messages = tuple(
        _message(item, http, base, rules, limits, request_limits, False, f"[{index}]")
        for index, item in enumerate(items)
    )
    return McpMapping(http.method, messages, revision, batch=True, session=session)
