"""Validation by action classes (pdp.engine.validation) is exact.

Loading a directory confirms validity against small per-class schemas and sends
what it cannot confirm to Cedar's full validation; the outcome — the compiled set
or every diagnostic, in order — must equal validating every file against the full
schema. Hypothesis generates schemas whose tools differ in context (so a policy
can be valid for one tool and invalid for another of the same group), nested
action groups, and policies over every scope form, with conditions that are
valid, invalid for some tools, name ``action`` or ``Action`` entities, or do not
parse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pdp.engine.store
from pdp.engine import PolicyLoadError, load_policies
from pdp.engine.scope import (
    Head,
    ScanFallback,
    _fast_head,
    _read_head,
    head_from_est,
    scan_head,
)
from pdp.engine.source import split_statements
from pdp.engine.validation import SchemaClasses, confirm_valid, scan_heads, scope_text
from tests.conftest import ANY_INPUT, EXAMPLE_POLICIES, MINI_SCHEMA

TAIL = (
    "intent?: Intent, tool: ToolRef, agent: AgentRef, gateway: String, session: String, time: Time"
)
TOOLS = {
    # name: (groups, input record); get and find share their appliesTo
    "crm/get": (["crm", "read"], "id: String"),
    "crm/find": (["crm", "read"], "id: String"),
    "crm/delete": (["crm", "write"], "id: String, force: Bool"),
    "git/read": (["git", "read"], "path: String"),
    "git/push": (["git", "write"], "path: String, force: Bool"),
}


def declare(name: str, groups: list[str], record: str, principal: str = "Agent") -> str:
    within = f" in [{', '.join(f'Action::{json.dumps(g)}' for g in groups)}]" if groups else ""
    return (
        f'action "{name}"{within} appliesTo {{\n  principal: [{principal}], resource: [McpServer],'
        f"\n  context: {{ input: {{ {record} }}, {TAIL} }}\n}};\n"
    )


SCHEMA = (
    MINI_SCHEMA.split("action ")[0]
    + 'action "all";\naction "crm", "git" in [Action::"all"];\naction "read", "write";\n'
    + "".join(declare(name, *spec) for name, spec in TOOLS.items())
    + declare("lonely", [], "id: String")  # in no group, same appliesTo as crm/get
    + declare("admin", [], "id: String", principal="AgentGroup")
    + 'entity Tier enum ["gold", "silver"];\n'  # the validator checks these ids
).replace("entity Agent in [AgentGroup];", "entity Agent in [AgentGroup] { team?: String };")
SCHEMA = SCHEMA.replace("entity McpServer {", "entity McpServer in [Tier] {")
INVENTORY = {
    "agent_groups": {"g": {}},
    "agents": {"spiffe://acme.test/agent/a": {"groups": ["g"]}},
    "servers": {
        "crm": {"tools": {t: {"input_schema": ANY_INPUT} for t in ("get", "find", "delete")}},
        "git": {"tools": {t: {"input_schema": ANY_INPUT} for t in ("read", "push")}},
    },
}
ACTIONS = [*TOOLS, "admin", "all", "crm", "git", "read", "write", "ghost"]

principal = st.sampled_from(
    [
        "principal",
        'principal == Agent::"a"',
        'principal in AgentGroup::"g"',
        "principal is Agent",
        "principal is AgentGroup",
        'principal is Agent in AgentGroup::"g"',
        'principal == AgentGroup::"g"',
    ]
)
entity = st.sampled_from(ACTIONS).map(lambda a: f'Action::"{a}"')
space = st.sampled_from([" ", "", "\n  ", " // note\n "])
action = st.one_of(
    st.just("action"),
    st.tuples(space, entity).map(lambda t: f"action =={t[0]}{t[1]}"),
    st.tuples(space, entity).map(lambda t: f"action in{t[0] or ' '}{t[1]}"),
    st.tuples(st.lists(entity, max_size=3), space, st.booleans()).map(
        lambda t: f"action in [{t[1]}{', '.join(t[0])}{',' if t[2] and t[0] else ''}]"
    ),
)
resource = st.sampled_from(
    [
        "resource",
        'resource == McpServer::"crm"',
        "resource is McpServer",
        "resource is Agent",
        'resource in Tier::"gold"',
        'resource in Tier::"bronze"',
    ]
)
condition = st.sampled_from(
    [
        "",
        'when { context.input.id == "x" }',
        "when { context.input.force }",
        'when { context.input has id && context.input.id == "x" }',
        'when { context.session == "s" }',
        "unless { context.time.hour < 6 }",
        'when { action == Action::"crm/get" }',
        'when { action in Action::"read" }',
        'when { Action::"crm/get" == Action::"crm/find" }',
        'when { context has action && context.action == "x" }',
        'when { principal.team == "t" }',
        'when { principal has team && principal.team == "t" }',
        'when { context.input.path like "src/*" }',
        'when { resource.tools.contains("x") }',
        "when { 1 + }",
    ]
)
policy = st.tuples(st.sampled_from(["permit", "forbid"]), principal, action, resource, condition)


def text_of(i: int, effect: str, p: str, a: str, r: str, c: str) -> str:
    return f'@id("p{i}")\n@reason("r{i}")\n{effect} ({p}, {a}, {r})\n{c};'


def outcome(root: Path) -> Any:
    """The compiled set, or the diagnostics. Cedar names one failing environment's
    action in some messages, any of them, from run to run (its own iteration order,
    with or without pdp): that name is masked, and errors of one line compared as a set."""
    try:
        compiled = load_policies(root)
    except PolicyLoadError as exc:
        messages = [re.sub(r'Action::"[^"]*"', 'Action::"…"', str(d)) for d in exc.diagnostics]
        lines = [m.rsplit(": ", 1)[0].split(": ")[0] for m in messages]
        return lines, sorted(messages)
    return compiled.version, [(u.policy_id, u.scope, u.text, u.line) for u in compiled.units]


def exact_outcome(root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(
            pdp.engine.store, "confirm_valid", lambda _s, files, *_: set(range(len(files)))
        )
        return outcome(root)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(files=st.lists(st.lists(policy, max_size=6), min_size=1, max_size=3))
def test_fast_validation_equals_full_validation(
    files: list[list[tuple[str, ...]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("p")
    (root / "schema.cedarschema").write_text(SCHEMA)
    (root / "entities.json").write_text(json.dumps(INVENTORY))
    number = 0
    for index, policies in enumerate(files):
        texts = []
        for p in policies:
            texts.append(text_of(number, *p))
            number += 1
        (root / f"f{index}.cedar").write_text("\n\n".join(texts))
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert outcome(root) == exact_outcome(root, monkeypatch)


def test_the_schema_under_test_is_read_in_classes() -> None:
    classes = SchemaClasses.of(cedarpy.Schema.from_str(SCHEMA))
    assert classes is not None
    # get and find share one class; the groups have none; admin has its own
    assert len(classes._representatives) == len(TOOLS) - 1 + 1  # + admin; lonely = get


def validated_schemas(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[str]:
    """Loads ``root``; Cedar's rendering of the schema of every validate call."""
    used: list[str] = []
    real = cedarpy.validate_policies

    def spy(text: str, schema: Any, **kwargs: Any) -> Any:
        used.append(str(schema))
        return real(text, schema, **kwargs)

    monkeypatch.setattr(cedarpy, "validate_policies", spy)
    load_policies(root)
    return used


