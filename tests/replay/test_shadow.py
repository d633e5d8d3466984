"""`pdp replay --shadow`: the shadow decisions recorded live, compared with the recorded
decisions without deciding anything again: counts, breakdowns, examples, records
without a shadow, shadow versions, exit codes, determinism, usage errors, rotated sets,
and logs written by the real audit pipeline (files and NATS JetStream).

Logs are made as ``pdp serve --shadow-policies`` makes them: each request is decided by
the example policies (active) and by a real candidate policy directory (shadow), and the
real record builder and file sink write them.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import AuditConfig, FileSinkConfig, NatsShipperConfig, open_audit
from pdp.audit.ids import new_decision_id
from pdp.audit.record import build_decision_record, build_refusal_record
from pdp.engine import Engine, load_policies
from pdp.model import Caller, deny, parse_request
from pdp.replay.cli import main
from pdp.replay.sources import log_files
from tests.replay.conftest import CandidateFactory
from tests.replay.helpers import (
    BASE_TIME,
    CALLER,
    CODER,
    FINANCE,
    INSTANCE,
    POLICIES,
    REDACTOR,
    REPO,
    REPS,
    SUPPORT,
    TEMPLATES,
    decision_id,
    make_floor,
    make_narrowing,
    make_widening,
    request_data,
    run_cli,
    write_log,
)
from tests.replay.test_nats import NATS_SERVER, STREAM, nats_url  # noqa: F401 (fixture)

DECISIONS = len(TEMPLATES) * REPS
ShadowOf = Callable[[int], Engine | None]


@functools.cache
def engine(directory: Path) -> Engine:
    return Engine(load_policies(directory))


BASE_VERSION = engine(POLICIES).version


def shadow_records(shadow_of: ShadowOf) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Every template ``REPS`` times, decided by the example policies; decision ``n``
    (0, 1, … in log order) carries the decision of ``shadow_of(n)`` (``None``: no shadow
    decision). Plus one refusal per round and a caller_not_bound deny with a shadow."""
    active = engine(POLICIES)
    records: list[dict[str, Any]] = []
    by_template: dict[str, list[str]] = {t.name: [] for t in TEMPLATES}
    index = 0
    for rep in range(REPS):
        for position, template in enumerate(TEMPLATES):
            ordinal = rep * len(TEMPLATES) + position
            at = BASE_TIME + timedelta(minutes=ordinal)
            request = parse_request(request_data(template, at), now=at)
            shadow = shadow_of(ordinal)
            ident = decision_id(index, at)
            index += 1
            records.append(
                build_decision_record(
                    ident,
                    request,
                    active.decide(request),
                    CALLER,
                    100,
                    INSTANCE,
                    REDACTOR,
                    shadow.decide(request) if shadow is not None else None,
                    time=at,
                )
            )
            by_template[template.name].append(ident)
        at = BASE_TIME + timedelta(minutes=rep * len(TEMPLATES), seconds=30)
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
    # The service records a shadow decision for a caller_not_bound deny too; the active
    # policies never saw the request, so it is skipped, as replay skips it.
    at = BASE_TIME + timedelta(hours=2)
    request = parse_request(request_data(TEMPLATES[0], at), now=at)
    shadow = shadow_of(0)
    records.append(
        build_decision_record(
            decision_id(index, at),
            request,
            deny(active.version, "caller_not_bound", f"caller may not ask about {SUPPORT}"),
            CALLER,
            5,
            INSTANCE,
            REDACTOR,
            (shadow or active).decide(request),
            time=at,
        )
    )
    return records, by_template


