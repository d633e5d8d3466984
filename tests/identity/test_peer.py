"""PeerVerifier against the certificate cases of security-tests.md section 6.

Each case builds a (leaf PEM, chain PEM) pair the way a TLS peer would present it
and states either the SPIFFE ID that must be authenticated or a fragment of the
rejection reason, so the test also pins *which* rule rejected it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.devca import DevCA, IssuedCert
from pdp.identity.peer import PeerAuthError, PeerVerifier

from .conftest import GOOD_ID, NOW, TD_A, TD_B, TD_X


@dataclass
class Cas:
    a: DevCA
    b: DevCA
    x: DevCA


Build = Callable[[Cas], IssuedCert | tuple[bytes, bytes]]
SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")])


def _long_id(total: int) -> str:
    prefix = f"spiffe://{TD_A}/"
    return prefix + "a" * (total - len(prefix))


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body + content


def _der_children(der: bytes) -> list[bytes]:
    """The encoded elements inside one DER SEQUENCE."""

    def header(at: int) -> tuple[int, int]:
        first = der[at + 1]
        if first < 0x80:
            return 2, first
        size = first & 0x7F
        return 2 + size, int.from_bytes(der[at + 2 : at + 2 + size], "big")

    start, length = header(0)
    children, at = [], start
    while at < start + length:
        head, size = header(at)
        children.append(der[at : at + head + size])
        at += head + size
    return children


_ECDSA_WITH_SHA1 = _der(0x30, _der(0x06, bytes.fromhex("2a8648ce3d0401")))


def _sha1_signed(c: Cas) -> tuple[bytes, bytes]:
    """A good SVID re-signed by its real CA with ECDSA-SHA1 (cryptography refuses to
    build one, so the TBS is re-encoded by hand)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    issued = c.a.issue_svid(GOOD_ID, now=NOW)
    tbs, _algorithm, _signature = _der_children(
        issued.cert.public_bytes(serialization.Encoding.DER)
    )
    fields = _der_children(tbs)
    fields[2] = _ECDSA_WITH_SHA1  # after version and serial: the signature algorithm
    tbs = _der(0x30, b"".join(fields))
    key = c.a.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA1()))  # the attack under test
    der = _der(0x30, tbs + _ECDSA_WITH_SHA1 + _der(0x03, b"\0" + signature))
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM), b""


def _tampered(c: Cas) -> tuple[bytes, bytes]:
    der = bytearray(c.a.issue_svid(GOOD_ID, now=NOW).cert.public_bytes(serialization.Encoding.DER))
    der[-8] ^= 0x01  # inside the ECDSA signature's s integer
    cert = x509.load_der_x509_certificate(bytes(der))
    return cert.public_bytes(serialization.Encoding.PEM), b""


def _missing_intermediate(c: Cas) -> tuple[bytes, bytes]:
    issued = c.a.issue_intermediate(now=NOW).issue_svid(GOOD_ID, now=NOW)
    return issued.cert_pem, b""


def _ca_claimed_td(c: Cas) -> IssuedCert:
    # CA_B signs an intermediate that "claims" TD_A; only bundle membership counts.
    claimed = c.b.issue_intermediate(now=NOW, uri=f"spiffe://{TD_A}")
    return claimed.issue_svid(f"spiffe://{TD_A}/ns/admin/sa/root", now=NOW)


ACCEPTED: dict[str, tuple[Build, str]] = {
    "good SVID": (lambda c: c.a.issue_svid(GOOD_ID, now=NOW), GOOD_ID),
    "federated TD signed by its own CA": (
        lambda c: c.b.issue_svid(f"spiffe://{TD_B}/api", now=NOW),
        f"spiffe://{TD_B}/api",
    ),
    "chain with an intermediate": (
        lambda c: c.a.issue_intermediate(now=NOW).issue_svid(GOOD_ID, now=NOW),
        GOOD_ID,
    ),
    "two intermediates": (
        lambda c: (
            c.a.issue_intermediate(now=NOW).issue_intermediate(now=NOW).issue_svid(GOOD_ID, now=NOW)
        ),
        GOOD_ID,
    ),
    "SPIRE-style subject, non-critical SAN": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, subject=SUBJECT),
        GOOD_ID,
    ),
    # webpki says MUST NOT, RFC 5280 only SHOULD NOT: relaxed on purpose.
    "subject with critical SAN": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, subject=SUBJECT, san_critical=True),
        GOOD_ID,
    ),
    # webpki requires an AKI on the leaf; RFC 5280 / SPIFFE do not: relaxed on purpose.
    "leaf without authorityKeyIdentifier": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, authority_key_identifier=False),
        GOOD_ID,
    ),
    "DNS and IP SANs are ignored": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, dns_names=["x"], ip_addresses=["10.0.0.1"]),
        GOOD_ID,
    ),
    "no EKU": (lambda c: c.a.issue_svid(GOOD_ID, now=NOW, extended_key_usage=None), GOOD_ID),
    "EKU clientAuth only": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
        ),
        GOOD_ID,
    ),
    "KU digitalSignature + keyAgreement": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, key_usage={"digital_signature", "key_agreement"}
        ),
        GOOD_ID,
    ),
    "positive control /.path": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}/.path", now=NOW),
        f"spiffe://{TD_A}/.path",
    ),
    "positive control /..path": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}/..path", now=NOW),
        f"spiffe://{TD_A}/..path",
    ),
    "positive control /...": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}/...", now=NOW),
        f"spiffe://{TD_A}/...",
    ),
    "2048-byte ID": (lambda c: c.a.issue_svid(_long_id(2048), now=NOW), _long_id(2048)),
    "valid at notBefore after backdating": (
        lambda c: c.a.issue_svid(GOOD_ID, not_before=NOW, not_after=NOW + timedelta(minutes=1)),
        GOOD_ID,
    ),
}

