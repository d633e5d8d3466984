"""The pdp command line: output formats and exit codes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pdp.cli import main
from pdp.model import tool_digest
from tests.conftest import EXAMPLE_POLICIES, READ_POLICY, PolicyDirFactory

REQUESTS = EXAMPLE_POLICIES / "examples" / "requests"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--policies", str(EXAMPLE_POLICIES))
    assert code == 0 and out.startswith("valid: ")


def test_validate_reports_file_and_line(
    capsys: pytest.CaptureFixture[str], make_policy_dir: PolicyDirFactory
) -> None:
    root = make_policy_dir(
        {"x.cedar": READ_POLICY + '\n@reason("r")\nforbid (principal, action, resource);'}
    )
    code, out, err = run(capsys, "validate", "-p", str(root))
    assert code == 1
    assert f"{root}/x.cedar:6: policy has no @id" in out
    assert "invalid: 1 problem(s)" in err


def test_check_allow_exits_0_with_the_documented_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "check", "-p", str(EXAMPLE_POLICIES), str(REQUESTS / "support-get-ticket.json")
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"decision", "reasons", "errors", "policy_version"}
    assert result["decision"] == "allow"
    assert result["reasons"] == [
        {
            "policy": "support.read_tickets",
            "message": "support agents may read and search CRM tickets",
        }
    ]


def test_check_deny_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "check", "-p", str(EXAMPLE_POLICIES), str(REQUESTS / "support-delete-ticket.json")
    )
    assert code == 1
    assert json.loads(out)["reasons"][0]["policy"] == "support.never_delete"


def test_check_invalid_request_is_a_deny_not_a_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"agent": "bob", "server": "crm", "tool": "x"}))
    code, out, _ = run(capsys, "check", "-p", str(EXAMPLE_POLICIES), str(request))
    assert code == 1
    assert json.loads(out)["reasons"][0]["policy"] == "invalid_request"


def test_check_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys, "stdin", io.StringIO((REQUESTS / "support-get-ticket.json").read_text())
    )
    assert run(capsys, "check", "-p", str(EXAMPLE_POLICIES), "-")[0] == 0


@pytest.mark.parametrize("content", ["{not json", "[" * 100_000])
def test_check_malformed_json_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
) -> None:
    request = tmp_path / "r.json"
    request.write_text(content)
    code, out, err = run(capsys, "check", "-p", str(EXAMPLE_POLICIES), str(request))
    assert code == 2 and out == ""
    assert err.startswith(f"pdp: {request}: ") and err.count("\n") == 1


def test_check_missing_file_and_broken_policies_exit_2(
    capsys: pytest.CaptureFixture[str], make_policy_dir: PolicyDirFactory
) -> None:
    code, _, err = run(capsys, "check", "-p", str(EXAMPLE_POLICIES), "/nonexistent.json")
    assert code == 2 and "cannot read /nonexistent.json" in err
    root = make_policy_dir({"x.cedar": "permit (principal, action, resource);"})
    code, _, err = run(capsys, "check", "-p", str(root), str(REQUESTS / "support-get-ticket.json"))
    assert code == 2 and "are invalid" in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check"])
    assert caught.value.code == 2


def test_example_suites_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", "-p", str(EXAMPLE_POLICIES))
    assert code == 0
    assert out.strip().splitlines()[-1].endswith(" passed, 0 failed")


def test_failing_case_prints_a_diff_and_exits_1(
    capsys: pytest.CaptureFixture[str], make_policy_dir: PolicyDirFactory
) -> None:
    suite = """
defaults: {agent: "spiffe://acme.test/agent/bot", time: "2026-11-23T10:00:00Z"}
cases:
  - name: wrong expectation
    request: {server: crm, tool: get_ticket, arguments: {ticket_id: T},
              intent: {purpose: p, tools: [crm/get_ticket]}}
    expect: deny
  - name: right
    request: {server: crm, tool: get_ticket, arguments: {ticket_id: T}}
    expect: deny
    policies: [floor.intent_required]
