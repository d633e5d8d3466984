"""`pdp posture` on the example policies and a recorded log: the findings, JSON, the
terminal summary, and the HTML page rendered by a real (headless) Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import FileSink, FileSinkConfig, RedactionConfig, Redactor
from pdp.audit.chain import encode_body
from pdp.audit.record import build_decision_record, build_refusal_record
from pdp.engine import Engine, load_policies
from pdp.model import Caller, RequestError, deny, parse_request
from tests.conftest import EXAMPLE_POLICIES

GATEWAY = Caller("spiffe://acme.test/gateway/edge", "0a", "acme.test")
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
SUPPORT = "spiffe://acme.test/agent/support-bot"
CODER = "spiffe://acme.test/agent/coder"
FINANCE = "spiffe://acme.test/agent/finance-bot"
HELPER = "spiffe://partner.test/agent/helper"
HOSTILE_TOOL = '<script>alert("x")</script>'


def _call(agent: str, ref: str, at: datetime, purpose: str | None = "work",
          tools: list[str] | None = None, **arguments: Any) -> dict[str, Any]:  # fmt: skip
    server, tool = ref.split("/", 1)
    data: dict[str, Any] = {
        "agent": agent,
        "server": server,
        "tool": tool,
        "arguments": arguments,
        "gateway": GATEWAY.spiffe_id,
        "time": at.isoformat().replace("+00:00", "Z"),
    }
    if purpose is not None:
        data["intent"] = {"purpose": purpose, "tools": tools or [ref]}
    return data


def recorded_log(directory: Path) -> Path:
    """A week of traffic decided by the real engine and written by the real audit sink."""
    engine = Engine(load_policies(EXAMPLE_POLICIES))
    redactor = Redactor(RedactionConfig())
    calls: list[dict[str, Any]] = []
    for day in range(7):
        for hour in range(0, 24, 3):
            at = START + timedelta(days=day, hours=hour)
            calls.append(_call(SUPPORT, "crm/get_ticket", at, "support.triage", ticket_id="T-1"))
            calls.append(
                _call(SUPPORT, "crm/get_ticket", at, "support.escalation", ticket_id="T-2")
            )
            calls.append(
                _call(FINANCE, "payments/create_payment", at, amount_cents=100, currency="EUR")
            )
            calls.append(_call(CODER, "git/read_file", at, repo="acme/website", path="a"))
        at = START + timedelta(days=day, hours=1)
        calls.append(_call(SUPPORT, "crm/search_tickets", at, "support.triage", query="x"))
        calls.append(_call(SUPPORT, "crm/delete_ticket", at, "support.triage", ticket_id="T-1"))
        calls.append(_call(SUPPORT, "crm/get_ticket", at, None, ticket_id="T-3"))
        calls.append(_call(CODER, "shell/exec", at, command="ls"))
    last = START + timedelta(days=6, hours=23)
    calls.append(_call(FINANCE, "payments/get_balance", last))  # new in the last day
    calls.append(
        _call(SUPPORT, "crm/get_ticket", last, "support.triage", tools=["git/push"], ticket_id="T")
    )
    calls.append(_call(FINANCE, "payments/create_payment", last, amount_cents="lots"))
    calls.append(_call(SUPPORT, "crm/export_all", last, tools=["crm/*"]))  # not in inventory
    # A name no parser accepts: logged as received, an invalid_request deny.
    calls.append(_call(SUPPORT, "crm/" + HOSTILE_TOOL, last, tools=["crm/*"]))
    records = []
    for index, data in enumerate(calls):
        when = datetime.fromisoformat(data["time"])
        try:
            request: Any = parse_request(data, now=when)
        except RequestError:
            request = data
        records.append(
            build_decision_record(
                f"0190-{index:06d}",
                request,
                engine.decide_json(data, now=when),
                GATEWAY,
                50,
                "pdp-1",
                redactor,
                time=when,
            )
        )
    when = last - timedelta(minutes=5)
    outside = parse_request(_call(HELPER, "partner-crm/get_ticket", when), now=when)
    not_bound = deny(engine.version, "caller_not_bound", "caller may not ask about this agent")
    records.append(
        build_decision_record(
            "0190-nb", outside, not_bound, GATEWAY, 5, "pdp-1", redactor, time=when
        )
    )
    records.append(
        build_refusal_record(
            "0190-ref",
            "permission_denied",
            "not a caller",
            caller=None,
            instance_id="pdp-1",
            redactor=redactor,
            time=when,
        )
    )
    sink = FileSink(FileSinkConfig(directory, max_bytes=20000), "pdp-1")
    try:
        for record in records:
            sink.append([encode_body(record)], durable=False)
    finally:
        sink.close()
    return directory


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recorded_log(tmp_path_factory.mktemp("posture") / "audit")


def posture_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdp.cli", "posture", "--policies", str(EXAMPLE_POLICIES), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def report(log_dir: Path) -> dict[str, Any]:
    result = posture_cli("--json", str(log_dir))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def agent(report: dict[str, Any], spiffe_id: str) -> dict[str, Any]:
    found = [a for a in report["agents"] if a["agent"] == spiffe_id]
    assert len(found) == 1, spiffe_id
    return found[0]


def test_over_permission_findings(report: dict[str, Any]) -> None:
    support = agent(report, SUPPORT)
    assert support["permitted"] == ["crm/get_ticket", "crm/search_tickets"]
    assert support["permitted_unused"] == []
    # get_ticket under both purposes, search only under triage.
    assert support["used_only_under_intents"] == {"crm/search_tickets": ["support.triage"]}
    assert support["denied_by_reason"] == {
        "forbidden by policy": 7,  # delete_ticket
        "intent mismatch": 8,  # 7 without an intent, 1 with a tool outside it
        "unknown tool": 1,
        "invalid request": 1,
    }
    assert support["new_in_last_day"] == ["crm/" + HOSTILE_TOOL, "crm/export_all"]
    coder = agent(report, CODER)
    assert coder["permitted"] == ["git/push", "git/read_file", "git/write_file"]  # depends
    assert coder["permitted_unused"] == ["git/push", "git/write_file"]
    assert coder["denied_by_reason"] == {"forbidden by policy": 7}
    finance = agent(report, FINANCE)
    assert finance["new_in_last_day"] == ["payments/get_balance"]
    assert finance["denied_by_reason"] == {"arguments outside the tool's schema": 1}
    assert agent(report, HELPER)["denied_by_reason"] == {"outside binding": 1}
    assert agent(report, HELPER)["permitted_unused"] == ["partner-crm/get_ticket"]
    never = {p["id"] for p in report["permits_never_determining"]}
    used = {"support.read_tickets", "finance.small_payments", "finance.balance"}
    assert "partners.read_partner_crm" in never and not never & (used | {"coding.own_repos"})
    assert report["forbids_fired"] == {
        "support.never_delete": 7,
        "ban.shell_exec": 7,
        "floor.intent_required": 7,
        "floor.tool_outside_intent": 1,
        "unknown_tool": 1,
    }
    assert report["refusals"] == 1
    assert report["window"]["start"].startswith("2026-11-20T08:00")
    timeline = report["timeline"]
    assert sum(b["allowed"] + b["denied"] for b in timeline) == report["decisions"]
    assert 7 <= len(timeline) <= 48


def test_terminal_summary(log_dir: Path) -> None:
    result = posture_cli(str(log_dir))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{CODER}: uses 1 tool(s), permitted 3" in out
    assert "permitted, never used: git/push, git/write_file" in out
    assert "used only under intents support.triage: crm/search_tickets" in out
    assert "new in the last day: payments/get_balance" in out
    assert "permits that never determined a decision: " in out
    assert "partners.read_partner_crm (examples/tenancy.cedar:" in out
    assert "forbids that fired: " in out and "support.never_delete x7" in out
    missing = posture_cli(str(log_dir / "nope"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (scripts/setup.sh installs it)"
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_html_page_shows_the_matrix_in_a_real_browser(log_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "posture.html"
    result = posture_cli("--html", str(page), str(log_dir))
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    # Self-contained: nothing is fetched, no script runs.
    assert "default-src 'none'" in html
    for needle in ("<script", "src=", "href=", "url(", "@import"):
        assert needle not in html.replace("&lt;script", ""), needle

    dumped = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    assert '<table id="matrix">' in dom
    rows = dom.split('<tr data-agent="')[1:]
    assert {row.split('"', 1)[0] for row in rows} == {SUPPORT, CODER, FINANCE, HELPER}
    support_row = next(r for r in rows if r.startswith(SUPPORT))
    # get_ticket: allowed, used under both purposes (8 * 7 * 2), denied 8.
    assert 'data-access="allow" data-used="112" data-denied="8"' in support_row
    coder_row = next(r for r in rows if r.startswith(CODER))
    assert coder_row.count("overperm") == 2
    assert '<svg id="timeline"' in dom and '<svg id="denials"' in dom
    # The hostile tool name from the log is text, never markup: no script element ran.
    assert "<script>" not in dom and "&lt;script&gt;" in dom

    shot = tmp_path / "posture.png"
    taken = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri())
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_terminal_output_never_carries_control_characters_from_the_log() -> None:
    from pdp.posture.render import text_summary
    from pdp.posture.report import Observed, build_posture

    engine = Engine(load_policies(EXAMPLE_POLICIES))
    hostile = "crm/\x1b]0;pwned\x07\x1b[31mget"
    observed = [
        Observed(START, SUPPORT, hostile, True, ("support.read_tickets",), "a\x1b[2J"),
        Observed(START, SUPPORT, "crm/get_ticket", True, ("support.read_tickets",), "b"),
    ]
    text = text_summary(build_posture(engine.compiled, [], observed))
    assert "\x1b" not in text and "\x07" not in text
    assert "crm/\\x1b]0;pwned\\x07\\x1b[31mget" in text
