"""Shared fixtures: the repository's example policies and small throwaway policy dirs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_POLICIES = REPO / "policies"

MINI_SCHEMA = """
entity AgentGroup in [AgentGroup];
entity Agent in [AgentGroup];
entity McpServer { tools: Set<String>, reserved_for?: String };
type Intent = { purpose: String, tools: Set<String>, expires_at?: Long, signed: Bool, issuer: String };
type ToolRef = { server: String, name: String, ref: String, server_wildcard: String };
type AgentRef = { trust_domain: String, path: String, proven: Bool };
type Time = { epoch: Long, hour: Long, weekday: Long };
action "crm", "read", "destructive";
action "crm/get_ticket" in [Action::"crm", Action::"read"] appliesTo {
  principal: [Agent], resource: [McpServer],
  context: { input: { ticket_id: String, limit?: Long }, intent?: Intent, tool: ToolRef,
             agent: AgentRef, gateway: String, session: String, time: Time }
};
action "crm/delete_ticket" in [Action::"crm", Action::"destructive"] appliesTo {
  principal: [Agent], resource: [McpServer],
  context: { input: { ticket_id: String }, intent?: Intent, tool: ToolRef,
             agent: AgentRef, gateway: String, session: String, time: Time }
};
"""

TICKET_INPUT = {
    "type": "object",
    "properties": {"ticket_id": {"type": "string"}},
    "required": ["ticket_id"],
}
MINI_INVENTORY = {
    "agent_groups": {"support": {}},
    "agents": {"spiffe://acme.test/agent/bot": {"groups": ["support"]}},
    "servers": {
        "crm": {
            "tools": {
                "get_ticket": {
                    "groups": ["read"],
                    "input_schema": {
                        **TICKET_INPUT,
                        "properties": {
                            "ticket_id": {"type": "string"},
                            "limit": {"type": "integer"},
                        },
                    },
                },
                "delete_ticket": {"groups": ["destructive"], "input_schema": TICKET_INPUT},
            }
        }
    },
}
# Any arguments: for inventories in tests about something else than argument checks.
ANY_INPUT = {"type": "object", "additionalProperties": True}
# MINI_INVENTORY with crm/get_ticket taking any arguments: lets a wrongly typed value
# reach Cedar, for tests of what Cedar does then.
LOOSE_INVENTORY = json.loads(json.dumps(MINI_INVENTORY))
LOOSE_INVENTORY["servers"]["crm"]["tools"]["get_ticket"]["input_schema"] = ANY_INPUT

READ_POLICY = """
@id("support.read")
@reason("support may read")
permit (principal in AgentGroup::"support", action in Action::"read", resource);
"""

PolicyDirFactory = Callable[..., Path]


@pytest.fixture
def make_policy_dir(tmp_path: Path) -> PolicyDirFactory:
    """Writes a policy directory: {relative path: text}; schema and inventory default to mini."""

    def make(
        files: dict[str, str] | None = None,
        *,
        schema: str | None = MINI_SCHEMA,
        inventory: object = MINI_INVENTORY,
    ) -> Path:
        root = tmp_path / "policies"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        if schema is not None:
            (root / "schema.cedarschema").write_text(schema)
        if inventory is not None:
            text = inventory if isinstance(inventory, str) else json.dumps(inventory)
            (root / "entities.json").write_text(text)
        for name, text in (files if files is not None else {"read.cedar": READ_POLICY}).items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return make
