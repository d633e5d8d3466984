"""Tool pinning: what changed between two ``tools/list`` snapshots, and a live capture.

A tool's description is read by the model that calls it and its input schema says what
it accepts: a server that changes either after review (a "rug pull"; descriptions are a
prompt-injection vector) changes what was approved. ``pdp schema from-mcp --inventory``
pins each tool's :func:`pdp.model.tool_digest`; a request carrying another digest is
denied ``tool_changed``. :func:`diff_tools` shows a reviewer what changed
(``pdp inventory diff OLD.json NEW.json``), and :func:`capture_tools` lists a live
server's tools with the MCP SDK's client (``--connect``: a command run over stdio, or a
streamable HTTP URL) instead of reading a file.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pdp.model import JsonValue, tool_digest
from pdp.schemagen import SchemaGenError, tools_of

MAX_TOOL_PAGES = 100


@dataclass(frozen=True, slots=True)
class ToolChange:
    name: str
    changes: tuple[str, ...]  # one line per difference, in words
    old_digest: str
    new_digest: str


@dataclass(frozen=True, slots=True)
class ToolsDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[ToolChange, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [
                {
                    "tool": c.name,
                    "changes": list(c.changes),
                    "old_digest": c.old_digest,
                    "new_digest": c.new_digest,
                }
                for c in self.changed
            ],
        }

    def text(self) -> str:
        if self.empty:
            return "no tool added, removed or changed"
        lines = [f"+ {name} (added)" for name in self.added]
        lines += [f"- {name} (removed)" for name in self.removed]
        for change in self.changed:
            lines.append(f"~ {change.name}: {change.old_digest[:19]}… -> {change.new_digest[:19]}…")
            lines += [f"    {line}" for line in change.changes]
        return "\n".join(lines)


def _by_name(document: Any, label: str) -> dict[str, Mapping[str, Any]]:
    try:
        tools = tools_of(document)
    except SchemaGenError as exc:
        raise SchemaGenError(f"{label}: {exc}") from None
    out: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str):
            raise SchemaGenError(f"{label}: a tool has no name")
        if name in out:
            raise SchemaGenError(f"{label}: tool {name!r} is listed twice")
        out[name] = tool
    return out


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_changes(old: Any, new: Any) -> list[str]:
    if old == new:
        return []
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [f"inputSchema: {_short(old)} -> {_short(new)}"]
    lines: list[str] = []
    old_props = old.get("properties") or {}
    new_props = new.get("properties") or {}
    if isinstance(old_props, dict) and isinstance(new_props, dict):
        for name in sorted(set(new_props) - set(old_props)):
            lines.append(f"argument {name!r} added: {_short(new_props[name])}")
        for name in sorted(set(old_props) - set(new_props)):
            lines.append(f"argument {name!r} removed")
        for name in sorted(set(old_props) & set(new_props)):
            if old_props[name] != new_props[name]:
                lines.append(
                    f"argument {name!r}: {_short(old_props[name])} -> {_short(new_props[name])}"
                )
    old_required = set(old.get("required") or [])
    new_required = set(new.get("required") or [])
    if old_required != new_required:
        gained = ", ".join(sorted(map(str, new_required - old_required))) or "-"
        lost = ", ".join(sorted(map(str, old_required - new_required))) or "-"
        lines.append(f"required: now also {gained}; no longer {lost}")
    rest_old = {k: v for k, v in old.items() if k not in ("properties", "required")}
    rest_new = {k: v for k, v in new.items() if k not in ("properties", "required")}
    for key in sorted(set(rest_old) | set(rest_new)):
        if rest_old.get(key) != rest_new.get(key):
            lines.append(
                f"inputSchema {key}: {_short(rest_old.get(key))} -> {_short(rest_new.get(key))}"
            )
    return lines or ["inputSchema changed"]


def diff_tools(old_document: Any, new_document: Any) -> ToolsDiff:
    """Added, removed and changed tools between two ``tools/list`` results; a tool is
    changed when its digest (description + input schema) differs, and the lines say
    how. Annotation changes are reported too (they move a tool between action groups)."""
    old = _by_name(old_document, "OLD")
    new = _by_name(new_document, "NEW")
    changed = []
    for name in sorted(set(old) & set(new)):
        before, after = old[name], new[name]
        old_digest = tool_digest(before.get("description"), before.get("inputSchema"))
        new_digest = tool_digest(after.get("description"), after.get("inputSchema"))
        lines: list[str] = []
        if before.get("description") != after.get("description"):
            lines.append(
                f"description: {_short(before.get('description'))}"
                f" -> {_short(after.get('description'), 2000)}"
            )
        lines += _schema_changes(before.get("inputSchema"), after.get("inputSchema"))
        if before.get("annotations") != after.get("annotations"):
            lines.append(
                f"annotations: {_short(before.get('annotations'))}"
                f" -> {_short(after.get('annotations'))}"
            )
        if lines:
            changed.append(ToolChange(name, tuple(lines), old_digest, new_digest))
    return ToolsDiff(
        added=tuple(sorted(set(new) - set(old))),
        removed=tuple(sorted(set(old) - set(new))),
        changed=tuple(changed),
    )


# --- capture from a live server ----------------------------------------------------------


class CaptureError(Exception):
    """The server could not be reached or did not answer tools/list."""


def capture_tools(target: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """``tools/list`` of a live MCP server, every page: ``target`` is an ``http(s)://``
    URL (streamable HTTP) or a command line started as a stdio server."""
    import anyio

    try:
        from mcp import Client, StdioServerParameters
    except ImportError:
        raise CaptureError("--connect needs the MCP SDK: pip install 'pdp[gateway]'") from None

    server: str | StdioServerParameters
    if target.startswith(("http://", "https://")):
        server = target
    else:
        argv = shlex.split(target)
        if not argv:
            raise CaptureError("--connect: give a URL or a command to start the server")
        server = StdioServerParameters(command=argv[0], args=argv[1:])

    async def listed() -> dict[str, Any]:
        tools: list[Any] = []
        with anyio.fail_after(timeout):
            async with Client(server) as client:
                cursor: str | None = None
                for _ in range(MAX_TOOL_PAGES):
                    page = (
                        await client.list_tools(cursor=cursor)
                        if cursor
                        else await client.list_tools()
                    )
                    dumped = page.model_dump(mode="json", by_alias=True, exclude_none=True)
                    tools.extend(dumped.get("tools", []))
                    cursor = dumped.get("nextCursor")
                    if not cursor:
                        return {"tools": tools}
        raise CaptureError(f"tools/list had more than {MAX_TOOL_PAGES} pages")

    try:
        return anyio.run(listed)
    except CaptureError:
        raise
    except TimeoutError:
        raise CaptureError(f"{target}: no tools/list answer within {timeout:g} s") from None
    except Exception as exc:  # the SDK's transport and protocol errors, named
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, BaseExceptionGroup):
            detail = "; ".join(str(e) or type(e).__name__ for e in exc.exceptions)
        raise CaptureError(f"{target}: {detail}") from None
