"""Proof of the agent by JWT-SVID, against a Workload API stand-in serving JWT bundles."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey, RSAKey

from pdp.engine import cedar_context
from pdp.model import Request, parse_request
from pdp.proof import ProofConfig, Prover, Requirement
from pdp.proof.bundles import FileJwtBundles, WorkloadApiJwtBundles
from pdp.proof.keys import KeyFiles
from pdp.proof.sign import sign_token
from tests.identity.workload_api import WorkloadApiServer
from tests.proof.test_intent import hs256

AUDIENCE = "spiffe://pdp.test/pdp"
AGENT = "spiffe://acme.test/agent/support-bot"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def now() -> datetime:
    # JWT-SVIDs are checked at the decision time; these tests use the real clock, with
    # lifetimes of minutes so that a slow machine never matters.
    return datetime.now(UTC)


ACME_KEY = ECKey.generate_key("P-256", parameters={"kid": "acme-1"})
EVIL_KEY = ECKey.generate_key("P-256", parameters={"kid": "evil-1"})
ACME_RSA = RSAKey.generate_key(2048, parameters={"kid": "acme-rsa"})


def svid_claims(**changes: Any) -> dict[str, Any]:
    issued = int(now().timestamp())
    claims: dict[str, Any] = {"sub": AGENT, "aud": [AUDIENCE], "exp": issued + 300, "iat": issued}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def svid(key: Any = ACME_KEY, alg: str = "ES256", **changes: Any) -> str:
    return sign_token(svid_claims(**changes), key, alg=alg)


@pytest.fixture(scope="module")
def workload_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkloadApiServer]:
    socket = Path(tmp_path_factory.mktemp("wl")) / "agent.sock"
    server = WorkloadApiServer(socket, "spiffe://pdp.test/pdp")
    server.set_jwt_bundle("acme.test", [ACME_KEY, ACME_RSA])
    server.set_jwt_bundle("evil.test", [EVIL_KEY])
    with server:
        yield server


@pytest.fixture(scope="module")
def bundles(workload_api: WorkloadApiServer) -> Iterator[WorkloadApiJwtBundles]:
    source = WorkloadApiJwtBundles(workload_api.address, timeout=10)
    yield source
    source.close()


def make_prover(bundles: Any, **changes: Any) -> Prover:
    return Prover(
        ProofConfig(**changes),
        audience=lambda: AUDIENCE,
        issuers=KeyFiles({}),
        jwt_bundles=bundles,
    )


def request(token: str | None, agent: str = AGENT) -> Request:
    data: dict[str, Any] = {
        "agent": agent,
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-1"},
        "intent": {"purpose": "p", "tools": ["crm/*"]},
    }
    if token is not None:
        data["agent_svid"] = token
    return parse_request(data, now=now())


def denial(prover: Prover, token: str, agent: str = AGENT) -> str:
    proven, denied = prover.prove(request(token, agent), now())
    assert denied is not None, "the JWT-SVID was accepted"
    assert not proven.proof.agent_proven
    return denied.code


def test_a_valid_jwt_svid_proves_the_agent(bundles: WorkloadApiJwtBundles) -> None:
    token = svid()
    proven, denied = make_prover(bundles).prove(request(token), now())
    assert denied is None
    assert proven.proof.agent_proven
    assert cedar_context(proven)["agent"]["proven"] is True
    record = proven.to_json()
    assert token not in json.dumps(record)
    assert record["proof"]["agent_token"]["issuer"] == "acme.test"
    assert record["proof"]["agent_token"]["key_id"] == "acme-1"
    # RSA keys of the bundle work too; a single audience string is accepted.
    rsa = svid(ACME_RSA, "RS256", aud=AUDIENCE)
    assert make_prover(bundles).prove(request(rsa), now())[1] is None


@pytest.mark.parametrize(
    ("token", "code"),
    [
        # Signed with another trust domain's key: its kid is not in acme.test's bundle.
        (lambda: svid(EVIL_KEY), "agent_svid_unknown_key"),
        # ...and with acme's kid forged onto it, the signature does not verify.
        (lambda: sign_token(svid_claims(), EVIL_KEY, kid="acme-1"), "agent_svid_bad_signature"),
        (lambda: svid(exp=int(now().timestamp()) - 120), "agent_svid_expired"),
        (lambda: svid(nbf=int(now().timestamp()) + 600), "agent_svid_not_yet_valid"),
        (lambda: svid(aud=["spiffe://pdp.test/other"]), "agent_svid_wrong_audience"),
        (lambda: svid(aud=None), "agent_svid_wrong_audience"),
        (lambda: svid(sub="spiffe://acme.test/agent/coder"), "agent_svid_subject_mismatch"),
        (lambda: svid(sub="not a spiffe id"), "agent_svid_malformed"),
        (lambda: sign_token(svid_claims(), ACME_KEY, kid="acme-9"), "agent_svid_unknown_key"),
        (lambda: svid(exp=None), "agent_svid_malformed"),
        (
            lambda: sign_token(svid_claims(), ACME_KEY, extra_header={"jku": "https://evil"}),
            "agent_svid_malformed",
        ),
        (lambda: sign_token(svid_claims(), ACME_KEY, typ="at+jwt"), "agent_svid_malformed"),
    ],
)
def test_attacks_on_the_jwt_svid(bundles: WorkloadApiJwtBundles, token: Any, code: str) -> None:
    assert denial(make_prover(bundles), token()) == code


def test_alg_none_and_hmac_with_the_public_key(bundles: WorkloadApiJwtBundles) -> None:
    payload = b64(json.dumps(svid_claims()).encode())
    header = b64(json.dumps({"alg": "none", "kid": "acme-1"}).encode())
    assert denial(make_prover(bundles), f"{header}.{payload}.") == "agent_svid_alg_none"
    pem = ACME_RSA.get_op_key("verify").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = hs256({"alg": "HS256", "kid": "acme-rsa"}, svid_claims(), pem)
    assert denial(make_prover(bundles), forged) == "agent_svid_alg_confusion"


def test_an_agent_of_a_trust_domain_without_a_jwt_bundle(bundles: WorkloadApiJwtBundles) -> None:
    partner = "spiffe://partner.test/agent/helper"
    token = svid(sub=partner)
    assert denial(make_prover(bundles), token, partner) == "agent_svid_unknown_trust_domain"


def test_required_proof(bundles: WorkloadApiJwtBundles) -> None:
    prover = make_prover(bundles, require_agent_proof=Requirement(trust_domains=("acme.test",)))
    _, denied = prover.prove(request(None), now())
    assert denied is not None and denied.code == "agent_unproven"
    assert prover.prove(request(svid()), now())[1] is None
    groups = make_prover(bundles, require_agent_proof=Requirement(groups=("support",)))
    _, denied = groups.prove(request(None), now(), lambda agent: frozenset({"support"}))
    assert denied is not None and denied.code == "agent_unproven"
    other = make_prover(bundles, require_agent_proof=Requirement(agents=("spiffe://x.test/a",)))
    assert other.prove(request(None), now())[1] is None


def test_rotated_jwt_bundles_pushed_by_the_workload_api(
    workload_api: WorkloadApiServer, bundles: WorkloadApiJwtBundles
) -> None:
    rotated = ECKey.generate_key("P-256", parameters={"kid": "acme-2"})
    prover = make_prover(bundles)
    assert denial(prover, svid(rotated)) == "agent_svid_unknown_key"
    workload_api.set_jwt_bundle("acme.test", [ACME_KEY, ACME_RSA, rotated])
    deadline = time.monotonic() + 15
    while prover.prove(request(svid(rotated)), now())[1] is not None:
        assert time.monotonic() < deadline, "the rotated bundle never arrived"
        time.sleep(0.05)
    workload_api.set_jwt_bundle("acme.test", [ACME_KEY, ACME_RSA])


def test_jwt_bundles_from_files(tmp_path: Path) -> None:
    bundle = {
        "keys": [
            {**ACME_KEY.as_dict(private=False), "use": "jwt-svid"},
            # An X.509 authority in the same SPIFFE bundle is not a JWT key.
            {**EVIL_KEY.as_dict(private=False), "use": "x509-svid"},
        ]
    }
    path = tmp_path / "acme.jwt.json"
    path.write_text(json.dumps(bundle))
    prover = make_prover(FileJwtBundles({"acme.test": path}, check_interval_s=0))
    assert prover.prove(request(svid()), now())[1] is None
    assert denial(prover, sign_token(svid_claims(), EVIL_KEY)) == "agent_svid_unknown_key"


def test_a_verified_jwt_svid_is_checked_again_when_its_bundle_changes(tmp_path: Path) -> None:
    path = tmp_path / "acme.jwt.json"

    def publish(*keys: Any) -> None:
        path.write_text(
            json.dumps({"keys": [{**k.as_dict(private=False), "use": "jwt-svid"} for k in keys]})
        )

    publish(ACME_KEY)
    prover = make_prover(FileJwtBundles({"acme.test": path}, check_interval_s=0))
    token = svid()
    assert prover.prove(request(token), now())[1] is None
    assert prover.prove(request(token), now())[1] is None  # the same token again
    publish(ACME_RSA)  # acme-1 revoked
    assert denial(prover, token) == "agent_svid_unknown_key"
    # Claims are checked at every decision even for a token verified before.
    publish(ACME_KEY)
    short = svid(exp=int(now().timestamp()) + 1)
    assert prover.prove(request(short), now())[1] is None
    _, denied = prover.prove(request(short), now() + timedelta(seconds=120))
    assert denied is not None and denied.code == "agent_svid_expired"
