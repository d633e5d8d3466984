"""``pdp posture --policies DIR LOG...``: reads, folds, prints (terminal, JSON, HTML)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from pdp.engine import Engine, PolicyLoadError, load_policies
from pdp.engine.access import access_matrix, agents_of, tools_of
from pdp.posture.render import html_page, text_summary
from pdp.posture.report import Observed, build_posture, observed_from
from pdp.replay.records import LineKind, RecordedDecision, Skipped, Unreadable
from pdp.replay.sources import SourceError, open_sources, read_sources

EXIT_OK, EXIT_USAGE = 0, 2


def add_posture_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "posture",
        help="over-permission report: what the policies allow against what the log shows",
    )
    p.add_argument("--policies", "-p", default="policies", metavar="DIR")
    p.add_argument("sources", nargs="+", metavar="LOG", help="log files, directories, nats://")
    p.add_argument("--json", action="store_true", help="JSON instead of the terminal summary")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    p.set_defaults(handler=run_posture)


def read_observed(specs: list[str]) -> tuple[list[Observed], int, int]:
    """Decisions (including the service's own denies), refused calls, unreadable lines."""
    observed: list[Observed] = []
    refusals = unreadable = 0
    for item in read_sources(open_sources(specs)):
        record: RecordedDecision | None = None
        if isinstance(item, RecordedDecision):
            record = item
        elif isinstance(item, Skipped):
            if item.kind is LineKind.REFUSAL:
                refusals += 1
            record = item.decision  # a service deny (caller_not_bound, ...) has one
        elif isinstance(item, Unreadable):
            unreadable += 1
        if record is not None:
            observed.append(
                observed_from(
                    record.request,
                    record.time,
                    record.decision.allowed,
                    [r.policy for r in record.decision.reasons],
                )
            )
    return observed, refusals, unreadable


def run_posture(args: argparse.Namespace) -> int:
    try:
        engine = Engine(load_policies(args.policies))
    except PolicyLoadError as exc:
        for diagnostic in exc.diagnostics:
            print(f"{args.policies.rstrip('/')}/{diagnostic}", file=sys.stderr)
        print(f"pdp: policies in {args.policies} are invalid", file=sys.stderr)
        return EXIT_USAGE
    try:
        observed, refusals, unreadable = read_observed(args.sources)
    except SourceError as exc:
        print(f"pdp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    now = max((o.time for o in observed), default=datetime.now(UTC))
    access = access_matrix(engine, agents_of(engine), tools_of(engine), now=now)
    posture = build_posture(
        engine.compiled, access, observed, refusals=refusals, unreadable=unreadable
    )
    if args.html:
        try:
            Path(args.html).write_text(html_page(posture), encoding="utf-8")
        except OSError as exc:
            print(f"pdp: cannot write {args.html}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(json.dumps(posture.to_json(), indent=2, ensure_ascii=False))
    else:
        print(text_summary(posture))
        if args.html:
            print(f"\nHTML report: {args.html}")
    return EXIT_OK
