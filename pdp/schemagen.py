"""`pdp schema from-mcp`: Cedar action declarations from an MCP ``tools/list`` result.

Each tool becomes ``action "<server>/<tool>" in [Action::"<server>", …]`` with a
typed ``context.input`` record built from the tool's JSON Schema ``inputSchema``.
MCP tool annotations place tools in action groups: ``readOnlyHint`` -> ``read``,
``destructiveHint`` -> ``destructive``, otherwise ``write``. The inventory fragment
(``--inventory``) keeps each tool's ``inputSchema`` as its ``input_schema``, which
pdp enforces on every call (pdp.engine.arguments); a schema pdp could not enforce
is refused here already, naming the tool.

(The cedar-policy-mcp-schema-generator package targets a different model —
namespaced actions named after the bare tool and its own context layout — so pdp
emits its own declarations for the ``server/tool`` model.)
"""

from __future__ import annotations

import json
import re
from typing import Any

from pdp.engine.arguments import ArgumentSchemaError, ArgumentSettings, compile_arguments
from pdp.model import DEFAULT_LIMITS, RequestError, check_name

_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTEXT_TAIL = (
    "intent?: Intent, tool: ToolRef, agent: AgentRef, gateway: String, session: String, time: Time"
)
_MAX_DEPTH = 8


class SchemaGenError(ValueError):
    pass


def _attr_name(name: str) -> str:
    return name if _IDENT.fullmatch(name) else json.dumps(name)


def _resolve(schema: Any, root: Any) -> Any:
    """Follows local ``$ref`` s and unwraps a union with null (pydantic's optional fields):
    pdp refuses nulls, so ``{"anyOf": [X, {"type": "null"}]}`` takes the shape of X."""
    for _ in range(_MAX_DEPTH):
        if not isinstance(schema, dict):
            return schema
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            schema = target
            continue
        union = schema.get("anyOf", schema.get("oneOf"))
        if isinstance(union, list):
            rest = [s for s in union if not (isinstance(s, dict) and s.get("type") == "null")]
            if len(rest) == 1:
                schema = rest[0]
                continue
        return schema
    return None


def cedar_type(schema: Any, depth: int = 0, root: Any = None) -> str | None:
    """Maps a JSON Schema to a Cedar schema type; None where Cedar has no faithful type
    (a union of different shapes, an untyped value): such an argument is left out of the
    declaration, so no policy can test it as something it may not be."""
    schema = _resolve(schema, schema if root is None else root)
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: pdp refuses nulls, so take the rest
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    if kind is None and "const" in schema:
        kind = _JSON_KIND.get(type(schema["const"]))
    if kind is None and isinstance(schema.get("enum"), list) and schema["enum"]:
        kinds = {_JSON_KIND.get(type(v)) for v in schema["enum"]}
        kind = kinds.pop() if len(kinds) == 1 else None
    if kind == "string":
        return "String"
    if kind in ("integer", "number"):
        return "Long"  # pdp passes integral numbers only (Cedar has no floats)
    if kind == "boolean":
        return "Bool"
    if kind == "array":
        item = cedar_type(schema.get("items"), depth + 1, root)
        return f"Set<{item}>" if item is not None else None
    if kind == "object" or "properties" in schema:
        return record_type(schema, depth + 1, root)
    return None


_JSON_KIND = {str: "string", int: "integer", bool: "boolean"}


def record_type(schema: dict[str, Any], depth: int = 0, root: Any = None) -> str:
    root = schema if root is None else root
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    fields = []
    for name in sorted(properties):
        kind = cedar_type(properties[name], depth, root)
        if kind is None:
            continue
        optional = "" if name in required else "?"
        fields.append(f"{_attr_name(name)}{optional}: {kind}")
    return "{ " + ", ".join(fields) + " }" if fields else "{}"


def _tools(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, dict) and "result" in document:
        document = document["result"]
    if isinstance(document, dict):
        document = document.get("tools")
    if not isinstance(document, list) or not all(isinstance(t, dict) for t in document):
        raise SchemaGenError(
            "expected an MCP tools/list result: {'tools': [...]} (or the JSON-RPC response)"
        )
    return document


def _groups(tool: dict[str, Any]) -> list[str]:
    annotations = tool.get("annotations") or {}
    if annotations.get("readOnlyHint"):
        return ["read"]
    if annotations.get("destructiveHint"):
        return ["destructive"]
    return ["write"]


def from_mcp(document: Any, server: str) -> tuple[str, dict[str, Any]]:
    """Returns (Cedar schema text for the server's actions, entities.json fragment)."""
    try:
        check_name("server", server, DEFAULT_LIMITS)
    except RequestError as exc:
        raise SchemaGenError(f"--server: {exc.detail}") from None
    tools = _tools(document)
    lines = [f"// Generated by `pdp schema from-mcp --server {server}`.", f'action "{server}";']
    inventory_tools: dict[str, Any] = {}
    for tool in sorted(tools, key=lambda t: str(t.get("name"))):
        try:
            name = check_name("tool", tool.get("name"), DEFAULT_LIMITS)
        except RequestError as exc:
            raise SchemaGenError(f"tool {tool.get('name')!r}: {exc.detail}") from None
        groups = _groups(tool)
        parents = ", ".join(f'Action::"{p}"' for p in [server, *groups])
        input_type = record_type(tool.get("inputSchema") or {})  # Cedar's view of the same schema
        description = " ".join(str(tool.get("description") or "").split())[:120]
        if description:
            lines.append(f"// {name}: {description}")
        lines.append(
            f'action "{server}/{name}" in [{parents}] appliesTo {{\n'
            f"  principal: [Agent], resource: [McpServer],\n"
            f"  context: {{ input: {input_type}, {_CONTEXT_TAIL} }}\n"
            f"}};"
        )
        input_schema = tool.get("inputSchema")
        if input_schema is None:
            input_schema = {"type": "object"}  # MCP requires one; absent means no arguments
        try:
            compile_arguments(f"{server}/{name}", input_schema, ArgumentSettings())
        except ArgumentSchemaError as exc:
            raise SchemaGenError(f"tool {name!r}: inputSchema: {exc}") from None
        inventory_tools[name] = {"groups": groups, "input_schema": input_schema}
    return "\n".join(lines) + "\n", {"servers": {server: {"tools": inventory_tools}}}
