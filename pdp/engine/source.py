"""Reading Cedar policy files into located, annotated policy units.

Cedar reports positional policy ids (``policy0``, ``policy1`` …) and parse errors
without a position. pdp splits each file into statements itself, so every
diagnostic and every decision reason can name a file, a line and the policy's
``@id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import cedarpy


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A problem in a policy directory, located as precisely as pdp can."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


@dataclass(frozen=True, slots=True)
class Statement:
    """The text of one policy inside a file and the line it starts on (1-based)."""

    text: str
    line: int


@dataclass(frozen=True, slots=True)
class PolicyUnit:
    """One parsed policy: its ``@id``, effect, scope and Cedar JSON (EST) form."""

    policy_id: str
    reason: str
    effect: str  # "permit" | "forbid"
    est: dict[str, Any]
    file: str
    line: int
    floor: bool

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


def split_statements(text: str) -> list[Statement]:
    """Splits Cedar policy text at top-level ``;`` outside strings and comments.

    Cedar has no ``;`` inside a policy except in strings and comments, so this is
    exact. A trailing fragment without ``;`` is returned too, so the parser can
    report it.
    """
    statements: list[Statement] = []
    start: int | None = None
    start_line = 0
    line = 1
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch == "/" and i + 1 < n and text[i + 1] == "/":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch.isspace():
            i += 1
            continue
        if start is None:
            start, start_line = i, line
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += 1
            continue
        if ch == ";":
            statements.append(Statement(text[start : i + 1], start_line))
            start = None
        i += 1
    if start is not None:
        statements.append(Statement(text[start:], start_line))
    return statements


def _first_line_of_error(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "parse error"


def parse_file(
    text: str, display_name: str, *, floor: bool
) -> tuple[list[PolicyUnit], list[Diagnostic]]:
    """Parses the text of one ``.cedar`` file into policy units, or returns located diagnostics."""
    statements = split_statements(text)
    ests: list[dict[str, Any]] | None = None
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(text))
        if parsed.get("templates"):
            line = statements[0].line if statements else 0
            return [], [
                Diagnostic(display_name, line, "policy templates are not supported yet (use ==/in)")
            ]
        ordered = sorted(parsed.get("staticPolicies", {}).items(), key=lambda kv: int(kv[0][6:]))
        if len(ordered) == len(statements):
            ests = [est for _, est in ordered]
    except ValueError:
        pass
    diagnostics: list[Diagnostic] = []
    if ests is None:
        # Slow path, only for broken files: parse statement by statement to locate the error.
        ests = []
        for statement in statements:
            try:
                one = json.loads(cedarpy.policies_to_json_str(statement.text))
                ests.extend(one.get("staticPolicies", {}).values())
            except ValueError as exc:
                diagnostics.append(
                    Diagnostic(display_name, statement.line, _first_line_of_error(str(exc)))
                )
        if diagnostics:
            return [], diagnostics
        if len(ests) != len(statements):
            return [], [Diagnostic(display_name, 0, "could not match policies to their source")]
    units: list[PolicyUnit] = []
    for statement, est in zip(statements, ests, strict=True):
        annotations = est.get("annotations") or {}
        policy_id = annotations.get("id")
        reason = annotations.get("reason")
        if not policy_id:
            diagnostics.append(
                Diagnostic(display_name, statement.line, 'policy has no @id("…") annotation')
            )
            continue
        if not reason:
            diagnostics.append(
                Diagnostic(
                    display_name,
                    statement.line,
                    f'policy "{policy_id}" has no @reason("…") annotation',
                )
            )
            continue
        if floor and est["effect"] != "forbid":
            diagnostics.append(
                Diagnostic(
                    display_name,
                    statement.line,
                    f'floor policy "{policy_id}" must be a forbid policy (the floor only denies)',
                )
            )
            continue
        units.append(
            PolicyUnit(
                policy_id=policy_id,
                reason=reason,
                effect=est["effect"],
                est=est,
                file=display_name,
                line=statement.line,
                floor=floor,
            )
        )
    return units, diagnostics
