"""Authenticates a gRPC peer from its X.509-SVID: one function, fail closed.

grpc's TLS layer verifies client chains against one pooled root list (every trust
domain's roots), so a CA of a federated trust domain could mint
``spiffe://our.domain/admin`` and pass the handshake (spiffe/spiffe#375). The
:class:`PeerVerifier` therefore re-runs RFC 5280 path validation against the bundle
of the trust domain the leaf *claims*, and applies the X509-SVID leaf rules:

* exactly one URI SAN, a strict SPIFFE ID with a non-root path (other SAN types ignored);
* basicConstraints cA false; keyUsage present, critical, with digitalSignature and
  without keyCertSign or cRLSign (X509-SVID section 4.3); if an EKU is present it
  includes clientAuth; a critical SAN when the subject is empty;
* every certificate of the presented chain signed with SHA-256 or stronger;
* validity at ``now``; chain to a root of the leaf's own trust domain only.

Path validation uses ``cryptography.x509.verification``'s client verifier. Its
CA/B-Forum profile is stricter than RFC 5280 in two ways that would reject valid
SVIDs from some issuers, so the end-entity extension policy relaxes exactly those:

* an authorityKeyIdentifier is *optional* on the leaf (webpki requires it; it is only
  a path-building hint and RFC 5280 exempts nothing from signature checks anyway);
* the SAN may be critical when the subject is non-empty (RFC 5280 says SHOULD NOT,
  webpki says MUST NOT). A critical SAN is still required when the subject is empty.

Everything else of the profile stays: cA leaves, keyCertSign leaves, EKU without
clientAuth (or with only anyExtendedKeyUsage), unknown critical extensions, CA
certificates without cA/keyCertSign, path length, signature algorithms outside the
webpki set (e.g. SHA-1), and URI name constraints (unsupported, so rejected) all
fail. The profile does *not* count URI SANs, check cRLSign, require keyUsage or
digitalSignature, look at the SPIFFE ID, or bound the leaf's own key size (an
RSA-1024 leaf passes it); those checks are done here first, together with the ones
whose failure the verifier would report in its own internal terms (the signature
algorithm, the SAN's criticality), so that a refusal names the rule it breaks, never
the library's internals.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.spiffe_id import InvalidSpiffeId, SpiffeId, parse_spiffe_id
from pdp.model import Caller

BundlesProvider = Callable[[], TrustDomainBundles]

MAX_INTERMEDIATES = 8
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
_MAX_DETAIL = 160
# Signature hashes the path validation accepts (webpki's set); SHA-1 and MD5 are not.
_ACCEPTED_SIGNATURE_HASHES = frozenset({"sha256", "sha384", "sha512"})
# Verifier failures in RFC 5280 terms, by a fragment of cryptography's message; anything
# else is cut before its first internal detail (see _verification_detail).
_VERIFICATION_TERMS = (
    ("Forbidden signature algorithm", "a certificate of the chain has a forbidden signature"),
    ("Forbidden public key algorithm", "a certificate of the chain has a forbidden key type"),
)


class PeerAuthError(Exception):
    """The peer is not authenticated. ``reason`` is safe to return as the gRPC detail:
    it never echoes unvalidated certificate content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _san_critical_iff_subject_empty(
    _policy: Any, cert: x509.Certificate, _san: x509.SubjectAlternativeName
) -> None:
    if len(cert.subject) == 0:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        if not san.critical:
            raise ValueError("subjectAltName must be critical when the subject is empty")


_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    .require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, _san_critical_iff_subject_empty
    )
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


@dataclass(frozen=True, slots=True)
class CacheInfo:
    hits: int
    misses: int
    size: int


@dataclass(frozen=True, slots=True)
class _Verified:
    caller: Caller
    not_before: datetime  # latest notBefore of the verified chain
    not_after: datetime  # earliest notAfter of the verified chain


