"""`pdp audit export`: OCSF events checked against the mapping in README.md, JSON Lines
passthrough, and following a live, rotating log."""

from __future__ import annotations

import io
import json
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import FileSink, FileSinkConfig
from pdp.audit.chain import encode_body
from pdp.replay.export import follow_lines, run_export
from tests.replay.helpers import INSTANCE, REPO, Synthesized

README = REPO / "README.md"
MISSING = object()


def mapping_rows() -> list[tuple[str, str, str, str]]:
    text = README.read_text()
    block = text.split("<!-- ocsf-mapping:begin -->", 1)[1].split("<!-- ocsf-mapping:end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[1], cells[2], cells[3]))
    return rows


def lookup(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def check_against_mapping(event: dict[str, Any], kind: str) -> None:
    for field, requirement, records, described in mapping_rows():
        if records not in ("all", kind):
            continue
        value = lookup(event, field)
        assert value is not MISSING, f"{kind} event lacks {field} ({requirement})"
        assert value is not None and value != "", f"{field} is empty"
        literal = re.fullmatch(r"`([^`]+)`", described)
        if literal:
            assert value == json.loads(literal.group(1)), f"{field}: {value!r}"
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert isinstance(event["time"], int)
    assert event["severity_id"] in (1, 2)
    assert event["action_id"] in (1, 2) and event["disposition_id"] in (1, 2)
    assert (event["action_id"] == 1) == (event["disposition_id"] == 1) == (event["status_id"] == 1)


def log_lines(log_dir: Path) -> list[bytes]:
    return [
        line
        for path in sorted(log_dir.glob("audit-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def test_every_ocsf_event_follows_the_documented_mapping(shared_log: Path) -> None:
    rows = mapping_rows()
    required = {field for field, requirement, _, _ in rows if requirement == "required"}
    # The fields OCSF requires of every base event and of API Activity (6003).
    assert {
        "class_uid", "category_uid", "activity_id", "type_uid", "severity_id", "time",
        "metadata.version", "metadata.product.name", "actor", "api.operation", "src_endpoint",
    } <= required  # fmt: skip

    out, err = io.BytesIO(), io.StringIO()
    assert run_export([str(shared_log)], "ocsf", out, err=err) == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    by_hash = {}
    for raw in log_lines(shared_log):
        record = json.loads(raw)
        by_hash[record["hash"]] = record
    records = [r for r in by_hash.values() if r.get("kind") in ("decision", "refusal")]
    assert len(events) == len(records) > 10
    kinds = set()
    for event in events:
        pdp = event["unmapped"]["pdp"]
        kinds.add(pdp["kind"])
        check_against_mapping(event, pdp["kind"])
        # Traced back to the verified log: the chain hash names the line it came from.
        source = by_hash[pdp["hash"]]
        assert source["decision_id"] == pdp["decision_id"] == event["metadata"]["uid"]
        assert source["seq"] == pdp["seq"] and source["prev_hash"] == pdp["prev_hash"]
        assert event["action_id"] == (1 if source.get("decision") == "allow" else 2)
    assert kinds == {"decision", "refusal"}
    assert "checkpoint lines" in err.getvalue() and "segment lines" in err.getvalue()


def test_jsonl_passes_every_line_through_unchanged(shared_log: Path) -> None:
    out = io.BytesIO()
    assert run_export([str(shared_log)], "jsonl", out, err=io.StringIO()) == 0
    assert out.getvalue().splitlines() == log_lines(shared_log)


def test_forged_and_foreign_lines_are_left_out_not_exported(tmp_path: Path) -> None:
    log = tmp_path / "forged.jsonl"
    log.write_text(
        "not json\n"
        + json.dumps({"v": "pdp.audit/v1", "kind": "decision", "time": "2024-05-01T09:00:00Z"})
        + "\n"
        + json.dumps({"v": "other/v9", "kind": "decision", "decision_id": "x"})
        + "\n"
        + json.dumps(
            {"v": "pdp.audit/v1", "kind": "decision", "decision_id": "d1", "time": "yesterday"}
        )
        + "\n"
    )
    out, err = io.BytesIO(), io.StringIO()
    assert run_export([str(log)], "ocsf", out, err=err) == 0
    assert out.getvalue() == b""
    assert "exported 0 line(s)" in err.getvalue()


def test_export_cli_writes_ocsf(shared_log: Path, synthesized: Synthesized) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "audit", "export", "--format", "ocsf", str(shared_log)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["class_uid"] for e in events} == {6003}
    missing = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "audit", "export", str(shared_log / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_follow_reads_new_lines_and_rotations_of_a_live_log(
    tmp_path: Path, synthesized: Synthesized
) -> None:
    log_dir = tmp_path / "live"
    sink = FileSink(FileSinkConfig(log_dir, max_bytes=4000, checkpoint_every=1000), INSTANCE)
    records = [r for r in synthesized.records if r.get("kind") == "decision"][:30]
    stop = threading.Event()
    seen: queue.Queue[dict[str, Any]] = queue.Queue()

    def follow() -> None:
        for _, raw in follow_lines(str(log_dir), stop=stop.is_set, poll_s=0.02):
            assert raw is not None
            seen.put(json.loads(raw))

    sink.append([encode_body(records[0])], durable=True)
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        got: list[str] = []
        for record in records:
            if record is not records[0]:
                sink.append([encode_body(record)], durable=True)
            while True:  # every record shows up, in order, whatever rotated in between
                line = seen.get(timeout=30)
                if line.get("kind") == "decision":
                    got.append(line["decision_id"])
                    break
        assert got == [r["decision_id"] for r in records]
        assert len(list(log_dir.glob("audit-*.jsonl"))) > 1, "the log should have rotated"
    finally:
        stop.set()
        sink.close()
        thread.join(10)
    assert not thread.is_alive()


def test_follow_holds_back_a_partly_written_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"a":1}\n{"b":')
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            with log.open("ab") as handle:  # the writer completes the line later
                handle.write(b"2}\n")
            return False
        return True

    lines = [raw for _, raw in follow_lines(str(log), stop=stop, poll_s=0.01)]
    assert lines == [b'{"a":1}', b'{"b":2}']


@pytest.mark.parametrize("spec", ["nats://127.0.0.1:4222/S", "a.jsonl b.jsonl"])
def test_follow_takes_one_file_or_directory(spec: str) -> None:
    err = io.StringIO()
    assert run_export(spec.split(), "ocsf", io.BytesIO(), follow=True, err=err) == 2
    assert "--follow takes one log file or directory" in err.getvalue()
