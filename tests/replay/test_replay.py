"""`pdp replay --policies CANDIDATE`: counts, breakdowns, examples, exit codes, determinism."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pdp.engine import load_policies
from pdp.replay.cli import main
from pdp.replay.sources import FileSource, log_files
from tests.replay.conftest import CandidateFactory
from tests.replay.helpers import (
    CODER,
    FINANCE,
    POLICIES,
    REPS,
    SUPPORT,
    TEMPLATES,
    Synthesized,
    make_floor,
    make_narrowing,
    make_widening,
    run_cli,
)

BASE_VERSION = load_policies(POLICIES).version
DECISIONS = len(TEMPLATES) * REPS


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def replay_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = replay(capsys, "--json", *args)
    assert code in (0, 1), err
    report: dict[str, Any] = json.loads(out)
    return code, report


def locate(log_dir: Path, decision_id: str) -> str:
    """Where a record is in the log, as the report names it (``path:line``)."""
    for path in log_files(log_dir):
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if json.loads(raw).get("decision_id") == decision_id:
                return f"{path}:{number}"
    raise AssertionError(decision_id)


def row(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    found = [r for r in rows if r["key"] == key]
    assert len(found) == 1, (key, rows)
    return {k: v for k, v in found[0].items() if k != "key"}


def counts(
    records: int,
    unchanged: int,
    narrowed: int = 0,
    widened: int = 0,
    reasons: int = 0,
    red: int = 0,
) -> dict[str, int]:
    return {
        "records": records,
        "unchanged": unchanged,
        "narrowed": narrowed,
        "widened": widened,
        "reasons_changed": reasons,
        "redacted": red,
    }


def test_unchanged_policies_change_nothing(
    capsys: pytest.CaptureFixture[str], audit_log: Path
) -> None:
    code, report = replay_json(capsys, "--policies", str(POLICIES), str(audit_log))
    assert code == 0
    assert report["totals"] == {
        "records": DECISIONS,
        "unchanged": DECISIONS,
        "narrowed": 0,
        "widened": 0,
        "reasons_changed": 0,
        "arguments_redacted": 2 * REPS,  # the card token and the masked branch
        "redacted_changed": 0,
        "candidate_errors": 0,
        "invalid_arguments_added": 0,
        "invalid_arguments_removed": 0,
        "failed": 0,
    }
    assert report["skipped"] == {
        "refusals": REPS,
        "service_denials": 1,
        "chain_lines": report["skipped"]["chain_lines"],
        "duplicates": 0,
    }
    assert report["skipped"]["chain_lines"] > 2 * len(log_files(audit_log)) - 1
    assert report["unreadable"] == {"lines": 0, "examples": []}
    assert report["recorded_versions"] == [{"version": BASE_VERSION, "records": DECISIONS}]
    assert report["candidate"] == {"policies": str(POLICIES), "version": BASE_VERSION}
    assert report["transitions"] == []
    assert report["examples"] == {"narrowed": [], "widened": [], "reasons_changed": []}


def test_narrowing(
    capsys: pytest.CaptureFixture[str],
    audit_log: Path,
    candidate: CandidateFactory,
    synthesized: Synthesized,
) -> None:
    policies = make_narrowing(candidate("narrow"))
    code, report = replay_json(capsys, "--policies", str(policies), str(audit_log))
    assert code == 0  # no --fail-on
    totals = report["totals"]
    assert (totals["narrowed"], totals["widened"], totals["reasons_changed"]) == (2 * REPS, 0, 0)
    assert totals["unchanged"] == DECISIONS - 2 * REPS
    assert totals["redacted_changed"] == REPS  # the card-token payments

    assert row(report["by_agent"], FINANCE) == counts(4 * REPS, 2 * REPS, 2 * REPS, red=REPS)
    assert row(report["by_agent"], SUPPORT) == counts(5 * REPS, 5 * REPS)
    assert report["by_agent"][0]["key"] == FINANCE  # changed rows first
    assert row(report["by_tool"], "payments/create_payment") == counts(
        3 * REPS, REPS, 2 * REPS, red=REPS
    )
    assert row(report["by_recorded_policy"], "finance.small_payments") == counts(
        2 * REPS, 0, 2 * REPS, red=REPS
    )
    assert row(report["by_candidate_policy"], "default_deny") == counts(
        4 * REPS, 2 * REPS, 2 * REPS, red=REPS
    )
    assert all(r["key"] != "finance.small_payments" for r in report["by_candidate_policy"])
    assert report["transitions"] == [
        {
            "change": "narrowed",
            "recorded": "finance.small_payments",
            "candidate": "default_deny",
            "records": 2 * REPS,
        }
    ]

    pays = synthesized.by_template["finance pays"]
    token = synthesized.by_template["finance pays with a card token"]
    new_version = load_policies(policies).version
    examples = report["examples"]["narrowed"]
    assert [e["decision_id"] for e in examples] == [pays[0], token[0], pays[1]]
    assert examples[0] == {
        "decision_id": pays[0],
        "at": locate(audit_log, pays[0]),
        "agent": FINANCE,
        "tool": "payments/create_payment",
        "time": "2024-05-01T09:06:00.000Z",
        "arguments_redacted": False,
        "recorded": {
            "decision": "allow",
            "reasons": [
                {
                    "policy": "finance.small_payments",
                    "message": "finance agents may create payments below 5,000.00 in EUR or USD",
                }
            ],
            "policy_version": BASE_VERSION,
        },
        "candidate": {
            "decision": "deny",
            "reasons": [{"policy": "default_deny", "message": "no policy permits this call"}],
            "policy_version": new_version,
        },
    }
    assert examples[1]["arguments_redacted"] is True
    assert report["examples"]["widened"] == report["examples"]["reasons_changed"] == []


def test_widening_uses_the_recorded_time(
    capsys: pytest.CaptureFixture[str],
    audit_log: Path,
    candidate: CandidateFactory,
    synthesized: Synthesized,
) -> None:
    policies = make_widening(candidate("widen"))
    code, report = replay_json(capsys, "--policies", str(policies), str(audit_log))
    assert code == 0
    totals = report["totals"]
    assert (totals["narrowed"], totals["widened"], totals["reasons_changed"]) == (0, REPS, 0)
    assert row(report["by_tool"], "git/read_file") == counts(2 * REPS, REPS, widened=REPS)
    assert row(report["by_agent"], SUPPORT) == counts(5 * REPS, 4 * REPS, widened=REPS)
    assert row(report["by_candidate_policy"], "support.read_git_business_hours") == counts(
        REPS, 0, widened=REPS
    )
    assert report["transitions"] == [
        {
            "change": "widened",
            "recorded": "default_deny",
            "candidate": "support.read_git_business_hours",
            "records": REPS,
        }
    ]
    examples = report["examples"]["widened"]
    assert [e["decision_id"] for e in examples] == synthesized.by_template["support reads git"]
    assert [e["time"] for e in examples] == [
        "2024-05-01T09:03:00.000Z",
        "2024-05-01T09:16:00.000Z",
        "2024-05-01T09:29:00.000Z",
    ]
    assert examples[0]["candidate"]["reasons"] == [
        {
            "policy": "support.read_git_business_hours",
            "message": "support may read repositories during business hours",
        }
    ]


def test_new_floor_rule(
    capsys: pytest.CaptureFixture[str],
    audit_log: Path,
    candidate: CandidateFactory,
    synthesized: Synthesized,
) -> None:
    policies = make_floor(candidate("floor"))
    code, report = replay_json(capsys, "--policies", str(policies), str(audit_log))
    assert code == 0
    totals = report["totals"]
    assert (totals["narrowed"], totals["widened"], totals["reasons_changed"]) == (REPS, 0, REPS)
    assert totals["redacted_changed"] == REPS  # the pushes have a masked branch
    assert row(report["by_tool"], "git/push") == counts(REPS, 0, narrowed=REPS, red=REPS)
    assert row(report["by_tool"], "crm/delete_ticket") == counts(REPS, 0, reasons=REPS)
    assert row(report["by_agent"], CODER) == counts(3 * REPS, 2 * REPS, narrowed=REPS, red=REPS)
    assert row(report["by_candidate_policy"], "floor.freeze_push_delete") == counts(
        2 * REPS, 0, narrowed=REPS, reasons=REPS, red=REPS
    )
    assert report["transitions"] == [
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
    ]
    deletes = synthesized.by_template["support deletes"]
    reasons = report["examples"]["reasons_changed"]
    assert [e["decision_id"] for e in reasons] == deletes
    assert reasons[0]["recorded"]["decision"] == reasons[0]["candidate"]["decision"] == "deny"
    assert [r["policy"] for r in reasons[0]["candidate"]["reasons"]] == [
        "floor.freeze_push_delete",
        "support.never_delete",
    ]
    narrowed = report["examples"]["narrowed"]
    assert [e["decision_id"] for e in narrowed] == synthesized.by_template["coder pushes a feature"]
    assert all(e["arguments_redacted"] for e in narrowed)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("unchanged", {"widened": 0, "narrowed": 0, "any-change": 0}),
        ("narrowing", {"widened": 0, "narrowed": 1, "any-change": 1}),
        ("widening", {"widened": 1, "narrowed": 0, "any-change": 1}),
        ("floor", {"widened": 0, "narrowed": 1, "any-change": 1}),
    ],
)
def test_fail_on_exit_codes(
    capsys: pytest.CaptureFixture[str],
    shared_log: Path,
    candidate: CandidateFactory,
    scenario: str,
    expected: dict[str, int],
) -> None:
    makers = {"narrowing": make_narrowing, "widening": make_widening, "floor": make_floor}
    policies = POLICIES if scenario == "unchanged" else makers[scenario](candidate(scenario))
    for mode, status in expected.items():
        code, _, err = replay(
            capsys, "--policies", str(policies), "--fail-on", mode, str(shared_log)
        )
        assert code == status, (scenario, mode, err)
    code, _, _ = replay(capsys, "--policies", str(policies), str(shared_log))
    assert code == 0


def test_ignore_redacted(
    capsys: pytest.CaptureFixture[str], shared_log: Path, candidate: CandidateFactory
) -> None:
    # The floor scenario narrows only records whose arguments were redacted.
    policies = str(make_floor(candidate("floor")))
    args = ["--policies", policies, "--fail-on", "narrowed", str(shared_log)]
    assert replay(capsys, *args)[0] == 1
    assert replay(capsys, "--ignore-redacted", *args)[0] == 0
    anything = ["--policies", policies, "--fail-on", "any-change", "--ignore-redacted"]
    assert replay(capsys, *anything, str(shared_log))[0] == 1  # the deletions still count


def test_report_is_deterministic(
    capsys: pytest.CaptureFixture[str], shared_log: Path, candidate: CandidateFactory
) -> None:
    policies = str(make_floor(make_widening(make_narrowing(candidate("all")))))
    first = replay(capsys, "--policies", policies, str(shared_log))
    second = replay(capsys, "--policies", policies, str(shared_log))
    assert first == second
    first_json = replay(capsys, "--json", "--policies", policies, str(shared_log))
    second_json = replay(capsys, "--json", "--policies", policies, str(shared_log))
    assert first_json == second_json
    # Sources given file by file, in reverse: the same counts, breakdowns and examples.
    files = [str(p) for p in reversed(log_files(shared_log))]
    _, reversed_report = replay_json(capsys, "--policies", policies, *files)
    report = json.loads(first_json[1])
    for key in ("totals", "by_agent", "by_tool", "transitions", "examples"):
        assert reversed_report[key] == report[key], key
    # As a CI job runs it: a child process, same bytes.
    child = run_cli("--no-progress", "--policies", policies, str(shared_log))
    assert child.returncode == 0, child.stderr
    assert child.stdout == first[1]
    assert child.stderr == ""


def test_text_report(
    capsys: pytest.CaptureFixture[str], shared_log: Path, candidate: CandidateFactory
) -> None:
    policies = str(make_narrowing(candidate("narrow")))
    code, out, err = replay(capsys, "--policies", policies, "--examples", "1", str(shared_log))
    assert code == 0 and err == ""
    lines = out.splitlines()
    totals = {line[:38].strip(): line[38:].strip() for line in lines[3:14]}
    assert totals["narrowed (allow -> deny)"] == str(2 * REPS)
    assert totals["of them changed"] == str(REPS)
    assert lines[4].index("39") == lines[6].index(str(2 * REPS)) - 1  # numbers right-aligned
    header = next(line for line in lines if line.startswith("  AGENT"))
    finance = next(line for line in lines if line.startswith(f"  {FINANCE}"))
    # Columns line up: each number ends under the end of its header.
    assert len(finance) == len(header)
    header_ends = [m.end() for m in re.finditer(r"\S+", header)]
    finance_ends = [m.end() for m in re.finditer(r"\S+", finance)]
    assert header_ends[1:] == finance_ends[1:]
    assert finance.split()[1:] == ["12", "6", "6", "0", "0", "3"]
    assert "Examples: narrowed (allow -> deny)" in lines
    assert sum(line.startswith("    recorded:") for line in lines) == 1  # --examples 1
    assert "    recorded:  allow  finance.small_payments: finance agents may create" in out
    assert "    candidate: deny   default_deny: no policy permits this call" in out


def test_examples_option(
    capsys: pytest.CaptureFixture[str], shared_log: Path, candidate: CandidateFactory
) -> None:
    policies = str(make_narrowing(candidate("narrow")))
    for n, expected in ((0, 0), (1, 1), (5, 5), (50, 2 * REPS)):
        _, report = replay_json(
            capsys, "--policies", policies, "--examples", str(n), str(shared_log)
        )
        assert len(report["examples"]["narrowed"]) == expected


def test_rotated_set_is_read_in_chain_order(shared_log: Path) -> None:
    seqs = [json.loads(raw)["seq"] for _, raw in FileSource(str(shared_log)).lines() if raw]
    assert seqs == list(range(1, len(seqs) + 1))


def test_rotated_set_with_compressed_and_retried_files(
    capsys: pytest.CaptureFixture[str], audit_log: Path, tmp_path: Path
) -> None:
    files = log_files(audit_log)
    # logrotate-style compression of the oldest file, and a name retried after a clash
    # (audit-<seq>.1.jsonl) keep their place in the set.
    with files[0].open("rb") as raw, gzip.open(f"{files[0]}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    files[0].unlink()
    retried = files[2].with_name(files[2].name.replace(".jsonl", ".1.jsonl"))
    files[2].rename(retried)
    (audit_log / "notes.txt").write_text("not a log file\n")
    expected = [Path(f"{files[0]}.gz"), files[1], retried, *files[3:]]
    assert log_files(audit_log) == expected
    seqs = [json.loads(raw)["seq"] for _, raw in FileSource(str(audit_log)).lines() if raw]
    assert seqs == list(range(1, len(seqs) + 1))
    code, report = replay_json(capsys, "--policies", str(POLICIES), str(audit_log))
    assert code == 0
    assert report["totals"]["records"] == DECISIONS
    assert report["unreadable"]["lines"] == 0


def test_torn_and_garbage_lines_are_counted(
    capsys: pytest.CaptureFixture[str], audit_log: Path
) -> None:
    files = log_files(audit_log)
    middle = files[1]
    lines = middle.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"\x00\xffgarbage that is not JSON\n")
    lines.insert(5, b'{"v":"pdp.audit/v1","kind":"decision","decision_id":"broken"}\n')
    lines.insert(6, b"[1, 2, 3]\n")
    middle.write_bytes(b"".join(lines))
    with files[-1].open("ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"v":"pdp.audit/v1","kind":"decision","decision_id":"0190')
    code, report = replay_json(capsys, "--policies", str(POLICIES), str(audit_log))
    assert code == 0
    assert report["totals"]["records"] == DECISIONS
    unreadable = report["unreadable"]
    assert unreadable["lines"] == 4
    assert [e["at"] for e in unreadable["examples"]] == [
        f"{middle}:4",
        f"{middle}:6",
        f"{middle}:7",
    ]
    assert unreadable["examples"][0]["error"].startswith("not JSON")
    assert (
        unreadable["examples"][1]["error"] == "decision record: decision is not 'allow' or 'deny'"
    )
    assert unreadable["examples"][2]["error"] == "not a JSON object"
    code, report = replay_json(
        capsys, "--policies", str(POLICIES), "--examples", "10", str(audit_log)
    )
    last = report["unreadable"]["examples"][-1]
    assert last["at"].startswith(f"{files[-1]}:") and last["error"].startswith("not JSON")


def test_duplicate_records_are_dropped(
    capsys: pytest.CaptureFixture[str], shared_log: Path, tmp_path: Path
) -> None:
    # The same record twice (e.g. stored twice in JetStream after a long outage).
    files = [str(p) for p in log_files(shared_log)]
    code, report = replay_json(capsys, "--policies", str(POLICIES), *files, files[0])
    assert code == 0
    assert report["totals"]["records"] == DECISIONS
    first_file_records = sum(
        json.loads(raw)["kind"] == "decision" for raw in Path(files[0]).read_bytes().splitlines()
    )
    assert report["skipped"]["duplicates"] == first_file_records


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/audit"], "/nonexistent/audit: no such file or directory"),
        (["--policies", "/nonexistent/policies", "LOG"], "policies in /nonexistent/policies"),
        (["nats://127.0.0.1:1"], "name the stream in the path"),
        (["http://example.com/log"], "unsupported URL scheme"),
        (["--verify", "--fail-on", "widened", "LOG"], "--fail-on does not apply to --verify"),
        (["--policies", "a", "--policies", "b", "LOG"], "give one candidate --policies DIR"),
        (["EMPTY"], "no audit log files"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str],
    shared_log: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "empty").mkdir()
    args = [
        str(shared_log) if a == "LOG" else str(tmp_path / "empty") if a == "EMPTY" else a
        for a in args
    ]
    code, out, err = replay(capsys, *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.startswith("pdp replay: ") or "policies in" in err


def test_progress_bar_only_on_a_tty(shared_log: Path) -> None:
    import io

    from pdp.engine import Engine
    from pdp.replay.progress import Progress
    from pdp.replay.run import replay_with_engine
    from pdp.replay.sources import open_sources

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    engine = Engine(load_policies(POLICIES))
    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        sources = open_sources([str(shared_log)])
        progress = Progress(sources, stream=stream, interval=0.0, every=1)
        tally = replay_with_engine(sources, engine, progress=progress)
        assert tally.records == DECISIONS
        assert ("replay [" in stream.getvalue()) is drawn
        assert stream.getvalue().endswith("\r") is drawn


def test_a_tightened_input_schema(
    capsys: pytest.CaptureFixture[str], audit_log: Path, candidate: CandidateFactory
) -> None:
    # get_ticket now takes only ticket ids of the form X-…: the recorded reads of T-…
    # become invalid_arguments, counted apart from other changes.
    policies = candidate("tight")
    inventory = json.loads((policies / "entities.json").read_text())
    schema = inventory["servers"]["crm"]["tools"]["get_ticket"]["input_schema"]
    schema["properties"]["ticket_id"]["pattern"] = "^X-[0-9]+$"
    (policies / "entities.json").write_text(json.dumps(inventory))
    code, report = replay_json(capsys, "--policies", str(policies), str(audit_log))
    assert code == 0
    totals = report["totals"]
    # "support reads" allowed before; "support without intent" was denied by the floor.
    assert (totals["narrowed"], totals["widened"], totals["reasons_changed"]) == (REPS, 0, REPS)
    assert totals["invalid_arguments_added"] == 2 * REPS
    assert totals["invalid_arguments_removed"] == 0
    assert row(report["by_candidate_policy"], "invalid_arguments") == counts(
        2 * REPS, 0, narrowed=REPS, reasons=REPS
    )
    example = report["examples"]["narrowed"][0]
    assert example["candidate"]["reasons"] == [
        {
            "policy": "invalid_arguments",
            "message": 'arguments.ticket_id: must match the pattern "^X-[0-9]+$" (rule: pattern)',
        }
    ]
    code, text, _ = replay(capsys, "--policies", str(policies), str(audit_log))
    assert re.search(r"invalid_arguments added\s+" + str(2 * REPS), text)
    # Back to the recorded schema: the loosening is counted the other way round.
    code, report = replay_json(capsys, "--policies", str(POLICIES), str(audit_log))
    assert report["totals"]["invalid_arguments_removed"] == 0  # nothing was refused then
