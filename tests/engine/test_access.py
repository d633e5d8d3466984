"""Effective access (`pdp access`): exact where the policies read nothing of the call,
'depends' where they do, and always the engine's own answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pdp.engine import Engine, load_policies
from pdp.engine.access import (
    ALLOW,
    DEPENDS,
    NEVER,
    _reads_of_text,
    access_matrix,
    agents_of,
    policy_reads,
    tool_access,
    tools_of,
)
from tests.conftest import EXAMPLE_POLICIES

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SUPPORT = "spiffe://acme.test/agent/support-bot"
CODER = "spiffe://acme.test/agent/coder"
FINANCE = "spiffe://acme.test/agent/finance-bot"
HELPER = "spiffe://partner.test/agent/helper"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_policies(EXAMPLE_POLICIES))


def answer(engine: Engine, agent: str, ref: str) -> tuple[str, list[str], list[str]]:
    server, tool = ref.split("/")
    access = tool_access(engine, agent, server, tool, now=NOW)
    return access.access, [p.policy_id for p in access.policies], list(access.on)


def test_the_example_policies(engine: Engine) -> None:
    assert answer(engine, SUPPORT, "crm/get_ticket") == (ALLOW, ["support.read_tickets"], [])
    assert answer(engine, SUPPORT, "crm/delete_ticket") == (NEVER, ["support.never_delete"], [])
    assert answer(engine, SUPPORT, "shell/exec") == (NEVER, ["ban.shell_exec"], [])
    # A forbid that reads only the inventory (trust domain vs reserved_for) is exact.
    assert answer(engine, SUPPORT, "partner-crm/get_ticket") == (
        NEVER,
        ["tenancy.reserved_server"],
        [],
    )
    assert answer(engine, HELPER, "partner-crm/get_ticket") == (
        ALLOW,
        ["partners.read_partner_crm"],
        [],
    )
    # A forbid on arguments, but no permit for this agent at all: never.
    assert answer(engine, SUPPORT, "git/push") == (NEVER, [], [])
    assert answer(engine, FINANCE, "payments/get_balance")[0] == ALLOW
    pay = tool_access(engine, FINANCE, "payments", "create_payment", now=NOW)
    assert pay.access == DEPENDS and "arguments" in pay.on
    assert "finance.small_payments" in {p.policy_id for p in pay.policies}
    push = tool_access(engine, CODER, "git", "push", now=NOW)
    assert push.access == DEPENDS and push.on == ("arguments",)
    assert {p.policy_id for p in push.policies} == {
        "coding.own_repos",
        "coding.main_needs_confirmation",
    }
    assert push.permits == ("coding.own_repos",)


def test_every_exact_answer_is_what_the_engine_decides(engine: Engine) -> None:
    """'allow' and 'never' are claims about every call: check them on calls that vary
    what a policy could read (arguments, purpose, session, time)."""
    variants = [
        ({}, "x", ""),
        ({"ticket_id": "T-1"}, "x", ""),
        ({"repo": "acme/website", "path": "a"}, "x", ""),
        ({"command": "ls"}, "x", ""),
        (
            {"repo": "acme/website", "branch": "dev", "amount_cents": 100, "currency": "EUR"},
            "y",
            "s",
        ),
        ({"amount_cents": 10**9}, "support.triage", "sess-1"),
    ]
    matrix = list(access_matrix(engine, agents_of(engine), tools_of(engine), now=NOW))
    checked = 0
    assert len(matrix) == len(agents_of(engine)) * len(tools_of(engine))
    for access in matrix:
        if access.access == DEPENDS:
            continue
        for arguments, purpose, session in variants:
            for hours in (0, 13):
                request = {
                    "agent": access.agent,
                    "server": access.server,
                    "tool": access.tool,
                    "arguments": arguments,
                    "intent": {"purpose": purpose, "tools": [access.ref]},
                    "session": session,
                    "time": f"2026-11-28T{hours:02d}:30:00Z",
                }
                decision = engine.decide_json(request, now=NOW)
                if decision.reasons and decision.reasons[0].policy == "invalid_arguments":
                    continue  # the floor's schema rule, stated with every answer
                checked += 1
                assert decision.allowed == (access.access == ALLOW), (access, request)
    assert checked > 40


def test_what_a_policy_reads_comes_from_cedars_parse(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, directory, ignore=shutil.ignore_patterns("floor", "examples"))
    (directory / "p.cedar").write_text(
        """
