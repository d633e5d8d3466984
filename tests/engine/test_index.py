"""The scope index is sound: indexed and unindexed evaluation give the same decisions.

Hypothesis generates policy sets over `==`, `in` (nested group hierarchies, action
groups, server groups, lists), `is`, `is … in`, `when`/`unless` conditions, both
effects, and the floor; every request is decided with and without the index.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.engine import Engine, load_policies
from pdp.engine.scope import ScanFallback, head_from_est, scan_head
from pdp.engine.source import split_statements
from pdp.model import Request, parse_request
from tests.conftest import ANY_INPUT, EXAMPLE_POLICIES, MINI_SCHEMA

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
AGENTS = [f"spiffe://acme.test/agent/a{i}" for i in range(4)] + ["spiffe://acme.test/agent/x"]
GROUPS = ["g0", "g1", "g2", "g3"]
TOOLS = ["crm/get_ticket", "crm/delete_ticket"]

principal_scope = st.one_of(
    st.just("principal"),
    st.sampled_from(AGENTS).map(lambda a: f'principal == Agent::"{a}"'),
    st.sampled_from(GROUPS).map(lambda g: f'principal in AgentGroup::"{g}"'),
    st.sampled_from(AGENTS[:2]).map(lambda a: f'principal in Agent::"{a}"'),
    st.just("principal is Agent"),
    st.sampled_from(GROUPS).map(lambda g: f'principal is Agent in AgentGroup::"{g}"'),
    st.just("principal is AgentGroup"),
)
action_names = st.sampled_from(TOOLS + ["crm", "read", "destructive"])
action_scope = st.one_of(
    st.just("action"),
    action_names.map(lambda a: f'action == Action::"{a}"'),
    action_names.map(lambda a: f'action in Action::"{a}"'),
    st.lists(action_names, min_size=0, max_size=3).map(
        lambda xs: "action in [" + ", ".join(f'Action::"{a}"' for a in xs) + "]"
    ),
)
resource_scope = st.one_of(
    st.just("resource"),
    st.sampled_from(["crm", "other"]).map(lambda r: f'resource == McpServer::"{r}"'),
    st.just("resource is McpServer"),
    st.just('resource in McpServer::"crm"'),
)
condition = st.one_of(
    st.just(""),
    st.sampled_from(["s1", "s2"]).map(lambda s: f'when {{ context.session == "{s}" }}'),
    st.integers(0, 23).map(lambda h: f"unless {{ context.time.hour < {h} }}"),
    st.just('when { context.tool.name == "get_ticket" }'),
    st.just('when { context has intent && context.intent.purpose == "p" }'),
)
policy = st.tuples(
    st.sampled_from(["permit", "forbid"]), principal_scope, action_scope, resource_scope, condition
)
hierarchy = st.fixed_dictionaries(
    {
        "group_parents": st.lists(
            st.tuples(st.sampled_from(GROUPS), st.sampled_from(GROUPS)), max_size=4
        ),
        "memberships": st.lists(
            st.tuples(st.sampled_from(AGENTS[:4]), st.sampled_from(GROUPS)), max_size=6
        ),
    }
)
request = st.tuples(
    st.sampled_from(AGENTS),
    st.sampled_from(TOOLS + ["crm/ghost"]),
    st.sampled_from(["s1", "s2"]),
    st.sampled_from(["2026-11-23T05:00:00Z", "2026-11-23T18:00:00Z"]),
)


SCHEMA = cedarpy.Schema.from_str(MINI_SCHEMA)


def policy_text(i: int, effect: str, p: str, a: str, r: str, cond: str) -> str:
    return f'@id("p{i}")\n@reason("r{i}")\n{effect} ({p}, {a}, {r})\n{cond};'


def valid_only(policies: list[tuple[str, ...]]) -> list[str]:
    """Cedar's validator rejects scopes that can never apply; keep what it accepts."""
    texts = [policy_text(i, *p) for i, p in enumerate(policies)]
    return [t for t in texts if cedarpy.validate_policies(t, SCHEMA).validation_passed]


