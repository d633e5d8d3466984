"""`pdp replay --verify` and the policy version archive."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pdp.audit.record import build_decision_record
from pdp.engine import Engine, load_policies
from pdp.model import parse_request
from pdp.replay import ArchiveError, archive_policies, archived_directory
from pdp.replay.cli import main
from pdp.replay.sources import log_files
from tests.replay.conftest import CandidateFactory
from tests.replay.helpers import (
    BASE_TIME,
    CALLER,
    CODER,
    INSTANCE,
    POLICIES,
    REDACTOR,
    REPS,
    TEMPLATES,
    Synthesized,
    decision_id,
    make_widening,
    request_data,
    write_log,
)

DECISIONS = len(TEMPLATES) * REPS
BASE_VERSION = load_policies(POLICIES).version


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["replay", "--verify", "--no-progress", "--json", *args])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    report: dict[str, Any] = json.loads(out)
    return code, report


def test_an_untouched_log_verifies(
    capsys: pytest.CaptureFixture[str], shared_log: Path, tmp_path: Path
) -> None:
    code, report = verify(
        capsys, "--policies", str(POLICIES), "--archive", str(tmp_path / "none"), str(shared_log)
    )
    assert code == 0
    assert report["totals"] == {
        "records": DECISIONS,
        "verified": DECISIONS,
        "matched": DECISIONS,
        "mismatched": 0,
        "mismatched_redacted": 0,
        "version_missing": 0,
        "shadow_verified": 0,
        "shadow_mismatched": 0,
        "shadow_mismatched_redacted": 0,
        "shadow_version_missing": 0,
    }
    assert report["versions"] == [
        {
            "version": BASE_VERSION,
            "records": DECISIONS,
            "matched": DECISIONS,
            "mismatched": 0,
            "missing": 0,
            "found_in": str(POLICIES),
        }
    ]
    assert report["mismatches"] == []
    assert report["policies"] == [{"version": BASE_VERSION, "directory": str(POLICIES)}]


def _alter(log_dir: Path, decision_id: str, old: bytes, new: bytes) -> str:
    """Edits one record in place (as a tamperer would); returns its position."""
    for path in log_files(log_dir):
        lines = path.read_bytes().splitlines(keepends=True)
        for number, line in enumerate(lines, start=1):
            if decision_id.encode() in line:
                assert old in line
                lines[number - 1] = line.replace(old, new)
                path.write_bytes(b"".join(lines))
                return f"{path}:{number}"
    raise AssertionError(decision_id)


def test_an_altered_decision_is_caught(
    capsys: pytest.CaptureFixture[str],
    audit_log: Path,
    synthesized: Synthesized,
    tmp_path: Path,
) -> None:
    denied = synthesized.by_template["support deletes"][1]
    at = _alter(audit_log, denied, b'"decision":"deny"', b'"decision":"allow"')
    reasons = synthesized.by_template["coder reads"][2]
    _alter(audit_log, reasons, b'"policy":"coding.own_repos"', b'"policy":"coding.anything"')
    archive = str(tmp_path / "none")
    code, report = verify(capsys, "-p", str(POLICIES), "--archive", archive, str(audit_log))
    assert code == 1
    assert report["totals"]["mismatched"] == 2
    assert report["totals"]["matched"] == DECISIONS - 2
    assert [m["decision_id"] for m in report["mismatches"]] == sorted([denied, reasons])
    altered = next(m for m in report["mismatches"] if m["decision_id"] == denied)
    assert altered == {
        "decision_id": denied,
        "at": at,
        "which": "decision",
        "agent": "spiffe://acme.test/agent/support-bot",
        "tool": "crm/delete_ticket",
        "time": altered["time"],
        "arguments_redacted": False,
        "change": "narrowed",
        "recorded": {
            "decision": "allow",
            "reasons": [
                {
                    "policy": "support.never_delete",
                    "message": "support agents must never delete tickets",
                }
            ],
            "policy_version": BASE_VERSION,
        },
        "redecided": {
            "decision": "deny",
            "reasons": [
                {
                    "policy": "support.never_delete",
                    "message": "support agents must never delete tickets",
                }
            ],
            "policy_version": BASE_VERSION,
        },
    }
    assert report["versions"][0]["mismatched"] == 2
    # The table names it too.
    code = main(["replay", "--verify", "--no-progress", "-p", str(POLICIES), str(audit_log)])
    out = capsys.readouterr().out
    assert code == 1
    assert denied in out and f"at {at}" in out
    # --max-listed bounds the list, not the count.
    code, report = verify(
        capsys, "-p", str(POLICIES), "--archive", archive, "--max-listed", "1", str(audit_log)
    )
    assert report["totals"]["mismatched"] == 2
    assert len(report["mismatches"]) == 1 and report["mismatches_not_listed"] == 1


def test_versions_not_at_hand_are_reported(
    capsys: pytest.CaptureFixture[str], shared_log: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    args = ["--archive", str(archive), str(shared_log)]
    code, report = verify(capsys, *args)
    assert code == 0
    assert report["totals"]["version_missing"] == DECISIONS
    assert report["totals"]["verified"] == 0
    assert report["versions"][0]["found_in"] is None
    assert report["versions"][0]["missing"] == DECISIONS
    assert verify(capsys, "--strict", *args)[0] == 1
    # Once the version is archived (as the service does on every load), it is found.
    archive_policies(POLICIES, archive)
    code, report = verify(capsys, "--strict", *args)
    assert code == 0
    assert report["totals"]["matched"] == DECISIONS
    assert report["versions"][0]["found_in"] == str(archive / BASE_VERSION)


def test_archive_policies(tmp_path: Path, candidate: CandidateFactory) -> None:
    archive = tmp_path / "archive"
    compiled = load_policies(POLICIES)
    path = archive_policies(compiled, archive)
    assert path == archive / compiled.version
    assert archived_directory(archive, compiled.version) == path
    assert load_policies(path).version == compiled.version
    assert not (path / "floor").exists()  # the built-in floor is not copied
    assert sorted(p.name for p in path.rglob("*.cedar")) == sorted(
        p.name for p in (POLICIES / "examples").glob("*.cedar")
    )
    before = path.stat().st_mtime_ns
    assert archive_policies(POLICIES, archive) == path  # already there: untouched
    assert path.stat().st_mtime_ns == before
    # An extra floor directory is part of the version and is archived with it.
    directory = candidate("with-floor")
    (directory / "floor").mkdir()
    (directory / "floor" / "extra.cedar").write_text(
        '@id("floor.x")\n@reason("x")\nforbid (principal, action == Action::"shell/exec", resource);\n'
    )
    other = archive_policies(directory, archive)
    assert (other / "floor" / "extra.cedar").is_file()
    assert load_policies(other).version == other.name != compiled.version
    assert sorted(p.name for p in archive.iterdir()) == sorted([compiled.version, other.name])
    # Names read from a log are never paths.
    assert archived_directory(archive, "../" + compiled.version) is None
    assert archived_directory(archive, "0" * 16) is None


def test_archive_refuses_a_directory_changed_after_loading(
    tmp_path: Path, candidate: CandidateFactory
) -> None:
    directory = candidate("changing")
    compiled = load_policies(directory)
    make_widening(directory)
    with pytest.raises(ArchiveError, match="changed after version"):
        archive_policies(compiled, tmp_path / "archive")
    assert list((tmp_path / "archive").iterdir()) == []  # nothing half-written is left


def test_archived_copy_that_no_longer_loads_as_its_version(
    capsys: pytest.CaptureFixture[str], shared_log: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    path = archive_policies(POLICIES, archive)
    (path / "examples" / "support.cedar").write_text("// emptied\n")
    code, report = verify(capsys, "--archive", str(archive), str(shared_log))
    assert code == 0
    assert report["totals"]["version_missing"] == DECISIONS
    assert "now loads as version" in report["versions"][0]["problem"]


def test_redacted_and_shadow_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, candidate: CandidateFactory
) -> None:
    engine = Engine(load_policies(POLICIES))
    shadow_dir = make_widening(candidate("shadow"))
    shadow_engine = Engine(load_policies(shadow_dir))
    records = []
    # A push to main without confirmation: denied. Its branch is masked in the log, so
    # the re-decision sees "[REDACTED]", not "main", and allows: inconclusive, not tampering.
    push = {
        "agent": CODER,
        "server": "git",
        "tool": "push",
        "arguments": {"repo": "acme/website", "branch": "main"},
        "intent": {"purpose": "work", "tools": ["git/*"]},
    }
    read_git = next(t for t in TEMPLATES if t.name == "support reads git")
    for index, data in enumerate([push, request_data(read_git, BASE_TIME)]):
        at = BASE_TIME + timedelta(minutes=index)
        data = {**data, "time": at.isoformat().replace("+00:00", "Z")}
        request = parse_request(data, now=at)
        records.append(
            build_decision_record(
                decision_id(index, at),
                request,
                engine.decide(request),
                CALLER,
                10,
                INSTANCE,
                REDACTOR,
                shadow_engine.decide(request),
                time=at,
            )
        )
    assert records[0]["decision"] == "deny" and records[0]["arguments_redacted"] is True
    assert records[1]["shadow"]["decision"] == "allow"
    log = tmp_path / "log"
    write_log(records, log)
    archive = str(tmp_path / "none")
    base = ["--archive", archive, "-p", str(POLICIES), str(log)]
    code, report = verify(capsys, *base)
    assert code == 0
    totals = report["totals"]
    assert (totals["matched"], totals["mismatched"], totals["mismatched_redacted"]) == (1, 0, 1)
    assert totals["shadow_version_missing"] == 2
    assert report["mismatches"][0]["arguments_redacted"] is True
    assert report["mismatches"][0]["change"] == "widened"
    assert verify(capsys, "--strict", *base)[0] == 1

    code, report = verify(capsys, "-p", str(shadow_dir), *base)
    totals = report["totals"]
    assert (totals["shadow_verified"], totals["shadow_mismatched"]) == (2, 0)
    assert totals["shadow_mismatched_redacted"] == 1  # the masked push again
    assert code == 0
    # A shadow decision altered in the log is caught like any other.
    path = log_files(log)[0]
    path.write_bytes(
        path.read_bytes().replace(b'"shadow":{"decision":"allow"', b'"shadow":{"decision":"deny"')
    )
    code, report = verify(capsys, "-p", str(shadow_dir), *base)
    assert code == 1
    assert report["totals"]["shadow_mismatched"] == 1
    assert [(m["which"], m["arguments_redacted"]) for m in report["mismatches"]] == [
        ("decision", True),
        ("shadow", True),
        ("shadow", False),
    ]
    shutil.rmtree(log)


def test_many_archived_versions(
    capsys: pytest.CaptureFixture[str],
    shared_log: Path,
    tmp_path: Path,
    candidate: CandidateFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pdp.replay.verify as verify_module

    monkeypatch.setattr(verify_module, "ARCHIVE_CACHE", 1)  # evict at every switch
    widened = make_widening(candidate("widened"))
    engine = Engine(load_policies(widened))
    records = []
    for index, template in enumerate(TEMPLATES[:4]):
        at = BASE_TIME + timedelta(days=1, minutes=index)
        request = parse_request(request_data(template, at), now=at)
        records.append(
            build_decision_record(
                decision_id(1000 + index, at),
                request,
                engine.decide(request),
                CALLER,
                10,
                INSTANCE,
                REDACTOR,
                time=at,
            )
        )
    other_log = tmp_path / "other"
    write_log(records, other_log)
    archive = tmp_path / "archive"
    archive_policies(POLICIES, archive)
    archive_policies(widened, archive)
    args = ["--strict", "--archive", str(archive), str(shared_log), str(other_log), str(shared_log)]
    code, report = verify(capsys, *args)
    assert code == 0
    assert report["totals"]["matched"] == DECISIONS + 4
    assert report["skipped"]["duplicates"] == DECISIONS
    assert sorted((v["found_in"], v["records"]) for v in report["versions"]) == sorted(
        [(str(archive / BASE_VERSION), DECISIONS), (str(archive / engine.version), 4)]
    )
