"""Policy reloads in the audit log: the ``policy_reload`` record, verify and replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pdp.audit import Audit, AuditConfig, FileSinkConfig, open_audit, verify_files
from pdp.audit.keys import load_public_key
from pdp.audit.record import KIND_POLICY_RELOAD, build_policy_reload_record
from pdp.replay.records import LineKind, Skipped, read_record


def _log(directory: Path) -> list[tuple[str, dict[str, object]]]:
    """(raw line, decoded record) for every line of the log, in chain order."""
    return [
        (line, json.loads(line))
        for path in sorted(directory.glob("audit-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def _audit(tmp_path: Path) -> Audit:
    return open_audit(AuditConfig(file=FileSinkConfig(tmp_path / "audit"), instance_id="t"))


def test_reload_record_is_chained_verified_and_skipped_by_replay(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    record = build_policy_reload_record(
        directory="/etc/pdp/policies",
        role="active",
        ok=False,
        version="v-old",
        candidate_version="",
        detail="invalid policies: /etc/pdp/policies/x.cedar:3: unexpected token",
        duration_ms=12.3456,
        instance_id=audit.instance_id,
        redactor=audit.redactor,
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert audit.pipeline.submit(record).wait(5)
    assert audit.close()

    lines = [(raw, data) for raw, data in _log(tmp_path / "audit") if data["kind"] != "segment"]
    raw, written = next((r, d) for r, d in lines if d["kind"] == KIND_POLICY_RELOAD)
    assert {k: v for k, v in written.items() if k not in ("seq", "prev_hash", "hash")} == {
        "v": "pdp.audit/v1",
        "kind": "policy_reload",
        "time": "2026-01-02T03:04:05.000Z",
        "instance_id": "t",
        "role": "active",
        "directory": "/etc/pdp/policies",
        "ok": False,
        "version": "v-old",
        "candidate_version": "",
        "detail": "invalid policies: /etc/pdp/policies/x.cedar:3: unexpected token",
        "duration_ms": 12.346,
    }
    report = verify_files(
        [tmp_path / "audit"], load_public_key(tmp_path / "audit" / "audit-signing.pub")
    )
    assert report.ok, report
    assert report.records == 1
    assert read_record("x:2", raw) == Skipped("x:2", LineKind.EVENT)


def test_reload_detail_is_redacted(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    try:
        secret = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
        record = build_policy_reload_record(
            directory="p",
            role="shadow",
            ok=False,
            version="v",
            candidate_version="w",
            detail=f"1 policy test(s) failed: token {secret}",
            duration_ms=1,
            instance_id="t",
            redactor=audit.redactor,
        )
    finally:
        audit.close()
    assert secret not in json.dumps(record)
    assert record["redacted"] == ["detail"]
