"""Mutual TLS for the decision service: server credentials that follow SVID rotation,
and the client side used by ``pdp call``. TLS versions and cipher suites: see
pdp/service/cipher_suites.py.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from pathlib import Path

import grpc
from cryptography import x509

from pdp.identity.sources import IdentitySnapshot, IdentitySource


def _certificate_configuration(snapshot: IdentitySnapshot) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(snapshot.private_key_pem, snapshot.cert_chain_pem)],
        root_certificates=snapshot.bundles.union_pem(),
    )


class RotatingServerCredentials:
    """Server credentials whose certificate and client roots follow an identity source.

    grpc calls the fetcher before every TLS handshake, holding the GIL, and keeps the
    previous configuration if it raises. So the fetcher only hands over a configuration
    built beforehand by the source's update callback: O(1), never blocking on I/O.
    Existing connections keep their handshake; ``max_connection_age`` bounds them and
    the per-call peer check applies bundle changes to them at once.
    """

    def __init__(self, identity: IdentitySource) -> None:
        first = identity.current()
        self._initial = _certificate_configuration(first)
        self._latest: tuple[int, grpc.ServerCertificateConfiguration] = (0, self._initial)
        self._handed_over = 0
        self.spiffe_id = first.spiffe_id
        identity.subscribe(self._on_update)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # grpc-stubs omit that None means "unchanged"
            require_client_authentication=True,
        )

    def _on_update(self, snapshot: IdentitySnapshot) -> None:
        # Runs on the identity source's thread; the expensive part happens here.
        configuration = _certificate_configuration(snapshot)
        self.spiffe_id = snapshot.spiffe_id
        generation = self._latest[0] + 1
        self._latest = (generation, configuration)  # one atomic reference swap

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        generation, configuration = self._latest
        if generation == self._handed_over:
            return None  # unchanged: grpc keeps the current configuration
        self._handed_over = generation
        return configuration


# --- client side (pdp call) ---------------------------------------------------------


class ServerIdentityError(Exception):
    """The server is unreachable over mTLS or is not the expected SPIFFE ID."""


def channel_credentials(
    bundle_pem: bytes, cert_chain_pem: bytes, key_pem: bytes
) -> grpc.ChannelCredentials:
    """mTLS channel credentials. ``bundle_pem`` should hold only the roots of the
    server's trust domain, so that no other trust domain's CA can vouch for it."""
    return grpc.ssl_channel_credentials(
        root_certificates=bundle_pem, private_key=key_pem, certificate_chain=cert_chain_pem
    )


def check_server_spiffe_id(
    host: str,
    port: int,
    *,
    expected_id: str,
    bundle_pem: bytes,
    cert_chain_pem: bytes,
    key_pem: bytes,
    timeout: float = 5.0,
) -> str:
    """Handshakes with the server and checks that its SVID names ``expected_id``.

    grpc's Python client can only match a DNS name or IP address against the server
    certificate (SPIRE SVIDs often have none, and a URI SAN is not compared), and does
    not expose the peer certificate. So ``pdp call`` first makes this handshake, with
    the same client SVID and only the server's trust domain bundle, and compares the
    URI SAN exactly. Returns the server's SPIFFE ID.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the SPIFFE ID is checked instead, below
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    # ssl loads client keys from files only; keep them in a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="pdp-call-") as directory:
        cert_file, key_file = Path(directory, "svid.pem"), Path(directory, "svid.key")
        cert_file.write_bytes(cert_chain_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert_file, key_file)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=None) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ServerIdentityError(f"TLS handshake with {host}:{port} failed: {exc}") from None
    if der is None:
        raise ServerIdentityError(f"{host}:{port} sent no certificate")
    certificate = x509.load_der_x509_certificate(der)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [expected_id]:
        raise ServerIdentityError(
            f"{host}:{port} presented {uris or 'no URI SAN'}, not the expected {expected_id}"
        )
    return expected_id


def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); raises ServerIdentityError."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ServerIdentityError(f"--target {target!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def open_verified_channel(
    target: str,
    *,
    expected_id: str,
    bundle_pem: bytes,
    cert_chain_pem: bytes,
    key_pem: bytes,
    server_name: str | None = None,
    timeout: float = 5.0,
) -> grpc.Channel:
    """An mTLS channel to ``target`` once its SVID is checked to name ``expected_id``
    (see :func:`check_server_spiffe_id`); what ``pdp call`` and ``pdp replay --target``
    connect with. Raises ServerIdentityError."""
    host, port = parse_target(target)
    check_server_spiffe_id(
        host,
        port,
        expected_id=expected_id,
        bundle_pem=bundle_pem,
        cert_chain_pem=cert_chain_pem,
        key_pem=key_pem,
        timeout=timeout,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(
        target, channel_credentials(bundle_pem, cert_chain_pem, key_pem), options=options
    )
