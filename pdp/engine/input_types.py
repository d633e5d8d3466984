"""Cedar's view of a tool's input schema, and the check that the Cedar schema agrees.

``context.input`` reaches Cedar only after it validated against the tool's JSON
Schema (pdp.engine.arguments), so the Cedar schema must declare each argument with
the type that JSON Schema gives it: then a condition on ``context.input.amount``
never meets a string. ``pdp schema from-mcp`` writes the declarations from the
same schema (:func:`record_type`); :func:`check_input_types` confirms at load that
the declarations in ``schema.cedarschema`` agree, hand-edited ones included, by
asking Cedar's validator to type-check one small probe policy per argument.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import cedarpy

from pdp.engine.validation import CHUNK, SchemaClasses

MAX_DEPTH = 8
_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_JSON_KIND = {str: "string", int: "integer", bool: "boolean"}


def attr_name(name: str) -> str:
    """An attribute name as a Cedar schema writes it."""
    return name if _IDENT.fullmatch(name) else json.dumps(name)


def resolve(schema: Any, root: Any) -> Any:
    """Follows local ``$ref`` s and unwraps a union with null (pydantic's optional fields):
    pdp refuses nulls, so ``{"anyOf": [X, {"type": "null"}]}`` takes the shape of X."""
    for _ in range(MAX_DEPTH):
        if not isinstance(schema, dict):
            return schema
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            schema = target
            continue
        union = schema.get("anyOf", schema.get("oneOf"))
        if isinstance(union, list):
            rest = [s for s in union if not (isinstance(s, dict) and s.get("type") == "null")]
            if len(rest) == 1:
                schema = rest[0]
                continue
        return schema
    return None


def _kind(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: pdp refuses nulls, so take the rest
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    if kind is None and "const" in schema:
        kind = _JSON_KIND.get(type(schema["const"]))
    if kind is None and isinstance(schema.get("enum"), list) and schema["enum"]:
        kinds = {_JSON_KIND.get(type(v)) for v in schema["enum"]}
        kind = kinds.pop() if len(kinds) == 1 else None
    if kind is None and "properties" in schema:
        kind = "object"
    return kind if isinstance(kind, str) else None


def cedar_type(schema: Any, depth: int = 0, root: Any = None) -> str | None:
    """The Cedar type of values that validate against ``schema``; None where Cedar has
    no faithful type (a union of different shapes, an untyped value): such an argument
    is left out of the declaration, so no policy can test it as something it may not be."""
    root = schema if root is None else root
    schema = resolve(schema, root)
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    kind = _kind(schema)
    if kind == "string":
        return "String"
    if kind in ("integer", "number"):
        return "Long"  # pdp passes integral numbers only (Cedar has no floats)
    if kind == "boolean":
        return "Bool"
    if kind == "array":
        item = cedar_type(schema.get("items"), depth + 1, root)
        return f"Set<{item}>" if item is not None else None
    if kind == "object":
        return record_type(schema, depth + 1, root)
    return None


def record_type(schema: Mapping[str, Any], depth: int = 0, root: Any = None) -> str:
    """The Cedar record type of an object schema (its properties with a Cedar type)."""
    root = schema if root is None else root
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    fields = []
    for name in sorted(properties):
        kind = cedar_type(properties[name], depth, root)
        if kind is None:
            continue
        optional = "" if name in required else "?"
        fields.append(f"{attr_name(name)}{optional}: {kind}")
    return "{ " + ", ".join(fields) + " }" if fields else "{}"


# --- agreement with the Cedar schema ------------------------------------------------

_SAMPLES = {"String": '"x"', "Long": "0", "Bool": "true"}


def _access(base: str, name: str) -> str:
    return f"{base}.{name}" if _IDENT.fullmatch(name) else f"{base}[{json.dumps(name)}]"


def _has(base: str, name: str) -> str:
    return f"{base} has {name if _IDENT.fullmatch(name) else json.dumps(name)}"


def _typed(expression: str, kind: str) -> str | None:
    """A condition Cedar's validator accepts only if ``expression`` has type ``kind``."""
    if kind == "String":
        return f'{expression} like "*"'
    if kind == "Long":
        return f"{expression} > 0"
    if kind == "Bool":
        return f"({expression} || true)"
    if kind.startswith("Set<"):
        sample = _SAMPLES.get(kind[4:-1])
        return f"{expression}.contains({sample})" if sample else f"{expression}.isEmpty()"
    return None


def _probes(
    schema: Mapping[str, Any], root: Any, base: str, guards: tuple[str, ...], path: str, depth: int
) -> Iterator[tuple[str, str, str]]:
    """(condition, argument path, what it checks) for each argument of an object schema.

    A typed probe is guarded by ``has``, so an argument the Cedar schema leaves out
    (no policy can read it) passes; an optional argument also gets an unguarded probe
    that must fail, which passes only if Cedar declares the argument (and the record
    holding it) required.
    """
    if depth > MAX_DEPTH:
        return
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    for name in sorted(properties):
        sub = resolve(properties[name], root)
        kind = cedar_type(sub, depth, root)
        if kind is None or not isinstance(sub, dict):
            continue
        expression = _access(base, name)
        where = f"{path}.{name}"
        own_guards = (*guards, _has(base, name))
        if kind.startswith("{"):
            yield from _probes(sub, root, expression, own_guards, where, depth + 1)
        else:
            typed = _typed(expression, kind)
            if typed is not None:
                yield " && ".join([*own_guards, f"({typed})"]), where, f"type:{kind}"
        if name not in required:
            # Unguarded: it type-checks only if Cedar declares the whole path required.
            yield f"{expression} == {expression}", where, "optional"


def check_input_types(
    schema: cedarpy.Schema,
    inputs: Mapping[str, Mapping[str, Any]],
    classes: SchemaClasses | None,
) -> list[tuple[str, str]]:
    """(action, problem) for each argument whose Cedar declaration disagrees with the
    tool's input schema (``inputs``: action id -> JSON Schema).

    Probes depend only on the action's ``appliesTo`` and the input schema, so tools
    that share both (one MCP server deployed many times) are checked once, against
    the small schema of their class (``classes``: pdp.engine.validation.SchemaClasses
    of ``schema``, or None to check against the full schema): Cedar's validator
    costs grow with the schema's actions.
    """
    groups: dict[tuple[object, str], list[str]] = {}
    for action in sorted(inputs):
        index = classes.class_of(action) if classes is not None else None
        where: object = index if index is not None else action
        key = json.dumps(inputs[action], sort_keys=True)
        groups.setdefault((where, key), []).append(action)
    batches: dict[object, list[tuple[str, str, str, list[str]]]] = {}  # schema -> probes
    for (where, _), actions in groups.items():
        input_schema = inputs[actions[0]]
        probe_action = actions[0]
        if classes is not None and isinstance(where, int):
            probe_action = classes.representative(where)
        for condition, path, check in _probes(
            input_schema, input_schema, "context.input", (), "context.input", 0
        ):
            text = (
                f"permit (principal, action == Action::{json.dumps(probe_action)}, resource)"
                f" when {{ {condition} }};"
            )
            batches.setdefault(where if isinstance(where, int) else None, []).append(
                (text, path, check, actions)
            )
    problems: list[tuple[str, str]] = []
    for where, probes in batches.items():
        against = (
            classes.schema(where) if classes is not None and isinstance(where, int) else schema
        )
        for begin in range(0, len(probes), CHUNK):
            chunk = probes[begin : begin + CHUNK]
            failed = _failures("\n".join(text for text, _, _, _ in chunk), against)
            for position, (_, path, check, actions) in enumerate(chunk):
                problem = _problem(path, check, failed.get(position))
                if problem is not None:
                    problems += [(action, problem) for action in actions]
    return sorted(problems)


def _failures(text: str, schema: cedarpy.Schema) -> dict[int, str]:
    """Cedar's first validation error per policy (by position in ``text``)."""
    result = cedarpy.validate_policies(text, schema)
    failed: dict[int, str] = {}
    for error in result.errors:
        number = str(error.policy_id).removeprefix("policy")
        if number.isdigit():
            failed.setdefault(int(number), str(error.error))
    return failed


def _problem(path: str, check: str, error: str | None) -> str | None:
    if check == "optional":
        if error is not None:
            return None
        return (
            f"{path} is optional in the tool's input_schema but required in the Cedar"
            " schema: declare it with '?' (a call without it would make every policy"
            " reading it an evaluation error)"
        )
    if error is None:
        return None
    kind = check.removeprefix("type:")
    return (
        f"{path} is {kind} in the tool's input_schema but the Cedar schema declares"
        f" another type ({error.split(', ', 1)[-1]}); regenerate it with"
        " `pdp schema from-mcp`"
    )
