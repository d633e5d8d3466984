"""Signed intents and JWT-SVIDs through the real service: mTLS gRPC, the server's clock,
the replay memory across calls, the audit record (hashes, never tokens)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit.record import build_decision_record
from pdp.audit.redact import RedactionConfig, Redactor
from pdp.model import Caller
from pdp.proof import IntentIssuer, ProofConfig, Requirement
from pdp.proof.sign import intent_claims, sign_token
from pdp.service import DecisionServer

from .conftest import SERVER_ID, ClientFactory, RecordingSink, ServerFactory

ISSUER = "https://approvals.acme.test"
FINANCE = "spiffe://acme.test/agent/finance-bot"
SUPPORT = "spiffe://acme.test/agent/support-bot"
ISSUER_KEY = ECKey.generate_key("P-256", parameters={"kid": "approvals-1"})
AGENT_KEY = ECKey.generate_key("P-256", parameters={"kid": "acme-jwt-1"})
LARGE = {"amount_cents": 900000, "currency": "EUR", "payee": "ACME Supplies"}


def now() -> datetime:
    return datetime.now(UTC)


def intent_token(**changes: Any) -> str:
    claims = intent_claims(
        issuer=ISSUER,
        agent=FINANCE,
        audience=SERVER_ID,
        purpose="pay.invoice-78",
        tools=["payments/create_payment"],
        now=now(),
    )
    claims.update(changes)
    return sign_token(claims, ISSUER_KEY)


def agent_svid(agent: str = FINANCE, **changes: Any) -> str:
    issued = int(now().timestamp())
    claims = {"sub": agent, "aud": [SERVER_ID], "iat": issued, "exp": issued + 300, **changes}
    return sign_token(claims, AGENT_KEY)


def payment(token: str | None, svid: str | None = None, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "agent": FINANCE,
        "server": "payments",
        "tool": "create_payment",
        "arguments": LARGE,
        "intent": {"token": token} if token else {"purpose": "p", "tools": ["payments/*"]},
        **fields,
    }
    if svid:
        data["agent_svid"] = svid
    return data


@pytest.fixture
def proof_server(make_server: ServerFactory, sink: RecordingSink, tmp_path: Path) -> DecisionServer:
    issuer_jwks = tmp_path / "approvals.jwks.json"
    issuer_jwks.write_text(json.dumps({"keys": [ISSUER_KEY.as_dict(private=False)]}))
    bundle = tmp_path / "acme.jwt.json"
    bundle.write_text(
        json.dumps({"keys": [{**AGENT_KEY.as_dict(private=False), "use": "jwt-svid"}]})
    )
    proof = ProofConfig(
        intent_issuers=(IntentIssuer(ISSUER, issuer_jwks),),
        jwt_bundles={"acme.test": bundle},
        require_signed_intent=Requirement(groups=("finance",)),
        key_check_interval_s=0,
    )
    return make_server(sink=sink, proof=proof)


def codes(response: pb.CheckResponse) -> list[str]:
    return [r.policy for r in response.reasons]


def test_a_signed_intent_and_a_proven_agent_allow_a_large_payment(
    proof_server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    client = connect(proof_server)
    token, svid = intent_token(), agent_svid()
    response = client.check(payment(token, svid))
    assert response.decision == pb.DECISION_ALLOW, response
    assert codes(response) == ["finance.approved_large_payments"]
    # The same signed intent a second time: a replay.
    again = client.check(payment(token, agent_svid()))
    assert again.decision == pb.DECISION_DENY
    assert codes(again) == ["intent_replayed"]
    # The audit record keeps issuer, jti and hashes; never a token.
    event = sink.decisions[0]
    assert event.request is not None
    record = build_decision_record(
        event.decision_id,
        event.request,
        event.decision,
        Caller("spiffe://pdp.test/gateway/edge"),
        1,
        "i",
        Redactor(),
    )
    text = json.dumps(record)
    for secret in (token, svid, token.split(".")[2], svid.split(".")[2]):
        assert secret not in text
    proof = record["request"]["proof"]
    assert proof["intent_issuer"] == ISSUER and proof["agent_proven"] is True
    assert proof["intent_token"]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert proof["intent_token"]["issuer"] == ISSUER and proof["intent_token"]["jti"]
    assert proof["agent_token"]["issuer"] == "acme.test"


def test_without_proof_of_the_agent_the_large_payment_is_refused(
    proof_server: DecisionServer, connect: ClientFactory
) -> None:
    response = connect(proof_server).check(payment(intent_token()))
    assert codes(response) == ["default_deny"]
    forged = connect(proof_server).check(payment(intent_token(), agent_svid(SUPPORT)))
    assert codes(forged) == ["agent_svid_subject_mismatch"]


def test_signed_intents_are_required_for_the_finance_group_only(
    proof_server: DecisionServer, connect: ClientFactory
) -> None:
    client = connect(proof_server)
    unsigned = client.check(payment(None))
    assert codes(unsigned) == ["intent_unsigned"]
    support = client.check(
        {
            "agent": SUPPORT,
            "server": "crm",
            "tool": "get_ticket",
            "arguments": {"ticket_id": "T-1"},
            "intent": {"purpose": "triage", "tools": ["crm/*"]},
        }
    )
    assert support.decision == pb.DECISION_ALLOW


def test_tokens_are_checked_at_the_servers_clock_not_the_requests_time(
    proof_server: DecisionServer, connect: ClientFactory
) -> None:
    past = now() - timedelta(hours=2)
    token = intent_token(iat=int(past.timestamp()), exp=int(past.timestamp()) + 300)
    backdated = (past + timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    response = connect(proof_server).check(payment(token, agent_svid(), time=backdated))
    assert codes(response) == ["intent_expired"]


def test_a_refused_request_records_token_hashes_only(
    proof_server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    token = intent_token()
    data = payment(token, agent_svid(), tool="bad tool")  # invalid: never parsed
    response = connect(proof_server).check(data)
    assert codes(response) == ["invalid_request"]
    event = sink.decisions[-1]
    for redactor in (Redactor(), Redactor(RedactionConfig(secret_keys=(), detect_values=False))):
        record = build_decision_record(
            event.decision_id,
            event.data,
            event.decision,
            Caller("spiffe://x.test/g"),
            1,
            "i",
            redactor,
        )
        text = json.dumps(record)
        assert token not in text and token.split(".")[2] not in text
    # Even with redaction off, the token was replaced by its hash before redacting.
    assert record["request"]["intent"]["token"] == {
        "sha256": hashlib.sha256(token.encode()).hexdigest()
    }


def test_a_server_on_the_workload_api_takes_jwt_bundles_from_it(
    agent: Any, engine: Any, pki: Any
) -> None:
    """pdp's identity and the agents' JWT bundles from one (stand-in) SPIRE agent."""
    from pdp.identity.sources import WorkloadApiSource
    from pdp.service import DecisionServer as Server

    from .conftest import GATEWAY_ID, Client, service_config

    agent.set_jwt_bundle("acme.test", [AGENT_KEY])
    with WorkloadApiSource(agent.address, timeout=10) as identity:
        server = Server(service_config(), engine, identity).start()
        try:
            client = Client(server.address, agent.ca.issue_svid(GATEWAY_ID), agent.ca.bundle_pem)
            support = {
                "agent": SUPPORT,
                "server": "crm",
                "tool": "get_ticket",
                "arguments": {"ticket_id": "T-1"},
                "intent": {"purpose": "triage", "tools": ["crm/*"]},
            }
            proven = client.check({**support, "agent_svid": agent_svid(SUPPORT)})
            assert proven.decision == pb.DECISION_ALLOW, proven
            other_key = ECKey.generate_key("P-256", parameters={"kid": "acme-jwt-1"})
            issued = int(now().timestamp())
            forged = sign_token(
                {"sub": SUPPORT, "aud": [SERVER_ID], "exp": issued + 300}, other_key
            )
            refused = client.check({**support, "agent_svid": forged})
            assert codes(refused) == ["agent_svid_bad_signature"]
            client.close()
        finally:
            server.stop(0)


def test_allowed_tools_verifies_a_signed_intent_without_spending_it(
    proof_server: DecisionServer, tmp_path: Path, pki: Any
) -> None:
    """Listing the tools under a signed intent checks the token like Check does, but
    does not use up its one decision; without one, where it is required, no tools."""
    from pdp.client import Client, ClientIdentity

    for name, data in (("svid.pem", pki.gateway.chain_pem), ("svid.key", pki.gateway.key_pem),
                       ("bundle.pem", pki.ca.bundle_pem)):  # fmt: skip
        (tmp_path / name).write_bytes(data)
    identity = ClientIdentity.files(
        tmp_path / "svid.pem", tmp_path / "svid.key", tmp_path / "bundle.pem", SERVER_ID
    )
    token = intent_token()
    with Client(proof_server.address, identity) as pdp:
        unsigned = pdp.allowed_tools(
            FINANCE, "payments", intent={"purpose": "p", "tools": ["payments/*"]}
        )
        assert unsigned.verdicts == () and unsigned.reasons[0].policy == "intent_unsigned"
        for _ in range(2):
            listed = pdp.allowed_tools(FINANCE, "payments", intent={"token": token})
            assert "create_payment" in listed.callable_tools(), listed
        forged = pdp.allowed_tools(FINANCE, "payments", intent={"token": token[:-4] + "AAAA"})
        assert forged.verdicts == () and forged.reasons[0].policy.startswith("intent_")
        answer = pdp.check(payment(token, agent_svid()))
    identity.close()
    assert answer.allowed, answer  # the listings did not spend the intent


def test_an_unusable_key_file_stops_the_server_with_a_config_error(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    from pdp.service.config import ConfigError

    missing = tmp_path / "missing.jwks.json"
    with pytest.raises(ConfigError, match=r"missing\.jwks\.json"):
        make_server(proof=ProofConfig(intent_issuers=(IntentIssuer(ISSUER, missing),)))
    private = tmp_path / "private.jwks.json"
    private.write_text(json.dumps({"keys": [ISSUER_KEY.as_dict(private=True)]}))
    with pytest.raises(ConfigError, match="private key"):
        make_server(proof=ProofConfig(intent_issuers=(IntentIssuer(ISSUER, private),)))
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{}")
    with pytest.raises(ConfigError, match="JWK Set"):
        make_server(proof=ProofConfig(jwt_bundles={"acme.test": bundle}))
