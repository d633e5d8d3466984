"""Confirming that policies pass Cedar's validation, at a cost that does not grow with the schema.

Cedar's validator checks a policy in every request environment of the schema —
one per action — so validating N policies against a schema of A actions costs
≈ N * A * 2 µs: 10,000 policies over 160 tools ≈ 10 s, 100,000 over 1,600 tools
hours. But a policy's check in an environment depends only on the environment's
principal types, resource types and context type (its ``appliesTo``), and on the
action itself only where the policy names ``action`` or an ``Action`` entity
outside its scope. So pdp sorts the schema's actions into classes of identical
``appliesTo``, rewrites each policy's action scope to the class representatives
of the actions it can match, and validates it against a small schema holding
only those representatives (plus every entity and common type, unchanged). The
policies that match an environment of the full schema are exactly covered by
the representatives, so if this passes, Cedar's full validation passes too.

This is only ever used to *confirm* a file. A file it cannot confirm — an error
found, a policy it does not handle (template slots, escaped strings, ``action``
or ``Action::`` in a condition, unknown actions, namespaced schemas) — is
validated the exact, slow way by the caller, so diagnostics are Cedar's own,
unchanged. ``tests/engine/test_validation.py`` checks both ways agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cedarpy

from pdp.engine.scope import _TOKEN, Constraint, Head, ScanFallback, scan_head
from pdp.engine.source import Statement

# Policies per validate call: bounds Cedar's transient memory, costs nothing.
CHUNK = 2000

_ACTION_DECL = re.compile(
    r'action "(?P<name>[^"\\]*)"(?: in \[(?P<parents>[^\]]*)\])?'
    r"(?: appliesTo (?P<applies>\{.*\}))?;",
    re.S,
)
_PARENT = re.compile(r'Action::"([^"\\]*)"')


@dataclass(frozen=True, slots=True)
class _Action:
    name: str
    parents: tuple[str, ...]
    applies: str | None  # the appliesTo block as Cedar renders it; None: a pure group


class SchemaClasses:
    """The actions of a schema, in classes of identical ``appliesTo``."""

    def __init__(self, others: list[str], actions: list[_Action]) -> None:
        self._others = others  # every declaration but actions, as Cedar renders them
        self._actions = {a.name: a for a in actions}
        self._class_of: dict[str, int] = {}
        self._representatives: list[_Action] = []
        by_applies: dict[str, int] = {}
        for action in actions:
            if action.applies is None:
                continue
            index = by_applies.get(action.applies)
            if index is None:
                index = by_applies[action.applies] = len(self._representatives)
                self._representatives.append(action)
            self._class_of[action.name] = index
        children: dict[str, list[str]] = {}
        for action in actions:
            for parent in action.parents:
                children.setdefault(parent, []).append(action.name)
        self._children = children
        self._memo: dict[Constraint, tuple[int, ...] | None] = {}
        self._schemas: dict[tuple[int, ...], cedarpy.Schema] = {}

    @classmethod
    def of(cls, schema: cedarpy.Schema) -> SchemaClasses | None:
        """Reads Cedar's own rendering of the schema; None when it is not in the plain
        form this module handles (namespaces, escaped action names, annotated actions,
        or anything that does not render back identically)."""
        rendered = str(schema)
        others: list[str] = []
        actions: list[_Action] = []
        for declaration in rendered.strip().split("\n\n"):
            if declaration.startswith("namespace") or "\nnamespace" in declaration:
                return None
            if not declaration.startswith("action "):
                if declaration.lstrip().startswith("@") and "\naction " in declaration:
                    return None  # an annotated action
                others.append(declaration)
                continue
            match = _ACTION_DECL.fullmatch(declaration)
            if match is None:
                return None
            parents_text = match.group("parents")
            parents: tuple[str, ...] = ()
            if parents_text is not None:
                parents = tuple(_PARENT.findall(parents_text))
                if ", ".join(f'Action::"{p}"' for p in parents) != parents_text:
                    return None
            actions.append(_Action(match.group("name"), parents, match.group("applies")))
        classes = cls(others, actions)
        # Lossless or nothing: the parts must render back to exactly Cedar's text.
        try:
            if str(cedarpy.Schema.from_str(classes._render(actions))) != rendered:
                return None
        except ValueError:
            return None
        return classes

    def _render(self, actions: Iterable[_Action]) -> str:
        parts = list(self._others)
        for action in actions:
            text = f'action "{action.name}"'
            if action.parents:
                text += " in [" + ", ".join(f'Action::"{p}"' for p in action.parents) + "]"
            if action.applies is not None:
                text += f" appliesTo {action.applies}"
            parts.append(text + ";")
        return "\n\n".join(parts) + "\n"

    def _matched(self, names: Iterable[str]) -> set[str]:
        """The actions ``action in [names]`` matches: each name and its descendants."""
        found: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in found:
                found.add(name)
                stack.extend(self._children.get(name, ()))
        return found

    def classes(self, constraint: Constraint) -> tuple[int, ...] | None:
        """The classes of the actions an action constraint matches (sorted), or None
        when the check must go to the full schema (unknown or namespaced actions, or
        a scope no action with ``appliesTo`` matches: Cedar reports those)."""
        if constraint in self._memo:
            return self._memo[constraint]
        result: tuple[int, ...] | None
        if constraint.op == "any":
            result = tuple(range(len(self._representatives)))
        elif any(
            kind != "Action" or name not in self._actions for kind, name in constraint.entities
        ):
            result = None
        else:
            names = [name for _, name in constraint.entities]
            matched = names if constraint.op == "eq" else self._matched(names)
            result = tuple(sorted({self._class_of[n] for n in matched if n in self._class_of}))
        self._memo[constraint] = result or None
        return result or None

    def action_scope(self, classes: tuple[int, ...]) -> str:
        return (
            "action in ["
            + ", ".join(f'Action::"{self._representatives[c].name}"' for c in classes)
            + "]"
        )

    def schema(self, classes: tuple[int, ...]) -> cedarpy.Schema:
        """Every entity and common type, and one action (without groups) per class."""
        found = self._schemas.get(classes)
        if found is None:
            representatives = (self._representatives[c] for c in classes)
            found = cedarpy.Schema.from_str(
                self._render(_Action(a.name, (), a.applies) for a in representatives)
            )
            self._schemas[classes] = found
        return found


def _names_actions(text: str) -> bool:
    """Whether a policy body mentions the ``action`` variable or an ``Action`` entity
    (conservatively: any such identifier, e.g. an attribute called ``action``)."""
    if "action" not in text and "Action" not in text:
        return False
    return any(
        match.lastgroup == "ident" and match.group("ident") in ("action", "Action")
        for match in _TOKEN.finditer(text)
    )


def scan_heads(statements: Sequence[Statement]) -> list[Head | None]:
    """The scanner's head of each statement; None where it declines."""
    heads: list[Head | None] = []
    for statement in statements:
        try:
            heads.append(scan_head(statement.text))
        except ScanFallback:
            heads.append(None)
    return heads


