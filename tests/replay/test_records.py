"""Units: reading audit lines, source specs, classification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pdp.model import Decision, Effect, Reason
from pdp.replay import sources as sources_module
from pdp.replay.nats_source import NatsSource
from pdp.replay.records import LineKind, RecordedDecision, Skipped, Unreadable, read_record
from pdp.replay.report import Change, classify
from pdp.replay.sources import FileSource, SourceError, open_sources
from tests.replay.helpers import CALLER, Synthesized


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def test_a_decision_record_is_read_as_logged(synthesized: Synthesized) -> None:
    record = synthesized.decisions[0]
    chained = {**record, "seq": 2, "prev_hash": "0" * 64, "hash": "1" * 64, "future": 1}
    item = read_record("f:2", line(chained))
    assert isinstance(item, RecordedDecision)
    assert item.at == "f:2"
    assert item.decision_id == record["decision_id"]
    assert item.time.isoformat() == "2024-05-01T09:00:00+00:00"
    assert item.request == record["request"]
    assert item.decision == Decision(
        Effect.ALLOW,
        (Reason("support.read_tickets", "support agents may read and search CRM tickets"),),
        record["policy_version"],
    )
    assert item.agent == "spiffe://acme.test/agent/support-bot"
    assert item.tool == "crm/get_ticket"
    assert item.arguments_redacted is False and item.shadow is None


def test_the_caller_becomes_the_gateway_when_the_request_lacks_it(
    synthesized: Synthesized,
) -> None:
    record = json.loads(line(synthesized.decisions[0]))
    del record["request"]["gateway"]
    item = read_record("f:1", line(record))
    assert isinstance(item, RecordedDecision)
    assert item.request["gateway"] == CALLER.spiffe_id
    # Without a request time, the record's time is the decision's "now".
    del record["request"]["time"]
    record["time"] = "2024-06-01T00:00:00.000Z"
    item = read_record("f:1", line(record))
    assert isinstance(item, RecordedDecision)
    assert item.time.isoformat() == "2024-06-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"kind": "refusal"}, LineKind.REFUSAL),
        ({"kind": "segment"}, LineKind.CHAIN),
        ({"kind": "checkpoint"}, LineKind.CHAIN),
        ({"reasons": [{"policy": "caller_not_bound", "message": "x"}]}, LineKind.SERVICE),
        ({"reasons": [{"policy": "internal_error", "message": "x"}]}, LineKind.SERVICE),
    ],
)
def test_lines_that_are_not_replayed(
    synthesized: Synthesized, change: dict[str, Any], kind: LineKind
) -> None:
    assert read_record("f:1", line({**synthesized.decisions[0], **change})) == Skipped("f:1", kind)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b'"text"', "not a JSON object"),
        (b'{"kind":"decision"}', "not a pdp.audit/v1 record"),
        (b'{"v":"pdp.audit/v2","kind":"decision"}', "not a pdp.audit/v1 record"),
        (b'{"v":"pdp.audit/v1","kind":"other"}', "unknown record kind 'other'"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_unreadable_lines(raw: bytes, error: str) -> None:
    item = read_record("f:9", raw)
    assert isinstance(item, Unreadable)
    assert item.at == "f:9"
    assert item.error.startswith(error)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("decision_id", "", "decision_id is missing"),
        ("decision", "maybe", "decision is not 'allow' or 'deny'"),
        ("reasons", "x", "reasons is not a list"),
        ("reasons", [{"message": "m"}], "reasons holds an entry that is not {policy, message}"),
        ("policy_version", None, "policy_version is missing"),
        ("errors", [1], "errors is not a list of strings"),
        ("request", None, "request is missing"),
        ("arguments_redacted", "yes", "arguments_redacted is not a boolean"),
        ("shadow", {"decision": "deny"}, "shadow.policy_version is missing"),
    ],
)
def test_broken_decision_records(
    synthesized: Synthesized, field: str, value: object, error: str
) -> None:
    item = read_record("f:1", line({**synthesized.decisions[0], field: value}))
    assert item == Unreadable("f:1", f"decision record: {error}")


def test_a_record_without_any_time(synthesized: Synthesized) -> None:
    record = json.loads(line(synthesized.decisions[0]))
    del record["request"]["time"], record["time"]
    item = read_record("f:1", line(record))
    assert isinstance(item, Unreadable) and "no usable time" in item.error


def test_classify() -> None:
    allow = Decision(Effect.ALLOW, (Reason("p", "m"),), "v1")
    deny = Decision(Effect.DENY, (Reason("default_deny", "m"),), "v2")
    assert classify(allow, deny) is Change.NARROWED
    assert classify(deny, allow) is Change.WIDENED
    assert classify(allow, Decision(Effect.ALLOW, (Reason("p", "edited"),), "v2")) is (
        Change.UNCHANGED
    )
    both = Decision(Effect.ALLOW, (Reason("q", ""), Reason("p", "")), "v2")
    assert classify(allow, both) is Change.REASONS_CHANGED


def test_nats_specs() -> None:
    source = NatsSource("nats://127.0.0.1:4222/PDP_AUDIT?subject=pdp.audit.a")
    assert (source.server, source.stream, source.subject) == (
        "nats://127.0.0.1:4222",
        "PDP_AUDIT",
        "pdp.audit.a",
    )
    assert NatsSource("nats://nats.internal/S").server == "nats://nats.internal:4222"
    secret = NatsSource("nats://bob:s3cret@127.0.0.1:4222/S")
    assert secret.server == "nats://bob:s3cret@127.0.0.1:4222"
    assert "s3cret" not in secret.label and secret.label == "nats://bob:***@127.0.0.1:4222/S"
    for bad in (
        "nats://127.0.0.1:4222",
        "nats://127.0.0.1:4222/a.b",
        "nats://127.0.0.1:x/S",
        "nats:///S",
        "nats://h/S?subject=a&subject=b",
    ):
        with pytest.raises(SourceError):
            NatsSource(bad)
    with pytest.raises(SourceError, match="no SOURCE"):
        open_sources([])


def test_oversized_and_blank_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "MAX_LINE_BYTES", 64)
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n\n' + b"x" * 200 + b"\n" + b'{"b":2}\r\n' + b"y" * 100)
    lines = list(FileSource(str(path)).lines())
    assert lines == [
        (f"{path}:1", b'{"a":1}'),
        (f"{path}:3", None),
        (f"{path}:4", b'{"b":2}'),
        (f"{path}:5", None),
    ]


def test_a_record_whose_body_was_not_kept_replays_as_invalid(synthesized: Synthesized) -> None:
    # The service refused the request for breaking a limit and kept bounded facts only:
    # the request as logged may parse now (it lacks the oversized field), so replay must
    # meet the refusal again instead of deciding a request that was never sent.
    from pdp.engine import Engine, load_policies
    from pdp.replay.redecide import redecide
    from tests.service.conftest import POLICIES

    record = synthesized.decisions[0]
    facts = {
        "bytes": 3_188_954,
        "sha256": "a" * 64,
        "field": "arguments",
        "rule": "too_large",
        "excerpt": "{k0, k1",
        "detail_kept": True,
    }
    request = {k: v for k, v in record["request"].items() if k != "arguments"}
    item = read_record("f:3", line({**record, "request": request, "rejected": facts}))
    assert isinstance(item, RecordedDecision)
    (decision,) = redecide(Engine(load_policies(POLICIES)), [item])
    assert [r.policy for r in decision.reasons] == ["invalid_request"]
