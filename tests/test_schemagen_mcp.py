"""Schemas captured from a real MCP server's tools/list hold its calls to what it declares.

The server is the MCP Python SDK's MCPServer: its tools' inputSchema is what pydantic
writes for the tools' signatures ($defs, a $ref inside anyOf with null for an optional
model, titles, defaults, constraints). The test lists the tools over the SDK's client,
captures them with `pdp schema from-mcp`, loads the result as a policy directory and
decides each tool's documented examples and their broken variants.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from pdp.engine import Engine, load_policies
from pdp.model import Decision
from pdp.schemagen import from_mcp
from tests.conftest import MINI_SCHEMA, PolicyDirFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
AGENT = "spiffe://acme.test/agent/bot"


class Filter(BaseModel):
    status: Literal["open", "closed"] = "open"
    labels: list[str] = Field(default_factory=list, max_length=10)


def build_server() -> MCPServer:
    server = MCPServer("tickets")

    @server.tool()
    def search_tickets(
        query: Annotated[str, Field(min_length=1, max_length=200)],
        limit: Annotated[int, Field(ge=1, le=50)] = 10,
        filter: Filter | None = None,
    ) -> str:
        """Search tickets. Example: {"query": "refund", "limit": 5,
        "filter": {"status": "open", "labels": ["billing"]}}"""
        return "[]"

    @server.tool()
    def get_ticket(ticket_id: Annotated[str, Field(pattern=r"^T-[0-9]+$")]) -> str:
        """Read a ticket. Example: {"ticket_id": "T-123"}"""
        return "{}"

    @server.tool()
    def close_ticket(ticket_id: str, reason: Literal["fixed", "duplicate", "wontfix"]) -> str:
        """Close a ticket. Example: {"ticket_id": "T-9", "reason": "duplicate"}"""
        return "closed"

    return server


async def list_tools() -> dict[str, Any]:
    async with Client(build_server()) as client:
        result = await client.list_tools()
    dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


@pytest.fixture(scope="module")
def tools_list() -> dict[str, Any]:
    return anyio.run(list_tools)


def documented_example(description: str) -> dict[str, Any]:
    example: dict[str, Any] = json.loads(description.split("Example: ", 1)[1])
    return example


@pytest.fixture
def engine(tools_list: dict[str, Any], make_policy_dir: PolicyDirFactory) -> Engine:
    schema_text, fragment = from_mcp(tools_list, "tickets")
    inventory = {
        "agent_groups": {"support": {}},
        "agents": {AGENT: {"groups": ["support"]}},
        **fragment,
    }
    policy = '@id("all")\n@reason("r")\npermit (principal, action, resource);'
    root = make_policy_dir(
        {"all.cedar": policy},
        schema=MINI_SCHEMA.split("action ")[0]
        + 'action "read", "write", "destructive";\n'
        + schema_text,
        inventory=inventory,
    )
    return Engine(load_policies(root))


def decide(engine: Engine, tool: str, arguments: Any) -> Decision:
    return engine.decide_json(
        {
            "agent": AGENT,
            "server": "tickets",
            "tool": tool,
            "arguments": arguments,
            "intent": {"purpose": "p", "tools": ["tickets/*"]},
        },
        now=NOW,
    )


def test_the_captured_schemas_are_what_the_server_declares(tools_list: dict[str, Any]) -> None:
    tools = {t["name"]: t for t in tools_list["tools"]}
    search = tools["search_tickets"]["inputSchema"]
    assert search["properties"]["filter"]["anyOf"][0] == {"$ref": "#/$defs/Filter"}
    _, fragment = from_mcp(tools_list, "tickets")
    captured = fragment["servers"]["tickets"]["tools"]
    assert {name: spec["input_schema"] for name, spec in captured.items()} == {
        name: tool["inputSchema"] for name, tool in tools.items()
    }


def test_documented_examples_are_allowed(tools_list: dict[str, Any], engine: Engine) -> None:
    for tool in tools_list["tools"]:
        decision = decide(engine, tool["name"], documented_example(tool["description"]))
        assert decision.allowed, (tool["name"], decision)


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("get_ticket", {"ticket_id": "123"}, "arguments.ticket_id: must match the pattern"),
        ("get_ticket", {"ticket_id": "T-1", "admin": True}, "arguments.admin: is not a declared"),
        (
            "close_ticket",
            {"ticket_id": "T-1\u202e", "reason": "fixed"},
            "arguments.ticket_id: contains U+202E",
        ),
        ("search_tickets", {"query": ""}, "arguments.query: must be at least 1 characters"),
        ("search_tickets", {"query": "q", "limit": 51}, "arguments.limit: must be <= 50"),
        ("search_tickets", {"limit": 5}, "arguments.query: is required"),
        (
            "search_tickets",
            {"query": "q", "filter": {"status": "all"}},
            "arguments.filter.status: must be one of",
        ),
        (
            # The optional model is reached through $ref inside anyOf: still closed.
            "search_tickets",
            {"query": "q", "filter": {"status": "open", "owner": "me"}},
            "arguments.filter.owner: is not a declared argument",
        ),
        (
            "search_tickets",
            {"query": "q", "filter": {"labels": ["x"] * 11}},
            "arguments.filter.labels: must have at most 10 items",
        ),
        (
            "close_ticket",
            {"ticket_id": "T-9", "reason": "bored"},
            "arguments.reason: must be one of",
        ),
    ],
)
def test_broken_examples_are_denied_naming_path_and_rule(
    engine: Engine, tool: str, arguments: dict[str, Any], message: str
) -> None:
    decision = decide(engine, tool, arguments)
    assert not decision.allowed
    messages = [r.message for r in decision.reasons if r.policy == "invalid_arguments"]
    assert any(m.startswith(message) for m in messages), messages


def test_cedar_declarations_follow_the_same_schema(tools_list: dict[str, Any]) -> None:
    schema_text, _ = from_mcp(tools_list, "tickets")
    # The optional model, reached through $ref and a union with null, is a Cedar record.
    assert (
        "input: { filter?: { labels?: Set<String>, status?: String }, limit?: Long, query: String }"
    ) in schema_text
    assert "input: { reason: String, ticket_id: String }" in schema_text


def test_a_zod_draft_07_capture(make_policy_dir: PolicyDirFactory, tmp_path: Path) -> None:
    # The shape the TypeScript SDK's servers publish (zod-to-json-schema, draft-07,
    # closed objects), here a filesystem server's edit_file.
    edit_file = {
        "name": "edit_file",
        "description": "Make line-based edits to a text file. Example: "
        '{"path": "/srv/notes.md", "edits": [{"oldText": "a", "newText": "b"}], "dryRun": true}',
        "inputSchema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "edits": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "oldText": {"type": "string", "description": "Text to search for"},
                            "newText": {"type": "string", "description": "Text to replace with"},
                        },
                        "required": ["oldText", "newText"],
                        "additionalProperties": False,
                    },
                },
                "dryRun": {"type": "boolean", "default": False},
            },
            "required": ["path", "edits"],
            "additionalProperties": False,
        },
    }
    schema_text, fragment = from_mcp({"tools": [edit_file]}, "fs")
    inventory = {"agent_groups": {}, "agents": {AGENT: {}}, **fragment}
    root = make_policy_dir(
        {"all.cedar": '@id("all")\n@reason("r")\npermit (principal, action, resource);'},
        schema=MINI_SCHEMA.split("action ")[0]
        + 'action "read", "write", "destructive";\n'
        + schema_text,
        inventory=inventory,
    )
    engine = Engine(load_policies(root))

    def ask(arguments: Any) -> Decision:
        return engine.decide_json(
            {
                "agent": AGENT,
                "server": "fs",
                "tool": "edit_file",
                "arguments": arguments,
                "intent": {"purpose": "p", "tools": ["fs/*"]},
            },
            now=NOW,
        )

    assert ask(documented_example(edit_file["description"])).allowed
    denied = ask({"path": "/a", "edits": [{"oldText": "a"}]})
    assert [r.message for r in denied.reasons] == [
        "arguments.edits[0].newText: is required (rule: required)"
    ]