REJECTED: dict[str, tuple[Build, str]] = {
    # 6.2 trust-domain confusion
    "wrong trust domain: TD_A ID signed by TD_B's CA": (
        lambda c: c.b.issue_svid(f"spiffe://{TD_A}/ns/admin/sa/root", now=NOW),
        "does not verify against the bundle of trust domain 'prod.example'",
    ),
    "CA of TD_B claims TD_A via an intermediate": (
        _ca_claimed_td,
        "does not verify against the bundle of trust domain 'prod.example'",
    ),
    "unknown CA": (
        lambda c: c.x.issue_svid(GOOD_ID, now=NOW),
        "does not verify against the bundle of trust domain 'prod.example'",
    ),
    "unknown trust domain": (
        lambda c: c.x.issue_svid(f"spiffe://{TD_X}/x", now=NOW),
        "'evil.example' is not trusted",
    ),
    "issued by an unknown CA that claims TD_A": (
        lambda c: DevCA.create(TD_A, now=NOW).issue_svid(GOOD_ID, now=NOW),  # same TD, other key
        "does not verify",
    ),
    # 6.1 transport / chain
    "expired": (
        lambda c: c.a.issue_svid(
            GOOD_ID, not_before=NOW - timedelta(hours=1), not_after=NOW - timedelta(seconds=1)
        ),
        "expired",
    ),
    "not yet valid": (
        lambda c: c.a.issue_svid(
            GOOD_ID, not_before=NOW + timedelta(minutes=10), not_after=NOW + timedelta(hours=1)
        ),
        "not yet valid",
    ),
    "expired intermediate": (
        lambda c: c.a.issue_intermediate(
            now=NOW, not_before=NOW - timedelta(days=2), not_after=NOW - timedelta(days=1)
        ).issue_svid(GOOD_ID, now=NOW),
        "not valid at validation time",
    ),
    "missing intermediate": (_missing_intermediate, "does not verify"),
    "intermediate with cA=false": (
        lambda c: c.a.issue_intermediate(now=NOW, ca=False).issue_svid(GOOD_ID, now=NOW),
        "basicConstraints.cA must be asserted",
    ),
    "intermediate without keyCertSign": (
        lambda c: c.a.issue_intermediate(now=NOW, key_usage={"crl_sign"}).issue_svid(
            GOOD_ID, now=NOW
        ),
        "keyCertSign must be asserted",
    ),
    "tampered signature": (_tampered, "does not verify"),
    "RSA-1024 leaf key": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, key=rsa.generate_private_key(65537, 1024)),
        "shorter than 2048 bits",
    ),
    "unknown critical extension": (
        lambda c: c.a.issue_svid(
            GOOD_ID,
            now=NOW,
            extra_extensions=[
                (
                    x509.UnrecognizedExtension(
                        ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"
                    ),
                    True,
                )
            ],
        ),
        "unaccounted-for critical extensions",
    ),
    "empty subject with non-critical SAN": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, san_critical=False),
        "must be critical when the subject is empty",
    ),
    # 6.4 leaf vs CA properties
    "CA certificate as leaf": (
        lambda c: IssuedCert(c.a.root, c.a.key),
        "must have a path",
    ),
    "leaf with cA=true": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, ca=True, key_usage={"digital_signature", "key_cert_sign"}
        ),
        "CA certificate",
    ),
    "keyCertSign leaf": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, key_usage={"digital_signature", "key_cert_sign"}
        ),
        "certificate or CRL signing",
    ),
    "cRLSign leaf": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, key_usage={"digital_signature", "crl_sign"}),
        "certificate or CRL signing",
    ),
    "non-critical keyUsage": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, key_usage_critical=False),
        "keyUsage extension is not critical (X509-SVID section 4.3",
    ),
    "SHA-1 signature": (_sha1_signed, "client certificate is signed with SHA1"),
    "no keyUsage": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, key_usage=None),
        "no keyUsage",
    ),
    "keyUsage without digitalSignature": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, key_usage={"key_encipherment"}),
        "lacks digitalSignature",
    ),
    "EKU serverAuth only": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH]
        ),
        "lacks clientAuth",
    ),
    "EKU anyExtendedKeyUsage only": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, extended_key_usage=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
        ),
        "lacks clientAuth",
    ),
    "EKU codeSigning only": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, extended_key_usage=[ExtendedKeyUsageOID.CODE_SIGNING]
        ),
        "lacks clientAuth",
    ),
    # 6.3 URI SAN / SPIFFE ID syntax (signed by CA_A: only the identity layer can reject)
    "two URI SANs": (
        lambda c: c.a.issue_svid(
            GOOD_ID, now=NOW, uris=[f"spiffe://{TD_A}/a", f"spiffe://{TD_A}/b"]
        ),
        "2 URI SANs",
    ),
    "SPIFFE URI plus https URI": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, uris=[GOOD_ID, "https://x.example"]),
        "2 URI SANs",
    ),
    "no URI SAN, DNS SAN and CN only": (
        lambda c: c.a.issue_svid(
            GOOD_ID,
            now=NOW,
            uris=[],
            dns_names=["prod.example"],
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOD_ID)]),
        ),
        "no URI SAN",
    ),
    "no SAN at all": (lambda c: c.a.issue_svid(GOOD_ID, now=NOW, uris=[]), "no URI SAN"),
    "non-spiffe URI": (
        lambda c: c.a.issue_svid(GOOD_ID, now=NOW, uris=["https://prod.example/app"]),
        "spiffe://",
    ),
    "root ID leaf": (lambda c: c.a.issue_svid(f"spiffe://{TD_A}", now=NOW), "must have a path"),
    "trailing slash": (lambda c: c.a.issue_svid(f"spiffe://{TD_A}/", now=NOW), "'/'"),
    "uppercase trust domain": (
        lambda c: c.a.issue_svid("spiffe://Prod.Example/app", now=NOW),
        "lowercase",
    ),
    "uppercase scheme and TD": (
        lambda c: c.a.issue_svid("SPIFFE://PROD.EXAMPLE/app", now=NOW),
        "lowercase scheme",
    ),
    "trailing newline in path": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}/admin\n", now=NOW),
        "not a valid SPIFFE ID",
    ),
    "newline after trust domain": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}\n/admin", now=NOW),
        "not a valid SPIFFE ID",
    ),
    "Kelvin sign in trust domain": (
        lambda c: c.a.issue_svid("spiffe://\u212aprod.example/app", now=NOW),
        "non-ASCII",
    ),
    "percent-encoded path": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}/%61dmin", now=NOW),
        "percent",
    ),
    "percent-encoded trust domain": (
        lambda c: c.a.issue_svid("spiffe://prod%2Eexample/app", now=NOW),
        "percent",
    ),
    "dot-dot segment": (
        lambda c: c.a.issue_svid(f"spiffe://{TD_A}/a/../admin", now=NOW),
        "'.' or '..'",
    ),
    "dot segment": (lambda c: c.a.issue_svid(f"spiffe://{TD_A}/./a", now=NOW), "'.' or '..'"),
    "empty segment": (lambda c: c.a.issue_svid(f"spiffe://{TD_A}/a//b", now=NOW), "empty segment"),
    "userinfo": (
        lambda c: c.a.issue_svid(f"spiffe://user@{TD_A}/app", now=NOW),
        "userinfo",
    ),
    "port": (lambda c: c.a.issue_svid(f"spiffe://{TD_A}:443/app", now=NOW), "port"),
    "query": (lambda c: c.a.issue_svid(f"spiffe://{TD_A}/app?admin=1", now=NOW), "query"),
    "2049-byte ID": (lambda c: c.a.issue_svid(_long_id(2049), now=NOW), "longer than 2048"),
    # malformed input
    "garbage PEM": (
        lambda c: (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b""),
        "not a valid certificate",
    ),
    "empty leaf": (lambda c: (b"", b""), "missing"),
    "two certificates as the leaf": (
        lambda c: (c.a.issue_svid(GOOD_ID, now=NOW).cert_pem + c.a.bundle_pem, b""),
        "exactly one",
    ),
}


