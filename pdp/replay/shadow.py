"""``pdp replay --shadow``: the live shadow decisions of an audit log, compared with the
recorded decisions, without deciding anything again.

``pdp serve --shadow-policies DIR`` decides every request with the shadow set too and
records that decision in the record's ``shadow`` member. Here each record's recorded
``decision`` is compared with its ``shadow`` exactly as a candidate replay compares it
with a re-decision (:func:`pdp.replay.report.classify`), so the report, the breakdowns
and ``--fail-on`` are those of ``pdp replay --policies``. The shadow set decided with
the real arguments, so redaction in the log cannot cause a difference here.

Records without a ``shadow`` member (written before shadow mode was on, or requests
that did not parse, which the service decides with the active set only) are counted
as *no shadow decision*, never as unchanged, with the earliest few as examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdp.model import Decision
from pdp.replay.records import RecordedDecision
from pdp.replay.report import (
    DEFAULT_EXAMPLES,
    MAX_KEYS,
    Change,
    ReplayTally,
    SortedSample,
    decision_json,
)

# The ``candidate`` header's ``kind`` in a shadow report.
LIVE_SHADOW = "live_shadow"


def _no_shadow_json(record: RecordedDecision) -> dict[str, Any]:
    return {
        "decision_id": record.decision_id,
        "at": record.at,
        "agent": record.agent,
        "tool": record.tool,
        "time": record.request.get("time"),
        "recorded": decision_json(record.decision),
    }


class ShadowTally(ReplayTally):
    """A :class:`ReplayTally` of recorded decisions against their recorded shadows.

    Adds the shadow policy versions seen and the records that have no shadow decision.
    """

    def __init__(self, examples: int = DEFAULT_EXAMPLES, max_keys: int = MAX_KEYS) -> None:
        super().__init__(examples, max_keys)
        self.no_shadow = 0
        self.no_shadow_examples = SortedSample(examples)
        self.shadow_versions: dict[str, int] = {}

    def add(self, record: RecordedDecision, new: Decision) -> Change:
        version = new.policy_version
        if version in self.shadow_versions or len(self.shadow_versions) < self.max_keys:
            self.shadow_versions[version] = self.shadow_versions.get(version, 0) + 1
        return super().add(record, new)

    def add_record(self, record: RecordedDecision) -> Change | None:
        """Compares ``record`` with its shadow; ``None`` when it has none."""
        if record.shadow is not None:
            return self.add(record, record.shadow)
        self.no_shadow += 1
        self.no_shadow_examples.offer(
            (record.decision_id, record.at), lambda: _no_shadow_json(record)
        )
        return None

    def candidate_json(self) -> dict[str, Any]:
        """The report header's ``candidate``: live shadow decisions, by shadow version."""
        return {
            "kind": LIVE_SHADOW,
            "versions": [
                {"version": version, "records": count}
                for version, count in sorted(self.shadow_versions.items())
            ],
        }

    def to_json(self, header: Mapping[str, Any]) -> dict[str, Any]:
        report = super().to_json(header)
        report["totals"]["no_shadow"] = self.no_shadow
        report["no_shadow"] = {
            "records": self.no_shadow,
            "examples": self.no_shadow_examples.items(),
        }
        return report
