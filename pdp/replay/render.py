"""Plain-text rendering of replay reports: aligned tables for a terminal or a CI log.

Rendering works from the JSON form of a report, so ``--json`` and the table always say
the same thing. Plain ASCII, no colour, no widths taken from the terminal: the same
report renders to the same bytes everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_MAX_ROWS = 20
_CHANGE_TITLES = {
    "narrowed": "narrowed (allow -> deny)",
    "widened": "widened (deny -> allow)",
    "reasons_changed": "reasons changed (same decision, other determining policies)",
}
_BREAKDOWN_COLUMNS = (
    ("records", "RECORDS"),
    ("unchanged", "UNCHANGED"),
    ("narrowed", "NARROWED"),
    ("widened", "WIDENED"),
    ("reasons_changed", "REASONS"),
    ("redacted", "REDACTED"),
)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric, strict=True)
        ]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def _limited(rows: list[Any], max_rows: int) -> tuple[list[Any], str]:
    if len(rows) <= max_rows:
        return rows, ""
    return rows[:max_rows], f"  ... and {len(rows) - max_rows} more rows (see --json)"


def _breakdown(title: str, label: str, rows: list[dict[str, Any]], max_rows: int) -> list[str]:
    if not rows:
        return []
    shown, more = _limited(rows, max_rows)
    body = table(
        [label, *(header for _, header in _BREAKDOWN_COLUMNS)],
        [[row["key"], *(row[key] for key, _ in _BREAKDOWN_COLUMNS)] for row in shown],
    )
    return ["", title, body, *([more] if more else [])]


def _reasons(decision: dict[str, Any]) -> str:
    reasons = decision.get("reasons", [])
    text = "; ".join(
        f"{r['policy']}: {r['message']}" if r.get("message") else r["policy"] for r in reasons
    )
    errors = decision.get("errors")
    if errors:
        text += f" [errors: {'; '.join(errors)}]"
    return text or "(no reasons)"


def _example(example: dict[str, Any], new_label: str, key: str | None = None) -> list[str]:
    """An example record; the new decision is ``example[key or new_label]``, shown as
    ``new_label`` (no new decision when neither is there)."""
    flag = "  (arguments redacted)" if example.get("arguments_redacted") else ""
    recorded, new = example["recorded"], example.get(key or new_label)
    width = max(len("recorded"), len(new_label)) + 1
    lines = [
        f"  {example['decision_id']}  {example.get('time') or '?'}  {example['agent']}"
        f"  {example['tool']}{flag}",
        f"    {'recorded:'.ljust(width)} {recorded['decision'].ljust(5)}  {_reasons(recorded)}",
    ]
    if new is not None:
        lines.append(
            f"    {(new_label + ':').ljust(width)} {new['decision'].ljust(5)}  {_reasons(new)}"
        )
    return [*lines, f"    at {example['at']}"]


def _skipped_line(report: dict[str, Any]) -> str:
    skipped = report["skipped"]
    return (
        f"refusals {skipped['refusals']}, service denials {skipped['service_denials']},"
        f" chain lines {skipped['chain_lines']}, duplicates {skipped['duplicates']}"
    )


def _unreadable(report: dict[str, Any]) -> list[str]:
    unreadable = report["unreadable"]
    if not unreadable["lines"]:
        return []
    lines = ["", f"Unreadable lines: {unreadable['lines']}"]
    lines += [f"  {item['at']}: {item['error']}" for item in unreadable["examples"]]
    return lines


def _versions(versions: list[dict[str, Any]], max_rows: int) -> str:
    return ", ".join(f"{v['version']} ({v['records']})" for v in versions[:max_rows]) + (
        " ..." if len(versions) > max_rows else ""
    )


def render_replay(report: dict[str, Any], *, max_rows: int = DEFAULT_MAX_ROWS) -> str:
    """The report of a candidate replay, of ``--target`` or of ``--shadow``."""
    totals = report["totals"]
    candidate = report.get("candidate", {})
    shadow = report.get("mode") == "shadow"
    new_label = "shadow" if shadow else "candidate"
    sources = " ".join(report.get("sources", []))
    lines = [f"pdp replay --shadow: {sources}" if shadow else f"pdp replay: {sources}"]
    if shadow:
        lines.append(
            "compares: each recorded decision with the live shadow decision recorded beside"
            " it (nothing decided again)"
        )
        lines.append(
            "shadow policy versions: " + (_versions(candidate["versions"], max_rows) or "none")
        )
    elif "policies" in candidate:
        lines.append(
            f"candidate: policies {candidate['policies']} (version {candidate.get('version')})"
        )
    elif "target" in candidate:
        lines.append(f"candidate: the pdp serving at {candidate['target']}")
    rows: list[list[object]] = [
        ["records compared" if shadow else "records replayed", totals["records"]],
        ["unchanged", totals["unchanged"]],
        ["narrowed (allow -> deny)", totals["narrowed"]],
        ["widened (deny -> allow)", totals["widened"]],
        ["reasons changed", totals["reasons_changed"]],
    ]
    if shadow:
        rows.append(["no shadow decision (not compared)", totals["no_shadow"]])
    rows += [
        ["invalid_arguments added", totals["invalid_arguments_added"]],
        ["invalid_arguments removed", totals["invalid_arguments_removed"]],
        ["arguments redacted", totals["arguments_redacted"]],
        ["  of them changed", totals["redacted_changed"]],
    ]
    if shadow:
        rows.append(["shadow decisions with evaluation errors", totals["candidate_errors"]])
    else:
        rows += [
            ["re-decisions with evaluation errors", totals["candidate_errors"]],
            ["failed to re-decide", totals["failed"]],
        ]
    rows.append(["unreadable lines", report["unreadable"]["lines"]])
    lines += [
        "",
        table(["TOTALS", ""], rows),
        f"  not {'compared' if shadow else 'replayed'}: {_skipped_line(report)}",
    ]
    if shadow and not totals["records"]:
        lines.append(
            "  note: no record carries a shadow decision (was pdp serve run with"
            " --shadow-policies?)"
        )
    if totals["redacted_changed"] and not shadow:
        lines += [
            "  note: records with redacted arguments were re-decided with the masked values;",
            "  their changes may come from the masking, not from the policies",
        ]
    versions = report.get("recorded_versions", [])
    if versions:
        lines.append(f"  recorded policy versions: {_versions(versions, max_rows)}")
    lines += _breakdown("By agent", "AGENT", report["by_agent"], max_rows)
    lines += _breakdown("By tool", "TOOL", report["by_tool"], max_rows)
    lines += _breakdown(
        "By determining policy, recorded", "POLICY", report["by_recorded_policy"], max_rows
    )
    lines += _breakdown(
        f"By determining policy, {new_label}", "POLICY", report["by_candidate_policy"], max_rows
    )
    transitions = report["transitions"]
    if transitions:
        shown, more = _limited(transitions, max_rows)
        lines += [
            "",
            f"Changes by determining policy (recorded -> {new_label})",
            table(
                ["CHANGE", "RECORDS", "RECORDED", new_label.upper()],
                [[t["change"], t["records"], t["recorded"], t["candidate"]] for t in shown],
            ),
            *([more] if more else []),
        ]
    for change, examples in report["examples"].items():
        if examples:
            lines += ["", f"Examples: {_CHANGE_TITLES.get(change, change)}"]
            for example in examples:
                lines += _example(example, new_label, "candidate")
    no_shadow = report.get("no_shadow", {})
    if no_shadow.get("records"):
        lines += ["", f"No shadow decision (not compared): {no_shadow['records']} records"]
        for example in no_shadow["examples"]:
            lines += _example(example, new_label)
    failed = report.get("failed", [])
    if failed:
        lines += ["", "Failed to re-decide"]
        lines += [f"  {f['decision_id']}  {f['error']}  at {f['at']}" for f in failed]
    lines += _unreadable(report)
    performance = report.get("performance")
    if performance:
        lines += ["", render_performance(performance)]
    return "\n".join(lines) + "\n"


def render_performance(performance: dict[str, Any]) -> str:
    latency = performance["latency_ms"]
    rows: list[list[object]] = [
        ["requests sent", performance["sent"]],
        ["answered", performance["answered"]],
        ["failed", performance["failed"]],
        ["duration (s)", f"{performance['duration_s']:.2f}"],
        ["target rate (req/s)", f"{performance['target_rate']:g}"],
        ["throughput (req/s)", f"{performance['throughput']:.1f}"],
    ]
    rows += [[f"latency {name} (ms)", f"{latency[name]:.2f}"] for name in ("p50", "p90", "p99")]
    rows.append(["latency max (ms)", f"{latency['max']:.2f}"])
    text = table(["PERFORMANCE", ""], rows)
    codes = performance.get("errors", {})
    if codes:
        text += "\n  errors: " + ", ".join(f"{code} {count}" for code, count in codes.items())
    return text


def render_verify(report: dict[str, Any], *, max_rows: int = DEFAULT_MAX_ROWS) -> str:
    totals = report["totals"]
    lines = [
        f"pdp replay --verify: {' '.join(report.get('sources', []))}",
        "",
        table(
            ["TOTALS", ""],
            [
                ["records", totals["records"]],
                ["verified", totals["verified"]],
                ["matched", totals["matched"]],
                ["MISMATCHED", totals["mismatched"]],
                ["mismatched, arguments redacted", totals["mismatched_redacted"]],
                ["version not at hand", totals["version_missing"]],
                ["shadow decisions verified", totals["shadow_verified"]],
                ["shadow MISMATCHED", totals["shadow_mismatched"]],
                ["shadow mismatched, arguments redacted", totals["shadow_mismatched_redacted"]],
                ["shadow version not at hand", totals["shadow_version_missing"]],
                ["unreadable lines", report["unreadable"]["lines"]],
            ],
        ),
        f"  not verified: {_skipped_line(report)}",
    ]
    versions = report["versions"]
    if versions:
        shown, more = _limited(versions, max_rows)
        lines += [
            "",
            "By recorded policy version",
            table(
                ["VERSION", "RECORDS", "MATCHED", "MISMATCHED", "MISSING", "FOUND IN"],
                [
                    [
                        v["version"],
                        v["records"],
                        v["matched"],
                        v["mismatched"],
                        v["missing"],
                        v["found_in"] or v.get("problem") or "not at hand",
                    ]
                    for v in shown
                ],
            ),
            *([more] if more else []),
        ]
    mismatches = report["mismatches"]
    if mismatches:
        lines += ["", "Mismatches (recorded decision differs from the re-decision)"]
        for mismatch in mismatches:
            label = "redecided" if mismatch["which"] == "decision" else "shadow redecided"
            entry = {**mismatch, label: mismatch["redecided"]}
            lines += _example(entry, label)
        if report["mismatches_not_listed"]:
            lines.append(f"  ... and {report['mismatches_not_listed']} more not listed")
    lines += _unreadable(report)
    return "\n".join(lines) + "\n"