def _present(cas: Cas, build: Build) -> tuple[bytes, bytes]:
    issued = build(cas)
    if isinstance(issued, IssuedCert):
        return issued.cert_pem, issued.intermediates_pem
    return issued


@pytest.fixture
def cas(ca_a: DevCA, ca_b: DevCA, ca_x: DevCA) -> Cas:
    return Cas(ca_a, ca_b, ca_x)


@pytest.mark.parametrize(("build", "expected_id"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(cas: Cas, bundles: TrustDomainBundles, build: Build, expected_id: str) -> None:
    leaf_pem, chain_pem = _present(cas, build)
    caller = PeerVerifier(lambda: bundles).authenticate(leaf_pem, chain_pem, NOW)
    assert caller.spiffe_id == expected_id
    assert caller.trust_domain == expected_id.removeprefix("spiffe://").split("/")[0]
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    assert caller.serial == format(leaf.serial_number, "x")


@pytest.mark.parametrize(("build", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected(cas: Cas, bundles: TrustDomainBundles, build: Build, reason: str) -> None:
    leaf_pem, chain_pem = _present(cas, build)
    with pytest.raises(PeerAuthError) as info:
        PeerVerifier(lambda: bundles).authenticate(leaf_pem, chain_pem, NOW)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason  # never echoes raw certificate content
    for internal in ("Python", "ValueError", "{", "PhantomData", "Error:"):
        assert internal not in info.value.reason  # spec terms, not library internals


def test_chain_may_start_with_the_leaf(ca_a: DevCA, bundles: TrustDomainBundles) -> None:
    """grpc's x509_pem_cert_chain may or may not include the leaf; both verify."""
    issued = ca_a.issue_intermediate(now=NOW).issue_svid(GOOD_ID, now=NOW)
    verifier = PeerVerifier(lambda: bundles)
    assert verifier.authenticate(issued.cert_pem, issued.chain_pem, NOW).spiffe_id == GOOD_ID
    assert verifier.authenticate(issued.cert_pem, issued.chain_pem + issued.cert_pem, NOW)


def test_same_root_in_two_trust_domains_authenticates_the_named_one(ca_a: DevCA) -> None:
    """Key reuse across TDs: the chain cannot tell them apart, the Caller's TD can."""
    shared = TrustDomainBundles({TD_A: [ca_a.root], "staging.example": [ca_a.root]})
    issued = ca_a.issue_svid("spiffe://staging.example/app", now=NOW)
    caller = PeerVerifier(lambda: shared).authenticate(issued.cert_pem, b"", NOW)
    assert (caller.spiffe_id, caller.trust_domain) == (
        "spiffe://staging.example/app",
        "staging.example",
    )


def test_path_length_constraint_is_enforced() -> None:
    root = DevCA.create(TD_A, now=NOW, path_length=0)
    issued = root.issue_intermediate(now=NOW).issue_svid(GOOD_ID, now=NOW)
    only_root = TrustDomainBundles({TD_A: [root.root]})
    with pytest.raises(PeerAuthError, match="path length constraint violated"):
        PeerVerifier(lambda: only_root).authenticate(issued.cert_pem, issued.intermediates_pem, NOW)


def test_empty_bundle_means_no_certificate_of_that_trust_domain_verifies(
    ca_a: DevCA, ca_b: DevCA
) -> None:
    revoked = TrustDomainBundles({TD_A: [ca_a.root], TD_B: []})
    issued = ca_b.issue_svid(f"spiffe://{TD_B}/api", now=NOW)
    with pytest.raises(PeerAuthError, match=r"no X\.509 authorities"):
        PeerVerifier(lambda: revoked).authenticate(issued.cert_pem, b"", NOW)


# ---------------------------------------------------------------------------
# The cache


def test_cache_hit_skips_verification_but_still_enforces_expiry(
    ca_a: DevCA, bundles: TrustDomainBundles
) -> None:
    issued = ca_a.issue_svid(GOOD_ID, now=NOW, lifetime=timedelta(minutes=5))
    verifier = PeerVerifier(lambda: bundles)
    verifier.authenticate(issued.cert_pem, b"", NOW)
    verifier.authenticate(issued.cert_pem, b"", NOW + timedelta(minutes=1))
    info = verifier.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 1, 1)
    with pytest.raises(PeerAuthError, match="expired"):
        verifier.authenticate(issued.cert_pem, b"", NOW + timedelta(minutes=6))
    with pytest.raises(PeerAuthError, match="not yet valid"):
        verifier.authenticate(issued.cert_pem, b"", NOW - timedelta(hours=1))


def test_cache_enforces_the_earliest_expiry_in_the_chain(
    ca_a: DevCA, bundles: TrustDomainBundles
) -> None:
    intermediate = ca_a.issue_intermediate(now=NOW, lifetime=timedelta(minutes=10))
    issued = intermediate.issue_svid(GOOD_ID, now=NOW, lifetime=timedelta(hours=1))
    verifier = PeerVerifier(lambda: bundles)
    verifier.authenticate(issued.cert_pem, issued.intermediates_pem, NOW)
    with pytest.raises(PeerAuthError, match="not valid at validation time"):
        verifier.authenticate(
            issued.cert_pem, issued.intermediates_pem, NOW + timedelta(minutes=20)
        )


def test_removing_a_trust_domain_rejects_previously_cached_certs(
    ca_a: DevCA, ca_b: DevCA, bundles: TrustDomainBundles
) -> None:
    current = {"bundles": bundles}
    verifier = PeerVerifier(lambda: current["bundles"])
    partner = ca_b.issue_svid(f"spiffe://{TD_B}/api", now=NOW)
    ours = ca_a.issue_svid(GOOD_ID, now=NOW)
    verifier.authenticate(partner.cert_pem, b"", NOW)
    verifier.authenticate(ours.cert_pem, b"", NOW)

    current["bundles"] = bundles.without_trust_domain(TD_B)  # federation removed
    with pytest.raises(PeerAuthError, match=r"'partner\.example' is not trusted"):
        verifier.authenticate(partner.cert_pem, b"", NOW)
    assert verifier.authenticate(ours.cert_pem, b"", NOW).spiffe_id == GOOD_ID


def test_rotating_a_trust_domain_root_rejects_certs_of_the_old_root(
    ca_a: DevCA, bundles: TrustDomainBundles
) -> None:
    current = {"bundles": bundles}
    verifier = PeerVerifier(lambda: current["bundles"])
    old = ca_a.issue_svid(GOOD_ID, now=NOW)
    verifier.authenticate(old.cert_pem, b"", NOW)

    rotated = DevCA.create(TD_A, now=NOW)
    current["bundles"] = bundles.with_trust_domain(TD_A, [rotated.root])
    with pytest.raises(PeerAuthError, match="does not verify"):
        verifier.authenticate(old.cert_pem, b"", NOW)
    new = rotated.issue_svid(GOOD_ID, now=NOW)
    assert verifier.authenticate(new.cert_pem, b"", NOW).spiffe_id == GOOD_ID


def test_cache_is_bounded(ca_a: DevCA, bundles: TrustDomainBundles) -> None:
    verifier = PeerVerifier(lambda: bundles, cache_size=2)
    for index in range(5):
        issued = ca_a.issue_svid(f"spiffe://{TD_A}/w{index}", now=NOW)
        verifier.authenticate(issued.cert_pem, b"", NOW)
    assert verifier.cache_info().size == 2


def test_failures_are_not_cached(ca_a: DevCA, bundles: TrustDomainBundles) -> None:
    bad = ca_a.issue_svid(GOOD_ID, now=NOW, key_usage=None)
    verifier = PeerVerifier(lambda: bundles)
    for _ in range(2):
        with pytest.raises(PeerAuthError):
            verifier.authenticate(bad.cert_pem, b"", NOW)
    assert verifier.cache_info().size == 0


def test_naive_time_is_a_programming_error(ca_a: DevCA, bundles: TrustDomainBundles) -> None:
    issued = ca_a.issue_svid(GOOD_ID, now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        PeerVerifier(lambda: bundles).authenticate(issued.cert_pem, b"", NOW.replace(tzinfo=None))


def test_a_caller_racing_a_rotation_does_not_reuse_or_wipe_the_newer_cache(
    ca_a: DevCA, bundles: TrustDomainBundles
) -> None:
    issued = ca_a.issue_svid(GOOD_ID, now=NOW)
    newer = bundles.with_trust_domain(TD_A, [ca_a.root])
    current = {"bundles": newer}
    verifier = PeerVerifier(lambda: current["bundles"])
    verifier.authenticate(issued.cert_pem, b"", NOW)
    current["bundles"] = bundles  # an older generation
    verifier.authenticate(issued.cert_pem, b"", NOW)
    current["bundles"] = newer
    verifier.authenticate(issued.cert_pem, b"", NOW)
    info = verifier.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 2, 1)
