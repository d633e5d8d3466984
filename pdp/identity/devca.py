"""A small certificate authority for ``pdp serve --dev`` and for tests.

It mints SPIRE-shaped X.509-SVIDs (X509-SVID.md sections 3-4): an EC P-256 root
with URI SAN ``spiffe://<td>``, ``cA=true`` and a critical keyUsage of keyCertSign
and cRLSign; leaves with exactly one URI SAN, ``cA=false``, a critical keyUsage of
digitalSignature, EKU serverAuth+clientAuth and an empty subject (so the SAN is
critical). Every property is a keyword knob so tests can build the malformed
certificates of the security test plan (extra URI SANs, CA leaves, expired, ...).

Nothing here is meant for production: keys are unencrypted PEM files.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pdp.identity.spiffe_id import parse_trust_domain

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

# Issued certificates start slightly in the past so a peer whose clock is a little
# behind still accepts them (SPIRE backdates too).
BACKDATE = timedelta(seconds=30)

# Names of the keyUsage bits, as x509.KeyUsage spells its arguments.
KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
LEAF_KEY_USAGE = frozenset({"digital_signature"})
CA_KEY_USAGE = frozenset({"key_cert_sign", "crl_sign"})
DEFAULT_EKU = (SERVER_AUTH, CLIENT_AUTH)

_PEM = serialization.Encoding.PEM


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now.astimezone(UTC)


def _key_usage(bits: Iterable[str]) -> x509.KeyUsage:
    wanted = set(bits)
    unknown = wanted - set(KEY_USAGE_BITS)
    if unknown:
        raise ValueError(f"unknown keyUsage bits {sorted(unknown)}; use {KEY_USAGE_BITS}")
    flags = {name: name in wanted for name in KEY_USAGE_BITS}
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def _uri(value: str) -> x509.UniformResourceIdentifier:
    # cryptography refuses non-ASCII URIs; tests need them to prove the verifier does too.
    if value.isascii():
        return x509.UniformResourceIdentifier(value)
    return x509.UniformResourceIdentifier._init_without_validation(value)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def certs_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(_PEM) for cert in certs)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate, its private key and the intermediates a peer must send with it."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(_PEM)

    @property
    def chain_pem(self) -> bytes:
        """The leaf followed by its intermediates: what a TLS peer presents."""
        return certs_pem((self.cert, *self.intermediates))

    @property
    def intermediates_pem(self) -> bytes:
        return certs_pem(self.intermediates)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


class DevCA:
    """A signing certificate of one trust domain: a root, or an intermediate below one.

    ``path`` runs from this CA's certificate up to and including the root.
    """

    def __init__(
        self,
        trust_domain: str,
        key: ec.EllipticCurvePrivateKey,
        path: Sequence[x509.Certificate],
    ) -> None:
        self.trust_domain = parse_trust_domain(trust_domain)
        self.key = key
        self.path = tuple(path)

    @property
    def cert(self) -> x509.Certificate:
        return self.path[0]

    @property
    def root(self) -> x509.Certificate:
        return self.path[-1]

    @property
    def bundle_pem(self) -> bytes:
        """The trust anchor to put in this trust domain's bundle."""
        return self.root.public_bytes(_PEM)

    @classmethod
    def create(
        cls,
        trust_domain: str,
        *,
        now: datetime | None = None,
        lifetime: timedelta = timedelta(days=365),
        path_length: int | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> DevCA:
        """A self-signed root CA for ``trust_domain``."""
        parse_trust_domain(trust_domain)
        key = key or new_key()
        start = _now(now)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pdp dev CA"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} root"),
            ]
        )
        builder = _ca_builder(
            name,
            name,
            public_key=key.public_key(),
            start=start,
            lifetime=lifetime,
            path_length=path_length,
            uri=f"spiffe://{trust_domain}",
            ca=True,
            key_usage=CA_KEY_USAGE,
        )
        cert = builder.sign(key, hashes.SHA256())
        return cls(trust_domain, key, (cert,))

    def issue_intermediate(
        self,
        *,
        now: datetime | None = None,
        lifetime: timedelta = timedelta(days=30),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        uri: str | None = None,
        ca: bool = True,
        key_usage: Iterable[str] = CA_KEY_USAGE,
        path_length: int | None = None,
        common_name: str = "intermediate",
    ) -> DevCA:
        """An intermediate CA signed by this one. ``uri`` defaults to the trust-domain ID."""
        key = new_key()
        start = _now(now)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pdp dev CA"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"{self.trust_domain} {common_name} {len(self.path)}"
                ),
            ]
        )
        builder = _ca_builder(
            name,
            self.cert.subject,
            public_key=key.public_key(),
            start=start,
            lifetime=lifetime,
            path_length=path_length,
            uri=uri if uri is not None else f"spiffe://{self.trust_domain}",
            ca=ca,
            key_usage=key_usage,
            not_before=not_before,
            not_after=not_after,
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self._public_key()),
            critical=False,
        )
        cert = builder.sign(self.key, hashes.SHA256())
        return DevCA(self.trust_domain, key, (cert, *self.path))

    def issue_svid(
        self,
        spiffe_id: str,
        *,
        now: datetime | None = None,
        lifetime: timedelta = timedelta(hours=1),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        uris: Sequence[str] | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        san_critical: bool | None = None,
        subject: x509.Name | None = None,
        basic_constraints: bool = True,
        ca: bool = False,
        key_usage: Iterable[str] | None = LEAF_KEY_USAGE,
        key_usage_critical: bool = True,
        extended_key_usage: Sequence[x509.ObjectIdentifier] | None = DEFAULT_EKU,
        authority_key_identifier: bool = True,
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
        key: CertificateIssuerPrivateKeyTypes | None = None,
    ) -> IssuedCert:
        """An X.509-SVID for ``spiffe_id``; every keyword bends one rule for tests.

        ``uris`` replaces the URI SAN list (``[]`` for none, two entries for two);
        ``key_usage=None`` / ``extended_key_usage=None`` omit those extensions;
        ``san_critical`` defaults to critical exactly when the subject is empty.
        """
        key = key or new_key()
        start = _now(now)
        subject = subject if subject is not None else x509.Name([])
        names: list[x509.GeneralName] = [
            _uri(u) for u in (uris if uris is not None else [spiffe_id])
        ]
        names += [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or start - BACKDATE)
            .not_valid_after(not_after or start + lifetime)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if authority_key_identifier:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._public_key()),
                critical=False,
            )
        if names:
            critical = san_critical if san_critical is not None else len(subject) == 0
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical)
        if basic_constraints:
            builder = builder.add_extension(x509.BasicConstraints(ca, None), critical=True)
        if key_usage is not None:
            builder = builder.add_extension(_key_usage(key_usage), critical=key_usage_critical)
        if extended_key_usage is not None:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False
            )
        for extension, critical in extra_extensions:
            builder = builder.add_extension(extension, critical)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCert(cert, key, self.path[:-1])

    def _public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    *,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime,
    lifetime: timedelta,
    path_length: int | None,
    uri: str,
    ca: bool,
    key_usage: Iterable[str],
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or start - BACKDATE)
        .not_valid_after(not_after or start + lifetime)
        .add_extension(x509.BasicConstraints(ca, path_length if ca else None), critical=True)
        .add_extension(_key_usage(key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if uri:
        builder = builder.add_extension(x509.SubjectAlternativeName([_uri(uri)]), critical=False)
    return builder


# ---------------------------------------------------------------------------
# Persistent dev state for `pdp serve --dev`

DEV_TRUST_DOMAIN = "pdp.dev"
SERVER_PATH = "/pdp"
GATEWAY_PATH = "/gateway/dev"


@dataclass(frozen=True)
class DevState:
    """Where the dev CA, the server SVID and a sample gateway SVID live on disk."""

    state_dir: Path
    trust_domain: str

    @property
    def bundle_file(self) -> Path:
        return self.state_dir / "bundle.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.state_dir / "ca.key"

    @property
    def server_id(self) -> str:
        return f"spiffe://{self.trust_domain}{SERVER_PATH}"

    @property
    def server_cert_file(self) -> Path:
        return self.state_dir / "server.pem"

    @property
    def server_key_file(self) -> Path:
        return self.state_dir / "server.key"

    @property
    def gateway_id(self) -> str:
        return f"spiffe://{self.trust_domain}{GATEWAY_PATH}"

    @property
    def gateway_cert_file(self) -> Path:
        return self.state_dir / "gateway.pem"

    @property
    def gateway_key_file(self) -> Path:
        return self.state_dir / "gateway.key"


def ensure_dev_state(
    state_dir: str | os.PathLike[str],
    trust_domain: str = DEV_TRUST_DOMAIN,
    *,
    svid_lifetime: timedelta = timedelta(hours=24),
    ca_lifetime: timedelta = timedelta(days=365),
    now: datetime | None = None,
) -> DevState:
    """Creates the dev CA and SVIDs in ``state_dir`` once, then reuses them.

    A leaf is re-issued when it is missing, unreadable, not issued by the current CA,
    names another ID, or has used half of its lifetime (SPIRE's rotation point).
    The CA is replaced (and so every leaf) when it has less than two SVID lifetimes
    left. A lock file serialises concurrent ``pdp serve --dev`` processes.
    """
    parse_trust_domain(trust_domain)
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = DevState(directory, trust_domain)
    moment = _now(now)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca = _load_ca(state)
        if ca is None or ca.root.not_valid_after_utc - moment < 2 * svid_lifetime:
            ca = DevCA.create(trust_domain, now=moment, lifetime=ca_lifetime)
            _write(state.ca_key_file, key_pem(ca.key), 0o600)
            _write(state.bundle_file, ca.bundle_pem, 0o644)
        leaves = (
            (state.server_id, state.server_cert_file, state.server_key_file, True),
            (state.gateway_id, state.gateway_cert_file, state.gateway_key_file, False),
        )
        for spiffe_id, cert_file, key_file, is_server in leaves:
            if _leaf_is_fresh(cert_file, key_file, spiffe_id, ca, moment):
                continue
            issued = ca.issue_svid(
                spiffe_id,
                now=moment,
                lifetime=svid_lifetime,
                # Lets standard TLS clients (grpcurl, curl) target https://localhost.
                dns_names=("localhost",) if is_server else (),
                ip_addresses=("127.0.0.1",) if is_server else (),
            )
            _write(key_file, issued.key_pem, 0o600)
            _write(cert_file, issued.chain_pem, 0o644)
    return state


def load_dev_ca(state: DevState) -> DevCA:
    """The dev CA of ``state`` (after :func:`ensure_dev_state`), to issue more SVIDs
    from it (e.g. the Envoy of ``pdp gateway --dev``)."""
    ca = _load_ca(state)
    if ca is None:
        raise ValueError(f"{state.state_dir} holds no usable dev CA; run pdp serve --dev once")
    return ca


def _load_ca(state: DevState) -> DevCA | None:
    try:
        cert = x509.load_pem_x509_certificate(state.bundle_file.read_bytes())
        key = serialization.load_pem_private_key(state.ca_key_file.read_bytes(), None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if key.public_key() != cert.public_key():
        return None
    try:
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return None
    if uris != [f"spiffe://{state.trust_domain}"]:
        raise ValueError(
            f"{state.state_dir} holds a dev CA for {uris!r}, not spiffe://{state.trust_domain};"
            " use another state directory or delete this one"
        )
    return DevCA(state.trust_domain, key, (cert,))


def _leaf_is_fresh(
    cert_file: Path, key_file: Path, spiffe_id: str, ca: DevCA, now: datetime
) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        cert.verify_directly_issued_by(ca.cert)
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if uris != [spiffe_id] or key.public_key() != cert.public_key():
        return False
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start <= now < start + (end - start) / 2


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic replace, created with ``mode`` from the start (no window with a wider mode)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # O_CREAT honours the umask; make the mode exact
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
