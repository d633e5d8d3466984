"""Signed intents: each attack a deny with its own reason; what a valid one gives."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, RSAKey

from pdp.engine import Engine, cedar_context, load_policies
from pdp.model import Request, parse_request
from pdp.proof import IntentIssuer, ProofConfig, Prover, Requirement
from pdp.proof.keys import KeyFiles
from pdp.proof.sign import intent_claims, sign_token
from pdp.proof.verify import NoJwtBundles
from tests.conftest import EXAMPLE_POLICIES

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ISSUER = "https://approvals.acme.test"
AUDIENCE = "spiffe://pdp.test/pdp"
AGENT = "spiffe://acme.test/agent/finance-bot"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """What an attacker writes by hand: an HMAC-SHA256 JWS with ``secret``."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


class Issuer:
    def __init__(self, directory: Path) -> None:
        self.ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
        self.jwks = directory / "approvals.jwks.json"
        self.write(self.ec, self.rsa)

    def write(self, *keys: Any) -> None:
        self.jwks.write_text(json.dumps({"keys": [k.as_dict(private=False) for k in keys]}))

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims = intent_claims(
            issuer=ISSUER,
            agent=AGENT,
            audience=AUDIENCE,
            purpose="pay.invoice-77",
            tools=["payments/create_payment"],
            now=NOW,
        )
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **changes: Any) -> str:
        return sign_token(self.claims(**changes), self.ec, alg="ES256")


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def make_prover(issuer: Issuer, **changes: Any) -> Prover:
    config = ProofConfig(
        intent_issuers=(IntentIssuer(ISSUER, issuer.jwks),),
        key_check_interval_s=0,
        **changes,
    )
    return Prover(
        config,
        audience=lambda: AUDIENCE,
        issuers=KeyFiles({ISSUER: issuer.jwks}, check_interval_s=0),
        jwt_bundles=NoJwtBundles(),
    )


def request(token: str | None, **fields: Any) -> Request:
    data: dict[str, Any] = {
        "agent": AGENT,
        "server": "payments",
        "tool": "create_payment",
        "arguments": {"amount_cents": 125000, "currency": "EUR", "payee": "ACME"},
        **fields,
    }
    if token is not None:
        data["intent"] = {"token": token}
    return parse_request(data, now=NOW)


def denial(prover: Prover, token: str, at: datetime = NOW) -> str:
    _, denied = prover.prove(request(token), at)
    assert denied is not None, "the token was accepted"
    assert denied.message
    return denied.code


def test_a_valid_signed_intent_becomes_the_intent_with_its_issuer(issuer: Issuer) -> None:
    token = issuer.token()
    proven, denied = make_prover(issuer).prove(request(token), NOW)
    assert denied is None
    assert proven.intent is not None
    assert proven.intent.purpose == "pay.invoice-77"
    assert proven.intent.tools == ("payments/create_payment",)
    assert proven.intent.expires_at == NOW + timedelta(seconds=300)
    assert proven.proof.intent_issuer == ISSUER
    context = cedar_context(proven)
    assert context["intent"]["signed"] is True
    assert context["intent"]["issuer"] == ISSUER
    # The record keeps issuer, jti and a hash of the token, never the token.
    rendered = json.dumps(proven.to_json())
    assert token not in rendered and token.split(".")[2] not in rendered
    digest = proven.to_json()["proof"]["intent_token"]
    assert digest == {
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "issuer": ISSUER,
        "jti": claims_of(token)["jti"],
        "key_id": "ec-1",
    }


def test_an_unsigned_intent_says_so_in_the_context(issuer: Issuer) -> None:
    plain = parse_request(
        {
            "agent": AGENT,
            "server": "payments",
            "tool": "get_balance",
            "intent": {"purpose": "p", "tools": ["payments/*"]},
        },
        now=NOW,
    )
    proven, denied = make_prover(issuer).prove(plain, NOW)
    assert denied is None
    context = cedar_context(proven)
    assert context["intent"]["signed"] is False
    assert context["intent"]["issuer"] == ""
    assert context["agent"]["proven"] is False


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"exp": int((NOW - timedelta(minutes=5)).timestamp())}, "intent_expired"),
        ({"nbf": int((NOW + timedelta(minutes=5)).timestamp())}, "intent_not_yet_valid"),
        ({"iat": int((NOW + timedelta(minutes=5)).timestamp())}, "intent_not_yet_valid"),
        ({"aud": "spiffe://pdp.test/other-pdp"}, "intent_wrong_audience"),
        ({"aud": None}, "intent_wrong_audience"),
        ({"aud": ["spiffe://pdp.test/other-pdp"]}, "intent_wrong_audience"),
        ({"sub": "spiffe://acme.test/agent/support-bot"}, "intent_subject_mismatch"),
        ({"sub": None}, "intent_subject_mismatch"),
        ({"iss": "https://evil.test"}, "intent_unknown_issuer"),
        ({"exp": int((NOW + timedelta(days=2)).timestamp())}, "intent_lifetime_too_long"),
        ({"exp": None}, "intent_malformed"),
        ({"exp": "tomorrow"}, "intent_malformed"),
        ({"jti": None}, "intent_malformed"),
        ({"tools": "payments/*"}, "intent_malformed"),
        ({"tools": ["payments/../admin"]}, "intent_malformed"),
    ],
)
def test_claims_that_fail(issuer: Issuer, changes: dict[str, Any], code: str) -> None:
    assert denial(make_prover(issuer), issuer.token(**changes)) == code


