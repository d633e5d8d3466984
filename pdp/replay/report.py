"""Comparing recorded decisions with new ones, and the report that counts the differences.

A re-decision is classified against the recorded decision as

* ``unchanged``: same decision, same determining policies (by ``@id``; messages are
  not compared, an edited ``@reason`` is not a change);
* ``narrowed``: allow became deny;
* ``widened``: deny became allow;
* ``reasons_changed``: same decision, other determining policies (e.g. a call that
  was denied by ``default_deny`` is now denied by a new floor rule).

Changes that come from the tools' input schemas are also counted apart: a record
whose new decision is ``invalid_arguments`` and whose recorded one was not (a
schema tightened: ``invalid_arguments_added``), and the reverse (a schema
loosened: ``invalid_arguments_removed``).

:class:`ReplayTally` keeps only counters and a bounded number of examples, so a log of
any size fits in memory. Everything in :meth:`ReplayTally.to_json` is sorted, and
nothing in it depends on the clock, so equal inputs give byte-identical reports.
Examples are the records with the smallest decision ids (UUIDv7: the earliest), which
does not depend on the order in which sources were given.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pdp.model import REASON_INVALID_ARGUMENTS, Decision, Effect
from pdp.replay.records import LineKind, ReadLine, RecordedDecision, Skipped, Unreadable

DEFAULT_EXAMPLES = 3
# Distinct keys kept per breakdown; the rest are counted under OTHER_KEY.
MAX_KEYS = 10_000
OTHER_KEY = "(other)"
NO_POLICY = "(none)"


class Change(StrEnum):
    UNCHANGED = "unchanged"
    NARROWED = "narrowed"
    WIDENED = "widened"
    REASONS_CHANGED = "reasons_changed"


CHANGES: tuple[Change, ...] = (Change.NARROWED, Change.WIDENED, Change.REASONS_CHANGED)
COLUMNS: tuple[str, ...] = ("records", *(c.value for c in Change), "redacted")
_COLUMN_OF = {change: 1 + index for index, change in enumerate(Change)}


class FailOn(StrEnum):
    WIDENED = "widened"
    NARROWED = "narrowed"
    ANY_CHANGE = "any-change"


def policy_ids(decision: Decision) -> tuple[str, ...]:
    return tuple(sorted({reason.policy for reason in decision.reasons}))


def classify(recorded: Decision, new: Decision) -> Change:
    if recorded.effect is not new.effect:
        return Change.NARROWED if recorded.effect is Effect.ALLOW else Change.WIDENED
    if policy_ids(recorded) != policy_ids(new):
        return Change.REASONS_CHANGED
    return Change.UNCHANGED


def decision_json(decision: Decision, *, version: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "decision": decision.effect.value,
        "reasons": [r.to_json() for r in sorted(decision.reasons, key=lambda r: r.policy)],
    }
    if decision.errors:
        out["errors"] = list(decision.errors)
    if version:
        out["policy_version"] = decision.policy_version
    return out


def example_json(record: RecordedDecision, new: Decision, new_label: str) -> dict[str, Any]:
    return {
        "decision_id": record.decision_id,
        "at": record.at,
        "agent": record.agent,
        "tool": record.tool,
        "time": record.request.get("time"),
        "arguments_redacted": record.arguments_redacted,
        "recorded": decision_json(record.decision),
        new_label: decision_json(new),
    }


class Breakdown:
    """Counts per key (agent, tool or policy): records, one column per class, redacted."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.rows: dict[str, list[int]] = {}

    def add(self, key: str, change: Change, redacted: bool) -> None:
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= self.max_keys:
                key = OTHER_KEY
                row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [0] * len(COLUMNS)
        row[0] += 1
        row[_COLUMN_OF[change]] += 1
        row[-1] += redacted

    def to_json(self) -> list[dict[str, Any]]:
        def order(item: tuple[str, list[int]]) -> tuple[int, int, str]:
            key, row = item
            return (-sum(row[2:-1]), -row[0], key)

        return [
            {"key": key, **dict(zip(COLUMNS, row, strict=True))}
            for key, row in sorted(self.rows.items(), key=order)
        ]


