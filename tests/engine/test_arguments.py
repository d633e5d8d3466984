"""The invalid_arguments floor rule: arguments held to each tool's declared input schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pdp.engine import Engine, PolicyLoadError, load_policies
from pdp.engine.arguments import (
    ArgumentSchemaError,
    ArgumentSettings,
    ToolArguments,
    compile_arguments,
)
from pdp.engine.store import policy_version
from pdp.model import Decision, Effect, parse_request
from tests.conftest import EXAMPLE_POLICIES, MINI_INVENTORY, MINI_SCHEMA, PolicyDirFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
PERMIT_ALL = '@id("all")\n@reason("r")\npermit (principal, action, resource);'


@pytest.fixture(scope="module")
def examples() -> Engine:
    return Engine(load_policies(EXAMPLE_POLICIES))


def decide(engine: Engine, server: str, tool: str, arguments: Any, **extra: Any) -> Decision:
    request = {
        "agent": extra.pop("agent", "spiffe://acme.test/agent/support-bot"),
        "server": server,
        "tool": tool,
        "arguments": arguments,
        "intent": {"purpose": "p", "tools": [f"{server}/*"]},
        **extra,
    }
    return engine.decide_json(request, now=NOW)


def invalid(decision: Decision) -> list[str]:
    """The invalid_arguments messages of a decision ([] when the rule did not fire)."""
    return [r.message for r in decision.reasons if r.policy == "invalid_arguments"]


# Every example tool: arguments its schema accepts, and ones it refuses (message expected).
EXAMPLE_CASES: list[tuple[str, str, dict[str, Any], list[tuple[dict[str, Any], str]]]] = [
    (
        "crm",
        "get_ticket",
        {"ticket_id": "T-123"},
        [
            ({"ticket_id": 123}, "arguments.ticket_id: must be of type string (rule: type)"),
            ({"ticket_id": ["T-1"]}, "arguments.ticket_id: must be of type string (rule: type)"),
            ({}, "arguments.ticket_id: is required (rule: required)"),
            (
                {"ticket_id": "T-1", "verbose": True},
                "arguments.verbose: is not a declared argument (rule: additionalProperties)",
            ),
            (
                {"ticket_id": ""},
                "arguments.ticket_id: must be at least 1 characters long (rule: minLength)",
            ),
        ],
    ),
    (
        "crm",
        "search_tickets",
        {"query": "refund", "limit": 10},
        [
            ({"query": "refund", "limit": 0}, "arguments.limit: must be >= 1 (rule: minimum)"),
            ({"query": "refund", "limit": 101}, "arguments.limit: must be <= 100 (rule: maximum)"),
            ({"limit": 5}, "arguments.query: is required (rule: required)"),
        ],
    ),
    (
        "crm",
        "delete_ticket",
        {"ticket_id": "T-1"},
        [({"ticket_id": True}, "arguments.ticket_id: must be of type string (rule: type)")],
    ),
    (
        "git",
        "read_file",
        {"repo": "acme/website", "path": "src/app.py"},
        [
            (
                {"repo": "not a repo", "path": "a"},
                'arguments.repo: must match the pattern "^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"'
                " (rule: pattern)",
            )
        ],
    ),
    (
        "git",
        "write_file",
        {"repo": "acme/website", "path": "a.txt", "content": "line\r\n\x1b[0m"},
        [
            (
                {"repo": "acme/website", "path": "a.txt"},
                "arguments.content: is required (rule: required)",
            )
        ],
    ),
    (
        "git",
        "push",
        {"repo": "acme/website", "branch": "main", "confirm": True},
        [
            (
                {"repo": "acme/website", "branch": "main", "confirm": "yes"},
                "arguments.confirm: must be of type boolean (rule: type)",
            )
        ],
    ),
    (
        "payments",
        "create_payment",
        {"amount_cents": 100, "currency": "EUR", "payee": "ACME"},
        [
            (
                {"amount_cents": "100", "currency": "EUR", "payee": "ACME"},
                "arguments.amount_cents: must be of type integer (rule: type)",
            ),
            (
                {"amount_cents": 100, "currency": "eur", "payee": "ACME"},
                'arguments.currency: must match the pattern "^[A-Z]{3}$" (rule: pattern)',
            ),
        ],
    ),
    (
        "payments",
        "get_balance",
        {},
        [
            (
                {"account": "main"},
                "arguments.account: is not a declared argument (rule: additionalProperties)",
            )
        ],
    ),
    (
        "shell",
        "exec",
        {"command": "ls -l"},
        [({"command": "ls\x00-l"}, "arguments.command: contains control character U+0000 (NUL)")],
    ),
    (
        "partner-crm",
        "get_ticket",
        {"ticket_id": "P-9"},
        [({"ticket_id": 9}, "arguments.ticket_id: must be of type string (rule: type)")],
    ),
]


def test_every_example_tool_is_covered(examples: Engine) -> None:
    assert {(s, t) for s, t, _, _ in EXAMPLE_CASES} == set(examples.compiled.inventory.tools)


@pytest.mark.parametrize(("server", "tool", "valid", "refused"), EXAMPLE_CASES)
def test_example_tools_valid_and_invalid_arguments(
    examples: Engine,
    server: str,
    tool: str,
    valid: dict[str, Any],
    refused: list[tuple[dict[str, Any], str]],
) -> None:
    assert invalid(decide(examples, server, tool, valid)) == []
    for arguments, message in refused:
        decision = decide(examples, server, tool, arguments)
        assert decision.effect is Effect.DENY
        # The rule stops the call before any policy: the only reasons are its own.
        assert {r.policy for r in decision.reasons} == {"invalid_arguments"}, arguments
        assert any(m.startswith(message) for m in invalid(decision)), invalid(decision)


def test_the_issue_cases_on_get_ticket(examples: Engine) -> None:
    support = "spiffe://acme.test/agent/support-bot"
    ok = decide(examples, "crm", "get_ticket", {"ticket_id": "T-1"}, agent=support)
    assert ok.effect is Effect.ALLOW
    for arguments in [
        {"ticket_id": 7},
        {"ticket_id": ["T-1"]},
        {"ticket_id": "T-1", "extra": "x"},
        {},
        {"ticket_id": "T-1\x1b]52;c;ZWNobyBoaQ==\x07"},
        {"ticket_id": "T-1\x00"},
        {"ticket_id": "T-1\u202egnp.exe"},
    ]:
        decision = decide(examples, "crm", "get_ticket", arguments, agent=support)
        assert decision.effect is Effect.DENY and invalid(decision), arguments


def test_reasons_never_echo_the_value(examples: Engine) -> None:
    secret = "sk-live-" + "9" * 20
    decision = decide(examples, "crm", "get_ticket", {"ticket_id": secret * 5})
    assert invalid(decision) == [
        "arguments.ticket_id: must be at most 64 characters long (rule: maxLength)"
    ]
    decision = decide(examples, "payments", "create_payment", {"amount_cents": secret})
    assert secret not in json.dumps(decision.to_json())


def test_nested_paths_and_several_violations(make_policy_dir: PolicyDirFactory) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "qty": {"type": "integer"}},
                    "required": ["name"],
                },
            }
        },
    }
    engine = engine_with(make_policy_dir, schema)
    decision = ask(engine, {"items": [{"name": "a"}, {"name": 3, "qty": 1, "x": 1}]})
    assert invalid(decision) == [
        "arguments.items[1].name: must be of type string (rule: type)",
        "arguments.items[1].x: is not a declared argument (rule: additionalProperties)",
    ]


# --- strictness ------------------------------------------------------------------------


def tool_inventory(input_schema: Any, **settings: Any) -> dict[str, Any]:
    inventory = json.loads(json.dumps(MINI_INVENTORY))
    spec = inventory["servers"]["crm"]["tools"]["get_ticket"]
    spec["input_schema"] = input_schema
    if settings:
        spec["arguments"] = settings
    return inventory


def engine_with(make_policy_dir: PolicyDirFactory, schema: Any, **settings: Any) -> Engine:
    root = make_policy_dir({"a.cedar": PERMIT_ALL}, inventory=tool_inventory(schema, **settings))
    return Engine(load_policies(root))


def ask(engine: Engine, arguments: Any) -> Decision:
    return decide(engine, "crm", "get_ticket", arguments, agent="spiffe://acme.test/agent/bot")


def test_undeclared_arguments_denied_unless_allowed(make_policy_dir: PolicyDirFactory) -> None:
    schema = {
        "type": "object",
        "properties": {"ticket_id": {"type": "string"}},
        "required": ["ticket_id"],
    }
    strict = engine_with(make_policy_dir, schema)
    assert invalid(ask(strict, {"ticket_id": "T", "x": 1})) == [
        "arguments.x: is not a declared argument (rule: additionalProperties)"
    ]
    assert invalid(ask(strict, {"ticket_id": "T"})) == []
    relaxed = engine_with(make_policy_dir, schema, allow_undeclared=True)
    assert ask(relaxed, {"ticket_id": "T", "x": 1}).allowed
    explicit = engine_with(make_policy_dir, {**schema, "additionalProperties": True})
    assert ask(explicit, {"ticket_id": "T", "x": 1}).allowed
    typed = engine_with(make_policy_dir, {**schema, "additionalProperties": {"type": "integer"}})
    assert ask(typed, {"ticket_id": "T", "x": 1}).allowed
    assert invalid(ask(typed, {"ticket_id": "T", "x": "1"}))


def test_nested_objects_are_closed_too(make_policy_dir: PolicyDirFactory) -> None:
    schema = {
        "type": "object",
        "properties": {"filter": {"type": "object", "properties": {"open": {"type": "boolean"}}}},
    }  # (the Cedar schema leaves filter out: no policy can read it)
    engine = engine_with(make_policy_dir, schema)
    assert ask(engine, {"filter": {"open": True}}).allowed
    assert invalid(ask(engine, {"filter": {"open": True, "admin": True}})) == [
        "arguments.filter.admin: is not a declared argument (rule: additionalProperties)"
    ]


def test_combined_schemas_are_closed_with_unevaluated_properties(
    make_policy_dir: PolicyDirFactory,
) -> None:
    # allOf splits the declaration: closing each branch would refuse the other's property.
    schema = {
        "type": "object",
        "properties": {"kind": {"type": "string"}},
        "allOf": [{"properties": {"a": {"type": "string"}}}, {"$ref": "#/$defs/b"}],
        "$defs": {"b": {"properties": {"b": {"type": "integer"}}}},
    }
    engine = engine_with(make_policy_dir, schema)
    assert ask(engine, {"kind": "k", "a": "x", "b": 1}).allowed
    assert invalid(ask(engine, {"kind": "k", "c": 1})) == [
        "arguments.c: is not a declared argument (rule: unevaluatedProperties)"
    ]
    # A union of whole shapes: each alternative is closed.
    union = {
        "anyOf": [
            {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
            {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        ]
    }
    engine = engine_with(make_policy_dir, union)
    assert ask(engine, {"id": "x"}).allowed and ask(engine, {"q": "x"}).allowed
    assert invalid(ask(engine, {"id": "x", "admin": True}))


# --- size bounds -----------------------------------------------------------------------


def test_size_bounds_where_the_schema_gives_none(make_policy_dir: PolicyDirFactory) -> None:
    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "body": {"type": "string", "maxLength": 10_000},
        },
    }
    engine = engine_with(make_policy_dir, schema)
    assert ask(engine, {"q": "x" * 4096, "tags": ["t"] * 256, "body": "y" * 8000}).allowed
    assert invalid(ask(engine, {"q": "x" * 4097})) == [
        "arguments.q: must be at most 4096 characters long (pdp's default bound; a"
        " maxLength/maxItems in the schema overrides it) (rule: maxLength)"
    ]
    assert invalid(ask(engine, {"tags": ["t"] * 257}))[0].startswith(
        "arguments.tags: must have at most 256 items (pdp's default bound"
    )
    assert invalid(ask(engine, {"tags": ["x" * 5000]}))[0].startswith("arguments.tags[0]:")
    tight = engine_with(make_policy_dir, schema, max_string_length=8, max_items=2)
    assert invalid(ask(tight, {"q": "123456789"}))
    assert invalid(ask(tight, {"tags": ["a", "b", "c"]}))
    assert ask(tight, {"q": "12345678", "tags": ["a", "b"], "body": "z" * 7000}).allowed


def test_size_bounds_configured_for_the_whole_inventory(make_policy_dir: PolicyDirFactory) -> None:
    inventory = tool_inventory({"type": "object", "properties": {"q": {"type": "string"}}})
    inventory["arguments"] = {"max_string_length": 3}
    engine = Engine(load_policies(make_policy_dir({"a.cedar": PERMIT_ALL}, inventory=inventory)))
    assert ask(engine, {"q": "abc"}).allowed
    assert invalid(ask(engine, {"q": "abcd"}))


# --- string hygiene --------------------------------------------------------------------

FREE = {"type": "object", "properties": {"q": {"type": "string"}, "m": {"type": "object"}}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a\x00b",
            "arguments.q: contains control character U+0000 (NUL) at 1 (rule: control_character)",
        ),
        (
            "\x1b[31mred",
            "arguments.q: contains control character U+001B (ESC) at 0 (rule: control_character)",
        ),
        (
            "a\rb",
            "arguments.q: contains control character U+000D (CR) at 1 (rule: control_character)",
        ),
        (
            "\x7f",
            "arguments.q: contains control character U+007F (DEL) at 0 (rule: control_character)",
        ),
        ("x\x85", "arguments.q: contains control character U+0085 at 1 (rule: control_character)"),
        (
            "\x9b2J",
            "arguments.q: contains control character U+009B (CSI) at 0 (rule: control_character)",
        ),
        (
            "invoice\u202efdp.exe",
            "arguments.q: contains U+202E RIGHT-TO-LEFT OVERRIDE at 7 (rule: bidi_control)",
        ),
        (
            "a\u2066b",
            "arguments.q: contains U+2066 LEFT-TO-RIGHT ISOLATE at 1 (rule: bidi_control)",
        ),
        (
            "\u2069",
            "arguments.q: contains U+2069 POP DIRECTIONAL ISOLATE at 0 (rule: bidi_control)",
        ),
        (
            "ok\ud800",
            "arguments.q: contains an unpaired surrogate U+D800 at 2 (rule: unpaired_surrogate)",
        ),
        (
            "\udfff",
            "arguments.q: contains an unpaired surrogate U+DFFF at 0 (rule: unpaired_surrogate)",
        ),
    ],
)
def test_each_hygiene_rule(make_policy_dir: PolicyDirFactory, text: str, expected: str) -> None:
    engine = engine_with(make_policy_dir, FREE)
    decision = ask(engine, {"q": text})
    assert decision.effect is Effect.DENY
    assert invalid(decision) == [expected]


def test_hygiene_allows_tab_newline_and_ordinary_unicode(make_policy_dir: PolicyDirFactory) -> None:
    engine = engine_with(make_policy_dir, FREE)
    assert ask(engine, {"q": "line 1\n\tline 2 — ünïcödé 😀 עברית \u200f"}).allowed


def test_hygiene_reaches_nested_values_and_keys(make_policy_dir: PolicyDirFactory) -> None:
    schema = {
        "type": "object",
        "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}},
    }
    engine = engine_with(make_policy_dir, schema)
    assert invalid(ask(engine, {"m": {"k": "v\x00"}})) == [
        "arguments.m.k: contains control character U+0000 (NUL) at 1 (rule: control_character)"
    ]
    assert invalid(ask(engine, {"m": {"k\u202e": "v"}})) == [
        "arguments.m (a key): contains U+202E RIGHT-TO-LEFT OVERRIDE at 1 (rule: bidi_control)"
    ]


def test_hygiene_opt_out_per_field_and_per_tool(make_policy_dir: PolicyDirFactory) -> None:
    schema = {
        "type": "object",
        "properties": {
            "content": {"type": "string"},
            "title": {"type": "string"},
            "files": {
                "type": "array",
                "items": {"type": "object", "properties": {"body": {"type": "string"}}},
            },
        },
    }
    raw = "\x1b[1mbold\x1b[0m\r\n"
    engine = engine_with(make_policy_dir, schema, raw_strings=["content", "files[*].body"])
    assert ask(engine, {"content": raw, "files": [{"body": raw}, {"body": raw}]}).allowed
    assert invalid(ask(engine, {"content": raw, "title": raw}))[0].startswith("arguments.title:")
    everything = engine_with(make_policy_dir, schema, raw_strings=["*"])
    assert ask(everything, {"content": raw, "title": raw}).allowed
    # The opt-out relaxes hygiene only: the schema still holds.
    assert invalid(ask(everything, {"content": 1}))


# --- load-time errors ------------------------------------------------------------------


def load_problems(make_policy_dir: PolicyDirFactory, schema: Any, **settings: Any) -> list[str]:
    root = make_policy_dir({"a.cedar": PERMIT_ALL}, inventory=tool_inventory(schema, **settings))
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(root)
    return [str(d) for d in caught.value.diagnostics]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "strin"}}},
            "servers.crm.tools.get_ticket.input_schema: at /properties/a/type:",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "maxLenght": 3}}},
            "at /properties/a: keyword 'maxLenght' is not enforced by the 2020-12 validator,"
            " so it would be ignored",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "x-secret": True}}},
            "keyword 'x-secret' is not enforced",
        ),
        (
            {"type": "object", "properties": {"a": {"contentEncoding": "base64"}}},
            "keyword 'contentEncoding' is not enforced",
        ),
        (
            {"type": "object", "properties": {"a": {"format": "credit-card"}}},
            "Unknown format: 'credit-card'",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
            "points outside the schema",
        ),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}}, "/$defs/none"),
        ({"type": "object", "properties": {"a": {"pattern": "(["}}}, "at /properties/a/pattern"),
        ({"type": "string"}, "must describe an object"),
        ([1], "must be a JSON Schema object"),
        ({"$schema": "https://example.com/my-dialect"}, "is not a supported dialect"),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "allOf": [{"required": ["a"]}],
            },
            "cannot be closed to undeclared arguments",
        ),
        (
            {"$schema": "http://json-schema.org/draft-07/schema#", "prefixItems": []},
            "keyword 'prefixItems' is not enforced by the draft-07 validator",
        ),
    ],
)
def test_unenforceable_schema_is_a_load_error_naming_the_tool(
    make_policy_dir: PolicyDirFactory, schema: Any, message: str
) -> None:
    found = load_problems(make_policy_dir, schema)
    assert len(found) == 1
    assert found[0].startswith("entities.json: servers.crm.tools.get_ticket.input_schema: ")
    assert message in found[0], found[0]


def test_missing_schema_and_bad_settings_are_load_errors(make_policy_dir: PolicyDirFactory) -> None:
    inventory = json.loads(json.dumps(MINI_INVENTORY))
    del inventory["servers"]["crm"]["tools"]["get_ticket"]["input_schema"]
    inventory["servers"]["crm"]["tools"]["delete_ticket"]["arguments"] = {"raw_string": ["x"]}
    inventory["arguments"] = {"max_items": 0}
    root = make_policy_dir({"a.cedar": PERMIT_ALL}, inventory=inventory)
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(root)
    found = [str(d) for d in caught.value.diagnostics]
    assert "entities.json: arguments.max_items must be a positive integer" in found
    assert any("servers.crm.tools.get_ticket: no input_schema" in f for f in found)
    assert any(
        "servers.crm.tools.delete_ticket.arguments: unknown setting 'raw_string'" in f
        for f in found
    )


def test_draft_07_schemas_from_zod_work() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"path": {"type": "string"}, "head": {"type": "number"}},
        "required": ["path"],
        "additionalProperties": False,
    }
    checks = compile_arguments("fs/read", schema, ArgumentSettings())
    assert checks.draft == "draft-07"
    assert checks.violations({"path": "/a", "head": 3}) == ()
    assert [v.rule for v in checks.violations({"path": "/a", "tail": 3})] == [
        "additionalProperties"
    ]


def test_compile_never_changes_the_captured_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    before = json.dumps(schema)
    checks = compile_arguments("t/t", schema, ArgumentSettings())
    assert json.dumps(schema) == before
    assert checks.schema["additionalProperties"] is False


def test_compile_error_type() -> None:
    with pytest.raises(ArgumentSchemaError):
        compile_arguments("t/t", {"type": "object", "minProperties": "x"}, ArgumentSettings())


def test_a_changed_schema_is_a_new_policy_version(make_policy_dir: PolicyDirFactory) -> None:
    loose = {
        "type": "object",
        "properties": {"ticket_id": {"type": "string"}},
        "required": ["ticket_id"],
    }
    root = make_policy_dir({"a.cedar": PERMIT_ALL}, inventory=tool_inventory(loose))
    first = load_policies(root).version
    tight = {**loose, "properties": {"ticket_id": {"type": "string", "maxLength": 9}}}
    (root / "entities.json").write_text(json.dumps(tool_inventory(tight)))
    second = load_policies(root)
    assert second.version != first and second.version == policy_version(Path(root))


# --- Cedar's context.input types agree with the input schema ---------------------------

CEDAR_INPUT = (
    '{ ticket_id: String, limit?: Long, "repo-name"?: String, tags?: Set<String>,'
    " page?: { n: Long, open?: Bool } }"
)


def agreement_problems(make_policy_dir: PolicyDirFactory, schema: Any) -> list[str]:
    cedar = MINI_SCHEMA.replace("{ ticket_id: String, limit?: Long }", CEDAR_INPUT)
    root = make_policy_dir({"a.cedar": PERMIT_ALL}, schema=cedar, inventory=tool_inventory(schema))
    try:
        load_policies(root)
    except PolicyLoadError as exc:
        return [str(d) for d in exc.diagnostics]
    return []


AGREEING = {
    "type": "object",
    "required": ["ticket_id"],
    "properties": {
        "ticket_id": {"type": "string"},
        "limit": {"type": "integer"},
        "repo-name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "page": {
            "type": "object",
            "required": ["n"],
            "properties": {"n": {"type": "integer"}, "open": {"type": "boolean"}},
        },
        "note": {"anyOf": [{"type": "string"}, {"type": "integer"}]},  # left out of Cedar
    },
}


def test_cedar_declarations_that_agree_load(make_policy_dir: PolicyDirFactory) -> None:
    assert agreement_problems(make_policy_dir, AGREEING) == []


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        (
            ["ticket_id"],
            {"type": "integer"},
            "context.input.ticket_id is Long in the tool's input_schema but the Cedar schema"
            " declares another type",
        ),
        (["repo-name"], {"type": "boolean"}, "context.input.repo-name is Bool"),
        (
            ["tags"],
            {"type": "array", "items": {"type": "integer"}},
            "context.input.tags is Set<Long>",
        ),
        (["page", "n"], {"type": "string"}, "context.input.page.n is String"),
        (["page", "open"], {"type": "integer"}, "context.input.page.open is Long"),
    ],
)
def test_cedar_types_must_match_the_input_schema(
    make_policy_dir: PolicyDirFactory, path: list[str], change: Any, message: str
) -> None:
    schema = json.loads(json.dumps(AGREEING))
    node = schema
    for part in path[:-1]:
        node = node["properties"][part]
    node["properties"][path[-1]] = change
    found = agreement_problems(make_policy_dir, schema)
    assert len(found) == 1, found
    assert found[0].startswith('schema.cedarschema: action "crm/get_ticket": ' + message), found


def test_an_optional_argument_cedar_requires_is_a_load_error(
    make_policy_dir: PolicyDirFactory,
) -> None:
    schema = json.loads(json.dumps(AGREEING))
    schema["required"] = []
    found = agreement_problems(make_policy_dir, schema)
    assert found == [
        'schema.cedarschema: action "crm/get_ticket": context.input.ticket_id is optional in'
        " the tool's input_schema but required in the Cedar schema: declare it with '?' (a call"
        " without it would make every policy reading it an evaluation error)"
    ]


def test_a_failing_check_denies_only_its_own_call(
    examples: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Calls from many callers are coalesced into one batch: an argument that made the
    # validator fail must cost its own call a deny, and nobody else's.
    real = ToolArguments.violations

    def failing(self: ToolArguments, arguments: Any) -> Any:
        if "boom" in arguments.get("ticket_id", ""):
            raise RuntimeError("validator failure")
        return real(self, arguments)

    monkeypatch.setattr(ToolArguments, "violations", failing)
    support = "spiffe://acme.test/agent/support-bot"
    requests = [
        parse_request(
            {
                "agent": support,
                "server": "crm",
                "tool": "get_ticket",
                "arguments": {"ticket_id": ticket},
                "intent": {"purpose": "p", "tools": ["crm/*"]},
            },
            now=NOW,
        )
        for ticket in ("T-1", "boom", "T-2")
    ]
    first, broken, last = examples.decide_batch(requests)
    assert first.allowed and last.allowed
    assert not broken.allowed
    assert broken.reasons[0].policy == "evaluation_error"
    assert broken.reasons[0].message == "argument check failed: validator failure"
