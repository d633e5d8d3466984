"""The replay pipeline: sources -> classified lines -> re-decisions -> a tally.

Each function streams: lines are read lazily, decided in batches of
:data:`pdp.replay.redecide.BATCH`, and only counters and bounded examples are kept.
:func:`compare_shadow` decides nothing: it compares the decisions recorded live.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pdp.engine import Engine
from pdp.replay.progress import Progress
from pdp.replay.records import ReadLine, RecordedDecision
from pdp.replay.redecide import Decider, Failed, Outcome, drive, engine_decider
from pdp.replay.report import DEFAULT_EXAMPLES, ReplayTally
from pdp.replay.shadow import ShadowTally
from pdp.replay.sources import ReadCounts, Source, read_sources
from pdp.replay.verify import DEFAULT_MAX_LISTED, PolicyVersions, VerifyTally, verify_batch


def _lines(
    sources: Sequence[Source], counts: ReadCounts, progress: Progress | None
) -> Iterator[ReadLine]:
    for item in read_sources(sources, counts):
        if progress is not None:
            progress.tick()
        yield item


def replay(
    sources: Sequence[Source],
    decide: Decider,
    *,
    examples: int = DEFAULT_EXAMPLES,
    progress: Progress | None = None,
) -> ReplayTally:
    """Decides every recorded decision again with ``decide`` and compares."""
    tally = ReplayTally(examples)
    counts = ReadCounts()

    def on_result(record: RecordedDecision, outcome: Outcome) -> None:
        if isinstance(outcome, Failed):
            tally.add_failure(record, outcome.error)
        else:
            tally.add(record, outcome)

    try:
        drive(_lines(sources, counts, progress), decide, on_result, tally.add_line)
    finally:
        if progress is not None:
            progress.close()
    tally.lines.duplicates = counts.duplicates
    return tally


def replay_with_engine(
    sources: Sequence[Source],
    engine: Engine,
    *,
    examples: int = DEFAULT_EXAMPLES,
    progress: Progress | None = None,
) -> ReplayTally:
    return replay(sources, engine_decider(engine), examples=examples, progress=progress)


def verify_records(
    sources: Sequence[Source],
    versions: PolicyVersions,
    *,
    examples: int = DEFAULT_EXAMPLES,
    max_listed: int = DEFAULT_MAX_LISTED,
    progress: Progress | None = None,
) -> VerifyTally:
    """Decides every record with the policy version it names and compares."""
    tally = VerifyTally(versions, examples=examples, max_listed=max_listed)
    counts = ReadCounts()
    try:
        drive(
            _lines(sources, counts, progress),
            lambda records: verify_batch(versions, records),
            tally.add,
            tally.add_line,
        )
    finally:
        if progress is not None:
            progress.close()
    tally.lines.duplicates = counts.duplicates
    return tally


def compare_shadow(
    sources: Sequence[Source],
    *,
    examples: int = DEFAULT_EXAMPLES,
    progress: Progress | None = None,
) -> ShadowTally:
    """Compares each record's recorded decision with the shadow decision recorded beside
    it (``pdp serve --shadow-policies``); nothing is decided again."""
    tally = ShadowTally(examples)
    counts = ReadCounts()
    try:
        for item in _lines(sources, counts, progress):
            if isinstance(item, RecordedDecision):
                tally.add_record(item)
            else:
                tally.add_line(item)
    finally:
        if progress is not None:
            progress.close()
    tally.lines.duplicates = counts.duplicates
    return tally
