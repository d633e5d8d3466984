"""``pdp gateway --dev``: one command shows a real MCP tool call allowed and one denied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_gateway_dev_shows_an_allowed_and_a_denied_call(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "gateway", "--dev", "--state-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "crm/get_ticket  -> ALLOWED: ticket T-123" in out
    assert "crm/delete_ticket -> DENIED (JSON-RPC error -31001)" in out
    assert "support.never_delete" in out
    assert "the MCP server ran: {'get_ticket': 1}" in out
    audit = [line for line in out.splitlines() if line.startswith("audit: ")]
    assert len(audit) == 2
    assert all("caller spiffe://pdp.dev/gateway/envoy" in line for line in audit)
    assert all("agent spiffe://acme.test/agent/support-bot" in line for line in audit)
    assert " allow " in audit[0] and " deny " in audit[1]


def test_gateway_without_dev_says_what_to_do() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "gateway"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "deploy/envoy/envoy.yaml" in result.stderr
