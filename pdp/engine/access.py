"""Effective access: which tools an agent can reach, decided by the engine itself.

For one (agent, server, tool) the answer is one of:

* ``allow`` — a call is allowed whatever its arguments, intent purpose, time, session
  or gateway (the floor still applies to every call: it must carry a declared intent
  naming the tool, not expired, and arguments that meet the tool's input schema);
* ``never`` — no call is allowed;
* ``depends`` — the answer turns on what the call carries: ``on`` names it (arguments,
  intent, time, session, gateway, agent proof, context), ``policies`` the policies that read it.

Nothing here re-implements Cedar. The policies that can apply are the ones the
engine's scope index selects for a decision (the same selection, so the answer is
exact for every scope the index files: ``==``, ``in``, ``is``, ``is … in``, action
lists). What a policy's conditions read is taken from Cedar's own parse of it (its
JSON form): a policy whose conditions read only the agent, the server, the tool and
inventory attributes gives the same result for every call, so one probe decided by the
real engine (with an intent naming the tool, no arguments) is the answer. Only when a
selected policy reads what a call carries does the answer become ``depends``, unless a
forbid that reads nothing of the call already fires (``never``) or no permit can apply
(``never``).

Pure: no I/O; the clock is a parameter.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cedarpy

from pdp.engine.evaluate import Engine
from pdp.engine.source import PolicyUnit
from pdp.model import JsonValue, format_time, parse_request

ALLOW, NEVER, DEPENDS = "allow", "never", "depends"
# Context members fixed by (agent, server, tool): reading them keeps an answer exact.
_FIXED_MEMBERS = {
    "tool": frozenset({"server", "name", "ref", "server_wildcard"}),
    "agent": frozenset({"trust_domain", "path"}),
}
_FIXED = frozenset(f"{m}.{a}" for m, attrs in _FIXED_MEMBERS.items() for a in attrs) | {"tool"}
# What a call carries, by the context member a policy reads (``agent.proven`` and any
# other agent member but its name's parts comes with the call: the agent's proof).
_CARRIED = {
    "input": "arguments",
    "intent": "intent",
    "time": "time",
    "session": "session",
    "gateway": "gateway",
    "agent": "agent proof",
}
PROBE_PURPOSE = "pdp.access"


@dataclass(frozen=True, slots=True)
class PolicyRole:
    """A policy that takes part in an answer."""

    policy_id: str
    effect: str
    location: str
    reads: tuple[str, ...] = ()  # what of the call its conditions read (empty: nothing)

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "id": self.policy_id,
            "effect": self.effect,
            "location": self.location,
            "reads": list(self.reads),
        }


@dataclass(frozen=True, slots=True)
class ToolAccess:
    agent: str
    server: str
    tool: str
    access: str  # ALLOW | NEVER | DEPENDS
    policies: tuple[PolicyRole, ...]  # determining (allow/never) or those that read the call
    on: tuple[str, ...] = ()  # DEPENDS: what the answer turns on
    permits: tuple[str, ...] = field(default=())  # DEPENDS: the permits that may grant it

    @property
    def ref(self) -> str:
        return f"{self.server}/{self.tool}"

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "agent": self.agent,
            "server": self.server,
            "tool": self.tool,
            "access": self.access,
            "policies": [p.to_json() for p in self.policies],
        }
        if self.access == DEPENDS:
            out["on"] = list(self.on)
            out["permits"] = list(self.permits)
        return out


_CONTEXT = {"Var": "context"}


def _context_member(node: dict[str, Any]) -> str | None:
    """``context.m`` / ``context has m`` -> ``m``; ``context.m.a`` / ``context.m has a``
    for a member with fixed parts -> ``m.a``; otherwise None."""
    for op in (".", "has"):
        inner = node.get(op)
        if not isinstance(inner, dict):
            continue
        left = inner.get("left")
        if left == _CONTEXT:
            return str(inner.get("attr"))
        parent = left.get(".") if isinstance(left, dict) else None
        if (
            isinstance(parent, dict)
            and parent.get("left") == _CONTEXT
            and parent.get("attr") in _FIXED_MEMBERS
        ):
            return f"{parent['attr']}.{inner.get('attr')}"
    return None


def _context_reads(node: Any, found: set[str]) -> bool:
    """Adds the context members read under ``node`` (Cedar's JSON form of an
    expression) to ``found``; False when ``context`` is used as a whole somewhere."""
    if isinstance(node, dict):
        if node == _CONTEXT:
            return False
        member = _context_member(node)
        if member is not None:
            found.add(member)
            return True
        return all([_context_reads(value, found) for value in node.values()])
    if isinstance(node, list):
        return all([_context_reads(value, found) for value in node])
    return True


@functools.lru_cache(maxsize=65536)
def _reads_of_text(text: str) -> tuple[str, ...]:
    """What of a call a policy's conditions read, from Cedar's parse of the policy."""
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(text))
        policy = next(iter(parsed["staticPolicies"].values()))
        conditions = policy.get("conditions") or []
    except (ValueError, KeyError, StopIteration, TypeError):
        return ("context",)  # unreadable here: never claim exactness
    members: set[str] = set()
    if not _context_reads(conditions, members):
        return ("context",)
    carried = {_CARRIED.get(m.partition(".")[0], "context") for m in members if m not in _FIXED}
    return tuple(sorted(carried))


def policy_reads(unit: PolicyUnit) -> tuple[str, ...]:
    return _reads_of_text(unit.text)


def _role(unit: PolicyUnit) -> PolicyRole:
    return PolicyRole(unit.policy_id, unit.effect, unit.location, policy_reads(unit))


def probe_request(agent: str, server: str, tool: str, now: datetime) -> dict[str, JsonValue]:
    """A call that satisfies the floor (intent naming the tool) and carries nothing else."""
    return {
        "agent": agent,
        "server": server,
        "tool": tool,
        "arguments": {},
        "intent": {"purpose": PROBE_PURPOSE, "tools": [f"{server}/{tool}"]},
        "time": format_time(now),
    }


def tool_access(engine: Engine, agent: str, server: str, tool: str, *, now: datetime) -> ToolAccess:
    """What ``agent`` may do with ``server``/``tool`` under ``engine``'s policies."""
    units = engine.subset(agent, server, tool).units
    authored = [u for u in units if not u.floor]
    variable = [u for u in authored if policy_reads(u)]
    probe = parse_request(probe_request(agent, server, tool, now), now=now, limits=engine.limits)
    # The policies alone: the arguments floor rule (each call's arguments must meet the
    # tool's input schema) holds for every call and is stated with the answer.
    decision = engine.decide_by_policies(probe)
    by_id = {u.policy_id: u for u in units}
    determining = tuple(_role(by_id[r.policy]) for r in decision.reasons if r.policy in by_id)
    fixed_forbids = [role for role in determining if role.effect == "forbid" and not role.reads]
    permits = [u for u in authored if u.effect == "permit"]
    if not permits:  # nothing can grant it, whatever the call carries
        return ToolAccess(agent, server, tool, NEVER, tuple(fixed_forbids))
    if fixed_forbids:  # a forbid that reads nothing of the call fires for every call
        return ToolAccess(agent, server, tool, NEVER, tuple(fixed_forbids))
    if not variable:  # nothing the probe left out is read: its answer holds for every call
        return ToolAccess(agent, server, tool, ALLOW if decision.allowed else NEVER, determining)
    roles = tuple(_role(u) for u in variable)
    on = tuple(sorted({item for role in roles for item in role.reads}))
    return ToolAccess(
        agent,
        server,
        tool,
        DEPENDS,
        roles,
        on or ("context",),
        tuple(u.policy_id for u in permits),
    )