class PeerVerifier:
    """``authenticate(leaf_pem, chain_pem, now) -> Caller`` or :class:`PeerAuthError`.

    ``bundles`` is called on every authentication so that a bundle rotation or a
    removed trust domain takes effect on the next call, including on connections
    that were established before. Successful results are cached per (leaf+chain
    digest, bundle generation); a hit still checks the validity window at ``now``.
    Thread-safe.
    """

    def __init__(self, bundles: BundlesProvider, *, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._bundles = bundles
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._stores: dict[str, Store] = {}
        self._generation = -1
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def authenticate(self, leaf_pem: bytes, chain_pem: bytes, now: datetime) -> Caller:
        """``chain_pem`` is the peer's chain as grpc reports it (``x509_pem_cert_chain``);
        whether or not it starts with the leaf, the leaf is dropped from it."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        now = now.astimezone(UTC)
        bundles = self._bundles()
        key = _digest(leaf_pem, chain_pem)
        with self._lock:
            if bundles.generation > self._generation:
                # New bundle set: nothing verified against the old one is trusted.
                self._cache.clear()
                self._stores.clear()
                self._generation = bundles.generation
            # A caller still holding an older bundle set (racing a rotation) bypasses the cache.
            hit = self._cache.get(key) if bundles.generation == self._generation else None
            if hit is not None and hit.not_before <= now <= hit.not_after:
                self._cache.move_to_end(key)
                self._hits += 1
                return hit.caller
            self._misses += 1
        # Outside the lock: a miss verifies fully (and a stale hit re-verifies, which
        # yields the precise reason, e.g. "expired").
        verified = self._verify(leaf_pem, chain_pem, now, bundles)
        if self._cache_size:
            with self._lock:
                if bundles.generation == self._generation:
                    self._cache[key] = verified
                    self._cache.move_to_end(key)
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return verified.caller

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache))

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._stores.clear()

    # -- the checks -------------------------------------------------------
    def _verify(
        self, leaf_pem: bytes, chain_pem: bytes, now: datetime, bundles: TrustDomainBundles
    ) -> _Verified:
        leaf = _load_leaf(leaf_pem)
        intermediates = _load_intermediates(chain_pem, leaf)
        try:
            extensions = leaf.extensions
        except (ValueError, x509.DuplicateExtension):
            raise PeerAuthError(
                "client certificate has malformed or duplicate extensions"
            ) from None
        spiffe_id = _spiffe_id(extensions)
        _check_leaf(leaf, extensions, now)
        _check_signature_hashes(leaf, intermediates)
        trust_domain = spiffe_id.trust_domain
        store = self._store(bundles, trust_domain)
        try:
            verified = (
                PolicyBuilder()
                .store(store)
                .time(now)
                .max_chain_depth(MAX_INTERMEDIATES)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier()
                .verify(leaf, intermediates)
            )
        except VerificationError as exc:
            detail = _verification_detail(str(exc))
            raise PeerAuthError(
                f"client certificate chain does not verify against the bundle of trust "
                f"domain {trust_domain!r}: {detail}"
            ) from None
        chain = verified.chain
        return _Verified(
            caller=Caller(
                spiffe_id=str(spiffe_id),
                serial=format(leaf.serial_number, "x"),
                trust_domain=trust_domain,
            ),
            not_before=max(c.not_valid_before_utc for c in chain),
            not_after=min(c.not_valid_after_utc for c in chain),
        )

    def _store(self, bundles: TrustDomainBundles, trust_domain: str) -> Store:
        roots = bundles.for_trust_domain(trust_domain)
        if roots is None:
            raise PeerAuthError(f"trust domain {trust_domain!r} is not trusted")
        if not roots:
            raise PeerAuthError(f"trust domain {trust_domain!r} has no X.509 authorities")
        with self._lock:
            store = (
                self._stores.get(trust_domain) if bundles.generation == self._generation else None
            )
        if store is None:
            store = Store(list(roots))
            with self._lock:
                if bundles.generation == self._generation:
                    self._stores[trust_domain] = store
        return store


def _digest(leaf_pem: bytes, chain_pem: bytes) -> bytes:
    digest = hashlib.sha256()
    digest.update(len(leaf_pem).to_bytes(8, "big"))
    digest.update(leaf_pem)
    digest.update(chain_pem)
    return digest.digest()


def _load_leaf(leaf_pem: bytes) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(leaf_pem)
    except ValueError:
        raise PeerAuthError("client certificate is missing or not a valid certificate") from None
    if len(certs) != 1:
        raise PeerAuthError("expected exactly one client leaf certificate")
    return certs[0]


def _load_intermediates(chain_pem: bytes, leaf: x509.Certificate) -> list[x509.Certificate]:
    if not chain_pem.strip():
        return []
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise PeerAuthError("client certificate chain is not valid PEM") from None
    intermediates = [cert for cert in chain if cert != leaf]
    if len(intermediates) > MAX_INTERMEDIATES:
        raise PeerAuthError(f"client certificate chain has more than {MAX_INTERMEDIATES} CAs")
    return intermediates


def _spiffe_id(extensions: x509.Extensions) -> SpiffeId:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerAuthError("client certificate has no URI SAN (no SPIFFE ID)") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise PeerAuthError("client certificate has no URI SAN (no SPIFFE ID)")
    if len(uris) > 1:
        raise PeerAuthError(
            f"client certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one"
        )
    try:
        return parse_spiffe_id(uris[0], require_path=True)
    except InvalidSpiffeId as exc:
        raise PeerAuthError(f"client certificate URI SAN is not a valid SPIFFE ID: {exc}") from None


def _verification_detail(message: str) -> str:
    """cryptography's reason for a failed path validation, in terms an operator can act
    on: never a Rust debug structure or the name of a Python exception."""
    for fragment, meaning in _VERIFICATION_TERMS:
        if fragment in message:
            return meaning
    detail = message.split(" (encountered processing", 1)[0]
    if "Python extension validator" in detail or "{" in detail or "(" in detail:
        return "the chain breaks RFC 5280 path validation"
    return detail[:_MAX_DETAIL]


def _check_signature_hashes(leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
    for position, cert in enumerate([leaf, *intermediates]):
        try:
            algorithm = cert.signature_hash_algorithm
        except Exception:  # an algorithm cryptography does not know: not one we accept
            algorithm = None
        name = algorithm.name if algorithm is not None else "an unsupported algorithm"
        if name not in _ACCEPTED_SIGNATURE_HASHES and not _is_eddsa(cert):
            which = "client certificate" if position == 0 else f"intermediate CA #{position}"
            raise PeerAuthError(
                f"{which} is signed with {name.upper() if algorithm else name}; pdp accepts"
                " SHA-256, SHA-384 or SHA-512 signatures (or Ed25519)"
            )


def _is_eddsa(cert: x509.Certificate) -> bool:
    return cert.signature_algorithm_oid in (
        x509.oid.SignatureAlgorithmOID.ED25519,
        x509.oid.SignatureAlgorithmOID.ED448,
    )


def _check_leaf(leaf: x509.Certificate, extensions: x509.Extensions, now: datetime) -> None:
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise PeerAuthError("client certificate is a CA certificate (cA=true), not an SVID")
    try:
        usage_extension = extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise PeerAuthError("client certificate has no keyUsage extension") from None
    if not usage_extension.critical:
        raise PeerAuthError(
            "client certificate keyUsage extension is not critical"
            " (X509-SVID section 4.3: it must be present and critical)"
        )
    usage = usage_extension.value
    if usage.key_cert_sign or usage.crl_sign:
        raise PeerAuthError("client certificate keyUsage allows certificate or CRL signing")
    if not usage.digital_signature:
        raise PeerAuthError("client certificate keyUsage lacks digitalSignature")
    try:
        eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PeerAuthError("client certificate extendedKeyUsage lacks clientAuth")
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise PeerAuthError(f"client certificate RSA key is shorter than {MIN_RSA_BITS} bits")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.key_size < MIN_EC_BITS:
        raise PeerAuthError(f"client certificate EC key is smaller than {MIN_EC_BITS} bits")
    if len(leaf.subject) == 0:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName)
        if not san.critical:
            raise PeerAuthError(
                "client certificate subjectAltName must be critical when the subject is"
                " empty (RFC 5280 section 4.1.2.6, X509-SVID section 3.1)"
            )
    if now < leaf.not_valid_before_utc:
        raise PeerAuthError("client certificate is not yet valid")
    if now > leaf.not_valid_after_utc:
        raise PeerAuthError("client certificate has expired")
