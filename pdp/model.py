"""Value types shared by every layer: the request, the decision and its reasons.

One request shape serves the CLI, the gRPC service, the audit record and replay.
:func:`parse_request` is the single parser: it turns untrusted JSON-like data into
a :class:`Request` or raises :class:`RequestError` naming the field and the rule.
Tool arguments and intents are attacker-controlled (prompt injection), so every
size, depth and name is bounded here, before anything reaches Cedar.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id

JsonValue = Any  # JSON data as produced by json.loads: dict, list, str, int, float, bool, None


class RequestError(ValueError):
    """A request breaks a rule. ``field`` is a dotted path, ``rule`` a stable short code."""

    def __init__(self, field: str, rule: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on untrusted input. Defaults are safe; each is configurable."""

    max_arguments_bytes: int = 64 * 1024  # arguments, JSON-encoded
    max_depth: int = 16  # nesting of objects/arrays inside arguments
    max_string_bytes: int = 8 * 1024  # any string value inside arguments or intent
    max_name_bytes: int = 256  # server, tool, object keys, session, purpose
    max_intent_tools: int = 256
    max_collection_items: int = 1024  # entries in one object or array


DEFAULT_LIMITS = Limits()

# Server and tool names become Cedar entity ids ("server/tool"); keep them to a
# conservative charset so that '/' and '*' can never be smuggled into them.
_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]*\Z", re.ASCII)
# Keys that Cedar's JSON format interprets as escapes (entity references, extension
# values); an attacker must not be able to forge an entity through tool arguments.
_RESERVED_KEYS = frozenset({"__entity", "__extn", "__expr"})
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Intent:
    """What the agent declared it is doing: a purpose and the tools it may need."""

    purpose: str
    tools: tuple[str, ...]  # "server/tool" or "server/*"
    expires_at: datetime | None = None

    def covers(self, server: str, tool: str) -> bool:
        return f"{server}/{tool}" in self.tools or f"{server}/*" in self.tools

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"purpose": self.purpose, "tools": list(self.tools)}
        if self.expires_at is not None:
            out["expires_at"] = format_time(self.expires_at)
        return out


@dataclass(frozen=True, slots=True)
class TokenDigest:
    """What is kept of a token (a signed intent, a JWT-SVID): never the token itself."""

    sha256: str  # of the compact JWS text
    issuer: str = ""  # the intent's ``iss``; a JWT-SVID's trust domain
    jti: str = ""
    key_id: str = ""

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"sha256": self.sha256}
        for name in ("issuer", "jti", "key_id"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True, slots=True)
class Proof:
    """What pdp verified about a request's tokens (pdp.proof), never what a caller says.

    ``intent_issuer`` is the issuer whose signature over the intent verified ("": the
    intent is not signed); ``agent_proven`` says a JWT-SVID of the request's agent, for
    pdp's audience, verified. The digests are kept for the audit log, also for tokens
    that were refused.
    """

    intent_issuer: str = ""
    agent_proven: bool = False
    intent_token: TokenDigest | None = None
    agent_token: TokenDigest | None = None

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {}
        if self.intent_issuer:
            out["intent_issuer"] = self.intent_issuer
        if self.agent_proven:
            out["agent_proven"] = True
        if self.intent_token is not None:
            out["intent_token"] = self.intent_token.to_json()
        if self.agent_token is not None:
            out["agent_token"] = self.agent_token.to_json()
        return out


NO_PROOF = Proof()


