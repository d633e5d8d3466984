"""Which MCP messages pdp decides by policy, and what it does with the others.

A ``tools/call`` is always a policy decision (or, if configured, always denied). Every
other JSON-RPC method, the HTTP methods of the 2025-era transport (``GET`` for the SSE
stream, ``DELETE`` of a session) and JSON-RPC responses the client posts back are
decided by a rule: ``allow`` or ``deny``. The default allows protocol housekeeping
(handshake, discovery, listing, notifications, pings, the stream and the end of a
session) and denies everything that reads or acts on data outside ``tools/call``
(``resources/read``, ``prompts/get``, ``completion/complete``, subscriptions to
resources, tasks) and every method it does not know. Each such message is still an
audited decision, with reason ``mcp_method_rule``.

Rule keys are exact JSON-RPC method names, prefixes ending in ``/*``
(``notifications/*``), ``http:GET`` / ``http:DELETE`` and ``jsonrpc:response``; the
longest matching key wins, then ``default``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

TOOLS_CALL = "tools/call"
HTTP_GET = "http:GET"
HTTP_DELETE = "http:DELETE"
JSONRPC_RESPONSE = "jsonrpc:response"


class MethodAction(StrEnum):
    POLICY = "policy"  # decided by the policies (tools/call only)
    ALLOW = "allow"
    DENY = "deny"


DEFAULT_METHOD_RULES: Mapping[str, MethodAction] = MappingProxyType(
    {
        TOOLS_CALL: MethodAction.POLICY,
        # Handshake and discovery (2025-11-25 initialize; 2026-07-28 server/discover).
        "initialize": MethodAction.ALLOW,
        "server/discover": MethodAction.ALLOW,
        "ping": MethodAction.ALLOW,
        "notifications/*": MethodAction.ALLOW,
        "logging/setLevel": MethodAction.ALLOW,
        # Listing what exists is housekeeping; reading it is not.
        "tools/list": MethodAction.ALLOW,
        "prompts/list": MethodAction.ALLOW,
        "resources/list": MethodAction.ALLOW,
        "resources/templates/list": MethodAction.ALLOW,
        # 2026-07-28 replacement of the GET stream.
        "subscriptions/listen": MethodAction.ALLOW,
        HTTP_GET: MethodAction.ALLOW,
        HTTP_DELETE: MethodAction.ALLOW,
        # Answers to the server's own requests (sampling, elicitation, roots).
        JSONRPC_RESPONSE: MethodAction.ALLOW,
    }
)


class RuleError(ValueError):
    """A rule set is unusable; the message names the key."""


@dataclass(frozen=True, slots=True)
class MethodRules:
    rules: Mapping[str, MethodAction] = field(default_factory=lambda: DEFAULT_METHOD_RULES)
    default: MethodAction = MethodAction.DENY

    def __post_init__(self) -> None:
        if self.default is MethodAction.POLICY:
            raise RuleError("default: only tools/call can be decided by policy; use allow or deny")
        for key, action in self.rules.items():
            if not key or (key.endswith("*") and not key.endswith("/*")):
                raise RuleError(f"{key!r}: a method name, a prefix ending in '/*' or http:GET")
            if action is MethodAction.POLICY and key != TOOLS_CALL:
                raise RuleError(
                    f"{key}: only tools/call can be decided by policy; use allow or deny"
                )
            if key == TOOLS_CALL and action is MethodAction.ALLOW:
                raise RuleError("tools/call: cannot be allowed without policy; use policy or deny")

    @classmethod
    def with_overrides(
        cls, overrides: Mapping[str, str], default: str | None = None
    ) -> MethodRules:
        """The default rules with ``overrides`` (``method: allow|deny|policy``) applied."""
        rules = dict(DEFAULT_METHOD_RULES)
        for key, value in overrides.items():
            try:
                rules[key] = MethodAction(value)
            except ValueError:
                raise RuleError(f"{key}: {value!r} is not one of policy, allow, deny") from None
        try:
            fallback = MethodAction(default) if default is not None else MethodAction.DENY
        except ValueError:
            raise RuleError(f"default: {default!r} is not one of allow, deny") from None
        return cls(MappingProxyType(rules), fallback)

    def action(self, method: str) -> MethodAction:
        exact = self.rules.get(method)
        if exact is not None:
            return exact
        if method == TOOLS_CALL:
            return MethodAction.POLICY
        best: tuple[int, MethodAction] | None = None
        for key, action in self.rules.items():
            if (
                key.endswith("/*")
                and method.startswith(key[:-1])
                and (best is None or len(key) > best[0])
            ):
                best = (len(key), action)
        return best[1] if best is not None else self.default
