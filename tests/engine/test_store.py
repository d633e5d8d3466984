"""Loading policy directories: every problem is located by file and line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.engine import PolicyLoadError, load_policies
from pdp.engine.source import Statement, split_statements
from pdp.engine.store import BUILTIN_FLOOR, policy_version
from tests.conftest import EXAMPLE_POLICIES, MINI_INVENTORY, READ_POLICY, PolicyDirFactory


def problems(root: object) -> list[str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(root)  # type: ignore[arg-type]
    return [str(d) for d in caught.value.diagnostics]


def test_examples_load_with_the_builtin_floor() -> None:
    compiled = load_policies(EXAMPLE_POLICIES)
    ids = set(compiled.policies)
    assert {
        "floor.intent_required",
        "floor.tool_outside_intent",
        "floor.intent_expired",
        "unknown_tool",
    } <= ids
    assert all(compiled.policies[i].floor for i in ids if i.startswith("floor."))
    assert len(compiled.version) == 16


def test_floor_always_loads_even_for_a_directory_without_it(
    make_policy_dir: PolicyDirFactory,
) -> None:
    compiled = load_policies(make_policy_dir())
    assert "floor.intent_required" in compiled.policies
    assert "support.read" in compiled.policies


def test_version_is_a_content_hash(make_policy_dir: PolicyDirFactory) -> None:
    first = load_policies(make_policy_dir()).version
    assert load_policies(make_policy_dir()).version == first
    changed = make_policy_dir({"read.cedar": READ_POLICY.replace("may read", "may read!")})
    assert load_policies(changed).version != first


def test_policy_version_is_the_loaded_version_without_loading(
    make_policy_dir: PolicyDirFactory,
) -> None:
    assert policy_version(EXAMPLE_POLICIES) == load_policies(EXAMPLE_POLICIES).version
    root = make_policy_dir({"read.cedar": READ_POLICY, "floor/extra.cedar": "", "b/c.cedar": ""})
    assert policy_version(root) == load_policies(root).version
    (root / "b" / "c.cedar").write_text("// changed")
    assert policy_version(root) == load_policies(root).version
    with pytest.raises(PolicyLoadError):
        policy_version(root / "missing")


def test_missing_id_is_reported_with_file_and_line(make_policy_dir: PolicyDirFactory) -> None:
    text = READ_POLICY + '\n\n@reason("no id")\npermit (principal, action, resource);\n'
    root = make_policy_dir({"sub/read.cedar": text})
    assert problems(root) == ['sub/read.cedar:7: policy has no @id("…") annotation']


def test_missing_reason(make_policy_dir: PolicyDirFactory) -> None:
    root = make_policy_dir({"a.cedar": '@id("x")\npermit (principal, action, resource);'})
    assert problems(root) == ['a.cedar:1: policy "x" has no @reason("…") annotation']


def test_parse_error_is_located(make_policy_dir: PolicyDirFactory) -> None:
    text = (
        READ_POLICY
        + '\n@id("bad")\n@reason("r")\npermit (principal, action, resource)\nwhen { 1 + };\n'
    )
    found = problems(make_policy_dir({"a.cedar": text}))
    assert len(found) == 1 and found[0].startswith("a.cedar:9: ")  # the `when` line


PARSE_ERRORS = """// the line of the error, not of the policy
@id("a")
@reason("r")
permit (
  principal,
  action,
  resource
) when {
  context.tool.name == "x" &&
  foo(2)
};

