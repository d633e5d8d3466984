"""Policy scopes and the index that selects the policies a request can match.

Cedar evaluates every policy in a set, so its cost grows with the set (≈ 1 µs per
policy here: 10,000 policies ≈ 80 decisions/s). But a policy whose scope
(``principal``, ``action``, ``resource``) cannot match a request is never
satisfied, never determining and never evaluated past its scope, so leaving it
out cannot change the decision. :class:`ScopeIndex` files each policy under the
entities its scope names and, for a request, returns only the policies whose
scope matches — a handful, whatever the size of the set.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Uid = tuple[str, str]  # (entity type, entity id)


@dataclass(frozen=True, slots=True)
class Constraint:
    """One scope element. ``op``: any | eq | in | is | is_in (principal/resource) or
    any | eq | in (action, where ``in`` may name several entities)."""

    op: str
    entities: tuple[Uid, ...] = ()
    entity_type: str = ""

    def matches(self, uid: Uid, ancestors: frozenset[Uid]) -> bool:
        op = self.op
        if op == "any":
            return True
        if op == "eq":
            return uid == self.entities[0]
        if op == "in":
            for e in self.entities:  # noqa: SIM110 (a loop: any() costs a generator per call)
                if e == uid or e in ancestors:
                    return True
            return False
        if op == "is":
            return uid[0] == self.entity_type
        if op == "is_in":
            e = self.entities[0]
            return uid[0] == self.entity_type and (e == uid or e in ancestors)
        raise ValueError(f"unknown scope operator {op!r}")

    def keys(self) -> tuple[Uid, ...] | None:
        """The entities a matching request must be or descend from; None = no such bound."""
        return None if self.op in ("any", "is") else self.entities


ANY = Constraint("any")


@dataclass(frozen=True, slots=True)
class Scope:
    principal: Constraint
    action: Constraint
    resource: Constraint


# --- reading scopes ---------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s+|//[^\n]*|"(?P<str>[^"\\]*)"|"(?:[^"\\]|\\.)*"|(?P<op>::|==)'
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),\[\]@?])|(?P<other>.)",
    re.S,
)


class ScanFallback(Exception):
    """The fast scanner met something it does not handle; use Cedar's own parse."""


@dataclass(frozen=True, slots=True)
class Head:
    """What the index and reasons need from a policy: annotations, effect, scope.

    The scanner also notes where the body after the scope starts (``body``, an
    offset in the text), for pdp.engine.validation; a head read from Cedar's JSON
    has -1. It takes no part in comparisons.
    """

    annotations: Mapping[str, str]
    effect: str
    scope: Scope
    body: int = field(default=-1, compare=False)


def _tokens(text: str) -> Iterator[re.Match[str]]:
    """Lazily, so that conditions after the scope are never tokenized."""
    for match in _TOKEN.finditer(text):
        if match.lastgroup is None:
            if match.group(0).startswith('"'):
                raise ScanFallback("string with escapes")
            continue  # whitespace or comment
        yield match


class _Reader:
    def __init__(self, tokens: Iterator[re.Match[str]]) -> None:
        self._source = tokens
        self.tokens: list[tuple[str, str]] = []
        self.spans: list[tuple[int, int]] = []  # offsets of each token in the text
        self.pos = 0

    def _fill(self, upto: int) -> None:
        while len(self.tokens) <= upto:
            match = next(self._source, None)
            if match is None:
                return
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            self.spans.append(match.span())

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        self._fill(self.pos + ahead)
        index = self.pos + ahead
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token[0] != kind or (value is not None and token[1] != value):
            raise ScanFallback(f"expected {value or kind}, found {token[1]!r}")
        self.pos += 1
        return token[1]

    def at(self, kind: str, value: str) -> bool:
        return self.peek() == (kind, value)

    def path(self) -> str:
        parts = [self.take("ident")]
        while self.at("op", "::") and self.peek(1)[0] == "ident":
            self.pos += 1
            parts.append(self.take("ident"))
        return "::".join(parts)

    def entity(self) -> Uid:
        kind = self.path()
        self.take("op", "::")
        return (kind, self.take("str"))

    def entity_list(self) -> tuple[Uid, ...]:
        self.take("punct", "[")
        items: list[Uid] = []
        while not self.at("punct", "]"):
            items.append(self.entity())
            if not self.at("punct", "]"):
                self.take("punct", ",")
        self.take("punct", "]")
        return tuple(items)


def _principal_or_resource(reader: _Reader, var: str) -> Constraint:
    reader.take("ident", var)
    if reader.at("op", "=="):
        reader.pos += 1
        return Constraint("eq", (reader.entity(),))
    if reader.at("ident", "in"):
        reader.pos += 1
        return Constraint("in", (reader.entity(),))
    if reader.at("ident", "is"):
        reader.pos += 1
        entity_type = reader.path()
        if reader.at("ident", "in"):
            reader.pos += 1
            return Constraint("is_in", (reader.entity(),), entity_type)
        return Constraint("is", (), entity_type)
    return ANY


