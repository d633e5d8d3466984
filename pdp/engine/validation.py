"""Confirming that policies pass Cedar's validation, at a cost that does not grow with the schema.

Cedar's validator checks each policy in every request environment of the schema,
one per action, so validating N policies against A actions costs ≈ N * A * 3 µs,
and every environment the policy's scope matches costs a full type check: 10,000
policies over 160 tools took 6 s, 100,000 over 1,600 tools would take hours.

But the check of a policy in one environment depends only on that environment's
``appliesTo`` (principal types, resource types, context type), and on the action
itself only where the policy names ``action`` or an ``Action`` entity outside its
scope; and it depends on the entity *types* its scope names, not on their ids
(but for actions and enumerated types). So pdp:

- sorts the schema's actions into classes of identical ``appliesTo``, and makes
  for each class a small schema: every entity and common type, unchanged, and the
  class's first action alone;
- reduces each policy to its shape: no annotations, principal and resource ids
  elided, the body as written; policies of one shape (large sets come from a few
  templates) are checked once;
- checks each shape against the schema of every class its action scope can match,
  its action scope rewritten to that class's action.

Every environment of the full schema in which a policy applies is covered by one
of those checks, so if they all pass, Cedar's full validation passes too.

This is only ever used to *confirm* a file. A file it cannot confirm — an error
found, a policy it does not handle (template slots, escaped strings, ``action``
or ``Action::`` in a condition, unknown actions, namespaced schemas) — is
validated the exact, slow way by the caller, so diagnostics are Cedar's own,
unchanged. ``tests/engine/test_validation.py`` checks both ways agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
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
_ENUM = re.compile(r"^entity ([A-Za-z_][A-Za-z0-9_]*) enum ", re.M)


@dataclass(frozen=True, slots=True)
class _Action:
    name: str
    parents: tuple[str, ...]
    applies: str | None  # the appliesTo block as Cedar renders it; None: a pure group


class SchemaClasses:
    """The actions of a schema, in classes of identical ``appliesTo``."""

    def __init__(self, others: list[str], actions: list[_Action]) -> None:
        self._others = others  # every declaration but actions, as Cedar renders them
        # Entity types whose ids the validator checks: their ids are kept.
        self._enums = frozenset(
            match.group(1) for other in others for match in _ENUM.finditer(other)
        )
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
        self._schemas: dict[int, cedarpy.Schema] = {}

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
        # Lossless or nothing: the parts must put back together Cedar's text exactly.
        return classes if classes._render(actions) == rendered else None

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

    def class_of(self, action: str) -> int | None:
        """The class of an action with ``appliesTo``; None for a group or an unknown one."""
        return self._class_of.get(action)

    def _keeps_ids(self, entity_type: str) -> bool:
        """Whether the validator checks this type's ids (actions, enumerated types)."""
        return entity_type in self._enums or entity_type.endswith("Action")

    def shape(self, head: Head, text: str) -> tuple[str, str]:
        """The policy as checked, before and after its action scope."""
        scope = head.scope
        return (
            f"{head.effect} ({scope_text('principal', scope.principal, self._keeps_ids)}, ",
            f", {scope_text('resource', scope.resource, self._keeps_ids)}){text[head.body :]}",
        )

    def representative(self, index: int) -> str:
        return self._representatives[index].name

    def schema(self, index: int) -> cedarpy.Schema:
        """Every entity and common type, and the class's first action (without groups)."""
        found = self._schemas.get(index)
        if found is None:
            action = self._representatives[index]
            found = cedarpy.Schema.from_str(
                self._render([_Action(action.name, (), action.applies)])
            )
            self._schemas[index] = found
        return found


def scope_text(name: str, constraint: Constraint, keeps_ids: Callable[[str], bool]) -> str:
    """A principal or resource scope as Cedar text, entity ids elided where the
    validator does not read them."""

    def uid(entity: tuple[str, str]) -> str:
        kind, ident = entity
        return f'{kind}::"{ident if keeps_ids(kind) else "_"}"'

    op = constraint.op
    if op == "any":
        return name
    if op in ("eq", "in"):
        return f"{name} {'==' if op == 'eq' else 'in'} {uid(constraint.entities[0])}"
    if op == "is":
        return f"{name} is {constraint.entity_type}"
    return f"{name} is {constraint.entity_type} in {uid(constraint.entities[0])}"


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


def _check(text: str, schema: cedarpy.Schema) -> bool:
    return bool(cedarpy.validate_policies(text, schema).validation_passed)


def confirm_valid(
    schema: cedarpy.Schema,
    files: Sequence[tuple[Sequence[Statement], Sequence[Head | None]]],
    classes: SchemaClasses | None = None,
) -> set[int]:
    """Positions in ``files`` that this check could not confirm as valid: the caller
    validates those with Cedar against the full schema, the exact way. ``classes``:
    ``SchemaClasses.of(schema)`` when the caller has it already (its small schemas
    are built once and kept)."""
    if classes is None:
        classes = SchemaClasses.of(schema)
    if classes is None:
        return set(range(len(files)))
    shapes: dict[tuple[tuple[int, ...], tuple[str, str]], set[int]] = {}  # -> files
    verbatim: dict[str, set[int]] = {}  # checked against the full schema as written
    for position, (statements, heads) in enumerate(files):
        for statement, head in zip(statements, heads, strict=True):
            key = None
            if head is not None and head.body >= 0:
                key = classes.classes(head.scope.action)
                if key is not None and _names_actions(statement.text[head.body :]):
                    key = None
            if head is None or key is None:
                verbatim.setdefault(statement.text, set()).add(position)
            else:
                shapes.setdefault((key, classes.shape(head, statement.text)), set()).add(position)
    # Per class: every shape whose scope can match it, on the class's one action.
    per_class: dict[int, list[tuple[str, set[int]]]] = {}
    for (key, shape), positions in shapes.items():
        for index in key:
            action = f'action == Action::"{classes.representative(index)}"'
            text = shape[0] + action + shape[1]
            per_class.setdefault(index, []).append((text, positions))
    batches = [(classes.schema(i), items) for i, items in per_class.items()]
    batches.append((schema, list(verbatim.items())))
    unconfirmed: set[int] = set()
    for against, items in batches:
        for begin in range(0, len(items), CHUNK):
            chunk = items[begin : begin + CHUNK]
            if not _check("\n".join(text for text, _ in chunk), against):
                for _, positions in chunk:
                    unconfirmed |= positions
    return unconfirmed