def test_a_valid_set_never_goes_to_the_full_schema(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "schema.cedarschema").write_text(SCHEMA)
    (root / "entities.json").write_text(json.dumps(INVENTORY))
    (root / "a.cedar").write_text(
        "\n".join(
            text_of(
                i, "permit", 'principal == Agent::"a"', f'action == Action::"{t}"', "resource", ""
            )
            for i, t in enumerate(TOOLS)
        )
        + "\n"
        + text_of(99, "forbid", "principal", 'action in Action::"all"', "resource", "")
    )
    used = validated_schemas(monkeypatch, root)
    assert used and str(cedarpy.Schema.from_str(SCHEMA)) not in used
    assert {s.count('action "') for s in used} == {1}  # one action per class


def test_policies_of_one_template_are_checked_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "schema.cedarschema").write_text(SCHEMA)
    inventory = {**INVENTORY, "agents": {f"spiffe://acme.test/agent/a{i}": {} for i in range(50)}}
    (root / "entities.json").write_text(json.dumps(inventory))
    (root / "a.cedar").write_text(
        "\n".join(
            text_of(
                i,
                "permit",
                f'principal == Agent::"spiffe://acme.test/agent/a{i}"',
                'action in Action::"read"',
                'resource == McpServer::"crm"',
                'when { context.session == "s" }',
            )
            for i in range(50)
        )
    )
    texts: list[str] = []
    real = cedarpy.validate_policies

    def spy(text: str, schema: Any, **kwargs: Any) -> Any:
        texts.append(text)
        return real(text, schema, **kwargs)

    monkeypatch.setattr(cedarpy, "validate_policies", spy)
    assert len(load_policies(root).units) == 54
    checked = "\n".join(texts)
    # once per class "read" reaches (crm/get = crm/find, git/read), not once per policy
    assert checked.count('context.session == "s"') == 2


