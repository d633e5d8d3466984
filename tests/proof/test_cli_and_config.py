"""`pdp intent sign` / `pdp check --dev`, the dev issuer, and the `proof:` configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdp.cli import main
from pdp.proof import ProofConfigError, Requirement
from pdp.service.config import ConfigError, config_from_mapping
from tests.conftest import EXAMPLE_POLICIES

AGENT = "spiffe://acme.test/agent/support-bot"


def sign(state: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(
        ["intent", "sign", "--dev", "--state-dir", str(state), "--agent", AGENT,
         "--purpose", "support.triage", "--tool", "crm/get_ticket", *extra]
    )  # fmt: skip
    assert code == 0
    return capsys.readouterr().out.strip()


def check(state: Path | None, request: dict[str, object], tmp_path: Path) -> int:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    dev = ["--dev", "--state-dir", str(state)] if state else []
    return main(["check", "-p", str(EXAMPLE_POLICIES), *dev, str(path)])


def test_a_dev_signed_intent_is_verified_by_pdp_check_dev(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    token = sign(state, capsys)
    assert token.count(".") == 2
    assert (state / "intent-issuer.jwk").stat().st_mode & 0o077 == 0  # private key: owner only
    public = json.loads((state / "intent-issuer.jwks.json").read_text())
    assert all("d" not in key for key in public["keys"])
    request = {
        "agent": AGENT,
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-1"},
        "intent": {"token": token},
    }
    assert check(state, request, tmp_path) == 0
    assert json.loads(capsys.readouterr().out)["reasons"][0]["policy"] == "support.read_tickets"
    # Without --dev no issuer is trusted: the token is denied, never ignored.
    assert check(None, request, tmp_path) == 1
    assert json.loads(capsys.readouterr().out)["reasons"][0]["policy"] == "intent_unknown_issuer"
    # A second dev key pair is not made: the issuer's key persists.
    assert sign(state, capsys).split(".")[0] == token.split(".")[0]


def test_intent_sign_refuses_what_pdp_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state")
    base = ["intent", "sign", "--dev", "--state-dir", state, "--purpose", "p"]
    assert main([*base, "--agent", "not-an-id", "--tool", "crm/get_ticket"]) == 2
    assert main([*base, "--agent", AGENT, "--tool", "crm"]) == 2
    assert main(["intent", "sign", "--agent", AGENT, "--purpose", "p", "--tool", "crm/x"]) == 2
    assert "--dev" in capsys.readouterr().err


def test_the_proof_section_of_the_configuration(tmp_path: Path) -> None:
    config = config_from_mapping(
        {
            "proof": {
                "intent_issuers": [{"issuer": "https://approvals.acme.test", "jwks": "a.json"}],
                "require_signed_intent": {"groups": ["finance"], "servers": ["payments"]},
                "require_agent_proof": {"trust_domains": ["acme.test"]},
                "jwt_bundles": {"acme.test": "acme.jwt.json"},
                "leeway_s": 10,
            }
        },
        base=tmp_path,
    )
    proof = config.proof
    assert proof.intent_issuers[0].jwks == tmp_path / "a.json"
    assert proof.jwt_bundles == {"acme.test": tmp_path / "acme.jwt.json"}
    assert proof.leeway_s == 10.0
    assert proof.require_signed_intent.applies(
        "spiffe://x.test/a", "payments", lambda a: frozenset()
    )
    for bad, message in [
        ({"require_signed_intent": {"groups": ["finance"]}}, "no intent_issuers"),
        ({"bogus": 1}, "proof.bogus: unknown key"),
        ({"require_agent_proof": {"agents": ["nope"]}}, "'nope'"),
        ({"require_agent_proof": {"servers": ["payments"]}}, "servers is not supported"),
        ({"max_token_bytes": 0}, "max_token_bytes"),
        ({"leeway_s": 3600}, "leeway_s"),
        ({"intent_issuers": [{"issuer": "x"}]}, "needs issuer"),
        ({"jwt_bundles": {"Not A TD": "x.json"}}, "jwt_bundles"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config_from_mapping({"proof": bad}, base=tmp_path)


def test_a_requirement_matches_agents_groups_servers_and_trust_domains() -> None:
    groups = {"spiffe://acme.test/agent/pay": frozenset({"finance"})}

    def applies(requirement: Requirement, agent: str, server: str = "crm") -> bool:
        return requirement.applies(agent, server, lambda a: groups.get(a, frozenset()))

    assert applies(Requirement(agents=("spiffe://acme.test/agent/*",)), AGENT)
    assert not applies(
        Requirement(agents=("spiffe://acme.test/agent/*",)), "spiffe://evil.test/agent/x"
    )
    assert applies(Requirement(groups=("finance",)), "spiffe://acme.test/agent/pay")
    assert not applies(Requirement(groups=("finance",)), AGENT)
    assert applies(Requirement(servers=("crm",)), AGENT)
    assert applies(Requirement(trust_domains=("acme.test",)), AGENT)
    # A trust domain is matched whole, never as a prefix.
    assert not applies(Requirement(trust_domains=("acme.te",)), AGENT)
    assert not Requirement()
    with pytest.raises(ProofConfigError):
        Requirement(trust_domains=("UPPER.test",))
