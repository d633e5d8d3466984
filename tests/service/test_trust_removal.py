"""Trust removal fails closed (file identity): each bundle file is read on its own; a
removed or garbled one stops trusting its trust domain, over a real mTLS connection,
and holds up neither the other trust domains nor the rotation of pdp's own SVID."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.identity.sources import IdentityError, StaticFileSource
from pdp.service import DecisionServer

from .conftest import (
    PARTNER_TD,
    SERVER_ID,
    TD,
    ClientFactory,
    Pki,
    ServerFactory,
    example_request,
    rpc_error,
)
from .test_rotation import served_serial

HELPER = {**example_request(), "agent": "spiffe://partner.test/agent/helper"}


def _authenticated(client: object) -> None:
    """The call is decided (whatever the policies say): the caller was authenticated."""
    response = client.check(HELPER)  # type: ignore[attr-defined]
    assert response.decision_id and response.reasons[0].policy != "caller_not_bound"


def _partner_refused(
    client: object, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
) -> grpc.RpcError:
    """The partner is refused: on a connection it has, by pdp's per-call check
    (UNAUTHENTICATED); on a new one, by the TLS handshake (UNAVAILABLE)."""
    error = rpc_error(lambda: client.check(HELPER))  # type: ignore[attr-defined]
    assert error.code() is code, error.details()
    return error


def _trust_check(server: DecisionServer) -> tuple[bool, str]:
    (check,) = [(ok, detail) for name, ok, detail in server.run_checks() if name == "trust"]
    return check


@pytest.mark.parametrize("how", ["removed", "garbled", "unreadable"])
def test_a_removed_bundle_stops_trusting_its_trust_domain(
    make_server: ServerFactory,
    connect: ClientFactory,
    identity: StaticFileSource,
    pki: Pki,
    tmp_path: Path,
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server()
    partner = connect(server, pki.partner_gateway)
    gateway = connect(server)
    _authenticated(partner)
    assert _trust_check(server) == (True, f"trusting {PARTNER_TD}, {TD}")

    bundle = tmp_path / "partner.pem"
    if how == "removed":
        bundle.unlink()
    elif how == "garbled":
        bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    else:
        bundle.unlink()
        bundle.mkdir()  # reading a directory fails like an unreadable file
    with caplog.at_level(logging.ERROR, logger="pdp.identity.sources"):
        assert identity.reload()
    assert f"not trusting {PARTNER_TD} any more" in caplog.text

    # The connection the partner already has is refused on its next call...
    error = _partner_refused(partner)
    assert f"trust domain '{PARTNER_TD}' is not trusted" in (error.details() or "")
    # ...and so is a new one (its roots have left the TLS layer too).
    _partner_refused(connect(server, pki.partner_gateway), grpc.StatusCode.UNAVAILABLE)
    # The other trust domain is served as before, and health says what is missing.
    assert gateway.check(example_request()).decision == pb.DECISION_ALLOW
    ok, detail = _trust_check(server)
    assert ok and f"NOT trusting {PARTNER_TD} (bundle" in detail
    assert server.serving

    # The file returns: the trust domain is trusted again.
    if how == "unreadable":
        bundle.rmdir()
    bundle.write_bytes(pki.partner.bundle_pem)
    assert identity.reload()
    _authenticated(connect(server, pki.partner_gateway))
    assert _trust_check(server) == (True, f"trusting {PARTNER_TD}, {TD}")


def test_a_garbled_bundle_does_not_block_rotation_of_the_own_svid(
    make_server: ServerFactory,
    connect: ClientFactory,
    identity: StaticFileSource,
    pki: Pki,
    tmp_path: Path,
) -> None:
    server = make_server()
    assert served_serial(server.port, pki.gateway, tmp_path) == format(
        pki.server.cert.serial_number, "x"
    )
    (tmp_path / "partner.pem").write_text('{"keys": [')
    rotated = pki.svid(SERVER_ID, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    (tmp_path / "svid.key").write_bytes(rotated.key_pem)
    (tmp_path / "svid.pem").write_bytes(rotated.chain_pem)
    assert identity.reload()
    assert served_serial(server.port, pki.gateway, tmp_path) == format(
        rotated.cert.serial_number, "x"
    )
    assert connect(server).check(example_request()).decision == pb.DECISION_ALLOW
    _partner_refused(connect(server, pki.partner_gateway), grpc.StatusCode.UNAVAILABLE)


def test_a_half_rotated_svid_keeps_the_old_one_but_applies_the_bundles(
    make_server: ServerFactory,
    connect: ClientFactory,
    identity: StaticFileSource,
    pki: Pki,
    tmp_path: Path,
) -> None:
    server = make_server()
    partner = connect(server, pki.partner_gateway)
    _authenticated(partner)
    (tmp_path / "partner.pem").unlink()
    # A key rotated before its certificate: not a usable pair.
    (tmp_path / "svid.key").write_bytes(pki.svid(SERVER_ID).key_pem)
    with pytest.raises(IdentityError, match="does not match"):
        identity.reload()
    assert identity.current().cert_chain_pem == pki.server.chain_pem
    _partner_refused(partner)
    assert connect(server).check(example_request()).decision == pb.DECISION_ALLOW


def test_no_readable_bundle_at_start_is_an_error(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "svid.pem").write_bytes(pki.server.chain_pem)
    (tmp_path / "svid.key").write_bytes(pki.server.key_pem)
    with pytest.raises(IdentityError, match="no trust bundle can be read"):
        StaticFileSource(tmp_path / "svid.pem", tmp_path / "svid.key", {TD: tmp_path / "gone.pem"})
