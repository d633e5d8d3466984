"""``pdp replay``: re-decide recorded decisions and report what would change.

Four modes, one report shape:

* ``pdp replay --policies CANDIDATE SOURCE...`` decides every recorded request again
  with the candidate policies (recorded time, caller and intent) and counts what
  narrows, widens or changes reasons. ``--fail-on`` gates a CI job on it.
* ``pdp replay --shadow SOURCE...`` decides nothing: it compares each record's
  decision with the shadow decision recorded beside it (``pdp serve
  --shadow-policies``) and reports and gates like a candidate replay.
* ``pdp replay --verify SOURCE...`` decides every record with the policy version it
  names (from ``--policies DIR``, repeatable, and ``--archive DIR``) and lists every
  record whose recorded decision differs.
* ``pdp replay --target HOST:PORT --rate N SOURCE...`` sends the recorded requests to
  a running pdp over mTLS and reports throughput, latency and mismatches.

Exit status: 0 ok; 1 when ``--fail-on`` matches (replay, --shadow, --target) or a record fails
verification (--verify); 2 for a usage error or a source, policy directory or server
that cannot be read at all. Lines that cannot be read are counted, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pdp.client_options import ClientOptions, add_client_identity_options
from pdp.engine import Engine, PolicyLoadError, load_policies
from pdp.replay.archive import DEFAULT_ARCHIVE
from pdp.replay.progress import Progress
from pdp.replay.render import DEFAULT_MAX_ROWS, render_replay, render_verify
from pdp.replay.report import DEFAULT_EXAMPLES, FailOn, ReplayTally
from pdp.replay.run import compare_shadow, replay, replay_with_engine, verify_records
from pdp.replay.sources import Source, SourceError, open_sources
from pdp.replay.verify import DEFAULT_MAX_LISTED, PolicyVersions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_POLICIES = os.environ.get("PDP_POLICIES", "policies")
DEFAULT_TARGET_RATE = 100.0
DEFAULT_CONCURRENCY = 8


class ReplayUsageError(Exception):
    """Bad options or unreadable input: printed as one line, exit 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _at_least_one(text: str) -> int:
    value = _positive_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_replay_parser(subparsers: Any) -> None:
    """Registers ``pdp replay`` on the ``pdp`` sub-command parsers (sets ``handler``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="re-decide recorded decisions (audit logs or NATS) and report what changes",
        description="Decide recorded requests again: with candidate policies (default), with"
        " the policy version each record names (--verify), or by a running pdp (--target);"
        " or compare recorded decisions with their recorded live shadow decisions (--shadow).",
        epilog="exit status: 0 ok; 1 --fail-on matched or --verify found differences;"
        " 2 usage error or unreadable source/policies/server",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="audit log file, directory of rotated log files, or nats://HOST:PORT/STREAM"
        "[?subject=SUBJECT]",
    )
    p.add_argument(
        "--policies",
        "-p",
        action="append",
        metavar="DIR",
        help="candidate policy directory (default: $PDP_POLICIES or ./policies); with"
        " --verify, a directory holding a recorded version (repeatable)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--shadow",
        action="store_true",
        help="compare each record's decision with the shadow decision recorded beside it"
        " (pdp serve --shadow-policies); nothing is decided again, no --policies",
    )
    mode.add_argument(
        "--verify",
        action="store_true",
        help="decide each record with the policy version it names and list differences",
    )
    mode.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="send the recorded requests to a running pdp over mTLS (load and mismatch test)",
    )
    p.add_argument(
        "--archive",
        metavar="DIR",
        default=str(DEFAULT_ARCHIVE),
        help=f"policy version archive for --verify (default: {DEFAULT_ARCHIVE})",
    )
    p.add_argument(
        "--fail-on",
        choices=[mode.value for mode in FailOn],
        help="exit 1 when records widen, narrow, or change at all",
    )
    p.add_argument(
        "--ignore-redacted",
        action="store_true",
        help="--fail-on does not count records whose arguments were redacted",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="--verify also fails on records it cannot verify (version not at hand,"
        " differences in records with redacted arguments)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--examples",
        type=_positive_int,
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"example records per change class (default: {DEFAULT_EXAMPLES})",
    )
    p.add_argument(
        "--max-listed",
        type=_positive_int,
        default=DEFAULT_MAX_LISTED,
        metavar="N",
        help=f"--verify: mismatching records listed (default: {DEFAULT_MAX_LISTED})",
    )
    p.add_argument(
        "--rows",
        type=_positive_int,
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help=f"rows per table on a terminal (default: {DEFAULT_MAX_ROWS}; --json has all)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (shown only on a TTY)"
    )
    load = p.add_argument_group("--target options (identity as for `pdp call`)")
    load.add_argument(
        "--rate",
        type=_positive_float,
        default=DEFAULT_TARGET_RATE,
        metavar="N",
        help=f"requests per second (default: {DEFAULT_TARGET_RATE:g})",
    )
    load.add_argument(
        "--concurrency",
        type=_at_least_one,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at most (default: {DEFAULT_CONCURRENCY})",
    )
    add_client_identity_options(load)
    load.add_argument("--timeout", type=_positive_float, default=10.0, metavar="SECONDS")
    p.set_defaults(handler=run_replay)


def _print(data: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(text)
    sys.stdout.flush()


def _progress(args: argparse.Namespace, sources: list[Source]) -> Progress | None:
    return None if args.no_progress else Progress(sources)


def _load(directory: str) -> Engine:
    try:
        return Engine(load_policies(directory))
    except PolicyLoadError as exc:
        for diagnostic in exc.diagnostics:
            print(f"{directory.rstrip('/')}/{diagnostic}", file=sys.stderr)
        raise ReplayUsageError(
            f"policies in {directory} are invalid ({len(exc.diagnostics)} problem(s))"
        ) from None


def _fail_status(args: argparse.Namespace, tally: ReplayTally) -> int:
    if args.fail_on is None:
        return EXIT_OK
    failing = tally.changes(FailOn(args.fail_on), ignore_redacted=args.ignore_redacted)
    return EXIT_FAILED if failing else EXIT_OK


def _replay(args: argparse.Namespace, sources: list[Source]) -> int:
    directories = args.policies or [DEFAULT_POLICIES]
    if len(directories) > 1:
        raise ReplayUsageError("give one candidate --policies DIR (several only with --verify)")
    engine = _load(directories[0])
    tally = replay_with_engine(
        sources, engine, examples=args.examples, progress=_progress(args, sources)
    )
    header = {
        "mode": "replay",
        "sources": [source.label for source in sources],
        "candidate": {"policies": directories[0], "version": engine.version},
    }
    report = tally.to_json(header)
    _print(report, args.json, render_replay(report, max_rows=args.rows))
    return _fail_status(args, tally)


def _shadow(args: argparse.Namespace, sources: list[Source]) -> int:
    if args.policies:
        raise ReplayUsageError(
            "--policies does not apply to --shadow (the shadow set decided live; nothing"
            " is decided again)"
        )
    if args.ignore_redacted:
        raise ReplayUsageError(
            "--ignore-redacted does not apply to --shadow (the shadow set decided with the"
            " real arguments)"
        )
    tally = compare_shadow(sources, examples=args.examples, progress=_progress(args, sources))
    header = {
        "mode": "shadow",
        "sources": [source.label for source in sources],
        "candidate": tally.candidate_json(),
    }
    report = tally.to_json(header)
    _print(report, args.json, render_replay(report, max_rows=args.rows))
    return _fail_status(args, tally)


def _verify(args: argparse.Namespace, sources: list[Source]) -> int:
    if args.fail_on is not None:
        raise ReplayUsageError("--fail-on does not apply to --verify (it fails on mismatches)")
    directories = args.policies or []
    try:
        versions = PolicyVersions(directories, Path(args.archive) if args.archive else None)
    except PolicyLoadError as exc:
        raise ReplayUsageError(f"a --policies directory is invalid: {exc}") from None
    tally = verify_records(
        sources,
        versions,
        examples=args.examples,
        max_listed=args.max_listed,
        progress=_progress(args, sources),
    )
    header = {
        "mode": "verify",
        "sources": [source.label for source in sources],
        "policies": [
            {"version": version, "directory": origin}
            for version, origin in versions.given_versions.items()
        ],
        "archive": args.archive,
    }
    report = tally.to_json(header)
    _print(report, args.json, render_verify(report, max_rows=args.rows))
    return EXIT_FAILED if tally.failures(strict=args.strict) else EXIT_OK


def _target(args: argparse.Namespace, sources: list[Source]) -> int:
    from pdp.replay.target import TargetError, TargetOptions, open_sender, performance_json

    if args.policies:
        raise ReplayUsageError("--policies does not apply to --target (the server decides)")
    options = TargetOptions(
        ClientOptions.from_args(args), rate=args.rate, concurrency=args.concurrency
    )
    try:
        sender = open_sender(options)
    except TargetError as exc:
        raise ReplayUsageError(str(exc)) from None
    with sender:
        tally = replay(
            sources, sender.decide, examples=args.examples, progress=_progress(args, sources)
        )
    header = {
        "mode": "target",
        "sources": [source.label for source in sources],
        "candidate": {"target": args.target},
    }
    report = tally.to_json(header)
    report["performance"] = performance_json(sender.stats, options)
    _print(report, args.json, render_replay(report, max_rows=args.rows))
    return _fail_status(args, tally)


def run_replay(args: argparse.Namespace) -> int:
    """The ``pdp replay`` handler; prints its own errors (``pdp replay: ...``)."""
    try:
        sources = open_sources(args.sources)
        if args.shadow:
            return _shadow(args, sources)
        if args.verify:
            return _verify(args, sources)
        if args.target:
            return _target(args, sources)
        return _replay(args, sources)
    except (ReplayUsageError, SourceError) as exc:
        print(f"pdp replay: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pdp.replay.cli``) until pdp/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="pdp")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
