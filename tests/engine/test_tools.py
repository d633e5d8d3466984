"""Tool listings (AllowedTools) agree with Check: a tool listed ``allow`` is allowed
for any arguments, one listed ``deny`` is denied for any arguments, over generated
inventories and policies; the example policies answer as their authors meant."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.engine import Engine, load_policies
from pdp.engine.tools import allowed_tools
from pdp.model import Intent, Request, ToolAnswer

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SERVER, OTHER = "s", "other"
TOOLS = ("t0", "t1", "t2")
AGENTS = ("spiffe://acme.test/agent/a0", "spiffe://acme.test/agent/a1",
          "spiffe://acme.test/agent/stranger")  # fmt: skip

SCHEMA_HEAD = """
entity AgentGroup in [AgentGroup];
entity Agent in [AgentGroup];
entity McpServer { tools: Set<String> };
type Intent = { purpose: String, tools: Set<String>, expires_at?: Long };
type ToolRef = { server: String, name: String, ref: String, server_wildcard: String };
type AgentRef = { trust_domain: String, path: String };
type Time = { epoch: Long, hour: Long, weekday: Long };
action "s", "other";
"""
ACTION = """action "{server}/{tool}" in [Action::"{server}"] appliesTo {{
  principal: [Agent], resource: [McpServer],
  context: {{ input: {{ x?: Long, y?: String }}, intent?: Intent, tool: ToolRef,
             agent: AgentRef, gateway: String, session: String, time: Time }}
}};
"""

# What the MCP server declares; arguments outside it meet the invalid_arguments floor rule.
INPUT_SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}}}
PRINCIPALS = ("principal", 'principal == Agent::"spiffe://acme.test/agent/a0"',
              'principal in AgentGroup::"g1"')  # fmt: skip
ACTIONS = ("action", 'action == Action::"s/t0"', 'action == Action::"s/t1"',
           'action in Action::"s"', 'action == Action::"other/u0"')  # fmt: skip
CONDITIONS = (
    "true",
    "context.input has x && context.input.x > 5",
    'context.input has y && context.input.y == "ok"',
    'context has intent && context.intent.purpose == "p1"',
    'context.session == "s1"',
    'context.tool.name == "t2"',
    'principal in AgentGroup::"g0"',
    "context.time.hour >= 0",
)

policy = st.tuples(
    st.sampled_from(("permit", "forbid")),
    st.sampled_from(PRINCIPALS),
    st.sampled_from(ACTIONS),
    st.sampled_from(CONDITIONS),
    st.booleans(),  # when / unless
)
arguments = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "x": st.one_of(st.integers(-10, 20), st.text(max_size=3)),
            "y": st.sampled_from(["ok", "no", 7]),
        },
    ),
)


def write_directory(directory: Path, policies: list[tuple[str, str, str, str, bool]]) -> None:
    actions = [ACTION.format(server=SERVER, tool=t) for t in TOOLS]
    actions.append(ACTION.format(server=OTHER, tool="u0"))
    (directory / "schema.cedarschema").write_text(SCHEMA_HEAD + "".join(actions))
    inventory = {
        "agent_groups": {"g0": {}, "g1": {}},
        "agents": {AGENTS[0]: {"groups": ["g0"]}, AGENTS[1]: {"groups": ["g1"]}},
        "servers": {
            SERVER: {"tools": {t: {"input_schema": INPUT_SCHEMA} for t in TOOLS}},
            OTHER: {"tools": {"u0": {"input_schema": INPUT_SCHEMA}}},
        },
    }
    (directory / "entities.json").write_text(json.dumps(inventory))
    text = []
    for number, (effect, principal, action, condition, when) in enumerate(policies):
        keyword = "when" if when else "unless"
        text.append(
            f'@id("p{number}")\n@reason("r{number}")\n'
            f"{effect} ({principal}, {action}, resource)\n{keyword} {{ {condition} }};\n"
        )
    (directory / "generated.cedar").write_text("\n".join(text))


def request(agent: str, tool: str, args: dict[str, Any], intent: Intent | None,
            session: str) -> Request:  # fmt: skip
    return Request(agent, SERVER, tool, args, NOW, intent, session, "spiffe://acme.test/gw")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policies=st.lists(policy, min_size=0, max_size=6),
    agent=st.sampled_from(AGENTS),
    purpose=st.sampled_from(["p1", "p2"]),
    intent_tools=st.sampled_from([("s/*",), ("s/t0",), ("s/t1", "s/t2"), ()]),
    with_intent=st.booleans(),
    session=st.sampled_from(["s1", ""]),
    samples=st.lists(arguments, min_size=1, max_size=6),
)
def test_listing_agrees_with_check_for_any_arguments(
    policies: list[tuple[str, str, str, str, bool]],
    agent: str,
    purpose: str,
    intent_tools: tuple[str, ...],
    with_intent: bool,
    session: str,
    samples: list[dict[str, Any]],
) -> None:
    intent = Intent(purpose, intent_tools, NOW + timedelta(hours=1)) if with_intent else None
    with tempfile.TemporaryDirectory() as name:
        write_directory(Path(name), policies)
        engine = Engine(load_policies(name))
    listing = allowed_tools(engine, request(agent, "", {}, intent, session))
    assert [v.tool for v in listing.verdicts] == list(TOOLS)
    fixed = [{}, {"x": 10}, {"x": 1}, {"y": "ok"}, {"x": "str"}, {"x": 10, "y": "ok"}]
    for verdict in listing.verdicts:
        decisions = [
            engine.decide(request(agent, verdict.tool, args, intent, session))
            for args in [*fixed, *samples]
        ]
        if verdict.answer is ToolAnswer.ALLOW:
            # Allowed for every argument value the tool's input schema accepts; the
            # others are denied by the invalid_arguments floor rule, and only by it.
            for decision in decisions:
                assert decision.allowed or {r.policy for r in decision.reasons} == {
                    "invalid_arguments"
                }, (verdict, decision)
            assert decisions[0].allowed and decisions[1].allowed  # {} and {"x": 10}
        elif verdict.answer is ToolAnswer.DENY:
            assert not any(d.allowed for d in decisions), (verdict, decisions)
        else:  # depends: some policy in scope reads the arguments, and is named
            assert verdict.reasons
            assert all(engine.compiled.policies[r.policy].text for r in verdict.reasons)


def test_example_policies() -> None:
    engine = Engine(load_policies(REPO / "policies"))
    support = "spiffe://acme.test/agent/support-bot"
    intent = Intent("support.triage", ("crm/*",), NOW + timedelta(hours=1))
    listing = allowed_tools(engine, Request(support, "crm", "", {}, NOW, intent))
    answers = {v.tool: v.answer for v in listing.verdicts}
    assert answers == {
        "delete_ticket": ToolAnswer.DENY,
        "get_ticket": ToolAnswer.ALLOW,
        "search_tickets": answers["search_tickets"],
    }
    delete = next(v for v in listing.verdicts if v.tool == "delete_ticket")
    assert [r.policy for r in delete.reasons] == ["support.never_delete"]
    no_intent = allowed_tools(engine, Request(support, "crm", "", {}, NOW))
    assert {v.answer for v in no_intent.verdicts} == {ToolAnswer.DENY}
    assert all("floor.intent_required" in [r.policy for r in v.reasons] for v in no_intent.verdicts)
    unknown = allowed_tools(engine, Request(support, "nowhere", "", {}, NOW, intent))
    assert unknown.verdicts == ()
    finance = "spiffe://acme.test/agent/finance-bot"
    payout = Intent("finance.payout", ("payments/*",), NOW + timedelta(hours=1))
    payments = allowed_tools(engine, Request(finance, "payments", "", {}, NOW, payout))
    by_tool = {v.tool: v for v in payments.verdicts}
    assert by_tool["get_balance"].answer is ToolAnswer.ALLOW
    # A permit under a condition on the amount: the listing says so, and names it.
    assert by_tool["create_payment"].answer is ToolAnswer.DEPENDS_ON_ARGUMENTS
    assert "finance.small_payments" in [r.policy for r in by_tool["create_payment"].reasons]


@pytest.mark.parametrize(
    ("condition", "answer"),
    [
        ('context.tool.server == "s"', ToolAnswer.ALLOW),
        ("context has intent", ToolAnswer.ALLOW),
        ("context.input has x", ToolAnswer.DEPENDS_ON_ARGUMENTS),
        ('context["\\u{69}nput"] has x', ToolAnswer.DEPENDS_ON_ARGUMENTS),
        ("context == context", ToolAnswer.DEPENDS_ON_ARGUMENTS),
    ],
)
def test_what_reads_the_arguments_is_read_from_cedars_parse(
    condition: str, answer: ToolAnswer
) -> None:
    with tempfile.TemporaryDirectory() as name:
        write_directory(Path(name), [("permit", "principal", "action", condition, True)])
        engine = Engine(load_policies(name))
    intent = Intent("p1", ("s/*",), NOW + timedelta(hours=1))
    listing = allowed_tools(engine, request(AGENTS[0], "", {}, intent, ""))
    assert {v.answer for v in listing.verdicts} == {answer}