def shadow_log(directory: Path, shadow_of: ShadowOf) -> tuple[Path, dict[str, list[str]]]:
    """The records of :func:`shadow_records`, written as a rotated set."""
    records, by_template = shadow_records(shadow_of)
    files = write_log(records, directory)
    assert len(files) > 3, "the log should be rotated into several files"
    return directory, by_template


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``pdp replay --shadow ARGS`` in this process; argparse errors give their status."""
    try:
        code = main(["replay", "--no-progress", "--shadow", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, "--json", *args)
    assert code in (0, 1), err
    assert err == ""
    report: dict[str, Any] = json.loads(out)
    return code, report


def locate(log_dir: Path, ident: str) -> str:
    for path in log_files(log_dir):
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if json.loads(raw).get("decision_id") == ident:
                return f"{path}:{number}"
    raise AssertionError(ident)


def row(rows: list[dict[str, Any]], key: str) -> list[int]:
    found = [r for r in rows if r["key"] == key]
    assert len(found) == 1, (key, rows)
    return [found[0][column] for column in ("records", "unchanged", "narrowed", "widened")]


def reasons(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"policy": policy, "message": message} for policy, message in pairs]


def test_shadow_report_is_the_candidate_replay_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    policies = make_floor(make_widening(make_narrowing(candidate("all"))))
    shadow_engine = engine(policies)
    log, ids = shadow_log(tmp_path / "log", lambda n: shadow_engine)
    code, report = run_json(capsys, str(log))
    assert code == 0  # no --fail-on
    assert report["mode"] == "shadow"
    assert report["sources"] == [str(log)]
    assert report["candidate"] == {
        "kind": "live_shadow",
        "versions": [{"version": shadow_engine.version, "records": DECISIONS}],
    }
    assert report["totals"] == {
        "records": DECISIONS,
        "unchanged": DECISIONS - 5 * REPS,
        "narrowed": 3 * REPS,  # payments (narrowing) and pushes (floor)
        "widened": REPS,  # support reads git
        "reasons_changed": REPS,  # deletions, now also denied by the floor
        "arguments_redacted": 2 * REPS,
        "redacted_changed": 2 * REPS,  # the card-token payments and masked pushes
        "candidate_errors": 0,
        "invalid_arguments_added": 0,
        "invalid_arguments_removed": 0,
        "failed": 0,
        "no_shadow": 0,
    }
    assert report["skipped"] == {
        "refusals": REPS,
        "service_denials": 1,
        "chain_lines": report["skipped"]["chain_lines"],
        "duplicates": 0,
    }
    assert report["skipped"]["chain_lines"] > 0
    assert report["no_shadow"] == {"records": 0, "examples": []}
    assert report["recorded_versions"] == [{"version": BASE_VERSION, "records": DECISIONS}]
    assert row(report["by_agent"], FINANCE) == [4 * REPS, 2 * REPS, 2 * REPS, 0]
    assert row(report["by_agent"], SUPPORT) == [5 * REPS, 3 * REPS, 0, REPS]
    assert row(report["by_agent"], CODER) == [3 * REPS, 2 * REPS, REPS, 0]
    assert row(report["by_tool"], "git/read_file") == [2 * REPS, REPS, 0, REPS]
    assert row(report["by_recorded_policy"], "finance.small_payments") == [
        2 * REPS,
        0,
        2 * REPS,
        0,
    ]
    assert row(report["by_candidate_policy"], "support.read_git_business_hours") == [
        REPS,
        0,
        0,
        REPS,
    ]
    assert report["transitions"] == [
        {
            "change": "narrowed",
            "recorded": "finance.small_payments",
            "candidate": "default_deny",
            "records": 2 * REPS,
        },
        {
            "change": "narrowed",
            "recorded": "coding.own_repos",
            "candidate": "floor.freeze_push_delete",
            "records": REPS,
        },
        {
            "change": "reasons_changed",
            "recorded": "support.never_delete",
            "candidate": "floor.freeze_push_delete+support.never_delete",
            "records": REPS,
        },
        {
            "change": "widened",
            "recorded": "default_deny",
            "candidate": "support.read_git_business_hours",
            "records": REPS,
        },
    ]
    pushes, pays = ids["coder pushes a feature"], ids["finance pays"]
    narrowed = report["examples"]["narrowed"]
    assert [e["decision_id"] for e in narrowed] == [
        pushes[0],
        pays[0],
        ids["finance pays with a card token"][0],
    ]
    assert narrowed[1] == {
        "decision_id": pays[0],
        "at": locate(log, pays[0]),
        "agent": FINANCE,
        "tool": "payments/create_payment",
        "time": "2024-05-01T09:06:00.000Z",
        "arguments_redacted": False,
        "recorded": {
            "decision": "allow",
            "reasons": reasons(
                (
                    "finance.small_payments",
                    "finance agents may create payments below 5,000.00 in EUR or USD",
                )
            ),
            "policy_version": BASE_VERSION,
        },
        "candidate": {
            "decision": "deny",
            "reasons": reasons(("default_deny", "no policy permits this call")),
            "policy_version": shadow_engine.version,
        },
    }
    assert narrowed[0]["arguments_redacted"] is True
    assert [e["decision_id"] for e in report["examples"]["widened"]] == ids["support reads git"]
    assert [e["decision_id"] for e in report["examples"]["reasons_changed"]] == ids[
        "support deletes"
    ]

    # Re-deciding the same requests with the shadow's directory finds exactly the same.
    code = main(["replay", "--no-progress", "--json", "--policies", str(policies), str(log)])
    replayed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert replayed["totals"] == {k: v for k, v in report["totals"].items() if k != "no_shadow"}
    for key in (
        "skipped",
        "unreadable",
        "recorded_versions",
        "by_agent",
        "by_tool",
        "by_recorded_policy",
        "by_candidate_policy",
        "transitions",
        "examples",
    ):
        assert replayed[key] == report[key], key


def test_records_without_a_shadow_are_not_unchanged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Shadow mode switched on after the first five decisions; the shadow set is the
    # active one, so every compared record is unchanged.
    same = engine(POLICIES)
    log, ids = shadow_log(tmp_path / "log", lambda n: same if n >= 5 else None)
    code, report = run_json(capsys, "--fail-on", "any-change", str(log))
    assert code == 0
    totals = report["totals"]
    assert (totals["records"], totals["unchanged"], totals["no_shadow"]) == (
        DECISIONS - 5,
        DECISIONS - 5,
        5,
    )
    assert totals["narrowed"] == totals["widened"] == totals["reasons_changed"] == 0
    assert sum(r["records"] for r in report["by_agent"]) == DECISIONS - 5
    assert report["candidate"]["versions"] == [{"version": BASE_VERSION, "records": DECISIONS - 5}]
    assert report["skipped"]["refusals"] == REPS
    assert report["skipped"]["service_denials"] == 1
    no_shadow = report["no_shadow"]
    assert no_shadow["records"] == 5
    first = ids["support reads"][0]
    assert [e["decision_id"] for e in no_shadow["examples"]] == [
        first,
        ids["support searches"][0],
        ids["support deletes"][0],
    ]
    assert no_shadow["examples"][0] == {
        "decision_id": first,
        "at": locate(log, first),
        "agent": SUPPORT,
        "tool": "crm/get_ticket",
        "time": "2024-05-01T09:00:00.000Z",
        "recorded": {
            "decision": "allow",
            "reasons": reasons(
                ("support.read_tickets", "support agents may read and search CRM tickets")
            ),
            "policy_version": BASE_VERSION,
        },
    }
    code, out, _ = run(capsys, "--examples", "1", str(log))
    assert re.search(r"^  no shadow decision \(not compared\) +5$", out, re.MULTILINE)
    assert "No shadow decision (not compared): 5 records" in out
    assert f"  {first}  2024-05-01T09:00:00.000Z  {SUPPORT}  crm/get_ticket" in out
    assert "    recorded: allow  support.read_tickets: support agents may read" in out
    assert "    shadow:" not in out


def test_a_log_without_any_shadow_decision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log, _ = shadow_log(tmp_path / "log", lambda n: None)
    code, report = run_json(capsys, "--fail-on", "any-change", str(log))
    assert code == 0
    assert report["totals"]["records"] == report["totals"]["unchanged"] == 0
    assert report["totals"]["no_shadow"] == DECISIONS
    assert report["candidate"] == {"kind": "live_shadow", "versions": []}
    assert report["by_agent"] == []
    _, out, _ = run(capsys, str(log))
    assert "shadow policy versions: none" in out
    assert "note: no record carries a shadow decision" in out


def test_shadow_versions_seen(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    # The shadow set was reloaded after the first round: two shadow versions.
    base, narrow = engine(POLICIES), engine(make_narrowing(candidate("narrow")))
    log, _ = shadow_log(tmp_path / "log", lambda n: base if n < len(TEMPLATES) else narrow)
    _, report = run_json(capsys, str(log))
    rounds = len(TEMPLATES)
    assert report["candidate"]["versions"] == sorted(
        [
            {"version": base.version, "records": rounds},
            {"version": narrow.version, "records": DECISIONS - rounds},
        ],
        key=lambda v: str(v["version"]),
    )
    assert report["totals"]["narrowed"] == 2 * (REPS - 1)
    assert report["totals"]["unchanged"] == DECISIONS - 2 * (REPS - 1)
    _, out, _ = run(capsys, str(log))
    lines = out.splitlines()
    first, second = report["candidate"]["versions"]
    assert lines[0] == f"pdp replay --shadow: {log}"
    assert lines[1].startswith("compares: each recorded decision with the live shadow decision")
    assert lines[2] == (
        f"shadow policy versions: {first['version']} ({first['records']}),"
        f" {second['version']} ({second['records']})"
    )


SCENARIOS: dict[str, Callable[[Path], Path]] = {
    "same": lambda d: POLICIES,
    "narrowing": make_narrowing,
    "widening": make_widening,
    "both": lambda d: make_widening(make_narrowing(d)),
    "reasons": lambda d: make_floor(d),
}


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("same", {"widened": 0, "narrowed": 0, "any-change": 0}),
        ("narrowing", {"widened": 0, "narrowed": 1, "any-change": 1}),
        ("widening", {"widened": 1, "narrowed": 0, "any-change": 1}),
        ("both", {"widened": 1, "narrowed": 1, "any-change": 1}),
        ("reasons", {"widened": 0, "narrowed": 1, "any-change": 1}),
    ],
)
def test_fail_on_exit_codes(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    candidate: CandidateFactory,
    scenario: str,
    expected: dict[str, int],
) -> None:
    shadow_engine = engine(SCENARIOS[scenario](candidate(scenario)))
    log, _ = shadow_log(tmp_path / "log", lambda n: shadow_engine)
    for mode, status in expected.items():
        code, out, err = run(capsys, "--fail-on", mode, str(log))
        assert code == status, (scenario, mode, err)
        assert err == "" and out.startswith("pdp replay --shadow: ")
    assert run(capsys, str(log))[0] == 0


def test_only_reasons_changed_fails_any_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    # Only the deletions change reasons (the pushes are left without a shadow).
    floor = engine(make_floor(candidate("floor")))
    pushes = {p for p, t in enumerate(TEMPLATES) if t.name == "coder pushes a feature"}
    log, _ = shadow_log(tmp_path / "log", lambda n: None if n % len(TEMPLATES) in pushes else floor)
    _, report = run_json(capsys, str(log))
    totals = report["totals"]
    assert (totals["narrowed"], totals["widened"], totals["reasons_changed"]) == (0, 0, REPS)
    assert totals["no_shadow"] == REPS
    assert run(capsys, "--fail-on", "narrowed", str(log))[0] == 0
    assert run(capsys, "--fail-on", "widened", str(log))[0] == 0
    assert run(capsys, "--fail-on", "any-change", str(log))[0] == 1


def test_report_is_deterministic(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    shadow_engine = engine(make_floor(make_widening(make_narrowing(candidate("all")))))
    log, _ = shadow_log(tmp_path / "log", lambda n: None if n % 7 == 0 else shadow_engine)
    first_json = run(capsys, "--json", str(log))
    second_json = run(capsys, "--json", str(log))
    assert first_json == second_json
    assert first_json[1].encode() == second_json[1].encode()
    first_text = run(capsys, str(log))
    assert first_text == run(capsys, str(log))
    report = json.loads(first_json[1])
    assert report["totals"]["no_shadow"] == len(range(0, DECISIONS, 7))
    # Files given one by one, in reverse: the same counts, breakdowns and examples.
    files = [str(p) for p in reversed(log_files(log))]
    _, reversed_report = run_json(capsys, *files)
    for key in (
        "totals",
        "candidate",
        "by_agent",
        "by_tool",
        "by_recorded_policy",
        "by_candidate_policy",
        "transitions",
        "examples",
        "no_shadow",
    ):
        assert reversed_report[key] == report[key], key
    # As a CI job runs it: a child process, the same bytes.
    for extra in ((), ("--json",)):
        child = run_cli("--no-progress", "--shadow", *extra, str(log))
        assert child.returncode == 0, child.stderr
        assert child.stderr == ""
        assert child.stdout == (first_json if extra else first_text)[1]


def test_text_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    shadow_engine = engine(make_narrowing(candidate("narrow")))
    log, ids = shadow_log(tmp_path / "log", lambda n: None if n < 2 else shadow_engine)
    code, out, err = run(capsys, "--examples", "1", str(log))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[:3] == [
        f"pdp replay --shadow: {log}",
        "compares: each recorded decision with the live shadow decision recorded beside it"
        " (nothing decided again)",
        f"shadow policy versions: {shadow_engine.version} ({DECISIONS - 2})",
    ]
    totals = {line[:42].strip(): line[42:].strip() for line in lines[4:17]}
    assert totals == {
        "TOTALS": "",
        "records compared": str(DECISIONS - 2),
        "unchanged": str(DECISIONS - 2 - 2 * REPS),
        "narrowed (allow -> deny)": str(2 * REPS),
        "widened (deny -> allow)": "0",
        "reasons changed": "0",
        "no shadow decision (not compared)": "2",
        "invalid_arguments added": "0",
        "invalid_arguments removed": "0",
        "arguments redacted": str(2 * REPS),
        "of them changed": str(REPS),
        "shadow decisions with evaluation errors": "0",
        "unreadable lines": "0",
    }
    assert (
        lines[17]
        == f"  not compared: refusals {REPS}, service denials 1, chain lines "
        + (lines[17].split("chain lines ")[1])
    )
    assert "failed to re-decide" not in out
    assert "re-decided with the masked values" not in out  # the shadow saw the real values
    assert "By determining policy, shadow" in lines
    assert "Changes by determining policy (recorded -> shadow)" in lines
    header = next(line for line in lines if line.startswith("  CHANGE"))
    assert header.split() == ["CHANGE", "RECORDS", "RECORDED", "SHADOW"]
    change = lines[lines.index(header) + 1]
    assert change.split() == ["narrowed", "6", "finance.small_payments", "default_deny"]
    assert "Examples: narrowed (allow -> deny)" in lines
    pays = ids["finance pays"][0]
    at = lines.index(f"  {pays}  2024-05-01T09:06:00.000Z  {FINANCE}  payments/create_payment")
    assert lines[at + 1].startswith("    recorded: allow  finance.small_payments: finance agents")
    assert lines[at + 2] == "    shadow:   deny   default_deny: no policy permits this call"
    assert lines[at + 3] == f"    at {locate(log, pays)}"
    assert "No shadow decision (not compared): 2 records" in lines


def test_rotated_set_with_compressed_and_retried_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    shadow_engine = engine(make_narrowing(candidate("narrow")))
    log, _ = shadow_log(tmp_path / "log", lambda n: shadow_engine)
    _, before = run_json(capsys, str(log))
    files = log_files(log)
    with files[0].open("rb") as raw, gzip.open(f"{files[0]}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    files[0].unlink()
    retried = files[2].with_name(files[2].name.replace(".jsonl", ".1.jsonl"))
    files[2].rename(retried)
    assert log_files(log) == [Path(f"{files[0]}.gz"), files[1], retried, *files[3:]]
    _, after = run_json(capsys, str(log))
    assert after["totals"] == before["totals"]
    assert after["totals"]["narrowed"] == 2 * REPS
    assert after["unreadable"]["lines"] == 0
    for key in ("by_agent", "by_tool", "transitions", "candidate", "skipped"):
        assert after[key] == before[key], key
    assert [e["decision_id"] for e in after["examples"]["narrowed"]] == [
        e["decision_id"] for e in before["examples"]["narrowed"]
    ]
    # The same records given twice (e.g. two copies of a file) are counted once.
    _, twice = run_json(capsys, str(log), str(retried))
    assert twice["totals"] == before["totals"]
    assert twice["skipped"]["duplicates"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--verify"], "argument --verify: not allowed with argument --shadow"),
        (["--target", "127.0.0.1:1"], "argument --target: not allowed with argument --shadow"),
        (["--policies", "POLICIES"], "--policies does not apply to --shadow"),
        (["--ignore-redacted"], "--ignore-redacted does not apply to --shadow"),
        (["/nonexistent/audit"], "/nonexistent/audit: no such file or directory"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    log, _ = shadow_log(tmp_path / "log", lambda n: None)
    args = [str(POLICIES) if a == "POLICIES" else a for a in args]
    sources = [] if args[-1].startswith("/nonexistent") else [str(log)]
    code, out, err = run(capsys, *args, *sources)
    assert code == 2
    assert out == ""
    assert message in err


def _decide_through_audit(
    audit_config: AuditConfig, shadow_engine: Engine
) -> tuple[list[str], list[str]]:
    """One round of the templates decided by the active policies with ``shadow_engine``
    as shadow, recorded by the real audit stream; returns decision ids and paths."""
    active = engine(POLICIES)
    caller = Caller("spiffe://pdp.test/gateway/edge", "0a:1b", "pdp.test")
    ids: list[str] = []
    audit = open_audit(audit_config)
    try:
        for position, template in enumerate(TEMPLATES):
            at = BASE_TIME + timedelta(minutes=position)
            request = parse_request(request_data(template, at), now=at)
            decision = active.decide(request)
            ident = new_decision_id()
            answer = audit.record_decision(
                ident,
                request,
                decision,
                caller,
                latency_us=80,
                shadow=shadow_engine.decide(request),
                time=at,
            )
            assert answer == decision  # durable: the active answer, never the shadow's
            ids.append(ident)
        audit.record_refusal("permission_denied", "caller is not allowed", caller=None)
        if audit.shipper is not None:
            assert audit.shipper.wait_caught_up(30), audit.shipper.stats()
    finally:
        assert audit.close()
    return ids, [str(p) for p in log_files(audit_config.file.log_dir)]


def test_log_written_by_the_audit_stream(tmp_path: Path, candidate: CandidateFactory) -> None:
    shadow_engine = engine(make_narrowing(candidate("narrow")))
    log_dir = tmp_path / "audit"
    config = AuditConfig(FileSinkConfig(log_dir, max_bytes=4000), instance_id="pdp-shadow")
    ids, files = _decide_through_audit(config, shadow_engine)
    assert len(files) > 1
    # The real `pdp` command: the log verifies, and the shadow report gates on it.
    verified = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "audit", "verify", "--require-sealed", str(log_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    command = [sys.executable, "-m", "pdp.cli", "replay", "--shadow", "--no-progress"]
    gated = subprocess.run(
        [*command, "--json", "--fail-on", "narrowed", str(log_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert gated.returncode == 1, gated.stderr
    report = json.loads(gated.stdout)
    assert report["candidate"]["versions"] == [
        {"version": shadow_engine.version, "records": len(TEMPLATES)}
    ]
    assert report["totals"]["records"] == len(TEMPLATES)
    assert (report["totals"]["narrowed"], report["totals"]["widened"]) == (2, 0)
    assert report["totals"]["no_shadow"] == 0
    assert report["skipped"]["refusals"] == 1
    narrowed_ids = {e["decision_id"] for e in report["examples"]["narrowed"]}
    payments = {"finance pays", "finance pays with a card token"}
    assert narrowed_ids == {i for i, t in zip(ids, TEMPLATES, strict=True) if t.name in payments}
    widened = subprocess.run(
        [*command, "--fail-on", "widened", str(log_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert widened.returncode == 0, widened.stderr
    assert "shadow policy versions: " + shadow_engine.version in widened.stdout


@pytest.mark.skipif(not Path(NATS_SERVER).is_file(), reason="nats-server not installed")
def test_shadow_from_a_nats_stream(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    candidate: CandidateFactory,
    nats_url: str,  # noqa: F811 (the fixture)
) -> None:
    shadow_engine = engine(make_widening(candidate("widen")))
    log_dir = tmp_path / "audit"
    config = AuditConfig(
        FileSinkConfig(log_dir, key_file=tmp_path / "state" / "audit-signing.key"),
        instance_id="pdp-shadow",
        nats=NatsShipperConfig(servers=(nats_url,), stream=STREAM, poll_interval_s=0.05),
    )
    ids, _ = _decide_through_audit(config, shadow_engine)
    source = f"{nats_url}/{STREAM}"
    _, from_stream = run_json(capsys, source)
    _, from_files = run_json(capsys, str(log_dir))
    assert from_stream["totals"]["widened"] == 1
    assert from_stream["totals"]["records"] == len(TEMPLATES)
    for key in ("totals", "skipped", "candidate", "by_agent", "by_tool", "transitions"):
        assert from_stream[key] == from_files[key], key
    (example,) = from_stream["examples"]["widened"]
    assert example["decision_id"] == ids[3]  # support reads git
    assert example["at"].startswith(f"{source}#")