def write_dir(root: Path, policies: list[tuple[str, ...]], tree: dict[str, list]) -> None:
    groups: dict[str, dict[str, list[str]]] = {g: {"parents": []} for g in GROUPS}
    for child, parent in tree["group_parents"]:
        if child < parent and parent not in groups[child]["parents"]:  # acyclic by order
            groups[child]["parents"].append(parent)
    agents: dict[str, dict[str, list[str]]] = {}
    for agent, group in tree["memberships"]:
        agents.setdefault(agent, {"groups": []})
        if group not in agents[agent]["groups"]:
            agents[agent]["groups"].append(group)
    inventory = {
        "agent_groups": groups,
        "agents": agents,
        "servers": {
            "crm": {
                "tools": {
                    "get_ticket": {"input_schema": ANY_INPUT},
                    "delete_ticket": {"input_schema": ANY_INPUT},
                }
            }
        },
    }
    root.mkdir()
    (root / "schema.cedarschema").write_text(MINI_SCHEMA)
    (root / "entities.json").write_text(json.dumps(inventory))
    (root / "generated.cedar").write_text("\n".join(valid_only(policies)))


def as_request(agent: str, tool: str, session: str, time: str) -> Request:
    server, name = tool.split("/")
    return parse_request(
        {
            "agent": agent,
            "server": server,
            "tool": name,
            "session": session,
            "time": time,
            "arguments": {"ticket_id": "T"},
            "intent": {"purpose": "p", "tools": ["crm/*"]},
        },
        now=NOW,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policies=st.lists(policy, min_size=0, max_size=25),
    tree=hierarchy,
    requests=st.lists(request, min_size=1, max_size=12),
)
def test_indexed_equals_unindexed(
    policies: list[tuple[str, ...]],
    tree: dict[str, list],
    requests: list[tuple[str, str, str, str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        write_dir(root, policies, tree)
        compiled = load_policies(root)
    indexed, full = Engine(compiled), Engine(compiled, indexed=False)
    batch = [as_request(*r) for r in requests]
    for one in batch:
        a, b = indexed.decide(one), full.decide(one)
        assert (a.effect, a.reasons, a.errors) == (b.effect, b.reasons, b.errors), one
    assert indexed.decide_batch(batch) == full.decide_batch(batch)


SCANNER_CASES = [
    '@id("a") permit (principal, action, resource);',
    '@id("a")\n@reason("r") @other forbid(principal==Agent::"x",action in[Action::"a",'
    'Action::"b"],resource is McpServer in McpServer::"m",);',
    '@id("a") permit (\n  // a comment, (with) punctuation\n  principal is Agent in AgentGroup::"g",'
    '\n  action in Action::"crm",\n  resource == McpServer::"crm"\n) when { 1 < 2 };',
    '@id("a") permit (principal == Ns::Sub::Agent::"x", action == Ns::Action::"y", resource);',
    '@id("a") permit (principal, action in [], resource);',
]


@pytest.mark.parametrize("text", SCANNER_CASES)
def test_scanner_agrees_with_cedar(text: str) -> None:
    (est,) = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values()
    assert scan_head(text) == head_from_est(est)


@pytest.mark.parametrize(
    "text",
    [
        '@id("a\\"b") permit (principal, action, resource);',
        '@id("a") permit (principal == Agent::"x\\u{41}", action, resource);',
        '@id("a") permit (principal == ?principal, action, resource);',
    ],
)
def test_scanner_declines_escapes_and_slots(text: str) -> None:
    with pytest.raises(ScanFallback):
        scan_head(text)


def test_scanner_agrees_with_cedar_on_every_shipped_policy() -> None:
    files = list(EXAMPLE_POLICIES.rglob("*.cedar"))
    assert files
    for path in files:
        for statement in split_statements(path.read_text()):
            (est,) = json.loads(cedarpy.policies_to_json_str(statement.text))[
                "staticPolicies"
            ].values()
            assert scan_head(statement.text) == head_from_est(est), statement


def test_escaped_ids_still_load_through_cedars_parse(tmp_path: Path) -> None:
    from tests.conftest import MINI_INVENTORY

    root = tmp_path / "p"
    root.mkdir()
    (root / "schema.cedarschema").write_text(MINI_SCHEMA)
    (root / "entities.json").write_text(json.dumps(MINI_INVENTORY))
    (root / "a.cedar").write_text(
        '@id("quote\\"d")\n@reason("r")\npermit (principal == Agent::"spiffe://acme.test/agent/bot",'
        " action, resource);"
    )
    compiled = load_policies(root)
    assert 'quote"d' in compiled.policies
    decision = Engine(compiled).decide(
        as_request("spiffe://acme.test/agent/bot", "crm/get_ticket", "s1", "2026-11-23T05:00:00Z")
    )
    assert decision.allowed and decision.reasons[0].policy == 'quote"d'