"""
    root = make_policy_dir({"read.cedar": READ_POLICY, "t/read.test.yaml": suite})
    code, out, _ = run(capsys, "test", "-p", str(root))
    assert code == 1
    assert "FAIL read.test.yaml :: wrong expectation" in out
    assert '-  "decision": "deny"' in out and '+  "decision": "allow",' in out
    assert out.strip().splitlines()[-1] == "1 passed, 1 failed"


def test_broken_suite_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.test.yaml"
    bad.write_text("cases: [{request: {}, expect: maybe}]")
    code, _, err = run(capsys, "test", "-p", str(EXAMPLE_POLICIES), str(bad))
    assert code == 2 and "'expect' must be 'allow' or 'deny'" in err


def test_fmt_check_and_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_POLICIES, tmp_path / "p", symlinks=True)
    assert run(capsys, "fmt", "--check", str(tmp_path / "p"))[0] == 0
    messy = tmp_path / "p" / "examples" / "messy.cedar"
    messy.write_text('@id("m")  @reason("r")  permit(principal,action,resource) ;')
    code, out, _ = run(capsys, "fmt", "--check", str(tmp_path / "p"))
    assert code == 1 and "would reformat" in out and "messy.cedar" in out
    assert run(capsys, "fmt", str(messy))[0] == 0
    assert messy.read_text() == '@id("m")\n@reason("r")\npermit (principal, action, resource);\n'
    assert run(capsys, "fmt", "--check", str(messy))[0] == 0


def test_schema_from_mcp(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make_policy_dir: PolicyDirFactory
) -> None:
    tools = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": [
                {
                    "name": "get_issue",
                    "description": "Read an issue",
                    "annotations": {"readOnlyHint": True},
                    "inputSchema": {
                        "type": "object",
                        "required": ["number"],
                        "properties": {
                            "number": {"type": "integer"},
                            "repo-name": {"type": "string"},
                            "labels": {"type": "array", "items": {"type": "string"}},
                            "filter": {
                                "type": "object",
                                "properties": {"open": {"type": "boolean"}},
                            },
                        },
                    },
                },
                {
                    "name": "close_issue",
                    "annotations": {"destructiveHint": True},
                    "inputSchema": {
                        "type": "object",
                        "properties": {"number": {"type": "integer"}},
                    },
                },
            ]
        },
    }
    source = tmp_path / "tools.json"
    source.write_text(json.dumps(tools))
    code, schema_text, _ = run(capsys, "schema", "from-mcp", str(source), "--server", "github")
    assert code == 0
    assert 'action "github/get_issue" in [Action::"github", Action::"read"]' in schema_text
    assert (
        "input: { filter?: { open?: Bool }, labels?: Set<String>, number: Long, "
        '"repo-name"?: String }'
    ) in schema_text
    code, out, _ = run(
        capsys, "schema", "from-mcp", str(source), "--server", "github", "--inventory"
    )
    inventory = json.loads(out)
    close_issue = tools["result"]["tools"][1]
    assert inventory["servers"]["github"]["tools"]["close_issue"] == {
        "groups": ["destructive"],
        "input_schema": close_issue["inputSchema"],
        "digest": tool_digest(close_issue.get("description"), close_issue["inputSchema"]),
    }

    # The generated declarations are a valid schema in the pdp model, usable by a policy.
    from tests.conftest import MINI_INVENTORY, MINI_SCHEMA

    full_inventory = json.loads(json.dumps(MINI_INVENTORY))
    full_inventory["servers"]["github"] = inventory["servers"]["github"]
    policy = (
        '@id("gh.read")\n@reason("r")\npermit (principal, action == Action::"github/get_issue",'
        " resource) when { context.input.number > 0 };"
    )
    root = make_policy_dir(
        {"gh.cedar": policy},
        schema=MINI_SCHEMA + 'action "write";\n' + schema_text,
        inventory=full_inventory,
    )
    assert run(capsys, "validate", "-p", str(root))[0] == 0


def test_schema_from_mcp_rejects_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "tools.json"
    source.write_text(json.dumps({"tools": [{"name": "a/b"}]}))
    code, _, err = run(capsys, "schema", "from-mcp", str(source), "--server", "gh")
    assert code == 2 and "tool 'a/b'" in err
    source.write_text("[1, 2]")
    assert run(capsys, "schema", "from-mcp", str(source), "--server", "gh")[0] == 2


def test_console_script_is_installed() -> None:
    pdp = Path(sys.executable).parent / "pdp"
    result = subprocess.run(
        [str(pdp), "check", "-p", str(EXAMPLE_POLICIES), str(REQUESTS / "support-get-ticket.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"] == "allow"
