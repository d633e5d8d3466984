"""Replay: decide recorded decisions again and report what changes.

Public API::

    sources = open_sources(["audit-logs/", "nats://127.0.0.1:4222/PDP_AUDIT"])
    tally = replay_with_engine(sources, Engine(load_policies("candidate/")))
    report = tally.to_json({"mode": "replay"})       # deterministic, sorted
    tally.changes(FailOn.WIDENED)                      # what `--fail-on widened` counts

    tally = verify_records(open_sources(["audit-logs/"]), PolicyVersions(["policies/"], archive))
    archive_policies(compiled, ".pdp-state/policy-versions")   # on every policy load

The command line is :mod:`pdp.replay.cli` (``add_replay_parser``, ``run_replay``).
"""

from pdp.replay.archive import (
    DEFAULT_ARCHIVE,
    ArchiveError,
    archive_policies,
    archived_directory,
)
from pdp.replay.records import RecordedDecision, Unreadable, read_record
from pdp.replay.redecide import Failed, redecide
from pdp.replay.report import Change, FailOn, ReplayTally, classify
from pdp.replay.run import replay, replay_with_engine, verify_records
from pdp.replay.sources import Source, SourceError, log_files, open_sources
from pdp.replay.verify import PolicyVersions, VerifyTally

__all__ = [
    "DEFAULT_ARCHIVE",
    "ArchiveError",
    "Change",
    "FailOn",
    "Failed",
    "PolicyVersions",
    "RecordedDecision",
    "ReplayTally",
    "Source",
    "SourceError",
    "Unreadable",
    "VerifyTally",
    "archive_policies",
    "archived_directory",
    "classify",
    "log_files",
    "open_sources",
    "read_record",
    "redecide",
    "replay",
    "replay_with_engine",
    "verify_records",
]