def _action(reader: _Reader) -> Constraint:
    reader.take("ident", "action")
    if reader.at("op", "=="):
        reader.pos += 1
        return Constraint("eq", (reader.entity(),))
    if reader.at("ident", "in"):
        reader.pos += 1
        if reader.at("punct", "["):
            return Constraint("in", reader.entity_list())
        return Constraint("in", (reader.entity(),))
    return ANY


# The same grammar as one regular expression, for the common case (entity paths without
# inner whitespace, no comments inside action lists): ~4x faster than the token reader.
_W = r"(?:\s|//[^\n]*(?![^\n]))*"  # whitespace and comments (whole: never cut short)
_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_KW = r"(?![A-Za-z0-9_])"  # the end of a keyword
_ENTITY = rf'{_ID}(?:::{_ID})*::"[^"\\]*"'
_ANNOTATION = re.compile(rf'{_W}@(?P<key>{_ID})(?:{_W}\({_W}"(?P<value>[^"\\]*)"{_W}\))?')


def _variable(v: str) -> str:
    return (
        rf"{v}{_KW}(?:{_W}(?P<{v}_op>==|in{_KW}){_W}(?P<{v}_entity>{_ENTITY})"
        rf"|{_W}is{_KW}{_W}(?P<{v}_type>{_ID}(?:::{_ID})*){_KW}"
        rf"(?:{_W}in{_KW}{_W}(?P<{v}_in>{_ENTITY}))?)?"
    )


_HEAD = re.compile(
    rf"(?P<annotations>(?:{_ANNOTATION.pattern})*){_W}(?P<effect>permit|forbid){_W}\({_W}"
    + _variable("principal")
    + rf"{_W},{_W}action{_KW}(?:{_W}(?P<action_op>==|in{_KW}){_W}"
    rf"(?P<action_entities>{_ENTITY}|\[{_W}(?:{_ENTITY}{_W}(?:,{_W}{_ENTITY}{_W})*,?{_W})?\])"
    rf")?{_W},{_W}" + _variable("resource") + rf"{_W}(?:,{_W})?\)"
)
_ENTITY_RE = re.compile(_ENTITY)
_GROUPS = (
    *(f"principal_{g}" for g in ("op", "entity", "type", "in")),
    "action_op",
    "action_entities",
    *(f"resource_{g}" for g in ("op", "entity", "type", "in")),
)


def _entity(text: str) -> Uid:
    kind, _, rest = text.rpartition('::"')
    return (kind, rest[:-1])


# Policies of a large set name the same scopes over and over: share the constraints.
@functools.lru_cache(maxsize=1 << 16)
def _variable_constraint(
    op: str | None, entity: str | None, entity_type: str | None, within: str | None
) -> Constraint:
    if op is not None:
        assert entity is not None
        return Constraint("eq" if op == "==" else "in", (_entity(entity),))
    if entity_type is None:
        return ANY
    if within is None:
        return Constraint("is", (), entity_type)
    return Constraint("is_in", (_entity(within),), entity_type)


@functools.lru_cache(maxsize=1 << 16)
def _action_constraint(op: str | None, listed: str) -> Constraint:
    if op is None:
        return ANY
    if op == "==":
        return Constraint("eq", (_entity(listed),))
    if not listed.startswith("["):
        return Constraint("in", (_entity(listed),))
    return Constraint("in", tuple(_entity(e) for e in _ENTITY_RE.findall(listed)))


def _fast_head(text: str) -> Head | None:
    """:func:`scan_head` by one regular expression; None where it does not apply."""
    match = _HEAD.match(text)
    if match is None:
        return None
    annotations: dict[str, str] = {}
    block = match.group("annotations")
    position = 0
    while position < len(block):
        annotation = _ANNOTATION.match(block, position)
        if annotation is None or annotation.end() == position:
            return None
        key = annotation.group("key")
        if key in annotations:
            return None  # the token reader declines it: Cedar reports it
        annotations[key] = annotation.group("value") or ""
        position = annotation.end()
    (p_op, p_entity, p_type, p_in, action_op, listed, r_op, r_entity, r_type, r_in) = match.group(
        *_GROUPS
    )
    if listed is not None and "//" in listed:
        return None  # a comment in an action list could hold an entity-like text
    return Head(
        annotations,
        match.group("effect"),
        Scope(
            _variable_constraint(p_op, p_entity, p_type, p_in),
            _action_constraint(action_op, listed or ""),
            _variable_constraint(r_op, r_entity, r_type, r_in),
        ),
        match.end(),
    )