@dataclass(frozen=True, slots=True)
class Request:
    """One question: may ``agent`` call ``server``/``tool`` with ``arguments``?

    ``intent_token`` and ``agent_svid`` are the tokens as received (compact JWS); they
    are never rendered by :meth:`to_json`, so never recorded. ``proof`` is set only by
    :mod:`pdp.proof` after verifying them (or from a recorded decision, for replay).
    """

    agent: str
    server: str
    tool: str
    arguments: Mapping[str, JsonValue]
    time: datetime
    intent: Intent | None = None
    session: str = ""
    gateway: str = ""
    intent_token: str = field(default="", repr=False)
    agent_svid: str = field(default="", repr=False)
    proof: Proof = NO_PROOF
    # sha256:<hex> of what the MCP server advertises for the tool now (tool_digest()),
    # sent by a front door that saw tools/list; "" when it did not.
    tool_digest: str = ""

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "agent": self.agent,
            "server": self.server,
            "tool": self.tool,
            "arguments": self.arguments,
        }
        if self.intent is not None:
            out["intent"] = self.intent.to_json()
        if self.session:
            out["session"] = self.session
        if self.gateway:
            out["gateway"] = self.gateway
        if self.tool_digest:
            out["tool_digest"] = self.tool_digest
        out["time"] = format_time(self.time)
        if self.proof != NO_PROOF:
            out["proof"] = self.proof.to_json()
        return out


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why: the ``@id`` of a determining policy (or a built-in code) and its ``@reason``."""

    policy: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"policy": self.policy, "message": self.message}


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reasons: tuple[Reason, ...]
    policy_version: str
    errors: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decision": self.effect.value,
            "reasons": [r.to_json() for r in self.reasons],
            "errors": list(self.errors),
            "policy_version": self.policy_version,
        }


class ToolAnswer(StrEnum):
    """Whether an agent may call one tool (see pdp.engine.tools)."""

    ALLOW = "allow"
    DENY = "deny"
    DEPENDS_ON_ARGUMENTS = "depends_on_arguments"


@dataclass(frozen=True, slots=True)
class ToolVerdict:
    """One tool's answer. ``reasons``: the determining policies for allow and deny;
    for depends_on_arguments, the policies in scope whose conditions read arguments."""

    tool: str
    answer: ToolAnswer
    reasons: tuple[Reason, ...]
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "tool": self.tool,
            "answer": self.answer.value,
            "reasons": [reason.to_json() for reason in self.reasons],
        }
        if self.errors:
            out["errors"] = list(self.errors)
        return out


@dataclass(frozen=True, slots=True)
class ToolListing:
    """The answer for every tool of ``server`` in the inventory, by tool name."""

    agent: str
    server: str
    verdicts: tuple[ToolVerdict, ...]
    policy_version: str

    def callable_tools(self) -> tuple[str, ...]:
        """Tools that some arguments may be allowed for (allow or depends_on_arguments)."""
        return tuple(v.tool for v in self.verdicts if v.answer is not ToolAnswer.DENY)

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "agent": self.agent,
            "server": self.server,
            "tools": [verdict.to_json() for verdict in self.verdicts],
            "policy_version": self.policy_version,
        }


# Built-in reason codes that do not come from a policy file.
REASON_INVALID_REQUEST = "invalid_request"
REASON_INVALID_ARGUMENTS = "invalid_arguments"  # arguments outside the tool's input schema
REASON_TOOL_CHANGED = "tool_changed"  # the tool's description or schema is not the pinned one
REASON_DEFAULT_DENY = "default_deny"
REASON_UNKNOWN_TOOL = "unknown_tool"
REASON_EVALUATION_ERROR = "evaluation_error"
REASON_INTERNAL_ERROR = "internal_error"
# Denies the service makes without consulting the policies.
REASON_CALLER_NOT_BOUND = "caller_not_bound"  # the caller may not ask about this agent
REASON_AUDIT_UNAVAILABLE = "audit_unavailable"  # the decision could not be recorded
# Denies and allows of a front door that reads MCP (pdp.mcp), made without the policies.
REASON_INVALID_MCP_REQUEST = "invalid_mcp_request"  # the HTTP/JSON-RPC request breaks a rule
REASON_MCP_METHOD_RULE = "mcp_method_rule"  # a non-tools/call method, by the method rules


def deny(policy_version: str, code: str, message: str, errors: tuple[str, ...] = ()) -> Decision:
    return Decision(Effect.DENY, (Reason(code, message),), policy_version, errors)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated peer of a gRPC call (from its X.509-SVID)."""

    spiffe_id: str
    serial: str = ""
    trust_domain: str = field(default="")


