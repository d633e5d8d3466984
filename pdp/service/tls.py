"""Mutual TLS for the decision service: server credentials that follow SVID rotation.
TLS versions and cipher suites: see pdp/service/cipher_suites.py. The client side
(``pdp call``, ``pdp replay --target``, the SDK) is :mod:`pdp.client`.
"""

from __future__ import annotations

import grpc

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