def scan_head(text: str) -> Head:
    """Reads annotations, effect and scope of one policy statement.

    Raises :class:`ScanFallback` for anything outside the plain grammar (escaped
    strings, template slots…); the caller then uses Cedar's parse for that policy.
    """
    fast = _fast_head(text)
    if fast is not None:
        return fast
    return _read_head(text)


def _read_head(text: str) -> Head:
    """:func:`scan_head` by the token reader."""
    reader = _Reader(_tokens(text))
    annotations: dict[str, str] = {}
    while reader.at("punct", "@"):
        reader.pos += 1
        key = reader.take("ident")
        value = ""
        if reader.at("punct", "("):
            reader.pos += 1
            value = reader.take("str")
            reader.take("punct", ")")
        if key in annotations:
            raise ScanFallback("duplicate annotation")  # Cedar reports it
        annotations[key] = value
    effect = reader.take("ident")
    if effect not in ("permit", "forbid"):
        raise ScanFallback(f"unexpected effect {effect!r}")
    reader.take("punct", "(")
    principal = _principal_or_resource(reader, "principal")
    reader.take("punct", ",")
    action = _action(reader)
    reader.take("punct", ",")
    resource = _principal_or_resource(reader, "resource")
    if reader.at("punct", ","):  # Cedar accepts a trailing comma in the scope
        reader.pos += 1
    reader.take("punct", ")")
    body = reader.spans[reader.pos - 1][1]
    return Head(annotations, effect, Scope(principal, action, resource), body)


def _constraint_from_est(element: Mapping[str, Any]) -> Constraint:
    op = element["op"]
    if op == "All":
        return ANY
    if "slot" in element:
        raise ValueError("template slots are not supported")
    if op == "==":
        return Constraint("eq", (_uid(element["entity"]),))
    if op == "in":
        if "entities" in element:
            return Constraint("in", tuple(_uid(e) for e in element["entities"]))
        return Constraint("in", (_uid(element["entity"]),))
    if op == "is":
        if "in" in element:
            return Constraint("is_in", (_uid(element["in"]["entity"]),), element["entity_type"])
        return Constraint("is", (), element["entity_type"])
    raise ValueError(f"unknown scope operator {op!r}")


def _uid(entity: Mapping[str, str]) -> Uid:
    return (entity["type"], entity["id"])


def head_from_est(est: Mapping[str, Any]) -> Head:
    """The same :class:`Head`, from Cedar's JSON (EST) form of the policy."""
    annotations = {k: v or "" for k, v in (est.get("annotations") or {}).items()}
    return Head(
        annotations,
        est["effect"],
        Scope(
            _constraint_from_est(est["principal"]),
            _constraint_from_est(est["action"]),
            _constraint_from_est(est["resource"]),
        ),
    )


# --- the index ---------------------------------------------------------------------------


class ScopeIndex:
    """Files policy positions under the entities their scopes name, per dimension."""

    __slots__ = ("_buckets", "_scopes", "_unbounded")

    def __init__(self, scopes: Sequence[Scope]) -> None:
        self._scopes = tuple(scopes)
        self._buckets: list[dict[Uid, list[int]]] = [defaultdict(list) for _ in range(3)]
        self._unbounded: list[list[int]] = [[], [], []]
        for position, scope in enumerate(self._scopes):
            for dim, constraint in enumerate((scope.principal, scope.action, scope.resource)):
                keys = constraint.keys()
                if keys is None:
                    self._unbounded[dim].append(position)
                else:
                    for key in set(keys):
                        self._buckets[dim][key].append(position)

    def _keys(self, dim: int, uid: Uid, ancestors: Iterable[Uid]) -> list[list[int]]:
        """The position lists a request's entity (or an ancestor) is filed under."""
        buckets = self._buckets[dim]
        found = [self._unbounded[dim]]
        for key in (uid, *ancestors):
            bucket = buckets.get(key)
            if bucket:
                found.append(bucket)
        return found

    def select(
        self,
        principal: Uid,
        principal_ancestors: frozenset[Uid],
        action: Uid,
        action_ancestors: frozenset[Uid],
        resource: Uid,
        resource_ancestors: frozenset[Uid],
    ) -> tuple[int, ...]:
        """Positions of the policies whose scope matches, in ascending order."""
        per_dim = [
            self._keys(0, principal, principal_ancestors),
            self._keys(1, action, action_ancestors),
            self._keys(2, resource, resource_ancestors),
        ]
        # Only the shortest dimension's candidates are read: the others can be long
        # (every policy on one server, or for Action::"read", in a large set).
        smallest = min(per_dim, key=lambda lists: sum(map(len, lists)))
        scopes = self._scopes
        found = []
        for p in {p for positions in smallest for p in positions}:
            scope = scopes[p]
            if (
                scope.principal.matches(principal, principal_ancestors)
                and scope.action.matches(action, action_ancestors)
                and scope.resource.matches(resource, resource_ancestors)
            ):
                found.append(p)
        found.sort()
        return tuple(found)
