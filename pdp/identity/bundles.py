"""Trust bundles kept per trust domain, never merged (SPIFFE Federation section 4).

A :class:`TrustDomainBundles` maps a trust domain name to the CA certificates that
may sign SVIDs *of that trust domain*. Peer verification picks the bundle of the
trust domain named in the peer's SPIFFE ID; the pooled :meth:`union_pem` exists only
because grpc's TLS layer takes one flat root list.

Bundles are immutable. Every instance gets a fresh, process-wide increasing
``generation``, so a cache keyed by generation can never confuse two bundle sets.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pdp.identity.spiffe_id import InvalidSpiffeId, parse_trust_domain

if TYPE_CHECKING:
    from spiffe import X509BundleSet

Certificates = tuple[x509.Certificate, ...]

_generations = itertools.count(1)
_generations_lock = threading.Lock()


def _next_generation() -> int:
    with _generations_lock:
        return next(_generations)


class BundleError(ValueError):
    """A trust bundle could not be loaded; the message names the source and the rule."""


class TrustDomainBundles(Mapping[str, Certificates]):
    """Trust domain name -> CA certificates of that trust domain, immutable.

    A trust domain mapped to an empty tuple is known but has no authorities: no
    certificate of it verifies (the bundle spec's "all keys revoked").
    """

    __slots__ = ("_bundles", "generation")

    def __init__(self, bundles: Mapping[str, Iterable[x509.Certificate]] | None = None) -> None:
        checked: dict[str, Certificates] = {}
        for trust_domain, certs in (bundles or {}).items():
            try:
                parse_trust_domain(trust_domain)
            except InvalidSpiffeId as exc:
                raise BundleError(str(exc)) from None
            checked[trust_domain] = _dedupe(certs)
        self._bundles = dict(sorted(checked.items()))
        self.generation = _next_generation()

    # -- Mapping ----------------------------------------------------------
    def __getitem__(self, trust_domain: str) -> Certificates:
        return self._bundles[trust_domain]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{td}: {len(certs)}" for td, certs in self._bundles.items())
        return f"TrustDomainBundles({{{sizes}}}, generation={self.generation})"

    # -- queries ----------------------------------------------------------
    def for_trust_domain(self, trust_domain: str) -> Certificates | None:
        """The authorities of ``trust_domain``; ``None`` when the trust domain is unknown."""
        return self._bundles.get(trust_domain)

    def union_pem(self) -> bytes:
        """Every root of every trust domain, PEM, for grpc's single root list.

        Only good enough for the TLS handshake: the per-trust-domain check in
        :class:`pdp.identity.peer.PeerVerifier` must still run on every call.
        """
        pooled = _dedupe(itertools.chain.from_iterable(self._bundles.values()))
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in pooled)

    # -- derived bundle sets (each a new generation) ----------------------
    def with_trust_domain(
        self, trust_domain: str, certs: Iterable[x509.Certificate]
    ) -> TrustDomainBundles:
        """A copy where ``trust_domain`` maps to ``certs`` (added or replaced)."""
        return TrustDomainBundles({**self._bundles, trust_domain: tuple(certs)})

    def without_trust_domain(self, trust_domain: str) -> TrustDomainBundles:
        return TrustDomainBundles({td: c for td, c in self._bundles.items() if td != trust_domain})

    # -- loading ----------------------------------------------------------
    @classmethod
    def from_files(cls, files: Mapping[str, str | Path]) -> TrustDomainBundles:
        """One bundle file per trust domain, PEM or SPIFFE bundle JSON (sniffed)."""
        return cls({td: load_bundle_file(path) for td, path in files.items()})

    @classmethod
    def from_bundle_map_json(cls, data: bytes | str) -> TrustDomainBundles:
        """``{"trust_domains": {"<td>": <SPIFFE bundle>, ...}}``.

        A duplicated trust-domain key rejects the whole map: ``json.loads`` would
        silently keep the last one, letting an attacker who appends a key win.
        """
        document = _load_json(data, "bundle map")
        if not isinstance(document, dict) or not isinstance(document.get("trust_domains"), dict):
            raise BundleError('bundle map must be an object with a "trust_domains" object')
        bundles: dict[str, Certificates] = {}
        for trust_domain, bundle in document["trust_domains"].items():
            bundles[trust_domain] = _x509_authorities(bundle, f"bundle of {trust_domain!r}")
        return cls(bundles)

    @classmethod
    def from_x509_bundle_set(cls, bundle_set: X509BundleSet) -> TrustDomainBundles:
        """From py-spiffe (e.g. ``X509Source.get_x509_context().x509_bundle_set``)."""
        bundles: dict[str, list[x509.Certificate]] = {}
        for bundle in bundle_set.bundles:
            # py-spiffe keeps authorities in a set; order them for a stable union_pem().
            bundles[bundle.trust_domain.name] = sorted(
                bundle.x509_authorities,
                key=lambda c: c.public_bytes(serialization.Encoding.DER),
            )
        return cls(bundles)


def parse_pem_bundle(data: bytes, source: str = "PEM bundle") -> Certificates:
    """All certificates of a PEM file. A file without any certificate is an empty bundle."""
    if b"-----BEGIN" not in data:
        if data.strip():
            raise BundleError(f"{source}: not PEM (no -----BEGIN line)")
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        # cryptography's message is a Rust parse dump or a FAQ link: say what is wrong.
        raise BundleError(
            f"{source}: not a PEM bundle of X.509 certificates (a CERTIFICATE block is"
            " truncated or does not decode)"
        ) from None


def parse_spiffe_bundle(data: bytes | str, source: str = "SPIFFE bundle") -> Certificates:
    """The X.509 authorities of one SPIFFE bundle (a JWKS, Trust Domain and Bundle section 4).

    Keys whose ``use`` is not ``x509-svid``, that have no ``x5c``, or that set ``kid``
    (which X509-SVID.md section 6 forbids) are ignored; ``x5c[0]`` is the authority.
    """
    return _x509_authorities(_load_json(data, source), source)


def load_bundle_file(path: str | Path) -> Certificates:
    """A PEM or SPIFFE-bundle-JSON file, told apart by its first character."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"{"):
        return parse_spiffe_bundle(data, str(path))
    return parse_pem_bundle(data, str(path))


def _x509_authorities(bundle: Any, source: str) -> Certificates:
    if not isinstance(bundle, dict) or not isinstance(bundle.get("keys"), list):
        raise BundleError(f'{source}: must be a JSON object with a "keys" array')
    authorities: list[x509.Certificate] = []
    for index, key in enumerate(bundle["keys"]):
        if not isinstance(key, dict):
            raise BundleError(f"{source}: keys[{index}] is not an object")
        if key.get("use") != "x509-svid" or "kid" in key:
            continue
        chain = key.get("x5c")
        if not chain:
            continue
        if not isinstance(chain, list) or not isinstance(chain[0], str):
            raise BundleError(f"{source}: keys[{index}].x5c must be a list of base64 strings")
        try:
            der = base64.b64decode(chain[0], validate=True)
            authorities.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise BundleError(
                f"{source}: keys[{index}].x5c[0] is not a base64 DER X.509 certificate"
                " (SPIFFE Trust Domain and Bundle, section 4.2.2)"
            ) from None
    return tuple(authorities)


def _load_json(data: bytes | str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise BundleError(f"{source}: duplicate key {key!r}")
            result[key] = value
        return result

    try:
        return json.loads(data, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{source}: invalid JSON: {exc}") from None


def _dedupe(certs: Iterable[x509.Certificate]) -> Certificates:
    seen: set[bytes] = set()
    unique: list[x509.Certificate] = []
    for cert in certs:
        if not isinstance(cert, x509.Certificate):
            raise BundleError(f"bundle entries must be x509.Certificate, not {type(cert).__name__}")
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            unique.append(cert)
    return tuple(unique)
