"""``pdp replay --verify``: decide each record again with the policy version it names.

This checks the log and the engine together: with the same policies, the same request
and the same time, the engine must give the same decision and determining policies.
A record that differs was altered, or was decided by an engine that behaves
differently (a pdp upgrade that changed semantics). Versions are found among policy
directories given on the command line and in the policy archive
(:mod:`pdp.replay.archive`); records whose version is at neither place are counted per
version, not guessed at. A record's ``shadow`` decision is verified the same way.

Records with redacted arguments are decided with the masked values, so a difference
there is reported apart: it may come from the masking, not from tampering.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdp.engine import Engine, PolicyLoadError, load_policies
from pdp.model import Decision
from pdp.replay.archive import archived_directory
from pdp.replay.records import ReadLine, RecordedDecision, Skipped, Unreadable
from pdp.replay.redecide import redecide
from pdp.replay.report import (
    DEFAULT_EXAMPLES,
    MAX_KEYS,
    OTHER_KEY,
    Change,
    LineCounts,
    SortedSample,
    classify,
    decision_json,
)

DEFAULT_MAX_LISTED = 1000
ARCHIVE_CACHE = 16  # archived engines kept loaded at once


class PolicyVersions:
    """Engines by policy version: the given directories first, then the archive."""

    def __init__(self, directories: Sequence[str | Path], archive: Path | None) -> None:
        self.archive = archive
        self._given: dict[str, tuple[Engine, str]] = {}
        for directory in directories:
            compiled = load_policies(directory)  # PolicyLoadError: the caller reports it
            self._given.setdefault(compiled.version, (Engine(compiled), str(directory)))
        self._archived: OrderedDict[str, Engine] = OrderedDict()
        self._found: dict[str, str] = {}  # every archived version used, even if evicted
        self._absent: set[str] = set()
        # Why an archived copy could not be used, by version.
        self.problems: dict[str, str] = {}

    @property
    def given_versions(self) -> dict[str, str]:
        return {version: origin for version, (_, origin) in sorted(self._given.items())}

    def origin(self, version: str) -> str | None:
        if version in self._given:
            return self._given[version][1]
        return self._found.get(version)

    def engine(self, version: str) -> Engine | None:
        if version in self._given:
            return self._given[version][0]
        if version in self._archived:
            self._archived.move_to_end(version)
            return self._archived[version]
        if version in self._absent or self.archive is None:
            return None
        engine = self._load_archived(version)
        if engine is None:
            self._absent.add(version)
            return None
        self._archived[version] = engine
        self._found[version] = str(self.archive / version)  # as given, not resolved
        if len(self._archived) > ARCHIVE_CACHE:
            self._archived.popitem(last=False)
        return engine

    def _load_archived(self, version: str) -> Engine | None:
        assert self.archive is not None
        directory = archived_directory(self.archive, version)
        if directory is None:
            return None
        try:
            compiled = load_policies(directory)
        except PolicyLoadError as exc:
            self.problems[version] = f"archived copy does not load: {str(exc).splitlines()[0]}"
            return None
        if compiled.version != version:
            self.problems[version] = (
                f"archived copy now loads as version {compiled.version}"
                " (the built-in floor or pdp changed since it was archived)"
            )
            return None
        return Engine(compiled)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The re-decisions of one record: ``None`` when that version is not at hand."""

    decision: Decision | None
    shadow: Decision | None


def verify_batch(versions: PolicyVersions, records: Sequence[RecordedDecision]) -> list[Verdict]:
    """Decides each record (and its shadow) with the version it names."""
    main = _by_version(versions, [(r, r.decision.policy_version) for r in records])
    shadows = _by_version(
        versions,
        [(r, r.shadow.policy_version) for r in records if r.shadow is not None],
    )
    return [Verdict(main.get(id(r)), shadows.get(id(r))) for r in records]


def _by_version(
    versions: PolicyVersions, pairs: list[tuple[RecordedDecision, str]]
) -> dict[int, Decision]:
    groups: dict[str, list[RecordedDecision]] = {}
    for record, version in pairs:
        groups.setdefault(version, []).append(record)
    out: dict[int, Decision] = {}
    for version, group in groups.items():
        engine = versions.engine(version)
        if engine is not None:
            for record, decision in zip(group, redecide(engine, group), strict=True):
                out[id(record)] = decision
    return out


