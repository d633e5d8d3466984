"""Tool arguments against the tool's declared input: the ``invalid_arguments`` floor rule.

Every tool in the inventory carries the JSON Schema of its input (MCP ``tools/list``
``inputSchema``, captured by ``pdp schema from-mcp``). At load, each schema is
checked and compiled once into a :class:`ToolArguments` (jsonschema-rs, draft
2020-12 unless the schema's ``$schema`` names another draft); the engine asks it
about every call before any policy runs. A call it rejects is denied with the
JSON path and the rule broken, whatever the policies say.

The compiled schema is stricter than the captured one, on purpose, and each
tightening can be relaxed per tool in the inventory (``arguments``):

- Undeclared arguments: an object schema that declares properties but says nothing
  about others gets ``additionalProperties: false`` (``unevaluatedProperties: false``
  where it combines subschemas), unless ``allow_undeclared``.
- Size: a string or array schema without ``maxLength`` / ``maxItems`` gets the
  inventory's default bound (``max_string_length``, ``max_items``).
- String hygiene: C0/C1 control characters other than tab and newline (NUL
  included), Unicode bidi overrides and isolates, and unpaired surrogates are
  refused in every string, keys included, except under the paths of ``raw_strings``.

A schema that cannot be compiled, refers outside itself, names a format the
validator does not know, or uses a keyword the validator would ignore, is a load
error naming the tool: a schema pdp cannot enforce must never pass silently.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs

from pdp.model import JsonValue

DEFAULT_MAX_STRING_LENGTH = 4096  # characters, where the schema sets no maxLength
DEFAULT_MAX_ITEMS = 256  # array items, where the schema sets no maxItems
MAX_REPORTED = 5  # violations named in one decision

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_DRAFTS: dict[str, tuple[str, Any]] = {
    # $schema (without a trailing '#') -> (name, validator class)
    "https://json-schema.org/draft/2020-12/schema": ("2020-12", jsonschema_rs.Draft202012Validator),
    "https://json-schema.org/draft/2019-09/schema": ("2019-09", jsonschema_rs.Draft201909Validator),
    "http://json-schema.org/draft-07/schema": ("draft-07", jsonschema_rs.Draft7Validator),
    "http://json-schema.org/draft-06/schema": ("draft-06", jsonschema_rs.Draft6Validator),
    "http://json-schema.org/draft-04/schema": ("draft-04", jsonschema_rs.Draft4Validator),
}

# Keywords whose value is one subschema, a map of subschemas, or a list of them.
_ONE = frozenset(
    {
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "additionalItems",
        "propertyNames",
        "contains",
        "not",
        "if",
        "then",
        "else",
    }
)
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
# Annotations: no effect on validity, so ignoring them loses nothing.
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "id",
        "$anchor",
        "$dynamicAnchor",
        "$recursiveAnchor",
        "$comment",
        "$vocabulary",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_COMMON = frozenset(
    {
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "minimum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "format",
        "items",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxProperties",
        "minProperties",
        "required",
        "properties",
        "patternProperties",
        "additionalProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "$ref",
    }
)
# Keywords each draft's validator enforces (annotations aside).
_ENFORCED = {
    "draft-04": _COMMON | {"additionalItems", "dependencies", "definitions"},
    "draft-06": _COMMON
    | {"additionalItems", "dependencies", "definitions", "contains", "propertyNames"},
    "draft-07": _COMMON
    | {
        "additionalItems",
        "dependencies",
        "definitions",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
    },
    "2019-09": _COMMON
    | {
        "additionalItems",
        "definitions",
        "$defs",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedItems",
        "unevaluatedProperties",
        "$recursiveRef",
    },
    "2020-12": _COMMON
    | {
        "definitions",
        "$defs",
        "prefixItems",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedItems",
        "unevaluatedProperties",
        "$dynamicRef",
    },
}
# An object schema with one of these combines subschemas: it is closed with
# unevaluatedProperties, which sees the properties its subschemas declare.
_UNEVALUATED = frozenset({"2019-09", "2020-12"})  # drafts with unevaluatedProperties
_COMBINING = frozenset({"allOf", "anyOf", "oneOf", "if", "$ref", "$dynamicRef", "dependentSchemas"})

# Characters refused in strings by default (see the module docstring).
_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_NAMES = {0: "NUL", 0x1B: "ESC", 0x0D: "CR", 0x08: "BS", 0x7F: "DEL", 0x9B: "CSI"}
_BIDI_NAMES = {
    0x202A: "LEFT-TO-RIGHT EMBEDDING",
    0x202B: "RIGHT-TO-LEFT EMBEDDING",
    0x202C: "POP DIRECTIONAL FORMATTING",
    0x202D: "LEFT-TO-RIGHT OVERRIDE",
    0x202E: "RIGHT-TO-LEFT OVERRIDE",
    0x2066: "LEFT-TO-RIGHT ISOLATE",
    0x2067: "RIGHT-TO-LEFT ISOLATE",
    0x2068: "FIRST STRONG ISOLATE",
    0x2069: "POP DIRECTIONAL ISOLATE",
}


_UNION_ERRORS = frozenset({"anyOf", "oneOfNotValid"})
_SETTINGS_KEYS = frozenset({"allow_undeclared", "raw_strings", "max_string_length", "max_items"})


class ArgumentSchemaError(ValueError):
    """A tool's input schema or argument settings cannot be enforced; says where and why."""


