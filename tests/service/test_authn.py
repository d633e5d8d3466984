"""Who gets refused, and at which layer (security-tests.md section 6).

"TLS reject" means the handshake fails (the client sees UNAVAILABLE and the server
never runs a handler); UNAUTHENTICATED means TLS passed on the pooled roots and the
service's per-call SVID check refused. No case may ever be decided.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from pdp.identity.devca import IssuedCert
from pdp.service import DecisionServer, RefusalCode

from .conftest import (
    GATEWAY_ID,
    STRANGER_ID,
    TD,
    ClientFactory,
    Pki,
    RecordingSink,
    example_request,
    rpc_error,
)

Forge = Callable[[Pki], IssuedCert]


def refused(
    server: DecisionServer, connect: ClientFactory, svid: IssuedCert | None
) -> grpc.RpcError:
    client = connect(server, svid, anonymous=svid is None)
    return rpc_error(lambda: client.check(example_request(), timeout=5))


def test_positive_control(server: DecisionServer, connect: ClientFactory) -> None:
    assert connect(server).check(example_request()).decision_id


def test_no_client_certificate_fails_the_handshake(
    server: DecisionServer, connect: ClientFactory, sink: RecordingSink
) -> None:
    error = refused(server, connect, None)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert not sink.decisions and not sink.refusals


TLS_REJECTED: dict[str, Forge] = {
    "unknown CA": lambda pki: pki.evil.issue_svid(f"spiffe://{TD}/gateway/edge"),
    "self-signed": lambda pki: _self_signed(),
    "expired": lambda pki: pki.svid(
        GATEWAY_ID,
        not_before=datetime.now(UTC) - timedelta(hours=2),
        not_after=datetime.now(UTC) - timedelta(seconds=1),
    ),
    "not yet valid": lambda pki: pki.svid(
        GATEWAY_ID,
        not_before=datetime.now(UTC) + timedelta(minutes=10),
        not_after=datetime.now(UTC) + timedelta(hours=1),
    ),
}


def _self_signed() -> IssuedCert:
    from pdp.identity.devca import DevCA

    rogue = DevCA.create(TD)  # same trust domain name, different key
    return rogue.issue_svid(GATEWAY_ID)


@pytest.mark.parametrize("case", sorted(TLS_REJECTED))
def test_tls_layer_rejects(
    server: DecisionServer, connect: ClientFactory, pki: Pki, sink: RecordingSink, case: str
) -> None:
    error = refused(server, connect, TLS_REJECTED[case](pki))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert not sink.decisions and not sink.refusals


UNAUTHENTICATED: dict[str, tuple[Forge, str]] = {
    # The canary of spiffe/spiffe#375: partner.test's CA (trusted, for partner.test)
    # mints an ID of pdp.test. The pooled TLS roots accept it; the per-trust-domain
    # check must not.
    "cross-trust-domain forgery": (
        lambda pki: pki.partner.issue_svid(GATEWAY_ID),
        "does not verify against the bundle of trust domain 'pdp.test'",
    ),
    "two URI SANs": (
        lambda pki: pki.svid(GATEWAY_ID, uris=[GATEWAY_ID, f"spiffe://{TD}/gateway/other"]),
        "2 URI SANs",
    ),
    "no URI SAN": (
        lambda pki: pki.svid(GATEWAY_ID, uris=[], dns_names=("gateway.pdp.test",)),
        "no URI SAN",
    ),
    "non-spiffe URI": (
        lambda pki: pki.svid(GATEWAY_ID, uris=["https://gateway.pdp.test/edge"]),
        "not a valid SPIFFE ID",
    ),
    "spiffe plus https URI": (
        lambda pki: pki.svid(GATEWAY_ID, uris=[GATEWAY_ID, "https://gateway.pdp.test"]),
        "2 URI SANs",
    ),
    "trust-domain ID as leaf": (
        lambda pki: pki.svid(f"spiffe://{TD}"),
        "must have a path",
    ),
    "CA certificate as leaf": (
        # cA=true with digitalSignature passes BoringSSL's ssl_client purpose check.
        lambda pki: pki.svid(GATEWAY_ID, ca=True, key_usage={"digital_signature", "key_cert_sign"}),
        "CA certificate",
    ),
    "non-critical keyUsage": (
        # X509-SVID section 4.3: keyUsage must be critical; TLS libraries do not care.
        lambda pki: pki.svid(GATEWAY_ID, key_usage_critical=False),
        "keyUsage extension is not critical",
    ),
}


@pytest.mark.parametrize("case", sorted(UNAUTHENTICATED))
def test_service_rejects_what_tls_lets_through(
    server: DecisionServer, connect: ClientFactory, pki: Pki, sink: RecordingSink, case: str
) -> None:
    forge, detail = UNAUTHENTICATED[case]
    error = refused(server, connect, forge(pki))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert detail in (error.details() or "")
    assert not sink.decisions
    (refusal,) = sink.refusals
    assert refusal.code is RefusalCode.UNAUTHENTICATED
    assert refusal.caller is None
    assert refusal.refusal_id in (error.details() or "")
    assert refusal.method == "/pdp.v1.DecisionService/Check"
    assert refusal.peer.startswith("ipv4:127.0.0.1:")


def test_ca_root_itself_as_client(
    server: DecisionServer, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    """The CA's own certificate and key, as a client: refused (TLS or service)."""
    root = IssuedCert(pki.ca.cert, pki.ca.key)
    error = refused(server, connect, root)
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert not sink.decisions


def test_caller_not_on_the_allow_list_is_permission_denied(
    server: DecisionServer, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    error = refused(server, connect, pki.stranger)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert STRANGER_ID in (error.details() or "")
    (refusal,) = sink.refusals
    assert refusal.code is RefusalCode.PERMISSION_DENIED
    assert refusal.caller is not None and refusal.caller.spiffe_id == STRANGER_ID
    assert not sink.decisions


def test_allow_list_is_per_trust_domain(
    server: DecisionServer, connect: ClientFactory, pki: Pki
) -> None:
    """``spiffe://partner.test/gateway/*`` is allowed; the same path in pdp.test's
    pattern does not admit partner IDs and vice versa."""
    partner_other = pki.partner.issue_svid("spiffe://partner.test/agent/helper")
    error = refused(server, connect, partner_other)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_refusals_do_not_stop_the_server(
    server: DecisionServer, connect: ClientFactory, pki: Pki
) -> None:
    for forge, _ in UNAUTHENTICATED.values():
        refused(server, connect, forge(pki))
    assert connect(server).check(example_request()).decision == 1