def test_a_policy_invalid_for_one_tool_of_a_group_is_reported_exactly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "schema.cedarschema").write_text(SCHEMA)
    (root / "entities.json").write_text(json.dumps(INVENTORY))
    # valid for crm/get and crm/find, not for git/read: the "read" group holds both
    (root / "a.cedar").write_text(
        text_of(0, "permit", "principal", 'action in Action::"read"', "resource", "")
        + "\n"
        + text_of(
            1,
            "permit",
            "principal",
            'action in Action::"read"',
            "resource",
            'when { context.input.id == "x" }',
        )
    )
    found = outcome(root)
    assert isinstance(found, tuple) and found[0] == ["a.cedar:5"]
    assert found == exact_outcome(root, monkeypatch)


def test_namespaced_schemas_use_full_validation() -> None:
    schema = cedarpy.Schema.from_str(
        'namespace N { entity A; action "x" appliesTo { principal: A, resource: A }; }'
    )
    assert SchemaClasses.of(schema) is None
    statements = split_statements('@id("a") permit (principal, action, resource);')
    assert confirm_valid(schema, [(statements, scan_heads(statements))]) == {0}


def test_shipped_schemas_are_read_in_classes() -> None:
    for text in (MINI_SCHEMA, (EXAMPLE_POLICIES / "schema.cedarschema").read_text()):
        assert SchemaClasses.of(cedarpy.Schema.from_str(text)) is not None


def test_shipped_examples_load_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    assert outcome(EXAMPLE_POLICIES) == exact_outcome(EXAMPLE_POLICIES, monkeypatch)


# --- the head scanner's regular expression -------------------------------------------

entity_text = st.sampled_from(
    ['Agent::"a"', 'AgentGroup::"g/h"', 'Ns::Sub::T::"x y"', 'Action::"crm/get"', 'X::""']
)
annotation = st.sampled_from(['@id("a")', '@reason("b c")', "@flag", '@x ( "y" )', '@id("a")'])
gap = st.sampled_from(["", " ", "\n", "  \n\t", " // c (x), y\n", '\n// @id("z")\n'])


@st.composite
def heads(draw: st.DrawFn) -> str:
    def g() -> str:
        return draw(gap)

    def variable(name: str) -> str:
        form = draw(st.integers(0, 4))
        if form == 0:
            return name
        if form in (1, 2):
            return f"{name}{g() or ' '}{'==' if form == 1 else 'in'} {g()}{draw(entity_text)}"
        kind = draw(st.sampled_from(["Agent", "Ns::T"]))
        head = f"{name} is {g()}{kind}"
        return head if form == 3 else f"{head} in{g() or ' '}{draw(entity_text)}"

    form = draw(st.integers(0, 3))
    if form == 0:
        action_text = "action"
    elif form == 1:
        action_text = f"action =={g()}{draw(entity_text)}"
    elif form == 2:
        action_text = f"action in {draw(entity_text)}"
    else:
        items = draw(st.lists(entity_text, max_size=3))
        comma = "," if items and draw(st.booleans()) else ""
        action_text = f"action in [{g()}{(',' + g()).join(items)}{comma}{g()}]"
    annotations = "".join(f"{a}{g() or ' '}" for a in draw(st.lists(annotation, max_size=3)))
    effect = draw(st.sampled_from(["permit", "forbid"]))
    trailing = "," if draw(st.booleans()) else ""
    return (
        f"{g()}{annotations}{effect}{g()}({g()}{variable('principal')},{g()}{action_text}"
        f"{g()},{g()}{variable('resource')}{trailing}{g()}){g()}when {{ true }};"
    )


def rebuilt(head: Head, text: str) -> str:
    action = head.scope.action
    listed = ", ".join(f'{kind}::"_"' for kind, _ in action.entities)
    action_text = {
        "any": "action",
        "eq": f"action == {listed}",
        "in": f"action in [{listed}]" if len(action.entities) != 1 else f"action in {listed}",
    }[action.op]
    return (
        f"{head.effect} ({scope_text('principal', head.scope.principal, lambda _: False)},"
        f" {action_text}, {scope_text('resource', head.scope.resource, lambda _: False)})"
        + text[head.body :]
    )


@settings(max_examples=300, deadline=None)
@given(text=heads())
def test_fast_head_agrees_with_the_token_reader_and_cedar(text: str) -> None:
    try:
        (est,) = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values()
    except ValueError:
        # Cedar refuses it. Where a scanner does not, the policy as validation rebuilds
        # it (annotations dropped, ids elided, pdp.engine.validation) is refused too.
        try:
            head = _read_head(text)
        except ScanFallback:
            assert _fast_head(text) is None
            return
        with pytest.raises(ValueError):
            cedarpy.PolicySet.from_str(rebuilt(head, text))
        return
    slow = _read_head(text)
    assert slow == head_from_est(est)
    assert scan_head(text) == slow
    fast = _fast_head(text)
    if fast is not None:
        assert fast == slow
        assert fast.body == slow.body
        assert text[: fast.body].endswith(")") and text.endswith(")" + text[fast.body :])