@dataclass(frozen=True, slots=True)
class ArgumentSettings:
    """How strictly one tool's arguments are held to its schema (inventory ``arguments``)."""

    allow_undeclared: bool = False
    raw_strings: frozenset[str] = frozenset()  # argument paths exempt from hygiene; "*" = all
    max_string_length: int = DEFAULT_MAX_STRING_LENGTH
    max_items: int = DEFAULT_MAX_ITEMS


@dataclass(frozen=True, slots=True)
class Violation:
    """One rule a call's arguments break: ``path`` as in ``arguments.items[2].name``."""

    path: str
    rule: str  # the JSON Schema keyword, or a hygiene rule
    detail: str

    def message(self) -> str:
        return f"{self.path}: {self.detail} (rule: {self.rule})"


@dataclass(frozen=True)
class ToolArguments:
    """One tool's compiled argument checks. :meth:`violations` is pure and thread-safe."""

    tool: str  # "server/tool", for messages
    schema: Mapping[str, Any]  # the effective (tightened) schema that is enforced
    settings: ArgumentSettings
    draft: str
    _validator: Any = field(repr=False, compare=False)
    _added: frozenset[tuple[str, ...]] = field(repr=False, compare=False)  # bounds pdp added

    def violations(self, arguments: Mapping[str, JsonValue]) -> tuple[Violation, ...]:
        """The rules ``arguments`` break, at most :data:`MAX_REPORTED`; () when valid."""
        instance = arguments if type(arguments) is dict else dict(arguments)
        if self._validator.is_valid(instance):
            if "*" in self.settings.raw_strings:
                return ()
            return tuple(self._hygiene(instance))
        errors = list(itertools.islice(self._validator.iter_errors(instance), 4 * MAX_REPORTED))
        # A union that no branch matches also leaves its properties "unevaluated":
        # report why the closest branch failed, not that echo.
        unions = {tuple(e.instance_path) for e in errors if e.kind.name in _UNION_ERRORS}
        out: list[Violation] = []
        for error in errors:
            if error.kind.name == "unevaluatedProperties" and tuple(error.instance_path) in unions:
                continue
            out += (
                self._explain_union(error)
                if error.kind.name in _UNION_ERRORS
                else [self._explain(error)]
            )
        unique = sorted(set(out), key=lambda v: (v.path, v.rule, v.detail))
        return tuple(unique[:MAX_REPORTED])

    def _explain_union(self, error: Any) -> list[Violation]:
        """The errors of the branch that came closest; a type mismatch with every branch
        is one ``type`` violation listing the types the branches accept."""
        branches = [list(b) for b in (error.kind.as_dict().get("context") or [])]
        at = list(error.instance_path)

        def type_only(branch: list[Any]) -> bool:
            return all(e.kind.name == "type" and list(e.instance_path) == at for e in branch)

        candidates = [b for b in branches if b and not type_only(b)]
        if not candidates:
            kinds = [t for b in branches for e in b for t in _types(e.kind.as_dict().get("types"))]
            if kinds:
                return [
                    Violation(
                        format_path(at),
                        "type",
                        "must be of type " + " or ".join(dict.fromkeys(kinds)),
                    )
                ]
            return [self._explain(error)]
        best = max(candidates, key=lambda b: (max(len(e.instance_path) for e in b), -len(b)))
        out: list[Violation] = []
        for inner in best:
            out += (
                self._explain_union(inner)
                if inner.kind.name in _UNION_ERRORS
                else [self._explain(inner)]
            )
        return out

    def _explain(self, error: Any) -> Violation:
        path = format_path(error.instance_path)
        kind = error.kind
        rule = kind.name
        info = kind.as_dict()
        if rule in ("additionalProperties", "unevaluatedProperties"):
            unexpected = sorted(info.get("unexpected") or [])
            if unexpected:
                return Violation(
                    format_path([*error.instance_path, unexpected[0]]),
                    rule,
                    "is not a declared argument"
                    + (f" (nor are {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""),
                )
        if rule == "required":
            name = info.get("property")
            return Violation(format_path([*error.instance_path, str(name)]), rule, "is required")
        added = tuple(str(p) for p in error.schema_path) in self._added
        return Violation(path, rule, _detail(rule, info, added))

    def _hygiene(self, instance: dict[str, JsonValue]) -> Iterator[Violation]:
        raw = self.settings.raw_strings
        stack: list[tuple[tuple[str | int, ...], JsonValue]] = [((), instance)]
        found = 0
        while stack and found < MAX_REPORTED:
            where, value = stack.pop()
            if isinstance(value, str):
                hit = _FORBIDDEN.search(value)
                if hit and not (raw and _pattern(where) in raw):
                    found += 1
                    yield _hygiene_violation(format_path(where), hit.group(), hit.start())
            elif isinstance(value, dict):
                for key, item in value.items():
                    hit = _FORBIDDEN.search(key)
                    if hit and not (raw and _pattern((*where, key)) in raw):
                        found += 1
                        yield _hygiene_violation(
                            format_path(where) + " (a key)", hit.group(), hit.start()
                        )
                    stack.append(((*where, key), item))
            elif isinstance(value, list):
                stack.extend(((*where, i), item) for i, item in enumerate(value))


def format_path(parts: Any) -> str:
    """``["items", 2, "name"]`` -> ``arguments.items[2].name`` (the request's notation)."""
    out = "arguments"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _pattern(where: tuple[str | int, ...]) -> str:
    """An argument path as written in ``raw_strings``: indices become ``[*]``."""
    out = ""
    for part in where:
        if isinstance(part, int):
            out += "[*]"
        else:
            out += f".{part}" if out else part
    return out


def _hygiene_violation(path: str, char: str, offset: int) -> Violation:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return Violation(
            path, "unpaired_surrogate", f"contains an unpaired surrogate U+{code:04X} at {offset}"
        )
    if code in _BIDI_NAMES:
        return Violation(
            path,
            "bidi_control",
            f"contains U+{code:04X} {_BIDI_NAMES[code]} at {offset}",
        )
    name = _CONTROL_NAMES.get(code)
    label = f"U+{code:04X} ({name})" if name else f"U+{code:04X}"
    return Violation(path, "control_character", f"contains control character {label} at {offset}")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(rule: str, info: Mapping[str, Any], added: bool) -> str:
    """What a keyword demands, without echoing the (attacker's) value."""
    limit = info.get("limit")
    default = " (pdp's default bound; a maxLength/maxItems in the schema overrides it)"
    texts: dict[str, Callable[[], str]] = {
        "type": lambda: "must be of type " + " or ".join(_types(info.get("types"))),
        "enum": lambda: "must be one of " + _short(info.get("options")),
        "const": lambda: "must equal " + _short(info.get("expected_value")),
        "minimum": lambda: f"must be >= {_short(limit)}",
        "maximum": lambda: f"must be <= {_short(limit)}",
        "exclusiveMinimum": lambda: f"must be > {_short(limit)}",
        "exclusiveMaximum": lambda: f"must be < {_short(limit)}",
        "multipleOf": lambda: f"must be a multiple of {_short(info.get('multiple_of'))}",
        "minLength": lambda: f"must be at least {limit} characters long",
        "maxLength": lambda: (
            f"must be at most {limit} characters long" + (default if added else "")
        ),
        "minItems": lambda: f"must have at least {limit} items",
        "maxItems": lambda: f"must have at most {limit} items" + (default if added else ""),
        "minProperties": lambda: f"must have at least {limit} properties",
        "maxProperties": lambda: f"must have at most {limit} properties",
        "uniqueItems": lambda: "must not repeat items",
        "pattern": lambda: "must match the pattern " + _short(info.get("pattern")),
        "format": lambda: f"must be a valid {info.get('format')}",
        "falseSchema": lambda: "is not allowed here",
        "additionalProperties": lambda: "has an undeclared property",
        "unevaluatedProperties": lambda: "has an undeclared property",
        "anyOf": lambda: "matches none of the allowed shapes",
        "oneOfNotValid": lambda: "matches none of the allowed shapes",
        "oneOfMultipleValid": lambda: "matches more than one of the exclusive shapes",
        "not": lambda: "matches a shape that is not allowed",
        "contains": lambda: "has no item of the required shape",
        "propertyNames": lambda: "has a property name that is not allowed",
    }
    make = texts.get(rule)
    return make() if make else f"breaks the schema's {rule!r} rule"


def _types(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


# --- compiling -------------------------------------------------------------------


def _draft(schema: Mapping[str, Any]) -> tuple[str, Any]:
    declared = schema.get("$schema")
    if declared is None:
        return _DRAFTS[DRAFT_2020_12]
    if not isinstance(declared, str) or declared.rstrip("#") not in _DRAFTS:
        raise ArgumentSchemaError(
            f"$schema {declared!r} is not a supported dialect"
            f" (supported: {', '.join(sorted(_DRAFTS))}; default 2020-12)"
        )
    return _DRAFTS[declared.rstrip("#")]


def _pointer(where: tuple[str, ...]) -> str:
    return "/" + "/".join(where) if where else "(root)"


def _subschemas(
    node: Mapping[str, Any], where: tuple[str, ...], draft: str
) -> Iterator[tuple[Any, tuple[str, ...], bool]]:
    """(subschema, its location, whether it stands for a whole value) of one schema node.

    A value position (a property, an item, the root…) must account for every
    property of an object there; a branch of allOf / if-then-else shares that duty
    with its siblings, so only the node holding it is closed.
    """
    whole_union = not _is_objectish(node)
    for key, value in node.items():
        if key in _MAP and key != "dependentSchemas" and isinstance(value, dict):
            # Definitions are closed where they are used ($ref beside unevaluatedProperties),
            # except in drafts without unevaluatedProperties.
            value_position = key not in ("$defs", "definitions") or draft not in _UNEVALUATED
            for name, sub in value.items():
                yield sub, (*where, key, str(name)), value_position
        elif key == "dependentSchemas" and isinstance(value, dict):
            for name, sub in value.items():
                yield sub, (*where, key, str(name)), False
        elif key in _LIST and isinstance(value, list):
            value_position = key == "prefixItems" or (key in ("anyOf", "oneOf") and whole_union)
            for index, sub in enumerate(value):
                yield sub, (*where, key, str(index)), value_position
        elif key == "items" and isinstance(value, list):
            for index, sub in enumerate(value):
                yield sub, (*where, key, str(index)), True
        elif key == "dependencies" and isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, dict | bool):
                    yield sub, (*where, key, str(name)), False
        elif key in _ONE or key == "items":
            value_position = key not in ("not", "if", "then", "else")
            yield value, (*where, key), value_position


def _is_objectish(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    return "properties" in node or kind == "object" or (isinstance(kind, list) and "object" in kind)


def _has_type(node: Mapping[str, Any], name: str) -> bool:
    kind = node.get("type")
    return kind == name or (isinstance(kind, list) and name in kind)


def _tighten(
    schema: dict[str, Any], draft: str, settings: ArgumentSettings, tool: str
) -> frozenset[tuple[str, ...]]:
    """Checks every keyword and tightens ``schema`` in place; returns the bounds added."""
    enforced = _ENFORCED[draft]
    added: set[tuple[str, ...]] = set()
    stack: list[tuple[Any, tuple[str, ...], bool]] = [(schema, (), True)]
    while stack:
        node, where, value_position = stack.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, dict):
            raise ArgumentSchemaError(
                f"at {_pointer(where)}: a schema must be an object or boolean"
            )
        ignored = sorted(k for k in node if k not in enforced and k not in _ANNOTATIONS)
        if ignored:
            raise ArgumentSchemaError(
                f"at {_pointer(where)}: keyword {ignored[0]!r} is not enforced by the"
                f" {draft} validator, so it would be ignored; remove it or express it with"
                " standard keywords"
            )
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise ArgumentSchemaError(
                f"at {_pointer(where)}: $ref {ref!r} points outside the schema;"
                " pdp resolves only references inside it (#/...)"
            )
        combining = any(k in node for k in _COMBINING)
        if (
            value_position
            and not settings.allow_undeclared
            and (_is_objectish(node) or (combining and draft in _UNEVALUATED))
            and "additionalProperties" not in node
            and "unevaluatedProperties" not in node
        ):
            # A value given by a $ref or a union ({"anyOf": [{"$ref": …}, {"type": "null"}]},
            # as pydantic writes an optional model) is closed here too: unevaluatedProperties
            # sees the properties the referenced or matching subschemas declare, and
            # concerns objects only, so other values pass as before.
            if not combining:
                node["additionalProperties"] = False
            elif draft in _UNEVALUATED:
                node["unevaluatedProperties"] = False
            else:
                raise ArgumentSchemaError(
                    f"at {_pointer(where)}: an object combining subschemas in {draft} cannot be"
                    " closed to undeclared arguments; declare additionalProperties, or set"
                    " allow_undeclared for this tool"
                )
        if _has_type(node, "string") and "maxLength" not in node:
            node["maxLength"] = settings.max_string_length
            added.add((*where, "maxLength"))
        if _has_type(node, "array") and "maxItems" not in node:
            node["maxItems"] = settings.max_items
            added.add((*where, "maxItems"))
        stack.extend(_subschemas(node, where, draft))
    return frozenset(added)


def _bound(spec: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentSchemaError(f"{where}.{key} must be a positive integer")
    return value


def parse_settings(spec: Any, defaults: ArgumentSettings, where: str) -> ArgumentSettings:
    """``arguments`` of the inventory (top level or per tool) over ``defaults``."""
    if spec is None:
        return defaults
    if not isinstance(spec, dict):
        raise ArgumentSchemaError(f"{where} must be an object")
    unknown = sorted(set(spec) - _SETTINGS_KEYS)
    if unknown:
        raise ArgumentSchemaError(
            f"{where}: unknown setting {unknown[0]!r} (expected {sorted(_SETTINGS_KEYS)})"
        )
    allow_undeclared = spec.get("allow_undeclared", defaults.allow_undeclared)
    if not isinstance(allow_undeclared, bool):
        raise ArgumentSchemaError(f"{where}.allow_undeclared must be true or false")
    raw = spec.get("raw_strings", sorted(defaults.raw_strings))
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise ArgumentSchemaError(
            f"{where}.raw_strings must be a list of argument paths (e.g. 'content',"
            " 'files[*].body', or '*' for every string)"
        )
    return ArgumentSettings(
        allow_undeclared=allow_undeclared,
        raw_strings=frozenset(raw),
        max_string_length=_bound(spec, "max_string_length", defaults.max_string_length, where),
        max_items=_bound(spec, "max_items", defaults.max_items, where),
    )


def compile_arguments(tool: str, input_schema: Any, settings: ArgumentSettings) -> ToolArguments:
    """Checks and compiles one tool's input schema; raises :class:`ArgumentSchemaError`."""
    if not isinstance(input_schema, dict):
        raise ArgumentSchemaError("input_schema must be a JSON Schema object")
    if input_schema.get("type", "object") != "object":
        raise ArgumentSchemaError(
            f"input_schema must describe an object (MCP tool input), not {input_schema['type']!r}"
        )
    draft, validator_class = _draft(input_schema)
    effective = copy.deepcopy(input_schema)
    try:
        added = _tighten(effective, draft, settings, tool)
    except RecursionError:
        raise ArgumentSchemaError("input_schema is nested too deeply") from None
    try:
        validator = validator_class(
            effective, validate_formats=True, ignore_unknown_formats=False, offline=True
        )
    except jsonschema_rs.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid schema"
        where = list(getattr(exc, "instance_path", []) or [])
        at = _pointer(tuple(str(p) for p in where)) if where else "(root)"
        raise ArgumentSchemaError(f"at {at}: {first}") from None
    except (ValueError, TypeError) as exc:
        raise ArgumentSchemaError(f"cannot compile: {exc}") from None
    return ToolArguments(
        tool=tool,
        schema=effective,
        settings=settings,
        draft=draft,
        _validator=validator,
        _added=added,
    )
