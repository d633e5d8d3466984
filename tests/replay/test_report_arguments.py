"""Replay and shadow reports count the changes that come from the tools' input schemas."""

from __future__ import annotations

from datetime import UTC, datetime

from pdp.model import Decision, Effect, Reason
from pdp.replay.records import RecordedDecision
from pdp.replay.report import ReplayTally
from pdp.replay.shadow import ShadowTally

AT = datetime(2026, 11, 23, 10, tzinfo=UTC)
ALLOW = Decision(Effect.ALLOW, (Reason("support.read", "r"),), "v1")
INVALID = Decision(
    Effect.DENY,
    (Reason("invalid_arguments", "arguments.ticket_id: must be of type string (rule: type)"),),
    "v2",
)
DEFAULT = Decision(Effect.DENY, (Reason("default_deny", "no policy permits this call"),), "v1")


def record(n: int, decision: Decision, shadow: Decision | None = None) -> RecordedDecision:
    request = {"agent": "spiffe://acme.test/agent/bot", "server": "crm", "tool": "get_ticket"}
    return RecordedDecision(f"log:{n}", f"id-{n}", AT, request, decision, False, shadow)


def test_replay_counts_tightened_and_loosened_schemas() -> None:
    tally = ReplayTally()
    tally.add(record(1, ALLOW), INVALID)  # narrowed by a tightened schema
    tally.add(record(2, DEFAULT), INVALID)  # reasons changed, the same cause
    tally.add(record(3, INVALID), ALLOW)  # widened: the schema loosened
    tally.add(record(4, ALLOW), DEFAULT)  # narrowed by the policies, not the schema
    tally.add(record(5, INVALID), INVALID)  # unchanged
    totals = tally.to_json({})["totals"]
    assert (totals["narrowed"], totals["widened"], totals["reasons_changed"]) == (2, 1, 1)
    assert totals["invalid_arguments_added"] == 2
    assert totals["invalid_arguments_removed"] == 1


def test_shadow_report_counts_a_shadow_set_with_a_tighter_schema() -> None:
    tally = ShadowTally()
    tally.add_record(record(1, ALLOW, shadow=INVALID))
    tally.add_record(record(2, ALLOW, shadow=ALLOW))
    tally.add_record(record(3, ALLOW))  # no shadow decision: not compared
    report = tally.to_json({})
    assert report["totals"]["invalid_arguments_added"] == 1
    assert report["totals"]["narrowed"] == 1 and report["totals"]["no_shadow"] == 1
    assert report["examples"]["narrowed"][0]["candidate"]["reasons"][0]["policy"] == (
        "invalid_arguments"
    )
