"""TrustDomainBundles: loading (PEM, SPIFFE bundle JSON, bundle maps, py-spiffe) and identity."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain, X509Bundle, X509BundleSet

from pdp.identity.bundles import (
    BundleError,
    TrustDomainBundles,
    load_bundle_file,
    parse_pem_bundle,
    parse_spiffe_bundle,
)
from pdp.identity.devca import DevCA

from .conftest import NOW, TD_A, TD_B


def _x5c(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _jwk(cert: x509.Certificate, **extra: Any) -> dict[str, Any]:
    return {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": [_x5c(cert)], **extra}


def test_spiffe_bundle_keeps_only_x509_svid_entries_with_x5c(ca_a: DevCA) -> None:
    second = DevCA.create(TD_A, now=NOW)
    document = {
        "spiffe_sequence": 3,
        "keys": [
            _jwk(ca_a.root),
            {"use": "jwt-svid", "kty": "EC", "kid": "k1", "x5c": [_x5c(second.root)]},
            {"use": "x509-svid", "kty": "EC"},  # no x5c: ignored
            {"use": "x509-svid", "kty": "EC", "x5c": []},  # empty x5c: ignored
            _jwk(second.root, kid="forbidden"),  # kid set: not a valid x509-svid JWK
            {"use": "something-new", "kty": "OKP"},  # unknown use: ignored
            _jwk(second.root, x5c=[_x5c(second.root), _x5c(ca_a.root)]),  # extra x5c ignored
        ],
    }
    assert parse_spiffe_bundle(json.dumps(document)) == (ca_a.root, second.root)


def test_empty_keys_is_a_known_trust_domain_without_authorities() -> None:
    bundles = TrustDomainBundles.from_bundle_map_json(
        '{"trust_domains": {"a.example": {"keys": []}}}'
    )
    assert bundles.for_trust_domain("a.example") == ()
    assert bundles.for_trust_domain("b.example") is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "invalid JSON"),
        ("[]", '"keys" array'),
        ('{"keys": {}}', '"keys" array'),
        ('{"keys": [1]}', "not an object"),
        ('{"keys": [{"use": "x509-svid", "x5c": "abc"}]}', "list of base64"),
        ('{"keys": [{"use": "x509-svid", "x5c": ["!!!"]}]}', "not a base64 DER X.509"),
        ('{"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}', "not a base64 DER X.509"),
        ('{"keys": [], "keys": []}', "duplicate key 'keys'"),
        ("[" * 100_000, "invalid JSON"),
    ],
)
def test_malformed_spiffe_bundles_are_rejected(document: str, message: str) -> None:
    with pytest.raises(BundleError) as info:
        parse_spiffe_bundle(document)
    assert message in str(info.value)
    assert "ParseError" not in str(info.value)  # no library internals


@pytest.mark.parametrize(
    "pem",
    [
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_a_garbled_pem_bundle_is_named_without_library_internals(pem: bytes) -> None:
    with pytest.raises(BundleError) as info:
        parse_pem_bundle(pem, "partner.pem")
    message = str(info.value)
    assert message.startswith("partner.pem: not a PEM bundle of X.509 certificates")
    for internal in ("ParseError", "cryptography.io", "MalformedFraming", "Tag {"):
        assert internal not in message


def test_bundle_map_loads_each_trust_domain_separately(ca_a: DevCA, ca_b: DevCA) -> None:
    document = {
        "trust_domains": {TD_A: {"keys": [_jwk(ca_a.root)]}, TD_B: {"keys": [_jwk(ca_b.root)]}}
    }
    bundles = TrustDomainBundles.from_bundle_map_json(json.dumps(document))
    assert dict(bundles) == {TD_A: (ca_a.root,), TD_B: (ca_b.root,)}


def test_bundle_map_with_a_duplicate_trust_domain_is_rejected(ca_a: DevCA, ca_x: DevCA) -> None:
    # json.loads would silently keep the attacker's second entry.
    first, second = json.dumps({"keys": [_jwk(ca_a.root)]}), json.dumps({"keys": [_jwk(ca_x.root)]})
    document = f'{{"trust_domains": {{"{TD_A}": {first}, "{TD_A}": {second}}}}}'
    with pytest.raises(BundleError, match=r"duplicate key 'prod\.example'"):
        TrustDomainBundles.from_bundle_map_json(document)


@pytest.mark.parametrize(
    "document",
    ['{"trust_domains": []}', "{}", '{"trust_domains": {"Bad.TD": {"keys": []}}}'],
)
def test_bundle_map_shape_and_names_are_checked(document: str) -> None:
    with pytest.raises(BundleError):
        TrustDomainBundles.from_bundle_map_json(document)


def test_files_are_pem_or_json_by_content(tmp_path: Path, ca_a: DevCA, ca_b: DevCA) -> None:
    pem = tmp_path / "a.pem"
    pem.write_bytes(ca_a.bundle_pem + ca_a.bundle_pem)  # duplicates collapse
    spiffe = tmp_path / "b.json"
    spiffe.write_text(json.dumps({"keys": [_jwk(ca_b.root)]}))
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"\n")
    bundles = TrustDomainBundles.from_files({TD_A: pem, TD_B: spiffe, "gone.example": empty})
    assert dict(bundles) == {TD_A: (ca_a.root,), TD_B: (ca_b.root,), "gone.example": ()}

    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"hello")
    with pytest.raises(BundleError, match="not PEM"):
        load_bundle_file(junk)


def test_union_pem_pools_every_root_once(ca_a: DevCA, ca_b: DevCA) -> None:
    bundles = TrustDomainBundles({TD_A: [ca_a.root], TD_B: [ca_b.root], "c.example": [ca_a.root]})
    pooled = x509.load_pem_x509_certificates(bundles.union_pem())
    assert sorted(c.subject.rfc4514_string() for c in pooled) == sorted(
        [ca_a.root.subject.rfc4514_string(), ca_b.root.subject.rfc4514_string()]
    )
    assert TrustDomainBundles().union_pem() == b""


def test_every_change_gets_a_higher_generation_and_equality_ignores_it(
    ca_a: DevCA, ca_b: DevCA
) -> None:
    one = TrustDomainBundles({TD_A: [ca_a.root]})
    two = one.with_trust_domain(TD_B, [ca_b.root])
    three = two.without_trust_domain(TD_B)
    assert one.generation < two.generation < three.generation
    assert three == one and three != two
    assert TD_B not in three and TD_B in two


def test_from_py_spiffe_bundle_set(ca_a: DevCA, ca_b: DevCA) -> None:
    bundle_set = X509BundleSet.of(
        [
            X509Bundle(TrustDomain(TD_A), {ca_a.root}),
            X509Bundle(TrustDomain(TD_B), {ca_b.root}),
            X509Bundle(TrustDomain("empty.example"), set()),
        ]
    )
    bundles = TrustDomainBundles.from_x509_bundle_set(bundle_set)
    assert dict(bundles) == {TD_A: (ca_a.root,), TD_B: (ca_b.root,), "empty.example": ()}


def test_entries_must_be_certificates() -> None:
    with pytest.raises(BundleError, match=r"x509\.Certificate"):
        TrustDomainBundles({TD_A: [b"pem bytes"]})  # type: ignore[list-item]