class VerifyTally:
    def __init__(
        self,
        versions: PolicyVersions,
        *,
        examples: int = DEFAULT_EXAMPLES,
        max_listed: int = DEFAULT_MAX_LISTED,
    ) -> None:
        self.versions = versions
        self.records = 0
        self.matched = 0
        self.mismatched = 0
        self.mismatched_redacted = 0
        self.missing = 0
        self.shadow_checked = 0
        self.shadow_mismatched = 0
        self.shadow_mismatched_redacted = 0
        self.shadow_missing = 0
        self.lines = LineCounts(examples)
        # version -> [records, matched, mismatched, missing]
        self.by_version: dict[str, list[int]] = {}
        self.mismatches = SortedSample(max_listed)

    def add_line(self, item: ReadLine) -> None:
        if isinstance(item, Skipped | Unreadable):
            self.lines.add(item)

    def _row(self, version: str) -> list[int]:
        if version not in self.by_version and len(self.by_version) >= MAX_KEYS:
            version = OTHER_KEY
        return self.by_version.setdefault(version, [0, 0, 0, 0])

    def add(self, record: RecordedDecision, verdict: Verdict) -> None:
        self.records += 1
        row = self._row(record.decision.policy_version)
        row[0] += 1
        if verdict.decision is None:
            self.missing += 1
            row[3] += 1
        elif classify(record.decision, verdict.decision) is Change.UNCHANGED:
            self.matched += 1
            row[1] += 1
        else:
            row[2] += 1
            self._mismatch(record, record.decision, verdict.decision, "decision")
        if record.shadow is not None:
            if verdict.shadow is None:
                self.shadow_missing += 1
            else:
                self.shadow_checked += 1
                if classify(record.shadow, verdict.shadow) is not Change.UNCHANGED:
                    self._mismatch(record, record.shadow, verdict.shadow, "shadow")

    def _mismatch(
        self, record: RecordedDecision, recorded: Decision, redecided: Decision, which: str
    ) -> None:
        if which == "decision":
            if record.arguments_redacted:
                self.mismatched_redacted += 1
            else:
                self.mismatched += 1
        elif record.arguments_redacted:
            self.shadow_mismatched_redacted += 1
        else:
            self.shadow_mismatched += 1

        def entry() -> dict[str, Any]:
            return {
                "decision_id": record.decision_id,
                "at": record.at,
                "which": which,
                "agent": record.agent,
                "tool": record.tool,
                "time": record.request.get("time"),
                "arguments_redacted": record.arguments_redacted,
                "change": classify(recorded, redecided).value,
                "recorded": decision_json(recorded),
                "redecided": decision_json(redecided),
            }

        self.mismatches.offer((record.decision_id, which), entry)

    def failures(self, *, strict: bool = False) -> int:
        """Records that fail verification (``strict``: also unverifiable ones)."""
        failing = self.mismatched + self.shadow_mismatched
        if strict:
            failing += self.mismatched_redacted + self.shadow_mismatched_redacted
            failing += self.missing + self.shadow_missing
        return failing

    def to_json(self, header: Mapping[str, Any]) -> dict[str, Any]:
        listed = self.mismatches.items()
        versions = []
        for version, row in sorted(self.by_version.items()):
            entry: dict[str, Any] = {
                "version": version,
                "records": row[0],
                "matched": row[1],
                "mismatched": row[2],
                "missing": row[3],
                "found_in": self.versions.origin(version),
            }
            if version in self.versions.problems:
                entry["problem"] = self.versions.problems[version]
            versions.append(entry)
        return {
            **header,
            "totals": {
                "records": self.records,
                "verified": self.matched + self.mismatched + self.mismatched_redacted,
                "matched": self.matched,
                "mismatched": self.mismatched,
                "mismatched_redacted": self.mismatched_redacted,
                "version_missing": self.missing,
                "shadow_verified": self.shadow_checked,
                "shadow_mismatched": self.shadow_mismatched,
                "shadow_mismatched_redacted": self.shadow_mismatched_redacted,
                "shadow_version_missing": self.shadow_missing,
            },
            "skipped": self.lines.skipped_json(),
            "unreadable": self.lines.unreadable_json(),
            "versions": versions,
            "mismatches": listed,
            "mismatches_not_listed": max(
                0,
                self.mismatched
                + self.mismatched_redacted
                + self.shadow_mismatched
                + self.shadow_mismatched_redacted
                - len(listed),
            ),
        }
