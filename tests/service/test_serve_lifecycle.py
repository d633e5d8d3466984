"""`pdp serve` end to end: audit records (with shadow decisions), reload, drain, verify."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import EXAMPLE_POLICIES, REPO

PDP = str(Path(sys.executable).parent / "pdp")
REQUEST = EXAMPLE_POLICIES / "examples" / "requests" / "support-get-ticket.json"
SHADOW_DENY = (
    '@id("shadow.no_reads")\n@reason("reads closed in the candidate")\n'
    'forbid (principal, action in Action::"read", resource);\n'
)


def copy_policies(target: Path) -> Path:
    shutil.copytree(EXAMPLE_POLICIES, target, ignore=shutil.ignore_patterns("floor"))
    (target / "floor").symlink_to(REPO / "pdp" / "floor")
    return target


def call(state: Path, address: str) -> dict[str, object]:
    result = subprocess.run(
        [PDP, "call", str(REQUEST), "--dev", "--state-dir", str(state), "--target", address],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_serve_audits_shadow_decisions_and_reloads(tmp_path: Path) -> None:
    active = copy_policies(tmp_path / "active")
    candidate = copy_policies(tmp_path / "candidate")
    (candidate / "examples" / "shadow.cedar").write_text(SHADOW_DENY)
    state = tmp_path / "state"
    server = subprocess.Popen(
        [
            PDP,
            "serve",
            "--dev",
            "--state-dir",
            str(state),
            "--policies",
            str(active),
            "--listen",
            "127.0.0.1:0",
            "--audit-mode",
            "sync",
            "--shadow-policies",
            str(candidate),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address = ""
        assert server.stdout is not None
        deadline = time.monotonic() + 60
        while not address and time.monotonic() < deadline:
            line = server.stdout.readline()
            match = re.search(r"listening on (\S+)", line)
            if match:
                address = match.group(1)
        assert address, "pdp serve did not start"
        first = call(state, address)
        assert first["decision"] == "allow"

        # A broken policy file never replaces the good set (SIGHUP reload).
        (active / "examples" / "broken.cedar").write_text("permit (principal,")
        server.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        second = call(state, address)
        assert second["decision"] == "allow"
        assert second["policy_version"] == first["policy_version"]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "REJECTED, still serving the old version" in output

    logs = sorted((state / "audit").glob("audit-*.jsonl"))
    records = [json.loads(line) for path in logs for line in path.read_text().splitlines()]
    decisions = [r for r in records if r.get("kind") == "decision"]
    assert [r["decision_id"] for r in decisions] == [first["decision_id"], second["decision_id"]]
    for record in decisions:
        assert record["decision"] == "allow"
        assert record["shadow"]["decision"] == "deny"
        assert record["shadow"]["reasons"][0]["policy"] == "shadow.no_reads"
        assert record["caller"]["spiffe_id"] == "spiffe://pdp.dev/gateway/dev"
    verify = subprocess.run(
        [PDP, "audit", "verify", str(state / "audit")], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (state / "policy-versions" / str(first["policy_version"])).is_dir()


def start_serve(state: Path, policies: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`pdp serve --dev` on a free port, its stdout and stderr on one pipe; the address."""
    server = subprocess.Popen(
        [
            PDP,
            "serve",
            "--dev",
            "--state-dir",
            str(state),
            "--policies",
            str(policies),
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if match:
            return server, match.group(1)
        if not line and server.poll() is not None:
            break
    server.kill()
    raise AssertionError("pdp serve did not start")


def verify_sealed(directory: Path) -> None:
    verify = subprocess.run(
        [PDP, "audit", "verify", "--require-sealed", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_serve_drains_and_seals_when_nobody_reads_its_output(tmp_path: Path) -> None:
    """Its reader gone (a closed pipe, as when a supervisor dies), `pdp serve` still drains
    on SIGTERM: printing "draining" must not skip the closing checkpoint."""
    state = tmp_path / "state"
    server, address = start_serve(
        state, copy_policies(tmp_path / "policies"), "--audit-mode", "sync"
    )
    answered = call(state, address)
    assert server.stdout is not None
    server.stdout.close()  # nobody reads stdout or stderr any more
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    verify_sealed(state / "audit")
    records = [
        json.loads(line)
        for path in sorted((state / "audit").glob("audit-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert answered["decision_id"] in {r.get("decision_id") for r in records}


def test_serve_keeps_the_signing_key_apart_and_prints_its_fingerprint(tmp_path: Path) -> None:
    state = tmp_path / "state"
    witness = tmp_path / "elsewhere" / "pdp.witness"
    server, address = start_serve(
        state, copy_policies(tmp_path / "policies"), "--audit-witness", str(witness)
    )
    assert server.stdout is not None
    printed = ""
    while "audit witness" not in printed:
        printed += server.stdout.readline()
    fingerprint = re.search(r"key fingerprint ([0-9a-f]{64})", printed)
    assert fingerprint, printed
    assert str(state / "audit-signing.key") in printed and str(witness) in printed
    call(state, address)
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=60)
    assert server.returncode == 0
    assert (state / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    assert not list((state / "audit").glob("*.key")) + list((state / "audit").glob("*.pub"))
    verify = subprocess.run(
        [
            *(PDP, "audit", "verify", str(state / "audit")),
            *("--key-fingerprint", fingerprint.group(1), "--require-pinned"),
            *("--require-sealed", "--witness", str(witness)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    unpinned = subprocess.run(
        [PDP, "audit", "verify", "--require-pinned", str(state / "audit")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unpinned.returncode == 1 and "UNPINNED" in unpinned.stdout


def test_serve_refuses_a_key_left_in_the_audit_directory_by_an_older_pdp(tmp_path: Path) -> None:
    """Upgrade from the layout that kept the key beside the logs: a clear message, no
    silent new key (which would leave the old chain unverifiable) and no silent reuse."""
    from pdp.audit.keys import load_or_create_signer

    state = tmp_path / "state"
    load_or_create_signer(state / "audit" / "audit-signing.key")
    result = subprocess.run(
        [
            *(PDP, "serve", "--dev", "--state-dir", str(state), "--listen", "127.0.0.1:0"),
            *("--policies", str(copy_policies(tmp_path / "policies")), "--no-watch"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "layout before pdp kept the key apart" in result.stderr and "mv " in result.stderr
    assert not (state / "audit-signing.key").exists()