@id("b")
@reason("r")
permit (principal, action, resource) when {
  context.tool.name ==
};
@id("c")
@reason("r")
permit (principal, action, resource) when { context.tool.name == "abc
};
@id("d")
@id("d")
permit (principal, action, resource);
@id("e")
permit (principal,
  action, resource"""


def test_parse_errors_name_the_line_of_the_error(make_policy_dir: PolicyDirFactory) -> None:
    found = problems(make_policy_dir({"a.cedar": PARSE_ERRORS}))
    assert [line.split(": ", 1)[0] for line in found] == [
        "a.cedar:10",  # `foo` is not a valid function
        "a.cedar:17",  # unexpected token `}`
        "a.cedar:20",  # an unterminated string
        "a.cedar:23",  # the second @id
        "a.cedar:27",  # unexpected end of input: where the policy stops
    ]
    assert "`foo` is not a valid function" in found[0]


def test_validation_error_is_located_and_named(make_policy_dir: PolicyDirFactory) -> None:
    text = READ_POLICY + (
        '\n@id("typo")\n@reason("r")\npermit (principal, action == Action::"crm/get_ticket",'
        ' resource)\nwhen { context.input.ticket_idx == "T" };\n'
    )
    found = problems(make_policy_dir({"a.cedar": text}))
    assert len(found) == 1
    assert found[0].startswith("a.cedar:6: ")
    assert '"typo"' in found[0] and "ticket_idx" in found[0]


def test_unknown_entity_type_fails_validation(make_policy_dir: PolicyDirFactory) -> None:
    text = '@id("u")\n@reason("r")\npermit (principal == User::"alice", action, resource);'
    found = problems(make_policy_dir({"a.cedar": text}))
    assert found and found[0].startswith("a.cedar:1: ")


def test_duplicate_ids_name_both_places(make_policy_dir: PolicyDirFactory) -> None:
    root = make_policy_dir({"a.cedar": READ_POLICY, "b.cedar": READ_POLICY})
    assert problems(root) == [
        'b.cedar:2: duplicate @id "support.read" (first defined at a.cedar:2)'
    ]


def test_reserved_id(make_policy_dir: PolicyDirFactory) -> None:
    text = '@id("default_deny")\n@reason("r")\nforbid (principal, action, resource);'
    assert problems(make_policy_dir({"a.cedar": text})) == [
        'a.cedar:1: @id "default_deny" is reserved by pdp'
    ]


def test_floor_cannot_be_overridden_by_a_permit(make_policy_dir: PolicyDirFactory) -> None:
    text = '@id("f")\n@reason("r")\npermit (principal, action, resource);'
    found = problems(make_policy_dir({"floor/extra.cedar": text}))
    assert found == [
        'floor/extra.cedar:1: floor policy "f" must be a forbid policy (the floor only denies)'
    ]


def test_author_cannot_shadow_a_floor_id(make_policy_dir: PolicyDirFactory) -> None:
    text = '@id("floor.intent_required")\n@reason("r")\npermit (principal, action, resource);'
    found = problems(make_policy_dir({"a.cedar": text}))
    assert found[0].startswith('a.cedar:1: duplicate @id "floor.intent_required"')


def test_missing_schema_and_inventory(make_policy_dir: PolicyDirFactory) -> None:
    found = problems(make_policy_dir(schema=None, inventory=None))
    assert "schema.cedarschema: schema file is missing" in found
    assert "entities.json: inventory file is missing" in found


def test_broken_inventory_json_is_located(make_policy_dir: PolicyDirFactory) -> None:
    found = problems(make_policy_dir(inventory='{"agents": {\n  "x": }'))
    assert found[0].startswith("entities.json:2: invalid JSON")


def test_inventory_errors(make_policy_dir: PolicyDirFactory) -> None:
    inventory = json.loads(json.dumps(MINI_INVENTORY))
    inventory["agents"]["spiffe://ACME/agent"] = {"groups": ["nope"]}
    inventory["agents"]["spiffe://acme.test/agent/bot"]["groups"] = ["ghosts"]
    found = problems(make_policy_dir(inventory=inventory))
    assert any("'spiffe://ACME/agent' is not a valid SPIFFE ID" in f for f in found)
    assert any("group 'ghosts' is not declared" in f for f in found)


def test_group_cycles_are_named(make_policy_dir: PolicyDirFactory) -> None:
    inventory = json.loads(json.dumps(MINI_INVENTORY))
    inventory["agent_groups"] = {
        "a": {"parents": ["b"]},
        "b": {"parents": ["c"]},
        "c": {"parents": ["a"]},
        "support": {},
    }
    assert "entities.json: agent_groups: parent cycle a -> b -> c -> a" in problems(
        make_policy_dir(inventory=inventory)
    )


def test_inventory_and_schema_must_agree(make_policy_dir: PolicyDirFactory) -> None:
    inventory = json.loads(json.dumps(MINI_INVENTORY))
    inventory["servers"]["crm"]["tools"]["export"] = {"input_schema": {"type": "object"}}
    inventory["servers"]["crm"]["tools"]["get_ticket"]["groups"] = ["destructive"]
    del inventory["servers"]["crm"]["tools"]["delete_ticket"]
    found = problems(make_policy_dir(inventory=inventory))
    assert any('declares no action "crm/export"' in f for f in found)
    assert any(
        "crm/get_ticket: groups ['destructive'] differ from the schema's ['read']" in f
        for f in found
    )
    assert any('declares tool action "crm/delete_ticket" but no such tool' in f for f in found)


def test_broken_schema(make_policy_dir: PolicyDirFactory) -> None:
    found = problems(make_policy_dir(schema="entity Agent in [;"))
    assert found[0].startswith("schema.cedarschema: invalid schema")


def test_templates_are_refused_clearly(make_policy_dir: PolicyDirFactory) -> None:
    text = '@id("t")\n@reason("r")\npermit (principal == ?principal, action, resource);'
    assert problems(make_policy_dir({"a.cedar": text})) == [
        "a.cedar:1: policy templates are not supported yet (use ==/in)"
    ]


def test_missing_directory() -> None:
    assert problems("/nonexistent/policies") == [
        "/nonexistent/policies: policy directory does not exist"
    ]


def test_statement_splitter_ignores_semicolons_in_strings_and_comments() -> None:
    text = (
        '// a comment; with a semicolon\n@id("a;b")\npermit (principal, action, resource)\n'
        'when { context.x == "q\\";" };\n\n  forbid (principal, action, resource);'
    )
    statements = split_statements(text)
    assert [s.line for s in statements] == [2, 6]
    assert statements[0].text.endswith('"q\\";" };')


# The splitter before it read whole statements with one expression: a lexer over
# strings, comments, ";" and runs of anything else. The two must agree on any text.
_LEXEME = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|;|[^"/;]+|.', re.S)


def lexer_split(text: str) -> list[Statement]:
    statements: list[Statement] = []
    start: int | None = None
    line = 1
    start_line = 1
    for match in _LEXEME.finditer(text):
        lexeme = match.group(0)
        if start is None and not lexeme.startswith("//"):
            stripped = lexeme.lstrip()
            if stripped:
                start = match.start() + (len(lexeme) - len(stripped))
                start_line = line + lexeme.count("\n", 0, len(lexeme) - len(stripped))
        if lexeme == ";" and start is not None:
            statements.append(Statement(text[start : match.end()], start_line))
            start = None
        line += lexeme.count("\n")
    if start is not None and text[start:].strip():
        statements.append(Statement(text[start:], start_line))
    return statements


@settings(max_examples=500, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(
            ['"', ";", "/", "//", "\\", "\n", " ", "\t", "a", "@id", '"x;y"', "\u00a0", "\u2028"]
        ),
        max_size=40,
    ).map("".join)
)
def test_statement_splitter_agrees_with_a_lexer(text: str) -> None:
    assert split_statements(text) == lexer_split(text)


def test_statement_splitter_agrees_with_a_lexer_on_the_examples() -> None:
    for path in EXAMPLE_POLICIES.rglob("*.cedar"):
        text = path.read_text()
        assert split_statements(text) == lexer_split(text)


def test_a_directory_copied_without_symlinks_loads_its_floor_copy_as_the_floor(
    tmp_path: Path,
) -> None:
    # cp -rL, a Kubernetes ConfigMap, an image build: floor/ holds copies, not a link.
    copy = Path(shutil.copytree(EXAMPLE_POLICIES, tmp_path / "copied", symlinks=False))
    assert not (copy / "floor").is_symlink() and (copy / "floor" / "intent.cedar").is_file()
    compiled = load_policies(copy)
    original = load_policies(EXAMPLE_POLICIES)
    assert compiled.version == original.version == policy_version(copy)
    assert len(compiled) == len(original)
    # A changed copy of the built-in floor is an error naming both files.
    floor_file = copy / "floor" / "intent.cedar"
    floor_file.write_text(floor_file.read_text().replace("<= context.time.epoch", "< 0"))
    with pytest.raises(PolicyLoadError) as info:
        load_policies(copy)
    (problem,) = [str(d) for d in info.value.diagnostics]
    assert problem.startswith("floor/intent.cedar: differs from pdp's built-in floor file ")
    assert str(BUILTIN_FLOOR / "intent.cedar") in problem
    # Extra floor rules in a file of another name still load.
    floor_file.write_bytes((BUILTIN_FLOOR / "intent.cedar").read_bytes())
    (copy / "floor" / "extra.cedar").write_text(
        '@id("floor.extra")\n@reason("r")\nforbid (principal, action, resource)'
        ' when { context.tool.name == "never" };\n'
    )
    assert len(load_policies(copy)) == len(original) + 1
