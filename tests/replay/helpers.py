"""Synthesized audit logs: requests decided with the example policies, written in the
audit format by the real record builder and the real hash-chained, rotating file sink.

The corpus is a list of templates, each repeated ``REPS`` times one minute apart, in
2024: if anything decided with the wall clock instead of the recorded time, the intents
(which expire five minutes after their request) would have expired and every decision
would change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pdp.audit import FileSink, FileSinkConfig, RedactionConfig, Redactor
from pdp.audit.chain import encode_body, list_log_files
from pdp.audit.record import build_decision_record, build_refusal_record
from pdp.engine import Engine, load_policies
from pdp.model import Caller, deny, parse_request

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
INSTANCE = "pdp-replay-test"
CALLER = Caller("spiffe://pdp.test/gateway/edge", "0a:1b", "pdp.test")
BASE_TIME = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
REPS = 3

SUPPORT = "spiffe://acme.test/agent/support-bot"
CODER = "spiffe://acme.test/agent/coder"
FINANCE = "spiffe://acme.test/agent/finance-bot"
PARTNER = "spiffe://partner.test/agent/helper"

# Masks git/push branch names: a masked value a policy reads (see test_verify).
REDACTOR = Redactor(RedactionConfig(tool_paths={"git/push": ("branch",)}))


def _intent(*tools: str) -> dict[str, Any]:
    return {"purpose": "work", "tools": list(tools)}


@dataclass(frozen=True)
class Template:
    name: str
    agent: str
    server: str
    tool: str
    arguments: dict[str, Any]
    intent: dict[str, Any] | None
    expect: str  # the decision with the example policies
    policies: tuple[str, ...]  # the determining policies with the example policies


TEMPLATES = (
    Template(
        "support reads",
        SUPPORT,
        "crm",
        "get_ticket",
        {"ticket_id": "T-1"},
        _intent("crm/*"),
        "allow",
        ("support.read_tickets",),
    ),
    Template(
        "support searches",
        SUPPORT,
        "crm",
        "search_tickets",
        {"query": "refund", "limit": 10},
        _intent("crm/*"),
        "allow",
        ("support.read_tickets",),
    ),
    Template(
        "support deletes",
        SUPPORT,
        "crm",
        "delete_ticket",
        {"ticket_id": "T-1"},
        _intent("crm/*"),
        "deny",
        ("support.never_delete",),
    ),
    Template(
        "support reads git",
        SUPPORT,
        "git",
        "read_file",
        {"repo": "acme/website", "path": "README.md"},
        _intent("git/read_file"),
        "deny",
        ("default_deny",),
    ),
    Template(
        "coder reads",
        CODER,
        "git",
        "read_file",
        {"repo": "acme/website", "path": "index.html"},
        _intent("git/*"),
        "allow",
        ("coding.own_repos",),
    ),
    Template(
        "coder pushes a feature",
        CODER,
        "git",
        "push",
        {"repo": "acme/website", "branch": "feature"},
        _intent("git/*"),
        "allow",
        ("coding.own_repos",),
    ),
    Template(
        "finance pays",
        FINANCE,
        "payments",
        "create_payment",
        {"amount_cents": 1000, "currency": "EUR"},
        _intent("payments/*"),
        "allow",
        ("finance.small_payments",),
    ),
    Template(
        "finance pays too much",
        FINANCE,
        "payments",
        "create_payment",
        {"amount_cents": 900000, "currency": "EUR"},
        _intent("payments/*"),
        "deny",
        ("default_deny",),
    ),
    Template(
        "finance pays with a card token",  # arguments_redacted: the token is not read
        FINANCE,
        "payments",
        "create_payment",
        {"amount_cents": 2500, "currency": "USD", "card_token": "tok_4242"},
        _intent("payments/*"),
        "allow",
        ("finance.small_payments",),
    ),
    Template(
        "finance checks a balance",
        FINANCE,
        "payments",
        "get_balance",
        {},
        _intent("payments/*"),
        "allow",
        ("finance.balance",),
    ),
    Template(
        "coder runs a shell",
        CODER,
        "shell",
        "exec",
        {"command": "ls"},
        _intent("shell/exec"),
        "deny",
        ("ban.shell_exec",),
    ),
    Template(
        "partner reads",
        PARTNER,
        "partner-crm",
        "get_ticket",
        {"ticket_id": "P-1"},
        _intent("partner-crm/*"),
        "allow",
        ("partners.read_partner_crm",),
    ),
    Template(
        "support without intent",
        SUPPORT,
        "crm",
        "get_ticket",
        {"ticket_id": "T-2"},
        None,
        "deny",
        ("floor.intent_required",),
    ),
)


def decision_id(index: int, at: datetime) -> str:
    """A UUIDv7 whose order follows ``index`` (deterministic, unlike new_decision_id)."""
    ms = int(at.timestamp() * 1000)
    value = ms << 80 | 0x7 << 76 | (index & 0xFFF) << 64 | 0b10 << 62 | index
    return str(uuid.UUID(int=value))


def request_data(template: Template, at: datetime) -> dict[str, Any]:
    data: dict[str, Any] = {
        "agent": template.agent,
        "server": template.server,
        "tool": template.tool,
        "arguments": template.arguments,
        "gateway": CALLER.spiffe_id,
        "time": at.isoformat().replace("+00:00", "Z"),
    }
    if template.intent is not None:
        intent = dict(template.intent)
        intent["expires_at"] = (at + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        data["intent"] = intent
    return data


@dataclass(frozen=True)
class Synthesized:
    records: list[dict[str, Any]]  # every line body, in log order
    decisions: list[dict[str, Any]]  # the decision records that replay re-decides
    by_template: dict[str, list[str]]  # template name -> decision ids


def synthesize(
    engine: Engine | None = None, reps: int = REPS, base: datetime = BASE_TIME
) -> Synthesized:
    """Decision records for every template ``reps`` times, plus two refusals and one
    service-level deny (caller_not_bound), as the service would log them, from ``base``
    on (a ``base`` of now gives intents still live for a server deciding at its clock)."""
    engine = engine or Engine(load_policies(POLICIES))
    records: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    by_template: dict[str, list[str]] = {t.name: [] for t in TEMPLATES}
    index = 0
    for rep in range(reps):
        for position, template in enumerate(TEMPLATES):
            at = base + timedelta(minutes=rep * len(TEMPLATES) + position)
            request = parse_request(request_data(template, at), now=at)
            decision = engine.decide(request)
            assert decision.effect.value == template.expect, (template.name, decision)
            assert tuple(r.policy for r in decision.reasons) == template.policies, template.name
            ident = decision_id(index, at)
            index += 1
            record = build_decision_record(
                ident, request, decision, CALLER, 120, INSTANCE, REDACTOR, time=at
            )
            records.append(record)
            decisions.append(record)
            by_template[template.name].append(ident)
        at = base + timedelta(minutes=rep * len(TEMPLATES), seconds=30)
        records.append(
            build_refusal_record(
                decision_id(index, at),
                "permission_denied",
                "caller is not allowed",
                caller=Caller("spiffe://pdp.test/batch/job", "77", "pdp.test"),
                instance_id=INSTANCE,
                redactor=REDACTOR,
                time=at,
            )
        )
        index += 1
    # The service answers caller_not_bound without asking the policies: never replayed.
    at = base + timedelta(hours=2)
    request = parse_request(request_data(TEMPLATES[0], at), now=at)
    not_bound = deny(engine.version, "caller_not_bound", f"caller may not ask about {SUPPORT}")
    records.append(
        build_decision_record(
            decision_id(index, at), request, not_bound, CALLER, 5, INSTANCE, REDACTOR, time=at
        )
    )
    return Synthesized(records, decisions, by_template)


def write_log(
    records: list[dict[str, Any]],
    log_dir: Path,
    *,
    max_bytes: int = 6000,
    checkpoint_every: int = 7,
) -> list[Path]:
    """Writes the records with the audit file sink (chain, segments, checkpoints,
    rotation at ``max_bytes``); returns the files in rotation order."""
    sink = FileSink(
        FileSinkConfig(log_dir, max_bytes=max_bytes, checkpoint_every=checkpoint_every),
        INSTANCE,
        clock=lambda: BASE_TIME.timestamp(),
    )
    try:
        for record in records:
            sink.append([encode_body(record)], durable=False)
    finally:
        sink.close()
    return list_log_files(log_dir)


def copy_policies(destination: Path) -> Path:
    """A writable copy of the example policies (the built-in floor link left out: the
    built-in floor always loads; a real floor/ directory can then hold extra rules)."""
    shutil.copytree(
        POLICIES,
        destination,
        ignore=lambda directory, names: ["floor"] if Path(directory) == POLICIES else [],
    )
    return destination


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def decision_lines(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        for raw in path.read_bytes().splitlines():
            line = json.loads(raw)
            if line.get("kind") == "decision":
                yield line


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``pdp replay ...`` in a child process, as a CI job would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pdp.replay.cli", "replay", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=120,
        check=False,
    )


# --- candidate policy sets with known changes ---------------------------------------

WIDENING_POLICY = """
@id("support.read_git_business_hours")
@reason("support may read repositories during business hours")
permit (
  principal in AgentGroup::"support",
  action == Action::"git/read_file",
  resource == McpServer::"git"
)
when { context.time.hour >= 9 && context.time.hour < 17 };
"""

FLOOR_POLICY = """
@id("floor.freeze_push_delete")
@reason("pushing and deleting are frozen")
forbid (
  principal,
  action in [Action::"git/push", Action::"crm/delete_ticket"],
  resource
);
"""


def make_narrowing(directory: Path) -> Path:
    """Removes the permit for small payments: finance payments narrow to default_deny."""
    path = directory / "examples" / "finance.cedar"
    text = path.read_text()
    start = text.index('@id("finance.small_payments")')
    path.write_text(text[:start])
    return directory


def make_widening(directory: Path) -> Path:
    """Adds a permit: support reading git (recorded at 09:xx) widens."""
    (directory / "examples" / "support_git.cedar").write_text(WIDENING_POLICY)
    return directory


def make_floor(directory: Path) -> Path:
    """Adds a floor forbid: pushes narrow, ticket deletions change reasons."""
    (directory / "floor").mkdir(exist_ok=True)
    (directory / "floor" / "freeze.cedar").write_text(FLOOR_POLICY)
    return directory