class SortedSample:
    """The ``limit`` smallest items by key (bounded memory, independent of arrival order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: list[tuple[str, str]] = []
        self._items: list[dict[str, Any]] = []

    def offer(self, key: tuple[str, str], make: Callable[[], dict[str, Any]]) -> None:
        if self.limit <= 0:
            return
        if len(self._keys) >= self.limit and key >= self._keys[-1]:
            return
        index = bisect.bisect(self._keys, key)
        self._keys.insert(index, key)
        self._items.insert(index, make())
        del self._keys[self.limit :], self._items[self.limit :]

    def items(self) -> list[dict[str, Any]]:
        return list(self._items)


@dataclass
class LineCounts:
    """Lines that were not re-decided, and the unreadable ones with the first examples."""

    examples_limit: int = DEFAULT_EXAMPLES
    refusals: int = 0
    service: int = 0
    chain: int = 0
    unreadable: int = 0
    duplicates: int = 0
    unreadable_examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, item: Skipped | Unreadable) -> None:
        if isinstance(item, Unreadable):
            self.unreadable += 1
            if len(self.unreadable_examples) < self.examples_limit:
                self.unreadable_examples.append({"at": item.at, "error": item.error})
        elif item.kind is LineKind.REFUSAL:
            self.refusals += 1
        elif item.kind is LineKind.SERVICE:
            self.service += 1
        else:
            self.chain += 1

    def skipped_json(self) -> dict[str, int]:
        return {
            "refusals": self.refusals,
            "service_denials": self.service,
            "chain_lines": self.chain,
            "duplicates": self.duplicates,
        }

    def unreadable_json(self) -> dict[str, Any]:
        return {"lines": self.unreadable, "examples": self.unreadable_examples}


class ReplayTally:
    """Accumulates the comparison of recorded decisions with re-decisions."""

    def __init__(self, examples: int = DEFAULT_EXAMPLES, max_keys: int = MAX_KEYS) -> None:
        self.examples_limit = examples
        self.counts: dict[Change, int] = dict.fromkeys(Change, 0)
        self.redacted: dict[Change, int] = dict.fromkeys(Change, 0)
        self.candidate_errors = 0
        # Records whose change comes with invalid_arguments appearing / disappearing.
        self.arguments_added = 0
        self.arguments_removed = 0
        self.failed = 0
        self.failed_examples: list[dict[str, str]] = []
        self.lines = LineCounts(examples)
        self.recorded_versions: dict[str, int] = {}
        self.max_keys = max_keys
        self.by_agent = Breakdown(max_keys)
        self.by_tool = Breakdown(max_keys)
        self.by_recorded_policy = Breakdown(max_keys)
        self.by_candidate_policy = Breakdown(max_keys)
        self.transitions: dict[tuple[str, str, str], int] = {}
        self.examples = {change: SortedSample(examples) for change in CHANGES}

    @property
    def records(self) -> int:
        return sum(self.counts.values()) + self.failed

    def add_line(self, item: ReadLine) -> None:
        if isinstance(item, Skipped | Unreadable):
            self.lines.add(item)

    def add_failure(self, record: RecordedDecision, error: str) -> None:
        """A record that could not be decided again (e.g. the remote call failed)."""
        self.failed += 1
        if len(self.failed_examples) < self.examples_limit:
            self.failed_examples.append(
                {"decision_id": record.decision_id, "at": record.at, "error": error}
            )

    def add(self, record: RecordedDecision, new: Decision) -> Change:
        change = classify(record.decision, new)
        redacted = record.arguments_redacted
        self.counts[change] += 1
        self.redacted[change] += redacted
        self.candidate_errors += bool(new.errors)
        version = record.decision.policy_version
        if version in self.recorded_versions or len(self.recorded_versions) < self.max_keys:
            self.recorded_versions[version] = self.recorded_versions.get(version, 0) + 1
        self.by_agent.add(record.agent, change, redacted)
        self.by_tool.add(record.tool, change, redacted)
        old_ids, new_ids = policy_ids(record.decision), policy_ids(new)
        for policy in old_ids or (NO_POLICY,):
            self.by_recorded_policy.add(policy, change, redacted)
        for policy in new_ids or (NO_POLICY,):
            self.by_candidate_policy.add(policy, change, redacted)
        if change is not Change.UNCHANGED:
            was_invalid = REASON_INVALID_ARGUMENTS in old_ids
            is_invalid = REASON_INVALID_ARGUMENTS in new_ids
            self.arguments_added += is_invalid and not was_invalid
            self.arguments_removed += was_invalid and not is_invalid
            key = (change.value, "+".join(old_ids) or NO_POLICY, "+".join(new_ids) or NO_POLICY)
            if key in self.transitions or len(self.transitions) < self.max_keys:
                self.transitions[key] = self.transitions.get(key, 0) + 1
            self.examples[change].offer(
                (record.decision_id, record.at),
                lambda: example_json(record, new, "candidate"),
            )
        return change

    def changes(self, fail_on: FailOn, *, ignore_redacted: bool = False) -> int:
        """How many records the ``--fail-on`` mode counts as failures."""
        wanted = {
            FailOn.WIDENED: (Change.WIDENED,),
            FailOn.NARROWED: (Change.NARROWED,),
            FailOn.ANY_CHANGE: CHANGES,
        }[fail_on]
        return sum(
            self.counts[c] - (self.redacted[c] if ignore_redacted else 0) for c in wanted
        ) + (self.failed if fail_on is FailOn.ANY_CHANGE else 0)

    def to_json(self, header: Mapping[str, Any]) -> dict[str, Any]:
        totals: dict[str, Any] = {"records": self.records}
        totals.update({change.value: count for change, count in self.counts.items()})
        totals["arguments_redacted"] = sum(self.redacted.values())
        totals["redacted_changed"] = sum(self.redacted[c] for c in CHANGES)
        totals["candidate_errors"] = self.candidate_errors
        totals["invalid_arguments_added"] = self.arguments_added
        totals["invalid_arguments_removed"] = self.arguments_removed
        totals["failed"] = self.failed
        return {
            **header,
            "totals": totals,
            "skipped": self.lines.skipped_json(),
            "unreadable": self.lines.unreadable_json(),
            "recorded_versions": [
                {"version": version, "records": count}
                for version, count in sorted(self.recorded_versions.items())
            ],
            "by_agent": self.by_agent.to_json(),
            "by_tool": self.by_tool.to_json(),
            "by_recorded_policy": self.by_recorded_policy.to_json(),
            "by_candidate_policy": self.by_candidate_policy.to_json(),
            "transitions": [
                {"change": change, "recorded": old, "candidate": new, "records": count}
                for (change, old, new), count in sorted(
                    self.transitions.items(), key=lambda item: (-item[1], item[0])
                )
            ],
            "examples": {change.value: self.examples[change].items() for change in CHANGES},
            "failed": self.failed_examples,
        }
