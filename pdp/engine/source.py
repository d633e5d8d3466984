"""Reading Cedar policy files into located, annotated policy units.

Cedar reports positional policy ids (``policy0``, ``policy1`` …) and parse errors
without a position. pdp splits each file into statements itself, so every
diagnostic and every decision reason can name a file, a line and the policy's
``@id``. Heads (annotations, effect, scope) are read by a small exact scanner
(pdp.engine.scope) — Cedar's own JSON conversion costs ≈ 130 µs per policy and
is used only where the scanner declines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cedarpy

from pdp.engine.scope import Head, ScanFallback, Scope, head_from_est, scan_head


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
    """One policy: its ``@id``, ``@reason``, effect, scope, source text and location."""

    policy_id: str
    reason: str
    effect: str  # "permit" | "forbid"
    scope: Scope
    text: str
    file: str
    line: int
    floor: bool

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


# Between statements: whitespace and comments. A statement: strings (with escapes),
# comments and anything else up to a ``;``. Atomic groups and possessive repeats read
# it like a lexer, left to right, never backtracking into a string or a comment.
_GAP = re.compile(r"(?>\s+|//[^\n]*+)*+")
_STATEMENT = re.compile(r'(?>[^"/;]++|"(?:[^"\\\n]|\\.)*+"|//[^\n]*+|/|")*+;', re.S)


def split_statements(text: str) -> list[Statement]:
    """Splits Cedar policy text at top-level ``;`` outside strings and comments.

    Cedar has no ``;`` inside a policy except in strings and comments, so this is
    exact. A trailing fragment without ``;`` is returned too, so the parser can
    report it.
    """
    statements: list[Statement] = []
    position = 0
    line = 1
    end = len(text)
    while True:
        gap = _GAP.match(text, position)
        start = gap.end() if gap else position
        if start >= end:
            return statements
        line += text.count("\n", position, start)
        match = _STATEMENT.match(text, start)
        if match is None:
            statements.append(Statement(text[start:], line))
            return statements
        statements.append(Statement(text[start : match.end()], line))
        line += text.count("\n", start, match.end())
        position = match.end()


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "parse error"


_END_OF_INPUT = "unexpected end of input"
# A name Cedar rejects once the policy is read ("`foo` is not a valid function").
_QUOTED_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_:]*)`")
_DUPLICATE_ANNOTATION = re.compile(r"duplicate annotation: (@[A-Za-z_][A-Za-z0-9_]*)")


def _parse_error(text: str) -> str | None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        return _first_line(str(exc))
    return None


def _line_of(lines: list[str], needle: str, occurrence: int) -> int | None:
    """The 0-based line holding the ``occurrence``-th ``needle`` (a whole name)."""
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(needle)}(?![A-Za-z0-9_])")
    seen = 0
    for index, line in enumerate(lines):
        seen += len(pattern.findall(line.split("//", 1)[0]))
        if seen >= occurrence:
            return index
    return None


def _error_line(statement: Statement, message: str) -> int:
    """The line of ``statement`` where Cedar's parse error lies.

    Cedar reports no position. Its parser reads left to right, so a prefix of the
    statement that stops before the offending token fails only for want of input: the
    first prefix (by whole lines) failing with the statement's own error ends on the
    offending line. Errors Cedar finds once the policy is read name what they reject
    (an unknown function, a duplicate annotation): that name's line.
    """
    lines = statement.text.rstrip().split("\n")
    found: int | None = None
    named = _QUOTED_NAME.search(message)
    duplicate = _DUPLICATE_ANNOTATION.search(message)
    if message == _END_OF_INPUT:
        found = len(lines) - 1  # the statement stops short: its last line
    elif named and not message.startswith("unexpected token"):
        found = _line_of(lines, named.group(1), 1)
    elif duplicate:
        found = _line_of(lines, duplicate.group(1), 2)
    else:
        for count in range(1, len(lines) + 1):
            error = _parse_error("\n".join(lines[:count]))
            if error == message:
                found = count - 1
                break
            if error != _END_OF_INPUT:
                break  # another error first: no line to name with confidence
    return statement.line + (found or 0)


def locate_parse_errors(statements: list[Statement], display_name: str) -> list[Diagnostic]:
    """The slow path, for broken files only: parse statement by statement, and find the
    line of each error inside its statement."""
    found = []
    for statement in statements:
        message = _parse_error(statement.text)
        if message is not None:
            line = _error_line(statement, message)
            found.append(Diagnostic(display_name, line, message))
    return found or [Diagnostic(display_name, 0, "Cedar cannot parse this file")]


def read_head(statement: Statement) -> Head:
    try:
        return scan_head(statement.text)
    except ScanFallback:
        parsed = json.loads(cedarpy.policies_to_json_str(statement.text))
        if parsed.get("templates"):
            raise ValueError("policy templates are not supported yet (use ==/in)") from None
        (est,) = parsed["staticPolicies"].values()
        return head_from_est(est)


def parse_file(
    statements: list[Statement],
    display_name: str,
    *,
    floor: bool,
    heads: Sequence[Head | None] | None = None,
) -> tuple[list[PolicyUnit], list[Diagnostic]]:
    """Reads one file's policies (already validated by Cedar) into units.

    ``heads``: the scanner's heads of the statements, where already read (None
    where it declined).
    """
    units: list[PolicyUnit] = []
    diagnostics: list[Diagnostic] = []
    for position, statement in enumerate(statements):

        def problem(message: str, line: int = statement.line) -> None:
            diagnostics.append(Diagnostic(display_name, line, message))

        head = heads[position] if heads is not None else None
        if head is None:
            try:
                head = read_head(statement)
            except ValueError as exc:
                problem(_first_line(str(exc)))
                continue
        policy_id = head.annotations.get("id")
        reason = head.annotations.get("reason")
        if not policy_id:
            problem('policy has no @id("…") annotation')
        elif not reason:
            problem(f'policy "{policy_id}" has no @reason("…") annotation')
        elif floor and head.effect != "forbid":
            problem(f'floor policy "{policy_id}" must be a forbid policy (the floor only denies)')
        else:
            units.append(
                PolicyUnit(
                    policy_id=policy_id,
                    reason=reason,
                    effect=head.effect,
                    scope=head.scope,
                    text=statement.text,
                    file=display_name,
                    line=statement.line,
                    floor=floor,
                )
            )
    return units, diagnostics
