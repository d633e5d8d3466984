"""pdp's argument verdict equals the reference validator's (python-jsonschema), over
generated schemas and instances: two independent implementations of draft 2020-12."""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.engine.arguments import ArgumentSettings, compile_arguments

NAMES = ["a", "b", "c", "n-1"]
TEXT = st.text(alphabet="abcxyz019.-@ é", max_size=6)
PATTERNS = ["^[a-c]+$", "^x", "[0-9]{2}", "^$"]
SCALARS = st.one_of(TEXT, st.integers(-20, 20), st.booleans())


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    string = st.fixed_dictionaries(
        {"type": st.just("string")},
        optional={
            "minLength": st.integers(0, 3),
            "maxLength": st.integers(0, 5),
            "pattern": st.sampled_from(PATTERNS),
            "format": st.just("ipv4"),
        },
    )
    integer = st.fixed_dictionaries(
        {"type": st.sampled_from(["integer", "number"])},
        optional={
            "minimum": st.integers(-10, 10),
            "maximum": st.integers(-10, 10),
            "exclusiveMinimum": st.integers(-10, 10),
            "exclusiveMaximum": st.integers(-10, 10),
            "multipleOf": st.integers(1, 4),
        },
    )
    enum = st.fixed_dictionaries({"enum": st.lists(SCALARS, min_size=1, max_size=3)})
    const = st.fixed_dictionaries({"const": SCALARS})
    array = st.fixed_dictionaries(
        {
            "type": st.just("array"),
            "items": st.sampled_from([{"type": "string"}, {"type": "integer"}]),
        },
        optional={
            "minItems": st.integers(0, 2),
            "maxItems": st.integers(0, 3),
            "uniqueItems": st.booleans(),
        },
    )
    return st.one_of(string, integer, enum, const, array, st.just({"type": "boolean"}))


def objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda props, required, extra: {
            "type": "object",
            "properties": props,
            "required": sorted(set(required) & set(props)),
            "additionalProperties": extra,
        },
        st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
        st.lists(st.sampled_from(NAMES), max_size=3),
        st.booleans(),
    )


SCHEMAS = objects(st.one_of(leaf(), objects(leaf())))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NAMES + ["z"]), inner, max_size=3),
    ),
    max_leaves=8,
)
INSTANCES = st.dictionaries(st.sampled_from(NAMES + ["z"]), JSON, max_size=5)
REFERENCE_FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS, st.lists(INSTANCES, min_size=1, max_size=6))
def test_pdp_verdict_equals_the_reference_validator(
    schema: dict[str, Any], instances: list[dict[str, Any]]
) -> None:
    checks = compile_arguments("t/t", schema, ArgumentSettings())
    reference = jsonschema.Draft202012Validator(schema, format_checker=REFERENCE_FORMATS)
    for instance in instances:
        expected = reference.is_valid(instance)
        violations = checks.violations(instance)
        assert (not violations) == expected, (schema, instance, violations)


def combined(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    pair = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda xs: {"anyOf": xs}, pair),
        st.builds(lambda xs: {"oneOf": xs}, pair),
        st.builds(lambda xs: {"allOf": xs}, pair),
        st.builds(lambda x: {"not": x}, children),
        st.builds(lambda x, y: {"if": x, "then": y}, children, children),
    )


OPEN_SCHEMAS = st.builds(
    lambda props, required, defs: {
        "type": "object",
        "properties": {**props, "r": {"$ref": "#/$defs/d"}},
        "required": sorted(set(required) & set(props)),
        "$defs": {"d": defs},
    },
    st.dictionaries(st.sampled_from(NAMES), st.one_of(leaf(), combined(leaf())), max_size=4),
    st.lists(st.sampled_from(NAMES), max_size=3),
    st.one_of(leaf(), combined(leaf())),
)
INSTANCES_WITH_REF = st.dictionaries(st.sampled_from([*NAMES, "r", "z"]), JSON, max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPEN_SCHEMAS, st.lists(INSTANCES_WITH_REF, min_size=1, max_size=6))
def test_combinators_and_references_agree_with_the_reference(
    schema: dict[str, Any], instances: list[dict[str, Any]]
) -> None:
    # allow_undeclared: the schema exactly as written, so the verdicts must match.
    checks = compile_arguments("t/t", schema, ArgumentSettings(allow_undeclared=True))
    reference = jsonschema.Draft202012Validator(schema, format_checker=REFERENCE_FORMATS)
    for instance in instances:
        violations = checks.violations(instance)
        assert (not violations) == reference.is_valid(instance), (schema, instance, violations)
        assert all(v.path.startswith("arguments") and v.rule for v in violations)