def test_expiry_and_start_are_checked_at_the_decision_time_with_the_leeway(issuer: Issuer) -> None:
    token = issuer.token()  # iat NOW, exp NOW + 300 s
    prover = make_prover(issuer, leeway_s=30)
    assert denial(prover, token, NOW + timedelta(seconds=331)) == "intent_expired"
    assert denial(prover, token, NOW - timedelta(seconds=31)) == "intent_not_yet_valid"
    _, denied = prover.prove(request(token), NOW + timedelta(seconds=320))
    assert denied is None


def test_an_unknown_key_id(issuer: Issuer) -> None:
    other = ECKey.generate_key("P-256", parameters={"kid": "stolen"})
    token = sign_token(issuer.claims(), other, alg="ES256")
    assert denial(make_prover(issuer), token) == "intent_unknown_key"
    no_kid = sign_token(issuer.claims(), issuer.ec, alg="ES256", kid="")
    assert denial(make_prover(issuer), no_kid) == "intent_unknown_key"


def test_a_right_kid_with_another_key_is_a_bad_signature(issuer: Issuer) -> None:
    impostor = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    assert denial(make_prover(issuer), sign_token(issuer.claims(), impostor)) == (
        "intent_bad_signature"
    )


def test_a_tampered_payload_is_a_bad_signature(issuer: Issuer) -> None:
    header, _, signature = issuer.token().split(".")
    forged = b64(json.dumps(issuer.claims(tools=["payments/*", "shell/*"])).encode())
    assert denial(make_prover(issuer), f"{header}.{forged}.{signature}") == "intent_bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(issuer: Issuer, alg: str) -> None:
    header = b64(json.dumps({"alg": alg, "kid": "ec-1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(issuer.claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.c2ln"):
        assert denial(make_prover(issuer), token) == "intent_alg_none"


def test_hs256_made_with_the_issuers_public_key(issuer: Issuer) -> None:
    """The classic confusion: the attacker uses the RSA public key (public!) as an HMAC
    secret. pdp refuses HS* outright, and the library refuses it too."""
    public_pem = issuer.rsa.get_op_key("verify").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = hs256({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, issuer.claims(), public_pem)
    assert denial(make_prover(issuer), token) == "intent_alg_confusion"
    # The library refuses it on its own too: an RSA key is no HMAC key, and it will not
    # even take the PEM as an HMAC secret.
    with pytest.raises((JoseError, ValueError)):
        jws.deserialize_compact(token, issuer.rsa, algorithms=["HS256"])
    with pytest.raises(ValueError):
        OctKey.import_key(public_pem)


def test_an_algorithm_that_does_not_fit_the_key(issuer: Issuer) -> None:
    token = sign_token(issuer.claims(), issuer.rsa, alg="RS256", kid="ec-1")
    assert denial(make_prover(issuer), token) == "intent_alg_confusion"


def test_a_replayed_jti_is_denied_within_its_lifetime(issuer: Issuer) -> None:
    prover = make_prover(issuer)
    token = issuer.token()
    _, first = prover.prove(request(token), NOW)
    assert first is None
    assert denial(prover, token, NOW + timedelta(seconds=10)) == "intent_replayed"
    # Another token with the same jti (signed again) is a replay too.
    assert denial(prover, issuer.token(jti=claims_of(token)["jti"])) == "intent_replayed"
    # A failed token does not use up its jti.
    fresh = issuer.token(jti="fresh-1", aud="spiffe://elsewhere.test/pdp")
    assert denial(prover, fresh) == "intent_wrong_audience"
    _, ok = prover.prove(request(issuer.token(jti="fresh-1")), NOW)
    assert ok is None


def test_a_full_replay_memory_denies_new_intents(issuer: Issuer) -> None:
    prover = make_prover(issuer, max_remembered_jtis=2)
    for index in range(2):
        assert prover.prove(request(issuer.token(jti=f"j{index}")), NOW)[1] is None
    assert denial(prover, issuer.token(jti="j3")) == "intent_replay_cache_full"
    # Once they expire, room is made again.
    later = NOW + timedelta(seconds=400)
    late = issuer.token(jti="j4", iat=int(later.timestamp()), exp=int(later.timestamp()) + 60)
    assert prover.prove(request(late), later)[1] is None


def test_a_token_over_the_size_limit(issuer: Issuer) -> None:
    token = issuer.token(purpose="x" * 200)
    assert denial(make_prover(issuer, max_token_bytes=len(token) - 1), token) == (
        "intent_too_large"
    )
    assert make_prover(issuer, max_token_bytes=len(token)).prove(request(token), NOW)[1] is None


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", "e30.e30.", "W10.e30.c2ln", "é.é.é"],
)
def test_garbage_is_malformed(issuer: Issuer, token: str) -> None:
    if not token:
        return  # an empty token is an invalid request (the parser refuses it)
    assert denial(make_prover(issuer), token) in {"intent_malformed"}


def test_issuer_keys_are_reloaded_and_a_broken_file_keeps_the_last_good_keys(
    issuer: Issuer,
) -> None:
    prover = make_prover(issuer)
    rotated = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
    token = sign_token(issuer.claims(), rotated)
    assert denial(prover, token) == "intent_unknown_key"
    issuer.write(issuer.ec, rotated)
    assert prover.prove(request(token), NOW)[1] is None
    issuer.jwks.write_text("{not json")
    assert prover.prove(request(sign_token(issuer.claims(), rotated)), NOW)[1] is None
    issuer.write(rotated)  # ec-1 retired
    assert denial(prover, issuer.token()) == "intent_unknown_key"


def test_required_signed_intents_for_agents_groups_and_servers(issuer: Issuer) -> None:
    unsigned = {"intent": {"purpose": "p", "tools": ["payments/*"]}}
    groups = {AGENT: frozenset({"finance"})}.get

    def code(requirement: Requirement, data: dict[str, Any] = unsigned) -> str | None:
        prover = make_prover(issuer, require_signed_intent=requirement)
        _, denied = prover.prove(request(None, **data), NOW, lambda a: groups(a, frozenset()))
        return denied.code if denied else None

    assert code(Requirement(groups=("finance",))) == "intent_unsigned"
    assert code(Requirement(agents=("spiffe://acme.test/agent/*",))) == "intent_unsigned"
    assert code(Requirement(servers=("payments",))) == "intent_unsigned"
    assert code(Requirement(servers=("crm",))) is None
    assert code(Requirement(groups=("support",))) is None
    assert code(Requirement(groups=("finance",)), {}) == "intent_unsigned"  # no intent at all
    prover = make_prover(issuer, require_signed_intent=Requirement(groups=("finance",)))
    assert prover.prove(request(issuer.token()), NOW, lambda a: frozenset({"finance"}))[1] is None


def test_a_caller_cannot_claim_a_proof() -> None:
    from pdp.model import RequestError

    with pytest.raises(RequestError) as info:
        parse_request(
            {
                "agent": AGENT,
                "server": "payments",
                "tool": "get_balance",
                "proof": {"intent_issuer": ISSUER, "agent_proven": True},
            },
            now=NOW,
        )
    assert info.value.rule == "reserved"
    with pytest.raises(RequestError) as mixed:
        parse_request(
            {
                "agent": AGENT,
                "server": "payments",
                "tool": "get_balance",
                "intent": {"token": "a.b.c", "tools": ["payments/*"]},
            },
            now=NOW,
        )
    assert mixed.value.rule == "exclusive"


def test_the_example_policies_pay_large_amounts_only_under_a_signed_intent(
    issuer: Issuer,
) -> None:
    engine = Engine(load_policies(EXAMPLE_POLICIES))
    large = {"amount_cents": 900000, "currency": "EUR", "payee": "ACME"}
    signed, denied = make_prover(issuer).prove(request(issuer.token(), arguments=large), NOW)
    assert denied is None
    assert engine.decide(signed).allowed is False  # the agent is not proven
    proven = dataclasses.replace(signed, proof=dataclasses.replace(signed.proof, agent_proven=True))
    decision = engine.decide(proven)
    assert decision.allowed, decision
    assert [r.policy for r in decision.reasons] == ["finance.approved_large_payments"]
    plain = request(None, intent={"purpose": "p", "tools": ["payments/*"]}, arguments=large)
    unsigned = dataclasses.replace(plain, proof=dataclasses.replace(plain.proof, agent_proven=True))
    assert [r.policy for r in engine.decide(unsigned).reasons] == ["default_deny"]
