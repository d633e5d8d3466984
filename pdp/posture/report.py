"""Folding audit records and effective access into posture findings.

Per agent, over the window the log covers:

* **permitted but unused** — tools its policies allow (or may allow: ``depends``) that
  no allowed call used;
* **used only under some intents** — for an agent that declared several purposes, a
  tool used under only some of them (a permit could require those purposes);
* **denied attempts by reason** — intent mismatch (the floor: no intent, a tool outside
  it, expired), outside the caller's binding, unknown tool, forbidden by a policy, no
  permit, invalid request, arguments outside the tool's schema, evaluation or service
  errors;
* **new agent → tool pairs** — first seen in the last day of the window.

And for the policy set: **permits that never determined a decision** in the window and
**forbids that fired**, with counts. Pure: the caller reads the records and the
policies and passes them in.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pdp.engine.access import ALLOW, DEPENDS, ToolAccess
from pdp.engine.store import CompiledPolicies
from pdp.model import (
    REASON_CALLER_NOT_BOUND,
    REASON_DEFAULT_DENY,
    REASON_INVALID_ARGUMENTS,
    REASON_INVALID_REQUEST,
    REASON_UNKNOWN_TOOL,
    JsonValue,
    format_time,
)

RECENT = timedelta(days=1)
# Why a call was denied, from its first reason.
INTENT_MISMATCH = "intent mismatch"
OUTSIDE_BINDING = "outside binding"
UNKNOWN_TOOL = "unknown tool"
FORBIDDEN = "forbidden by policy"
NO_PERMIT = "no permit"
INVALID = "invalid request"
INVALID_ARGUMENTS = "arguments outside the tool's schema"
ERROR = "error"
_FLOOR_INTENT = {"floor.intent_required", "floor.tool_outside_intent", "floor.intent_expired"}
TIMELINE_BUCKETS = 48
_STEPS = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=7),
)


def deny_category(reason: str, forbids: frozenset[str]) -> str:
    if reason in _FLOOR_INTENT:
        return INTENT_MISMATCH
    if reason == REASON_CALLER_NOT_BOUND:
        return OUTSIDE_BINDING
    if reason == REASON_UNKNOWN_TOOL:
        return UNKNOWN_TOOL
    if reason == REASON_DEFAULT_DENY:
        return NO_PERMIT
    if reason == REASON_INVALID_REQUEST:
        return INVALID
    if reason == REASON_INVALID_ARGUMENTS:
        return INVALID_ARGUMENTS
    if reason in forbids:
        return FORBIDDEN
    return ERROR  # evaluation_error, internal_error, audit_unavailable, unknown codes


@dataclass(frozen=True, slots=True)
class Observed:
    """One decision as posture needs it (from a decision record of the log)."""

    time: datetime
    agent: str
    tool: str  # server/tool
    allowed: bool
    reasons: tuple[str, ...]  # determining policy ids or codes
    purpose: str | None  # the declared intent's purpose, if any


@dataclass
class AgentPosture:
    agent: str
    in_inventory: bool
    access: dict[str, str] = field(default_factory=dict)  # tool -> allow/never/depends
    used: Counter[str] = field(default_factory=Counter)  # tool -> allowed calls
    denied: Counter[str] = field(default_factory=Counter)  # tool -> denied calls
    denied_by_reason: Counter[str] = field(default_factory=Counter)
    purposes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    first_seen: dict[str, datetime] = field(default_factory=dict)  # tool -> first call

    @property
    def permitted(self) -> list[str]:
        return sorted(t for t, a in self.access.items() if a in (ALLOW, DEPENDS))

    @property
    def unused_permitted(self) -> list[str]:
        return [t for t in self.permitted if not self.used.get(t)]

    def narrow_intents(self) -> dict[str, list[str]]:
        """Tools used under only some of the purposes this agent declared."""
        every = set().union(*self.purposes.values()) if self.purposes else set()
        if len(every) < 2:
            return {}
        return {
            tool: sorted(found)
            for tool, found in sorted(self.purposes.items())
            if found and found != every
        }

    def new_tools(self, since: datetime) -> list[str]:
        return sorted(t for t, first in self.first_seen.items() if first > since)


@dataclass
class Posture:
    policy_version: str
    agents: dict[str, AgentPosture]
    tools: list[str]
    decisions: int = 0
    allowed: int = 0
    denied: int = 0
    refusals: int = 0
    unreadable: int = 0
    start: datetime | None = None
    end: datetime | None = None
    permit_hits: Counter[str] = field(default_factory=Counter)
    forbid_hits: Counter[str] = field(default_factory=Counter)
    permits: dict[str, str] = field(default_factory=dict)  # authored permit id -> location
    timeline: list[tuple[datetime, int, int]] = field(default_factory=list)

    @property
    def recent_since(self) -> datetime | None:
        return None if self.end is None else self.end - RECENT

    @property
    def unused_permits(self) -> list[str]:
        return sorted(p for p in self.permits if not self.permit_hits.get(p))

    def new_pairs(self) -> dict[str, list[str]]:
        """agent -> tools first called in the last day, when the window is longer."""
        since = self.recent_since
        if since is None or self.start is None or self.start > since:
            return {}
        found = {a: p.new_tools(since) for a, p in self.agents.items()}
        return {a: tools for a, tools in found.items() if tools}

    def to_json(self) -> dict[str, JsonValue]:
        new = self.new_pairs()
        return {
            "policy_version": self.policy_version,
            "window": {
                "start": format_time(self.start) if self.start else None,
                "end": format_time(self.end) if self.end else None,
            },
            "decisions": self.decisions,
            "allowed": self.allowed,
            "denied": self.denied,
            "refusals": self.refusals,
            "unreadable": self.unreadable,
            "agents": [
                {
                    "agent": p.agent,
                    "in_inventory": p.in_inventory,
                    "permitted": p.permitted,
                    "used": dict(sorted(p.used.items())),
                    "denied": dict(sorted(p.denied.items())),
                    "permitted_unused": p.unused_permitted,
                    "used_only_under_intents": dict(p.narrow_intents()),
                    "denied_by_reason": dict(sorted(p.denied_by_reason.items())),
                    "new_in_last_day": new.get(p.agent, []),
                }
                for p in self.agents.values()
            ],
            "permits_never_determining": [
                {"id": pid, "location": self.permits[pid]} for pid in self.unused_permits
            ],
            "forbids_fired": dict(self.forbid_hits.most_common()),
            "timeline": [
                {"start": format_time(t), "allowed": a, "denied": d} for t, a, d in self.timeline
            ],
        }


def _step(span: timedelta) -> timedelta:
    for step in _STEPS:
        if span / step <= TIMELINE_BUCKETS:
            return step
    return _STEPS[-1]


def build_posture(
    compiled: CompiledPolicies,
    access: Iterable[ToolAccess],
    observed: Sequence[Observed],
    *,
    refusals: int = 0,
    unreadable: int = 0,
) -> Posture:
    """The posture of ``compiled`` (its access matrix) against what was observed."""
    forbids = frozenset(pid for pid, u in compiled.policies.items() if u.effect == "forbid")
    agents: dict[str, AgentPosture] = {}
    tools: set[str] = {f"{s}/{t}" for s, t in compiled.inventory.tools}
    for row in access:
        listed = agents.setdefault(row.agent, AgentPosture(row.agent, in_inventory=True))
        listed.access[row.ref] = row.access
    result = Posture(
        compiled.version,
        agents,
        [],
        refusals=refusals,
        unreadable=unreadable,
        permits={
            pid: u.location
            for pid, u in compiled.policies.items()
            if u.effect == "permit" and not u.floor
        },
    )
    for item in sorted(observed, key=lambda o: o.time):
        posture = agents.get(item.agent)
        if posture is None:
            posture = agents[item.agent] = AgentPosture(item.agent, in_inventory=False)
        tools.add(item.tool)
        result.decisions += 1
        result.start = item.time if result.start is None else result.start
        result.end = item.time
        posture.first_seen.setdefault(item.tool, item.time)
        if item.allowed:
            result.allowed += 1
            posture.used[item.tool] += 1
            if item.purpose is not None:
                posture.purposes[item.tool].add(item.purpose)
            for reason in item.reasons:
                result.permit_hits[reason] += 1
        else:
            result.denied += 1
            posture.denied[item.tool] += 1
            first = item.reasons[0] if item.reasons else REASON_DEFAULT_DENY
            posture.denied_by_reason[deny_category(first, forbids)] += 1
            for reason in item.reasons:
                if reason in forbids:
                    result.forbid_hits[reason] += 1
    result.tools = sorted(tools)
    result.agents = dict(sorted(agents.items()))
    result.timeline = _timeline(observed, result.start, result.end)
    return result


def _timeline(
    observed: Sequence[Observed], start: datetime | None, end: datetime | None
) -> list[tuple[datetime, int, int]]:
    if start is None or end is None:
        return []
    step = _step(end - start)
    origin = start - (start - datetime.min.replace(tzinfo=start.tzinfo)) % step
    count = int((end - origin) / step) + 1
    allowed, denied = [0] * count, [0] * count
    for item in observed:
        index = int((item.time - origin) / step)
        (allowed if item.allowed else denied)[index] += 1
    return [(origin + i * step, allowed[i], denied[i]) for i in range(count)]


def observed_from(request: Mapping[str, JsonValue], when: datetime, allowed: bool,
                  reasons: Sequence[str]) -> Observed:  # fmt: skip
    """An :class:`Observed` from a logged request (as recorded: only labels are read)."""
    intent = request.get("intent")
    purpose = intent.get("purpose") if isinstance(intent, dict) else None
    agent = request.get("agent")
    server, tool = request.get("server"), request.get("tool")
    return Observed(
        when,
        agent if isinstance(agent, str) else "?",
        f"{server if isinstance(server, str) else '?'}/{tool if isinstance(tool, str) else '?'}",
        allowed,
        tuple(reasons),
        purpose if isinstance(purpose, str) else None,
    )