# ---------------------------------------------------------------------------
# Parsing


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(field_name: str, value: JsonValue) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise RequestError(field_name, "type", "must be an RFC 3339 timestamp string")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RequestError(
            field_name, "format", f"{value!r} is not an RFC 3339 timestamp"
        ) from None
    if parsed.tzinfo is None:
        raise RequestError(field_name, "format", "timestamp must carry a time zone (e.g. 'Z')")
    return parsed.astimezone(UTC)


def _unknown_field(prefix: str, keys: set[Any]) -> RequestError:
    """Names the first unknown key; one that is not a plain name (empty, very long,
    control characters) is quoted and cut, so the error stays readable and bounded."""
    key = str(sorted(keys, key=str)[0])  # YAML (pdp test) may give non-string keys
    label = key if _NAME_RE.fullmatch(key[:64]) and len(key) <= 64 else repr(key[:64])
    return RequestError(f"{prefix}{label}", "unknown_field", "is not a known field")


def _string(field_name: str, value: JsonValue, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise RequestError(field_name, "type", "must be a string")
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise RequestError(field_name, "too_long", f"is longer than {max_bytes} bytes")
    return value


def check_name(field_name: str, value: JsonValue, limits: Limits) -> str:
    text = _string(field_name, value, limits.max_name_bytes)
    if not _NAME_RE.fullmatch(text):
        raise RequestError(
            field_name,
            "charset",
            "must start with a letter or digit and contain only letters, digits and . _ : -",
        )
    return text


def _spiffe(field_name: str, value: JsonValue) -> str:
    text = _string(field_name, value, 2048)
    try:
        parse_spiffe_id(text, require_path=True)
    except InvalidSpiffeId as exc:
        raise RequestError(field_name, "spiffe_id", f"not a valid SPIFFE ID: {exc}") from None
    return text


def check_arguments(arguments: JsonValue, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Validates tool arguments against the limits and Cedar's value model.

    Raises :class:`RequestError` with a path such as ``arguments.items[3].name``.
    Returns True when integral floats (``3.0``, as protobuf Struct sends every
    number) were seen; :func:`normalize_numbers` turns them into integers.
    """
    integral_floats = False
    if not isinstance(arguments, dict):
        raise RequestError("arguments", "type", "must be a JSON object")
    # Walk iteratively: a hostile 10,000-level nesting must not hit Python's recursion limit.
    stack: list[tuple[str, JsonValue, int]] = [("arguments", arguments, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > limits.max_string_bytes or (
                len(value.encode("utf-8", "surrogatepass")) > limits.max_string_bytes
            ):
                raise RequestError(
                    path, "too_long", f"string is longer than {limits.max_string_bytes} bytes"
                )
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not _I64_MIN <= value <= _I64_MAX:
                raise RequestError(path, "range", "integer does not fit in 64 bits")
        elif isinstance(value, float):
            if not (value.is_integer() and _I64_MIN <= value <= _I64_MAX):
                raise RequestError(
                    path,
                    "type",
                    "non-integer numbers are not supported (Cedar has no floats); send a string",
                )
            integral_floats = True
        elif value is None:
            raise RequestError(
                path, "type", "null is not supported (Cedar has no null); omit the key"
            )
        elif isinstance(value, dict | list):
            if depth >= limits.max_depth:
                raise RequestError(path, "depth", f"nesting is deeper than {limits.max_depth}")
            if len(value) > limits.max_collection_items:
                raise RequestError(
                    path, "too_many", f"has more than {limits.max_collection_items} entries"
                )
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise RequestError(path, "type", "object keys must be strings")
                    if len(key.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
                        raise RequestError(
                            f"{path}.{key[:32]}…",
                            "too_long",
                            f"key is longer than {limits.max_name_bytes} bytes",
                        )
                    if key in _RESERVED_KEYS:
                        raise RequestError(f"{path}.{key}", "reserved", "is a reserved key")
                    stack.append((f"{path}.{key}", item, depth + 1))
            else:
                for index, item in enumerate(value):
                    stack.append((f"{path}[{index}]", item, depth + 1))
        else:
            raise RequestError(path, "type", f"unsupported value of type {type(value).__name__}")
    return integral_floats


def normalize_numbers(value: JsonValue) -> JsonValue:
    """A copy of checked arguments with integral floats as ints (depth is already bounded)."""
    if isinstance(value, float):
        return int(value)
    if isinstance(value, dict):
        return {k: normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_numbers(v) for v in value]
    return value


def encoded_size(arguments: Mapping[str, JsonValue]) -> int:
    # surrogatepass: a lone surrogate (JSON "\ud800") is counted, not a crash; the
    # engine's string hygiene refuses it by name.
    text = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def parse_intent(value: JsonValue, limits: Limits = DEFAULT_LIMITS) -> Intent:
    """An intent object (``purpose``, ``tools``, ``expires_at``), from a request or from
    the claims of a signed intent; raises :class:`RequestError`."""
    if not isinstance(value, dict):
        raise RequestError("intent", "type", "must be an object")
    unknown = set(value) - {"purpose", "tools", "expires_at"}
    if unknown:
        raise _unknown_field("intent.", unknown)
    purpose = _string("intent.purpose", value.get("purpose", ""), limits.max_name_bytes)
    tools_value = value.get("tools", [])
    if not isinstance(tools_value, list):
        raise RequestError("intent.tools", "type", "must be a list of 'server/tool' strings")
    if len(tools_value) > limits.max_intent_tools:
        raise RequestError(
            "intent.tools", "too_many", f"has more than {limits.max_intent_tools} entries"
        )
    tools: list[str] = []
    for index, entry in enumerate(tools_value):
        path = f"intent.tools[{index}]"
        text = _string(path, entry, 2 * limits.max_name_bytes + 1)
        server, sep, tool = text.partition("/")
        if not sep:
            raise RequestError(path, "format", "must be 'server/tool' or 'server/*'")
        check_name(path, server, limits)
        if tool != "*":
            check_name(path, tool, limits)
        tools.append(text)
    expires_at = None
    if value.get("expires_at") is not None:
        expires_at = parse_time("intent.expires_at", value["expires_at"])
    return Intent(purpose=purpose, tools=tuple(tools), expires_at=expires_at)


_REQUEST_FIELDS = frozenset(
    {
        "agent",
        "server",
        "tool",
        "arguments",
        "intent",
        "session",
        "gateway",
        "time",
        "agent_svid",
        "tool_digest",
    }
)
# Bounds what a request can carry as a token before pdp.proof looks at it; pdp.proof's
# own (smaller, configurable) limit is the one that denies with ``*_too_large``.
MAX_TOKEN_FIELD_BYTES = 64 * 1024


def _intent_field(value: JsonValue, limits: Limits) -> tuple[Intent | None, str]:
    """The request's ``intent``: an object (unsigned), or ``{"token": COMPACT_JWS}``."""
    if value is None:
        return None, ""
    if isinstance(value, dict) and "token" in value:
        if len(value) != 1:
            raise RequestError(
                "intent.token",
                "exclusive",
                "a signed intent carries its purpose and tools inside the token;"
                " send either {token} or {purpose, tools, expires_at}",
            )
        return None, _token("intent.token", value["token"])
    return parse_intent(value, limits), ""


def _token(field_name: str, value: JsonValue) -> str:
    text = _string(field_name, value, MAX_TOKEN_FIELD_BYTES)
    if not text:
        raise RequestError(field_name, "required", "is empty (leave the field out instead)")
    return text


def _recorded_proof(value: JsonValue) -> Proof:
    """A recorded ``proof`` (audit log, for replay): what was verified then."""
    if not isinstance(value, dict):
        raise RequestError("proof", "type", "must be an object")

    def digest(name: str) -> TokenDigest | None:
        item = value.get(name)
        if not isinstance(item, dict):
            return None
        return TokenDigest(
            **{k: str(item.get(k, "")) for k in ("sha256", "issuer", "jti", "key_id")}
        )

    issuer = value.get("intent_issuer", "")
    return Proof(
        intent_issuer=issuer if isinstance(issuer, str) else "",
        agent_proven=value.get("agent_proven") is True,
        intent_token=digest("intent_token"),
        agent_token=digest("agent_token"),
    )


def parse_request(
    data: JsonValue,
    *,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
    arguments_size: int | None = None,
    recorded: bool = False,
) -> Request:
    """Builds a :class:`Request` from untrusted JSON data, or raises :class:`RequestError`.

    ``now`` is used when the request carries no ``time``. ``arguments_size``, when
    the caller already knows the encoded size (e.g. from the wire), saves re-encoding.
    ``recorded`` is for requests read back from the audit log (replay): only they may
    carry a ``proof``, what pdp verified when it decided. From a caller it is refused.
    """
    if not isinstance(data, dict):
        raise RequestError("request", "type", "must be a JSON object")
    if "proof" in data and not recorded:
        raise RequestError(
            "proof",
            "reserved",
            "is what pdp verified, never set by a caller; send the tokens instead"
            " (intent.token, agent_svid)",
        )
    unknown = set(data) - _REQUEST_FIELDS - ({"proof"} if recorded else set())
    if unknown:
        raise _unknown_field("", unknown)
    if "agent" not in data:
        raise RequestError("agent", "required", "is required")
    agent = _spiffe("agent", data["agent"])
    for required in ("server", "tool"):
        if required not in data:
            raise RequestError(required, "required", "is required")
    server = check_name("server", data["server"], limits)
    tool = check_name("tool", data["tool"], limits)
    arguments = data.get("arguments", {})
    if arguments is None:
        arguments = {}
    if check_arguments(arguments, limits):
        arguments = normalize_numbers(arguments)
    size = arguments_size if arguments_size is not None else encoded_size(arguments)
    if size > limits.max_arguments_bytes:
        raise RequestError(
            "arguments",
            "too_large",
            f"encoded size {size} exceeds {limits.max_arguments_bytes} bytes",
        )
    intent, intent_token = _intent_field(data.get("intent"), limits)
    agent_svid = _token("agent_svid", data["agent_svid"]) if "agent_svid" in data else ""
    proof = _recorded_proof(data["proof"]) if "proof" in data else NO_PROOF
    tool_digest = _tool_digest(data["tool_digest"]) if data.get("tool_digest") else ""
    session = _string("session", data.get("session", ""), limits.max_name_bytes)
    gateway_value = data.get("gateway", "")
    gateway = _spiffe("gateway", gateway_value) if gateway_value else ""
    time = parse_time("time", data["time"]) if data.get("time") is not None else now
    return Request(
        agent=agent,
        server=server,
        tool=tool,
        arguments=arguments,
        time=time,
        intent=intent,
        session=session,
        gateway=gateway,
        intent_token=intent_token,
        agent_svid=agent_svid,
        proof=proof,
        tool_digest=tool_digest,
    )


# --- tool pinning ---------------------------------------------------------------------

_DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")


def tool_digest(description: object, input_schema: object) -> str:
    """``sha256:<hex>`` of a tool's description and input schema as an MCP server lists
    them (``tools/list``: ``description``, ``inputSchema``), over canonical JSON (keys
    sorted, no whitespace, UTF-8), so any change to either, however small, changes it.
    A missing description counts as ``""``, a missing schema as ``null``."""
    canonical = json.dumps(
        {
            "description": description if description is not None else "",
            "inputSchema": input_schema,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_tool_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST_RE.match(value) is not None


def _tool_digest(value: JsonValue) -> str:
    if not is_tool_digest(value):
        raise RequestError(
            "tool_digest", "format", "must be sha256: and 64 lowercase hex digits (tool_digest())"
        )
    assert isinstance(value, str)
    return value
