"""Decisions: each floor rule, each reason path, fail-closed errors, batches, threads."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from pdp.engine import Engine, cedar_context, load_policies
from pdp.model import Effect, parse_request
from tests.conftest import EXAMPLE_POLICIES, LOOSE_INVENTORY, READ_POLICY, PolicyDirFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
AGENT = "spiffe://acme.test/agent/bot"
INTENT = {"purpose": "triage", "tools": ["crm/get_ticket"]}


def ask(engine: Engine, **fields: Any) -> tuple[str, list[str]]:
    data = {
        "agent": AGENT,
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-1"},
        "intent": INTENT,
        **fields,
    }
    data = {k: v for k, v in data.items() if v is not None}
    decision = engine.decide_json(data, now=NOW)
    return decision.effect.value, [r.policy for r in decision.reasons]


@pytest.fixture
def engine(make_policy_dir: PolicyDirFactory) -> Engine:
    return Engine(load_policies(make_policy_dir()))


def test_allow_names_the_permitting_policy_and_its_reason(engine: Engine) -> None:
    decision = engine.decide_json(
        {
            "agent": AGENT,
            "server": "crm",
            "tool": "get_ticket",
            "arguments": {"ticket_id": "T"},
            "intent": INTENT,
        },
        now=NOW,
    )
    assert decision.effect is Effect.ALLOW
    assert [r.to_json() for r in decision.reasons] == [
        {"policy": "support.read", "message": "support may read"}
    ]
    assert decision.policy_version == engine.version


def test_floor_intent_required(engine: Engine) -> None:
    assert ask(engine, intent=None) == ("deny", ["floor.intent_required"])


def test_floor_tool_outside_intent(engine: Engine) -> None:
    intent = {"purpose": "triage", "tools": ["crm/delete_ticket"]}
    assert ask(engine, intent=intent) == ("deny", ["floor.tool_outside_intent"])


def test_floor_server_wildcard_covers_every_tool_of_that_server_only(engine: Engine) -> None:
    assert ask(engine, intent={"purpose": "p", "tools": ["crm/*"]})[0] == "allow"
    assert ask(engine, intent={"purpose": "p", "tools": ["crmx/*", "cr/*"]}) == (
        "deny",
        ["floor.tool_outside_intent"],
    )


def test_floor_empty_intent_denies(engine: Engine) -> None:
    assert ask(engine, intent={"purpose": "p", "tools": []}) == (
        "deny",
        ["floor.tool_outside_intent"],
    )


def test_floor_intent_expired_at_the_boundary(engine: Engine) -> None:
    def at(expiry: str) -> tuple[str, list[str]]:
        return ask(engine, intent={**INTENT, "expires_at": expiry}, time="2026-11-23T10:00:00Z")

    assert at("2026-11-23T10:00:01Z")[0] == "allow"
    assert at("2026-11-23T10:00:00Z") == ("deny", ["floor.intent_expired"])
    assert at("2020-01-01T00:00:00Z") == ("deny", ["floor.intent_expired"])


def test_floor_unknown_tool_and_server(engine: Engine) -> None:
    wide = {"purpose": "p", "tools": ["crm/*", "hr/*"]}
    assert ask(engine, tool="export_all", intent=wide) == ("deny", ["unknown_tool"])
    assert ask(engine, server="hr", intent=wide) == ("deny", ["unknown_tool"])


def test_no_permit_is_default_deny(engine: Engine) -> None:
    # an agent outside the inventory: no group, so no permit applies
    assert ask(engine, agent="spiffe://acme.test/agent/stranger") == ("deny", ["default_deny"])


def test_floor_beats_a_permit_everything_policy(make_policy_dir: PolicyDirFactory) -> None:
    grant_all = '@id("yolo")\n@reason("everything")\npermit (principal, action, resource);'
    engine = Engine(load_policies(make_policy_dir({"a.cedar": grant_all})))
    assert ask(engine)[0] == "allow"
    assert ask(engine, intent=None) == ("deny", ["floor.intent_required"])
    assert ask(engine, tool="ghost", intent={"purpose": "p", "tools": ["crm/*"]}) == (
        "deny",
        ["unknown_tool"],
    )


def test_author_forbid_is_reported(make_policy_dir: PolicyDirFactory) -> None:
    ban = (
        '@id("no.delete")\n@reason("never delete")\n'
        'forbid (principal, action in Action::"destructive", resource);'
    )
    grant_all = '@id("yolo")\n@reason("everything")\npermit (principal, action, resource);'
    engine = Engine(load_policies(make_policy_dir({"a.cedar": ban, "b.cedar": grant_all})))
    wide = {"purpose": "p", "tools": ["crm/*"]}
    assert ask(engine, tool="delete_ticket", intent=wide) == ("deny", ["no.delete"])


def test_evaluation_error_denies_and_names_the_policy(make_policy_dir: PolicyDirFactory) -> None:
    # The policy type-checks (limit is an optional Long) but a request sends a string:
    # the forbid errors, Cedar skips it, and the permit alone would allow. pdp denies.
    # (The tool's input schema would refuse the string first: it takes any arguments here.)
    guard = (
        '@id("limit.guard")\n@reason("big searches are refused")\n'
        "forbid (principal, action, resource) when "
        "{ context.input has limit && context.input.limit > 100 };"
    )
    engine = Engine(
        load_policies(
            make_policy_dir({"a.cedar": READ_POLICY, "g.cedar": guard}, inventory=LOOSE_INVENTORY)
        )
    )
    assert ask(engine, arguments={"ticket_id": "T", "limit": 5})[0] == "allow"
    assert ask(engine, arguments={"ticket_id": "T", "limit": 500}) == ("deny", ["limit.guard"])
    decision = engine.decide_json(
        {
            "agent": AGENT,
            "server": "crm",
            "tool": "get_ticket",
            "intent": INTENT,
            "arguments": {"ticket_id": "T", "limit": "500"},
        },
        now=NOW,
    )
    assert decision.effect is Effect.DENY
    assert [r.policy for r in decision.reasons] == ["limit.guard"]
    assert decision.reasons[0].message.startswith("evaluation error: ")
    assert decision.errors and "limit.guard" in decision.errors[0]


def test_missing_attribute_is_an_evaluation_error_deny(make_policy_dir: PolicyDirFactory) -> None:
    needs = (
        '@id("needs.ticket")\n@reason("r")\npermit (principal, action, resource) when '
        '{ context.input.ticket_id like "T-*" };'
    )
    # (ticket_id is required by the tool's input schema: it takes any arguments here.)
    engine = Engine(load_policies(make_policy_dir({"a.cedar": needs}, inventory=LOOSE_INVENTORY)))
    effect, policies = ask(engine, arguments={})
    assert (effect, policies) == ("deny", ["needs.ticket"])


def test_invalid_request_is_a_deny_naming_field_and_rule(engine: Engine) -> None:
    decision = engine.decide_json(
        {"agent": "spiffe://acme.test/a\n", "server": "crm", "tool": "get_ticket"}, now=NOW
    )
    assert decision.effect is Effect.DENY
    assert decision.reasons[0].policy == "invalid_request"
    assert decision.reasons[0].message.startswith("agent: not a valid SPIFFE ID")
    assert "(rule: spiffe_id)" in decision.reasons[0].message
    assert engine.decide_json("not an object", now=NOW).reasons[0].policy == "invalid_request"


def test_arguments_cannot_forge_entities(engine: Engine) -> None:
    forged = {"ticket_id": "T", "who": {"__entity": {"type": "AgentGroup", "id": "support"}}}
    assert ask(engine, arguments=forged)[1] == ["invalid_request"]


def test_batch_answers_in_order(engine: Engine) -> None:
    base = {"agent": AGENT, "server": "crm", "arguments": {"ticket_id": "T"}}
    requests = [
        parse_request(
            {**base, "tool": tool, "intent": {"purpose": "p", "tools": [f"crm/{tool}"]}}, now=NOW
        )
        for tool in ["get_ticket", "delete_ticket", "get_ticket", "nope"]
    ]
    effects = [d.effect.value for d in engine.decide_batch(requests)]
    assert effects == ["allow", "deny", "allow", "deny"]
    assert engine.decide_batch([]) == []


def test_engine_is_thread_safe(engine: Engine) -> None:
    def one(i: int) -> str:
        tool = "get_ticket" if i % 2 else "delete_ticket"
        return ask(engine, tool=tool, intent={"purpose": "p", "tools": ["crm/*"]})[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(400)))
    assert results == ["allow" if i % 2 else "deny" for i in range(400)]


def test_context_shape_is_documented() -> None:
    request = parse_request(
        {
            "agent": "spiffe://acme.test/agent/x",
            "server": "crm",
            "tool": "t",
            "arguments": {"a": 1},
            "intent": {"purpose": "p", "tools": ["crm/t"], "expires_at": "2026-11-23T11:00:00Z"},
            "session": "s",
            "gateway": "spiffe://acme.test/gw",
            "time": "2026-11-23T10:30:00Z",
        },
        now=NOW,
    )
    assert cedar_context(request) == {
        "input": {"a": 1},
        "tool": {"server": "crm", "name": "t", "ref": "crm/t", "server_wildcard": "crm/*"},
        "agent": {"trust_domain": "acme.test", "path": "/agent/x", "proven": False},
        "gateway": "spiffe://acme.test/gw",
        "session": "s",
        "time": {"epoch": 1795429800, "hour": 10, "weekday": 0},
        "intent": {
            "purpose": "p",
            "tools": ["crm/t"],
            "expires_at": 1795431600,
            "signed": False,
            "issuer": "",
        },
    }


def test_examples_decide_the_readme_request() -> None:
    engine = Engine(load_policies(EXAMPLE_POLICIES))
    data = json.loads((EXAMPLE_POLICIES / "examples/requests/support-get-ticket.json").read_text())
    decision = engine.decide_json(data, now=NOW)
    assert decision.to_json()["decision"] == "allow"
    assert [r.policy for r in decision.reasons] == ["support.read_tickets"]


def test_policies_every_request_selects_are_named_right_when_shared(
    make_policy_dir: PolicyDirFactory,
) -> None:
    # The floor and a guard that matches everything come first in load order: every
    # subset shares them as one Cedar set (named apart from the policies added to it),
    # and reasons and errors still name the right policies.
    guard = (
        '@id("limit.guard")\n@reason("big searches are refused")\n'
        "forbid (principal, action, resource) when "
        "{ context.input has limit && context.input.limit > 100 };"
    )
    many = "\n".join(
        f'@id("read.{i}")\n@reason("r{i}")\n'
        f'permit (principal in AgentGroup::"support", action in Action::"read", resource)'
        f'\nwhen {{ context.session != "s{i}" }};'
        for i in range(12)
    )
    compiled = load_policies(
        make_policy_dir({"0.cedar": guard, "a.cedar": many}, inventory=LOOSE_INVENTORY)
    )
    indexed, full = Engine(compiled), Engine(compiled, indexed=False)
    assert indexed._common == 5  # the built-in floor and limit.guard
    for arguments, session in [
        ({"ticket_id": "T", "limit": 5}, "s3"),
        ({"ticket_id": "T", "limit": 500}, "s3"),
        ({"ticket_id": "T", "limit": "500"}, "s4"),
    ]:
        request = parse_request(
            {
                "agent": AGENT,
                "server": "crm",
                "tool": "get_ticket",
                "intent": INTENT,
                "session": session,
                "arguments": arguments,
            },
            now=NOW,
        )
        a, b = indexed.decide(request), full.decide(request)
        assert (a.effect, a.reasons, a.errors) == (b.effect, b.reasons, b.errors)
    assert [r.policy for r in a.reasons] == ["limit.guard"] and a.errors
    allowed = indexed.decide(
        parse_request(
            {
                "agent": AGENT,
                "server": "crm",
                "tool": "get_ticket",
                "intent": INTENT,
                "session": "s3",
                "arguments": {"ticket_id": "T"},
            },
            now=NOW,
        )
    )
    assert allowed.allowed
    assert [r.policy for r in allowed.reasons] == sorted(f"read.{i}" for i in range(12) if i != 3)
