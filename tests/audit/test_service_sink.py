"""The DecisionSink adapter with the service's own event types, on a real pipeline."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pdp.audit import Audit, AuditConfig, FileSinkConfig, PipelineConfig, new_decision_id
from pdp.audit.service_sink import AuditDecisionSink
from pdp.model import REASON_INVALID_REQUEST, RequestError, deny, parse_request
from pdp.service.sink import DecisionEvent, RefusalCode, RefusalEvent
from tests.audit.helpers import ALLOW, CALLER, INSTANCE, log_lines, make_request

METHOD = "/pdp.v1.DecisionService/Check"


def open_audit(log_dir: Path, **pipeline: object) -> Audit:
    return Audit(
        AuditConfig(
            FileSinkConfig(log_dir), instance_id=INSTANCE, pipeline=PipelineConfig(**pipeline)
        )  # type: ignore[arg-type]
    )


def event(**fields: object) -> DecisionEvent:
    request = make_request({"path": "/a", "api_key": "planted-sink-key"})
    values: dict[str, object] = {
        "decision_id": new_decision_id(),
        "method": METHOD,
        "caller": CALLER,
        "data": {},
        "request": request,
        "decision": ALLOW,
        "latency_us": 321,
    }
    values.update(fields)
    return DecisionEvent(**values)  # type: ignore[arg-type]


def test_decisions_are_durable_before_the_flags_return(tmp_path: Path) -> None:
    audit = open_audit(tmp_path)
    sink = AuditDecisionSink(audit)
    events = [event() for _ in range(5)]
    assert list(sink.record_decisions(events, timeout=2.0)) == [True] * 5
    records = [line for line in log_lines(tmp_path) if line["kind"] == "decision"]
    assert [r["decision_id"] for r in records] == [e.decision_id for e in events]
    assert records[0]["method"] == METHOD
    assert records[0]["latency_us"] == 321
    assert records[0]["request"]["arguments"]["api_key"] == "[REDACTED]"
    assert audit.close()


def test_unparsable_request_is_recorded_as_received_and_replays_to_the_same_error(
    tmp_path: Path,
) -> None:
    audit = open_audit(tmp_path)
    data = {
        "agent": "spiffe://example.org/agent/a",
        "server": "files",
        "tool": "bad tool name",
        "arguments": {"password": "planted-raw-pw"},
        "token": "planted-raw-token",
    }
    denied = deny("sha256:abc", REASON_INVALID_REQUEST, "tool: must start with a letter")
    bad = event(request=None, data=data, decision=denied)
    assert list(AuditDecisionSink(audit).record_decisions([bad], timeout=None)) == [True]
    assert audit.close()
    (record,) = [line for line in log_lines(tmp_path) if line["kind"] == "decision"]
    assert record["request"]["tool"] == "bad tool name"
    assert record["request"]["arguments"] == {"password": "[REDACTED]"}
    assert record["request"]["token"] == "[REDACTED]"
    assert record["arguments_redacted"] is True
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("audit-*.jsonl"))
    assert b"planted-raw" not in raw
    with pytest.raises(RequestError):
        parse_request(record["request"], now=datetime.now(UTC))


def test_failing_log_fails_closed_unless_fail_open(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    closed = AuditDecisionSink(open_audit(blocked, sync_timeout_s=1.0))
    assert list(closed.record_decisions([event(), event()], timeout=1.0)) == [False, False]
    closed.audit.close(1)
    opened = AuditDecisionSink(open_audit(blocked, sync_timeout_s=1.0, fail_open=True))
    assert list(opened.record_decisions([event()], timeout=1.0)) == [True]
    assert opened.audit.pipeline.stats().failed == 1
    opened.audit.close(1)


def test_refusals_are_recorded(tmp_path: Path) -> None:
    audit = open_audit(tmp_path)
    sink = AuditDecisionSink(audit)
    refusal = RefusalEvent(
        new_decision_id(),
        RefusalCode.UNAUTHENTICATED,
        "no client certificate",
        METHOD,
        "ipv4:127.0.0.1:5555",
        None,
    )
    sink.record_refusal(refusal)
    assert audit.close()
    (record,) = [line for line in log_lines(tmp_path) if line["kind"] == "refusal"]
    assert record["decision_id"] == refusal.refusal_id
    assert record["refusal"] == {"code": "unauthenticated", "message": "no client certificate"}
    assert record["caller"] is None
    assert record["peer"] == "ipv4:127.0.0.1:5555"
    assert record["method"] == METHOD
