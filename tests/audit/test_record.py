"""Record building, decision ids and redaction."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest

from pdp.audit import (
    REDACTED,
    RedactionConfig,
    Redactor,
    build_decision_record,
    build_refusal_record,
    new_decision_id,
)
from pdp.audit.chain import encode_body
from pdp.audit.ids import decision_id_time_ms
from pdp.model import Decision, Effect, Intent, Reason, parse_request
from tests.audit.helpers import ALLOW, CALLER, INSTANCE, REDACTOR, make_request

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZ2VudCIsImV4cCI6MTl9"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMDEyMzQ1Njc4OQ"
)
PEM = (
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPLANTEDPEMSECRETxxxxxxxxxxxxxxxxxxxxx\n"
    "-----END PRIVATE KEY-----\n"
)
AWS_KEY = "AKIAPLANTEDSECRET123"

# Every value here must never be written anywhere.
PLANTED = {
    "password": "hunter2-planted-pw",
    "db_Password": "planted-db-pw-77",
    "accessToken": "planted-access-token-1",
    "X-Api-Key": "planted-api-key-99",
    "client_secret": "planted-client-secret",
    "Cookie": "sid=planted-cookie-value",
    "credentials": {"user": "bob", "pass": "planted-nested-pass"},
    "header": "Authorization: Bearer plantedbearertoken0123456789",
    "note": f"use {JWT} to log in",
    "key_material": PEM,
    "aws": f"id {AWS_KEY} in text",
    "dsn": "postgres://bob:planted-url-pw@db.internal:5432/app",
}
SECRETS = [
    "hunter2-planted-pw",
    "planted-db-pw-77",
    "planted-access-token-1",
    "planted-api-key-99",
    "planted-client-secret",
    "planted-cookie-value",
    "planted-nested-pass",
    "plantedbearertoken0123456789",
    JWT,
    JWT.split(".")[2],
    "PLANTEDPEMSECRET",
    AWS_KEY,
    "planted-url-pw",
]


def test_decision_ids_are_uuid7_and_strictly_increasing() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_decision_id() for _ in range(20000)]
    after = time.time_ns() // 1_000_000
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in (ids[0], ids[-1]):
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
        assert before <= decision_id_time_ms(text) <= after + 1


def test_decision_record_carries_what_replay_needs() -> None:
    intent = Intent("summarise reports", ("files/read_file", "files/*"))
    request = make_request({"path": "/srv/a.txt", "limit": 3}, intent=intent)
    shadow = Decision(Effect.DENY, (Reason("new-rule", "would deny"),), "sha256:new")
    record = build_decision_record(
        "0190a0b0-0000-7000-8000-000000000001",
        request,
        ALLOW,
        CALLER,
        1234,
        INSTANCE,
        REDACTOR,
        shadow,
        time=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    )
    assert record["v"] == "pdp.audit/v1"
    assert record["kind"] == "decision"
    assert record["decision_id"] == "0190a0b0-0000-7000-8000-000000000001"
    assert record["time"] == "2026-01-02T03:04:06.000Z"
    assert record["instance_id"] == INSTANCE
    assert record["decision"] == "allow"
    assert record["reasons"] == [{"policy": "allow-read", "message": "reads are allowed"}]
    assert record["policy_version"] == "sha256:abc"
    assert record["latency_us"] == 1234
    assert record["caller"] == {
        "spiffe_id": CALLER.spiffe_id,
        "serial": CALLER.serial,
        "trust_domain": "example.org",
    }
    assert record["shadow"]["decision"] == "deny"
    assert record["arguments_redacted"] is False
    assert "redacted" not in record
    # The one request parser rebuilds the identical request from the record.
    again = parse_request(json.loads(encode_body(record))["request"], now=datetime.now(UTC))
    assert again == request


def test_refusal_record() -> None:
    record = build_refusal_record(
        new_decision_id(),
        "unauthenticated",
        "no client certificate (token was Bearer plantedbearertoken0123456789)",
        caller=None,
        instance_id=INSTANCE,
        redactor=REDACTOR,
        method="/pdp.v1.Decisions/Decide",
        peer="ipv4:10.0.0.9:5555",
    )
    assert record["kind"] == "refusal"
    assert record["caller"] is None
    assert record["refusal"]["code"] == "unauthenticated"
    assert "plantedbearertoken" not in json.dumps(record)
    assert record["redacted"] == ["refusal.message"]
    assert record["arguments_redacted"] is False
    with_request = build_refusal_record(
        new_decision_id(),
        "permission_denied",
        "caller may not ask for this agent",
        caller=CALLER,
        instance_id=INSTANCE,
        redactor=REDACTOR,
        request=make_request({"password": "x"}),
    )
    assert with_request["request"]["arguments"] == {"password": REDACTED}
    assert with_request["arguments_redacted"] is True


def test_planted_secrets_are_redacted_and_flagged() -> None:
    request = make_request(dict(PLANTED))
    record = build_decision_record(new_decision_id(), request, ALLOW, CALLER, 1, INSTANCE, REDACTOR)
    text = encode_body(record).decode()
    for secret in SECRETS:
        assert secret not in text, secret
    args = record["request"]["arguments"]
    for key in ("password", "db_Password", "accessToken", "X-Api-Key", "client_secret", "Cookie"):
        assert args[key] == REDACTED
    assert args["credentials"] == REDACTED
    assert args["header"] == f"Authorization: {REDACTED}"
    assert args["note"] == f"use {REDACTED} to log in"
    assert args["key_material"] == REDACTED + "\n"
    assert args["aws"] == f"id {REDACTED} in text"
    assert args["dsn"] == f"postgres://bob:{REDACTED}@db.internal:5432/app"
    assert record["arguments_redacted"] is True
    assert "request.arguments.password" in record["redacted"]
    assert request.arguments["password"] == PLANTED["password"]  # the request is not mutated


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("PASSWORD", True),
        ("user_password_hash", True),
        ("apiKey", True),
        ("APIKEY", True),
        ("x-api-key", True),
        ("refresh_token", True),
        ("set-cookie", True),
        ("privateKey", True),
        ("aws_secret_access_key", True),
        ("Proxy-Authorization", True),
        ("max_tokens", False),
        ("tokenizer", False),
        ("path", False),
        ("author", False),
        ("keyboard", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert REDACTOR.is_secret_key(key) is secret


def test_values_that_look_like_credentials() -> None:
    text = REDACTOR.text
    assert text("Bearer abc.DEF-123_xyz") == REDACTED
    assert text(JWT) == REDACTED
    assert text(f"a {AWS_KEY} b") == f"a {REDACTED} b"
    assert text("ASIAABCDEFGHIJKLMNOP") == REDACTED
    assert text(PEM + "tail") == REDACTED + "\ntail"
    assert text("-----BEGIN RSA PRIVATE KEY-----\nMIIEcut-off") == REDACTED
    assert text('{"token": "abc", "n": 1}') == f'{{"token": "{REDACTED}", "n": 1}}'
    assert text("ghp_" + "a" * 36) == REDACTED
    # Ordinary text stays readable (replay depends on it).
    for plain in ("select * from t where id = 3", "AKIA", "a bearer of news", "max_tokens=5"):
        assert text(plain) == plain


def test_configurable_keys_patterns_and_tool_paths() -> None:
    redactor = Redactor(
        RedactionConfig(
            secret_keys=("ssn",),
            extra_value_patterns=(r"\bcard-\d{4}\b",),
            tool_paths={"db/query": ("sql", "rows[*].email"), "db/*": ("$.opts.dsn",)},
        )
    )
    args = {
        "sql": "select 1",
        "rows": [{"email": "a@b"}, {"email": "c@d", "ok": 1}],
        "opts": {"dsn": "x"},
        "SSN": "123",
        "password": "kept: not configured",
        "memo": "pay with card-1234",
    }
    out, masked = redactor.arguments("db", "query", args)
    assert out == {
        "sql": REDACTED,
        "rows": [{"email": REDACTED}, {"email": REDACTED, "ok": 1}],
        "opts": {"dsn": REDACTED},
        "SSN": REDACTED,
        "password": "kept: not configured",
        "memo": f"pay with {REDACTED}",
    }
    assert set(masked) == {
        "arguments.SSN",
        "arguments.memo",
        "arguments.sql",
        "arguments.rows[0].email",
        "arguments.rows[1].email",
        "arguments.opts.dsn",
    }
    other, masked_other = redactor.arguments("web", "get", {"sql": "select 1"})
    assert other == {"sql": "select 1"} and masked_other == ()


def test_reasons_and_errors_are_scrubbed() -> None:
    decision = Decision(
        Effect.DENY,
        (Reason("deny-secrets", f"argument looked like {AWS_KEY}"),),
        "v1",
        (f"type error on value 'Bearer {'z' * 20}'",),
    )
    record = build_decision_record(
        new_decision_id(), make_request(), decision, CALLER, 1, INSTANCE, REDACTOR
    )
    text = encode_body(record).decode()
    assert AWS_KEY not in text and "z" * 20 not in text
    assert record["redacted"] == ["reasons[0].message", "errors[0]"]
    assert record["arguments_redacted"] is False