# --- the inventory ----------------------------------------------------------------------


def agents_of(engine: Engine, group: str | None = None) -> list[str]:
    """The inventory's agents, sorted; with ``group``, its members (nested groups too)."""
    compiled = engine.compiled
    agents = sorted(
        str(e["uid"]["id"]) for e in compiled.inventory.entities if e["uid"]["type"] == "Agent"
    )
    if group is None:
        return agents
    key = ("AgentGroup", group)
    return [a for a in agents if key in compiled.ancestors.get(("Agent", a), frozenset())]


def groups_of(engine: Engine) -> list[str]:
    return sorted(
        str(e["uid"]["id"])
        for e in engine.compiled.inventory.entities
        if e["uid"]["type"] == "AgentGroup"
    )


def tools_of(engine: Engine, server: str | None = None) -> list[tuple[str, str]]:
    tools = sorted(engine.compiled.inventory.tools)
    return [t for t in tools if server is None or t[0] == server]


def access_matrix(
    engine: Engine,
    agents: Sequence[str],
    tools: Iterable[tuple[str, str]],
    *,
    now: datetime,
) -> Iterator[ToolAccess]:
    """:func:`tool_access` for every agent and tool, agent by agent."""
    tool_list = list(tools)
    for agent in agents:
        for server, tool in tool_list:
            yield tool_access(engine, agent, server, tool, now=now)


FLOOR_NOTE = (
    "every call must also declare an unexpired intent naming the tool and carry arguments"
    " that meet the tool's input schema (the floor);"
    " 'allow' and 'never' hold for every call that does, 'depends' names what decides"
)