def confirm_valid(
    schema: cedarpy.Schema, files: Sequence[tuple[Sequence[Statement], Sequence[Head | None]]]
) -> set[int]:
    """Positions in ``files`` that this check could not confirm as valid: the caller
    validates those with Cedar against the full schema, the exact way."""
    classes = SchemaClasses.of(schema)
    if classes is None:
        return set(range(len(files)))
    groups: dict[tuple[int, ...] | None, list[tuple[int, str]]] = {}
    for position, (statements, heads) in enumerate(files):
        for statement, head in zip(statements, heads, strict=True):
            text = statement.text
            key: tuple[int, ...] | None = None
            if head is not None and head.action_span is not None:
                key = classes.classes(head.scope.action)
                if key is not None and _names_actions(text[head.body :]):
                    key = None
                if key is not None:
                    start, end = head.action_span
                    text = text[:start] + classes.action_scope(key) + text[end:]
            groups.setdefault(key, []).append((position, text))
    unconfirmed: set[int] = set()
    for key, items in groups.items():
        against = schema if key is None else classes.schema(key)
        for begin in range(0, len(items), CHUNK):
            chunk = items[begin : begin + CHUNK]
            text = "\n".join(t for _, t in chunk)
            if not cedarpy.validate_policies(text, against).validation_passed:
                unconfirmed.update(p for p, _ in chunk)
    return unconfirmed