@id("by_purpose")
@reason("test")
permit (principal, action == Action::"crm/get_ticket", resource)
when { context has intent && context.intent.purpose == "support.triage" };

@id("by_hour")
@reason("test")
permit (principal, action == Action::"crm/search_tickets", resource)
when { context.time.hour >= 9 && context.tool.name == "search_tickets" };

@id("by_session")
@reason("test")
permit (principal, action == Action::"crm/delete_ticket", resource)
when { context.session == "s-1" };

@id("by_group")
@reason("test")
permit (principal in AgentGroup::"support", action == Action::"git/read_file", resource)
when { principal has repos || context.agent.trust_domain == "acme.test" };
"""
    )
    engine = Engine(load_policies(directory))
    units = engine.compiled.policies
    assert policy_reads(units["by_purpose"]) == ("intent",)
    assert policy_reads(units["by_hour"]) == ("time",)  # context.tool is fixed per tool
    assert policy_reads(units["by_session"]) == ("session",)
    whole = "permit (principal, action, resource) when { context == context };"
    assert _reads_of_text(whole) == ("context",)  # used as a whole: anything may matter
    proven = "permit (principal, action, resource) when { context.agent.proven };"
    assert _reads_of_text(proven) == ("agent proof",)
    named = 'permit (principal, action, resource) when { context.agent.path like "/agent/*" };'
    assert _reads_of_text(named) == ()
    nested = "permit (principal, action, resource) when { context.intent.signed };"
    assert _reads_of_text(nested) == ("intent",)
    assert policy_reads(units["by_group"]) == ()
    assert answer(engine, SUPPORT, "crm/get_ticket")[::2] == (DEPENDS, ["intent"])
    assert answer(engine, SUPPORT, "crm/search_tickets")[::2] == (DEPENDS, ["time"])
    assert answer(engine, SUPPORT, "crm/delete_ticket")[::2] == (DEPENDS, ["session"])
    assert answer(engine, SUPPORT, "git/read_file") == (ALLOW, ["by_group"], [])
    assert answer(engine, CODER, "git/read_file") == (NEVER, [], [])  # not in the group


def test_group_members_and_servers(engine: Engine) -> None:
    assert agents_of(engine, "support") == [SUPPORT]
    assert agents_of(engine, "nobody") == []
    assert {server for server, _ in tools_of(engine, "crm")} == {"crm"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdp.cli", "access", "--policies", str(EXAMPLE_POLICIES), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_pdp_access_json_and_table() -> None:
    result = run("--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {(r["agent"], f"{r['server']}/{r['tool']}"): r for r in data["access"]}
    assert rows[(SUPPORT, "crm/get_ticket")]["access"] == ALLOW
    assert "arguments" in rows[(FINANCE, "payments/create_payment")]["on"]
    assert "intent" in data["floor"]

    table = run("--group", "support", "--server", "crm")
    assert table.returncode == 0, table.stderr
    assert SUPPORT in table.stdout and FINANCE not in table.stdout
    lines = [line.split() for line in table.stdout.splitlines()]
    assert ["crm/get_ticket", "allow", "support.read_tickets"] in lines
    assert ["crm/delete_ticket", "never", "support.never_delete"] in lines

    unknown = run("--agent", "spiffe://acme.test/agent/ghost")
    assert unknown.returncode == 2 and "not in the inventory" in unknown.stderr
    assert run("--server", "nope").returncode == 2
    assert run("--group", "nope").returncode == 2
