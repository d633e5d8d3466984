"""The inventory: which agents, groups, MCP servers and tools exist.

``entities.json`` in a policy directory is small and written by hand::

    {
      "agent_groups": {"support": {}, "staff": {"parents": []}},
      "agents": {
        "spiffe://acme.test/agent/coder": {"groups": ["eng"], "attrs": {"repos": ["web"]}}
      },
      "servers": {
        "crm": {
          "attrs": {"reserved_for": "acme.test"},
          "tools": {
            "get_ticket": {
              "groups": ["read"],
              "input_schema": {"type": "object", "required": ["ticket_id"],
                               "properties": {"ticket_id": {"type": "string"}}}
            },
            "delete_ticket": {"groups": ["destructive"], "input_schema": {...},
                              "arguments": {"raw_strings": ["note"]}}
          }
        }
      },
      "arguments": {"max_string_length": 4096, "max_items": 256}
    }

It becomes Cedar entities: ``Agent`` (parents: ``AgentGroup``), ``AgentGroup``,
``McpServer`` (attribute ``tools``: the names of its tools, plus ``attrs``). Tool
actions and their action groups are declared in the schema; pdp checks that the
two agree, so a tool cannot silently fall out of a group.

Every tool declares ``input_schema``, the JSON Schema of its arguments (MCP
``tools/list`` ``inputSchema``), compiled here once (pdp.engine.arguments); the
optional ``arguments`` settings, per tool over the top-level ones, relax how
strictly calls are held to it. Tool entries are objects so that more per-tool
data can join them: ``digest`` pins the tool (``sha256:`` of its description and input
schema, :func:`pdp.model.tool_digest`, recorded by ``pdp schema from-mcp --inventory``);
a request whose ``tool_digest`` differs is denied ``tool_changed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdp.engine.arguments import (
    ArgumentSchemaError,
    ArgumentSettings,
    ToolArguments,
    compile_arguments,
    parse_settings,
)
from pdp.engine.source import Diagnostic
from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id
from pdp.model import DEFAULT_LIMITS, RequestError, check_name, is_tool_digest

INVENTORY_FILE = "entities.json"
_TOP_LEVEL = frozenset({"agent_groups", "agents", "servers", "arguments"})


@dataclass(frozen=True, slots=True)
class Inventory:
    """Parsed ``entities.json``: the Cedar entities and the set of known tools."""

    entities: tuple[dict[str, Any], ...]
    tools: frozenset[tuple[str, str]]  # (server, tool)
    tool_groups: dict[tuple[str, str], frozenset[str]]  # declared action groups per tool
    arguments: dict[tuple[str, str], ToolArguments]  # compiled input schema per tool
    # Pinned tool_digest() of description + input schema, per tool that records one.
    digests: dict[tuple[str, str], str] = field(default_factory=dict)


class InventoryError(ValueError):
    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("; ".join(str(d) for d in diagnostics))
        self.diagnostics = diagnostics


def _uid(kind: str, ident: str) -> dict[str, str]:
    return {"type": kind, "id": ident}


def _find_cycle(parents: dict[str, Any]) -> list[str]:
    """A cycle in the group hierarchy, as a path, or [] (iterative DFS)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(parents):
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, child_index = stack.pop()
            if child_index == 0:
                state[node] = 1
                path.append(node)
            children = [c for c in (parents.get(node) or []) if isinstance(c, str)]
            if child_index < len(children):
                stack.append((node, child_index + 1))
                child = children[child_index]
                if state.get(child) == 1:
                    return [*path[path.index(child) :], child]
                if not state.get(child):
                    stack.append((child, 0))
            else:
                state[node] = 2
                path.pop()
    return []


