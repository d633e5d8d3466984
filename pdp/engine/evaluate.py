"""Deciding requests against compiled policies.

``decide`` is pure: no I/O, no clock (the request carries its time), no shared
mutable state, so one :class:`Engine` serves every thread. Every failure mode is
a deny with a reason; nothing here raises on bad input.

The hot path calls cedarpy's extension entry point ``_internal.is_authorized_batch``
directly: the public wrapper copies each request, re-encodes the context and
builds result objects we would throw away. cedarpy is pinned exactly in
pyproject.toml, and ``tests/engine/test_cedarpy_contract.py`` guards this contract.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import cedarpy
from cedarpy import _internal

from pdp.engine.arguments import ToolArguments, Violation
from pdp.engine.source import PolicyUnit
from pdp.engine.store import CompiledPolicies, policy_set_of
from pdp.model import (
    DEFAULT_LIMITS,
    REASON_DEFAULT_DENY,
    REASON_EVALUATION_ERROR,
    REASON_INVALID_ARGUMENTS,
    REASON_INVALID_REQUEST,
    REASON_TOOL_CHANGED,
    Decision,
    Effect,
    JsonValue,
    Limits,
    Reason,
    Request,
    RequestError,
    deny,
    parse_request,
)

_POLICY_ERROR_RE = re.compile(
    r"\Aerror while evaluating policy `(?P<id>[^`]*)`: (?P<msg>.*)\Z", re.S
)
_DEFAULT_DENY = Reason(REASON_DEFAULT_DENY, "no policy permits this call")
_DERIVED_LIMIT = 4096  # distinct subsets whose derived values are kept
_T = TypeVar("_T")


def cedar_context(request: Request) -> dict[str, JsonValue]:
    """The Cedar ``context`` record for a request (documented in policies/README.md)."""
    when = request.time
    trust_domain, _, path = request.agent[len("spiffe://") :].partition("/")
    context: dict[str, JsonValue] = {
        "input": request.arguments,
        "tool": {
            "server": request.server,
            "name": request.tool,
            "ref": f"{request.server}/{request.tool}",
            "server_wildcard": f"{request.server}/*",
        },
        "agent": {
            "trust_domain": trust_domain,
            "path": "/" + path,
            # A JWT-SVID of this agent, for pdp's audience, verified (pdp.proof).
            "proven": request.proof.agent_proven,
        },
        "gateway": request.gateway,
        "session": request.session,
        "time": {"epoch": int(when.timestamp()), "hour": when.hour, "weekday": when.weekday()},
    }
    intent = request.intent
    if intent is not None:
        record: dict[str, JsonValue] = {
            "purpose": intent.purpose,
            "tools": list(intent.tools),
            # Signed by a configured issuer, whose `iss` is `issuer` ("" when unsigned).
            "signed": bool(request.proof.intent_issuer),
            "issuer": request.proof.intent_issuer,
        }
        if intent.expires_at is not None:
            record["expires_at"] = int(intent.expires_at.timestamp())
        context["intent"] = record
    return context


def cedar_request(request: Request) -> dict[str, Any]:
    return {
        "principal": {"type": "Agent", "id": request.agent},
        "action": {"type": "Action", "id": f"{request.server}/{request.tool}"},
        "resource": {"type": "McpServer", "id": request.server},
        "context": json.dumps(cedar_context(request), ensure_ascii=False, separators=(",", ":")),
    }


# Cedar ids of the policies every subset shares (see Engine): never Cedar's positional
# ``policyN``, so that the policies parsed into a subset keep their positional ids.
COMMON_ID = "pdp.common."


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PolicySubset:
    """The policies whose scope matches one (agent, server, tool), as a Cedar set.

    Cedar names the first ``common`` of ``units`` ``pdp.common.0``, ``pdp.common.1``…
    and the others ``policy0``, ``policy1``… in ``units`` order.
    """

    policy_set: Any  # cedarpy.PolicySet
    units: tuple[PolicyUnit, ...]
    common: int = 0

    def unit(self, cedar_id: str) -> PolicyUnit | None:
        if cedar_id.startswith("policy"):
            index, offset = cedar_id[6:], self.common
        elif cedar_id.startswith(COMMON_ID):
            index, offset = cedar_id[len(COMMON_ID) :], 0
            if not index.isdigit() or int(index) >= self.common:
                return None
        else:
            return None
        if index.isdigit() and offset + int(index) < len(self.units):
            return self.units[offset + int(index)]
        return None


_NO_ANCESTORS: frozenset[tuple[str, str]] = frozenset()


def _matches_everything(unit: PolicyUnit) -> bool:
    scope = unit.scope
    return scope.principal.op == scope.action.op == scope.resource.op == "any"


def _common_set(units: Sequence[PolicyUnit]) -> Any:
    """``units`` as a Cedar set, named ``pdp.common.0``…; None if Cedar cannot."""
    try:
        parsed = json.loads(cedarpy.policies_to_json_str("\n".join(u.text for u in units)))
        static = parsed["staticPolicies"]
        parsed["staticPolicies"] = {
            f"{COMMON_ID}{i}": static[f"policy{i}"] for i in range(len(units))
        }
        return cedarpy.PolicySet.from_json_str(json.dumps(parsed))
    except (ValueError, KeyError):
        return None


class Engine:
    """Decides requests with one immutable :class:`CompiledPolicies`.

    Each request is evaluated against only the policies whose scope can match it
    (see pdp.engine.scope), chosen once per (agent, server, tool) and cached.
    """

    def __init__(
        self,
        compiled: CompiledPolicies,
        limits: Limits = DEFAULT_LIMITS,
        *,
        cache_size: int = 16384,
        indexed: bool = True,
        check_arguments: bool = True,
    ) -> None:
        self.compiled = compiled
        self.limits = limits
        # Off only to measure what the check costs (bench/engine.py): never in a service.
        self._arguments: dict[tuple[str, str], ToolArguments] = (
            compiled.inventory.arguments if check_arguments else {}
        )
        self._entities = compiled.entities._inner
        # Subsets in use (held by the selection cache), by positions: one Cedar set each.
        self._by_positions: weakref.WeakValueDictionary[tuple[int, ...], PolicySubset] = (
            weakref.WeakValueDictionary()
        )
        # The policies every request selects and that come first (the built-in floor):
        # parsed once and shared by every subset's Cedar set (Cedar clones a set's
        # policies by reference) rather than parsed into each, ≈ 4 KiB per policy.
        common = 0
        for unit in compiled.units:
            if not _matches_everything(unit):
                break
            common += 1
        self._common_set = _common_set(compiled.units[:common]) if common else None
        self._common = common if self._common_set is not None else 0
        self._lock = threading.Lock()
        # Values computed once per subset by other views of the same rules (e.g. the
        # argument-free part of a subset for tool listings), by id and checked for identity.
        self._derived: dict[tuple[int, Any], tuple[PolicySubset, Any]] = {}
        self.subset: Callable[[str, str, str], PolicySubset]
        if indexed:
            self.subset = functools.lru_cache(maxsize=cache_size)(self._select)
        else:
            everything = PolicySubset(compiled.full_policy_set(), compiled.units)
            self.subset = lambda agent, server, tool: everything

    @property
    def version(self) -> str:
        return self.compiled.version

    def groups_of(self, agent: str) -> frozenset[str]:
        """The inventory's agent groups ``agent`` is in, nested ones included."""
        return frozenset(
            uid
            for kind, uid in self.compiled.ancestors.get(("Agent", agent), ())
            if kind == "AgentGroup"
        )

    def _select(self, agent: str, server: str, tool: str) -> PolicySubset:
        ancestors = self.compiled.ancestors
        principal = ("Agent", agent)
        action = ("Action", f"{server}/{tool}")
        resource = ("McpServer", server)
        positions = self.compiled.index.select(
            principal,
            ancestors.get(principal, _NO_ANCESTORS),
            action,
            ancestors.get(action, _NO_ANCESTORS),
            resource,
            ancestors.get(resource, _NO_ANCESTORS),
        )
        # Many (agent, server, tool) keys share one subset (the floor plus group grants):
        # build each distinct Cedar set once.
        subset = self._by_positions.get(positions)
        if subset is None:
            units = tuple(self.compiled.units[p] for p in positions)
            common, common_set = self._common, self._common_set
            if common_set is None or positions[:common] != tuple(range(common)):
                subset = PolicySubset(policy_set_of(units), units)
            elif len(units) > common:
                # The added policies are named policy0, policy1… (no clash with the
                # common ids, so none is renamed).
                added = "\n".join(unit.text for unit in units[common:])
                subset = PolicySubset(common_set.with_added_str(added), units, common)
            else:
                subset = PolicySubset(common_set, units, common)
            with self._lock:
                subset = self._by_positions.setdefault(positions, subset)
        return subset

    def decide(self, request: Request) -> Decision:
        return self.decide_batch((request,))[0]

    def decide_by_policies(self, request: Request) -> Decision:
        """The policies' answer alone, without the invalid_arguments floor check: what
        pdp.engine.access probes (with no arguments) to learn what the policies grant.
        Never for a service: a call's arguments must always meet its tool's schema."""
        subset = self.subset(request.agent, request.server, request.tool)
        return self._evaluate(subset, [request])[0]

    def decide_batch(self, requests: Sequence[Request]) -> list[Decision]:
        """Decides many requests with as few Cedar calls as there are distinct subsets;
        answers are in request order."""
        if not requests:
            return []
        groups: dict[int, tuple[PolicySubset, list[int]]] = {}
        answers: list[Decision | None] = [None] * len(requests)
        arguments = self._arguments
        pins = self.compiled.inventory.digests
        try:
            for position, request in enumerate(requests):
                # The tool_changed floor rule: a tool whose description or input schema
                # is not the one approved (pinned in the inventory) is denied until the
                # inventory is updated; the front door reports what the server lists now.
                if request.tool_digest:
                    pinned = pins.get((request.server, request.tool))
                    if pinned is not None and pinned != request.tool_digest:
                        answers[position] = self._tool_changed(request, pinned)
                        continue
                # The invalid_arguments floor rule: arguments outside the tool's declared
                # input are denied before any policy sees them (an unknown tool has no
                # schema here and meets the unknown_tool floor policy instead).
                checks = arguments.get((request.server, request.tool))
                if checks is not None:
                    try:
                        violations = checks.violations(request.arguments)
                    except Exception as exc:  # denies this call, not the others of its batch
                        answers[position] = deny(
                            self.version, REASON_EVALUATION_ERROR, f"argument check failed: {exc}"
                        )
                        continue
                    if violations:
                        answers[position] = self._invalid_arguments(violations)
                        continue
                subset = self.subset(request.agent, request.server, request.tool)
                groups.setdefault(id(subset), (subset, []))[1].append(position)
        except Exception as exc:  # any failure selecting policies is a deny
            message = f"policy selection failed: {exc}"
            return [deny(self.version, REASON_EVALUATION_ERROR, message) for _ in requests]
        for subset, positions in groups.values():
            for position, decision in zip(
                positions, self._evaluate(subset, [requests[p] for p in positions]), strict=True
            ):
                answers[position] = decision
        return [a for a in answers if a is not None]

    def evaluate_subset(self, subset: PolicySubset, request: Request) -> Decision:
        """Decides ``request`` with exactly the policies of ``subset`` (e.g. a part of
        the subset :meth:`subset` selects), interpreted like every decision."""
        return self._evaluate(subset, [request])[0]

    def derived(self, subset: PolicySubset, compute: Callable[[PolicySubset], _T]) -> _T:
        """``compute(subset)``, computed once while ``subset`` is in use and cached."""
        key = (id(subset), compute)
        with self._lock:
            hit = self._derived.get(key)
        if hit is not None and hit[0] is subset:
            value: _T = hit[1]
            return value
        value = compute(subset)
        with self._lock:
            if len(self._derived) >= _DERIVED_LIMIT:
                self._derived.clear()
            self._derived[key] = (subset, value)
        return value

    def _evaluate(self, subset: PolicySubset, requests: list[Request]) -> list[Decision]:
        try:
            raw = _internal.is_authorized_batch(
                [cedar_request(r) for r in requests], subset.policy_set, self._entities, None, False
            )
        except Exception as exc:  # any failure in the binding is a deny
            message = f"policy evaluation failed: {exc}"
            return [deny(self.version, REASON_EVALUATION_ERROR, message) for _ in requests]
        return [self._interpret(subset, text) for text in raw]

    def decide_json(self, data: JsonValue, *, now: datetime) -> Decision:
        """Parses untrusted request data and decides it; a broken request is a deny."""
        try:
            request = parse_request(data, now=now, limits=self.limits)
        except RequestError as exc:
            return self.invalid(exc)
        return self.decide(request)

    def _tool_changed(self, request: Request, pinned: str) -> Decision:
        ref = f"{request.server}/{request.tool}"
        message = (
            f"tool {ref} changed since it was approved: the server lists description and"
            f" input schema {request.tool_digest[:19]}…, the inventory pins {pinned[:19]}…;"
            " review the change (pdp inventory diff) and re-approve it in the inventory"
        )
        return Decision(Effect.DENY, (Reason(REASON_TOOL_CHANGED, message),), self.version)

    def _invalid_arguments(self, violations: Sequence[Violation]) -> Decision:
        reasons = tuple(Reason(REASON_INVALID_ARGUMENTS, v.message()) for v in violations)
        return Decision(Effect.DENY, reasons, self.version)

    def invalid(self, error: RequestError) -> Decision:
        return deny(
            self.version,
            REASON_INVALID_REQUEST,
            f"{error.field}: {error.detail} (rule: {error.rule})",
        )

    @staticmethod
    def _reasons(subset: PolicySubset, positional_ids: list[str]) -> tuple[Reason, ...]:
        reasons = []
        for positional_id in positional_ids:
            unit = subset.unit(positional_id)
            reasons.append(
                Reason(unit.policy_id, unit.reason) if unit else Reason(positional_id, "")
            )
        return tuple(sorted(reasons, key=lambda r: r.policy))

    def _interpret(self, subset: PolicySubset, text: str) -> Decision:
        try:
            result = json.loads(text)
            diagnostics = result.get("diagnostics") or {}
            determining = diagnostics.get("reason") or []
            errors = diagnostics.get("errors") or []
            verdict = result["decision"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return deny(self.version, REASON_EVALUATION_ERROR, f"unreadable Cedar result: {exc}")
        if errors:
            # Cedar skips a policy that errors; a skipped forbid could let a permit through,
            # so any evaluation error denies, naming the policy and the error.
            reasons = list(self._reasons(subset, determining)) if verdict == "Deny" else []
            named_errors = [self._error(subset, e) for e in errors]
            reasons += [reason for reason, _ in named_errors]
            return Decision(
                Effect.DENY, tuple(reasons), self.version, tuple(text for _, text in named_errors)
            )
        if verdict == "Allow":
            return Decision(Effect.ALLOW, self._reasons(subset, determining), self.version)
        if determining:
            return Decision(Effect.DENY, self._reasons(subset, determining), self.version)
        return Decision(Effect.DENY, (_DEFAULT_DENY,), self.version)

    @staticmethod
    def _error(subset: PolicySubset, error: str) -> tuple[Reason, str]:
        match = _POLICY_ERROR_RE.match(error)
        if match is None:
            return Reason(REASON_EVALUATION_ERROR, error), error
        unit = subset.unit(match.group("id"))
        policy_id = unit.policy_id if unit else match.group("id")
        message = match.group("msg")
        return (
            Reason(policy_id, f"evaluation error: {message}"),
            f"policy {policy_id}: {message}",
        )
