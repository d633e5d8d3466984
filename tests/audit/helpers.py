"""Shared builders for audit tests (real objects, no mocks)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pdp.audit import (
    AuditPipeline,
    DeliveryMode,
    FileSink,
    FileSinkConfig,
    PipelineConfig,
    Redactor,
    build_decision_record,
    new_decision_id,
)
from pdp.model import Caller, Decision, Effect, Reason, Request

INSTANCE = "pdp-test"
CALLER = Caller("spiffe://example.org/gateway/mcp", "3a:7f:01", "example.org")
ALLOW = Decision(Effect.ALLOW, (Reason("allow-read", "reads are allowed"),), "sha256:abc")
REDACTOR = Redactor()


def make_request(arguments: dict[str, Any] | None = None, **fields: Any) -> Request:
    values: dict[str, Any] = {
        "agent": "spiffe://example.org/agent/researcher",
        "server": "files",
        "tool": "read_file",
        "arguments": {"path": "/srv/data/report.txt"} if arguments is None else arguments,
        "time": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "session": "sess-1",
        "gateway": "spiffe://example.org/gateway/mcp",
    }
    values.update(fields)
    return Request(**values)


def make_record(
    arguments: dict[str, Any] | None = None, decision: Decision = ALLOW
) -> dict[str, Any]:
    return build_decision_record(
        new_decision_id(), make_request(arguments), decision, CALLER, 42, INSTANCE, REDACTOR
    )


def open_pipeline(
    log_dir: Path,
    mode: DeliveryMode = DeliveryMode.SYNC,
    *,
    sink: dict[str, Any] | None = None,
    **pipeline: Any,
) -> AuditPipeline:
    file_config = FileSinkConfig(log_dir, **(sink or {}))
    return AuditPipeline(FileSink(file_config, INSTANCE), PipelineConfig(mode=mode, **pipeline))


def log_lines(log_dir: Path) -> list[dict[str, Any]]:
    import json

    from pdp.audit.chain import list_log_files

    out: list[dict[str, Any]] = []
    for path in list_log_files(log_dir):
        for raw in path.read_bytes().splitlines():
            out.append(json.loads(raw))
    return out


def record_ids(log_dir: Path) -> list[str]:
    return [
        line["decision_id"]
        for line in log_lines(log_dir)
        if line["kind"] in ("decision", "refusal")
    ]