def load_inventory(path: Path, display_name: str) -> Inventory:
    """Reads and checks an inventory file; raises :class:`InventoryError` with diagnostics."""
    problems: list[Diagnostic] = []

    def problem(message: str) -> None:
        problems.append(Diagnostic(display_name, 0, message))

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InventoryError([Diagnostic(display_name, 0, "inventory file is missing")]) from None
    except json.JSONDecodeError as exc:
        raise InventoryError(
            [Diagnostic(display_name, exc.lineno, f"invalid JSON: {exc.msg}")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError([Diagnostic(display_name, 0, f"cannot read: {exc}")]) from None
    if not isinstance(data, dict):
        raise InventoryError([Diagnostic(display_name, 0, "must be a JSON object")])
    for key in sorted(set(data) - _TOP_LEVEL):
        problem(f"unknown top-level key {key!r} (expected {sorted(_TOP_LEVEL)})")

    entities: list[dict[str, Any]] = []
    groups = data.get("agent_groups", {}) or {}
    if not isinstance(groups, dict):
        problem("agent_groups must be an object")
        groups = {}
    for name, spec in sorted(groups.items()):
        spec = spec or {}
        parents = spec.get("parents", []) if isinstance(spec, dict) else None
        if not isinstance(parents, list):
            problem(f"agent_groups.{name}.parents must be a list")
            continue
        for parent in parents:
            if parent not in groups:
                problem(f"agent_groups.{name}: parent group {parent!r} is not declared")
        entities.append(
            {
                "uid": _uid("AgentGroup", name),
                "attrs": {},
                "parents": [_uid("AgentGroup", p) for p in parents],
            }
        )

    cycle = _find_cycle(
        {
            name: (spec or {}).get("parents", [])
            for name, spec in groups.items()
            if isinstance(spec, dict | None)
        }
    )
    if cycle:
        problem("agent_groups: parent cycle " + " -> ".join(cycle))

    agents = data.get("agents", {}) or {}
    if not isinstance(agents, dict):
        problem("agents must be an object keyed by SPIFFE ID")
        agents = {}
    for agent_id, spec in sorted(agents.items()):
        try:
            parse_spiffe_id(agent_id, require_path=True)
        except InvalidSpiffeId as exc:
            problem(f"agents: {agent_id!r} is not a valid SPIFFE ID: {exc}")
            continue
        spec = spec or {}
        agent_groups = spec.get("groups", []) if isinstance(spec, dict) else None
        if not isinstance(agent_groups, list):
            problem(f"agents.{agent_id}.groups must be a list")
            continue
        for group in agent_groups:
            if group not in groups:
                problem(f"agents.{agent_id}: group {group!r} is not declared in agent_groups")
        agent_attrs = spec.get("attrs", {}) or {}
        if not isinstance(agent_attrs, dict):
            problem(f"agents.{agent_id}.attrs must be an object")
            continue
        entities.append(
            {
                "uid": _uid("Agent", agent_id),
                "attrs": agent_attrs,
                "parents": [_uid("AgentGroup", g) for g in agent_groups],
            }
        )

    try:
        defaults = parse_settings(data.get("arguments"), ArgumentSettings(), "arguments")
    except ArgumentSchemaError as exc:
        problem(str(exc))
        defaults = ArgumentSettings()
    arguments: dict[tuple[str, str], ToolArguments] = {}

    servers = data.get("servers", {}) or {}
    if not isinstance(servers, dict):
        problem("servers must be an object")
        servers = {}
    known: set[tuple[str, str]] = set()
    tool_groups: dict[tuple[str, str], frozenset[str]] = {}
    digests: dict[tuple[str, str], str] = {}
    for server, spec in sorted(servers.items()):
        try:
            check_name("server", server, DEFAULT_LIMITS)
        except RequestError as exc:
            problem(f"servers: {server!r}: {exc.detail}")
            continue
        spec = spec or {}
        if not isinstance(spec, dict):
            problem(f"servers.{server} must be an object")
            continue
        tools = spec.get("tools", {}) or {}
        attrs = spec.get("attrs", {}) or {}
        if not isinstance(tools, dict) or not isinstance(attrs, dict):
            problem(f"servers.{server}: tools and attrs must be objects")
            continue
        if "tools" in attrs:
            problem(f"servers.{server}.attrs: 'tools' is reserved (pdp fills it from 'tools')")
        for tool, tool_spec in sorted(tools.items()):
            try:
                check_name("tool", tool, DEFAULT_LIMITS)
            except RequestError as exc:
                problem(f"servers.{server}.tools: {tool!r}: {exc.detail}")
                continue
            tool_spec = tool_spec or {}
            declared = tool_spec.get("groups", []) if isinstance(tool_spec, dict) else None
            if not isinstance(declared, list):
                problem(f"servers.{server}.tools.{tool}.groups must be a list")
                continue
            known.add((server, tool))
            tool_groups[(server, tool)] = frozenset(declared)
            where = f"servers.{server}.tools.{tool}"
            if "digest" in tool_spec:
                if not is_tool_digest(tool_spec["digest"]):
                    problem(
                        f"{where}.digest: must be sha256: and 64 lowercase hex digits (as"
                        " `pdp schema from-mcp --inventory` records it)"
                    )
                else:
                    digests[(server, tool)] = tool_spec["digest"]
            if "input_schema" not in tool_spec:
                problem(
                    f"{where}: no input_schema (the JSON Schema of its arguments; capture it"
                    " with `pdp schema from-mcp --inventory`)"
                )
                continue
            try:
                settings = parse_settings(
                    tool_spec.get("arguments"), defaults, f"{where}.arguments"
                )
            except ArgumentSchemaError as exc:
                problem(str(exc))
                continue
            try:
                arguments[(server, tool)] = compile_arguments(
                    f"{server}/{tool}", tool_spec["input_schema"], settings
                )
            except ArgumentSchemaError as exc:
                problem(f"{where}.input_schema: {exc}")
        entities.append(
            {
                "uid": _uid("McpServer", server),
                "attrs": {**attrs, "tools": sorted(tools)},
                "parents": [],
            }
        )
    if problems:
        raise InventoryError(problems)
    return Inventory(
        entities=tuple(entities),
        tools=frozenset(known),
        tool_groups=tool_groups,
        arguments=arguments,
        digests=digests,
    )
