"""PeerVerifier on what grpc really reports, over a real mTLS socket.

grpc's TLS layer verifies client chains against ONE pooled root list, so a CA of a
federated trust domain can mint an ID of ours and pass the handshake. This pins
that gap (the canary of spiffe/spiffe#375) and that PeerVerifier closes it, and
records the auth_context shape the service interceptor relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.devca import DevCA, IssuedCert
from pdp.identity.peer import PeerAuthError, PeerVerifier
from pdp.identity.sources import DevSource

from .conftest import TD_B

AuthContext = dict[str, list[bytes]]


def load_ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


class _Server:
    def __init__(self, source: DevSource, bundles: TrustDomainBundles) -> None:
        self.verifier = PeerVerifier(lambda: bundles)
        self.contexts: list[AuthContext] = []
        snapshot = source.current()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(self._who)
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Identity", {"Who": handler})]
        )
        credentials = grpc.ssl_server_credentials(
            [(snapshot.private_key_pem, snapshot.cert_chain_pem)],
            root_certificates=bundles.union_pem(),  # pooled, as grpc requires
            require_client_auth=True,
        )
        self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()
        self.state = source.state
        self.server_roots = source.state.bundle_file.read_bytes()

    def _who(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        self.contexts.append(auth)
        leaf = auth["x509_pem_cert"][0]
        chain = b"".join(auth.get("x509_pem_cert_chain", []))
        try:
            return self.verifier.authenticate(leaf, chain, datetime.now(UTC)).spiffe_id.encode()
        except PeerAuthError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.reason)

    def call(self, client: IssuedCert) -> bytes:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.server_roots,
            private_key=client.key_pem,
            certificate_chain=client.chain_pem,
        )
        with grpc.secure_channel(f"localhost:{self.port}", credentials) as channel:
            result: bytes = channel.unary_unary("/test.Identity/Who")(b"", timeout=10)
            return result

    def stop(self) -> None:
        self._server.stop(grace=None)


@pytest.fixture
def partner() -> DevCA:
    return DevCA.create(TD_B)


@pytest.fixture
def server(tmp_path: Path, partner: DevCA) -> Iterator[_Server]:
    source = DevSource(tmp_path / "dev")
    bundles = source.current().bundles.with_trust_domain(TD_B, [partner.root])
    running = _Server(source, bundles)
    yield running
    running.stop()


def test_leaf_only_client_has_no_chain_entry(server: _Server) -> None:
    state = server.state
    gateway = IssuedCert(
        cert=x509.load_pem_x509_certificate(state.gateway_cert_file.read_bytes()),
        key=load_ec_key(state.gateway_key_file.read_bytes()),
    )
    assert server.call(gateway) == b"spiffe://pdp.dev/gateway/dev"
    assert not server.contexts[-1].get("x509_pem_cert_chain")


def test_chain_entry_holds_the_intermediates_without_the_leaf(
    server: _Server, partner: DevCA
) -> None:
    client = partner.issue_intermediate().issue_svid(f"spiffe://{TD_B}/api")
    assert server.call(client) == f"spiffe://{TD_B}/api".encode()
    chain = b"".join(server.contexts[-1]["x509_pem_cert_chain"])
    assert chain.count(b"BEGIN CERTIFICATE") == 1 and client.cert_pem not in chain


def test_cross_trust_domain_forgery_passes_tls_but_not_the_verifier(
    server: _Server, partner: DevCA
) -> None:
    forged = partner.issue_svid("spiffe://pdp.dev/admin")
    with pytest.raises(grpc.RpcError) as info:
        server.call(forged)
    # The handshake succeeded (the servicer ran): only PeerVerifier stood in the way.
    assert server.contexts, "TLS rejected the forgery; the pooled-roots gap may be closed"
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "bundle of trust domain 'pdp.dev'" in (info.value.details() or "")
