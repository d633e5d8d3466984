"""Deciding recorded requests again, in batches, with the recorded time as "now".

The recorded request goes through :func:`pdp.model.parse_request` exactly as a live one
does (one parser everywhere), with ``now`` set to the recorded request time, so nothing
here reads the clock: the same log and policies always give the same decisions. A
request that no longer parses is an ``invalid_request`` deny, as the service answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pdp.engine import Engine
from pdp.model import Decision, Request, RequestError, parse_request
from pdp.replay.records import ReadLine, RecordedDecision

BATCH = 256
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failed:
    """A record that could not be decided again; ``error`` says why."""

    error: str


Outcome = Decision | Failed
# Decides a batch of records; one outcome per record, in order.
Decider = Callable[[Sequence[RecordedDecision]], Sequence[Outcome]]


def redecide(engine: Engine, records: Sequence[RecordedDecision]) -> list[Decision]:
    """The decisions ``engine`` makes for ``records``, in order."""
    answers: list[Decision | None] = [None] * len(records)
    pending: list[int] = []
    requests: list[Request] = []
    for index, record in enumerate(records):
        try:
            # A recorded request carries what pdp verified then (its proof); the tokens
            # themselves were never recorded, so they cannot be verified again.
            requests.append(
                parse_request(record.request, now=record.time, limits=engine.limits, recorded=True)
            )
        except RequestError as exc:
            answers[index] = engine.invalid(exc)
            continue
        pending.append(index)
    for index, decision in zip(pending, engine.decide_batch(requests), strict=True):
        answers[index] = decision
    return [answer for answer in answers if answer is not None]


def engine_decider(engine: Engine) -> Decider:
    return lambda records: redecide(engine, records)


def drive(
    lines: Iterable[ReadLine],
    decide: Callable[[Sequence[RecordedDecision]], Sequence[T]],
    on_result: Callable[[RecordedDecision, T], None],
    on_line: Callable[[ReadLine], None],
    batch: int = BATCH,
) -> None:
    """Feeds decision records to ``decide`` in batches and everything else to ``on_line``."""
    pending: list[RecordedDecision] = []

    def flush() -> None:
        outcomes = decide(pending)
        for record, outcome in zip(pending, outcomes, strict=True):
            on_result(record, outcome)
        pending.clear()

    for item in lines:
        if isinstance(item, RecordedDecision):
            pending.append(item)
            if len(pending) >= batch:
                flush()
        else:
            on_line(item)
    if pending:
        flush()
