"""The dev CA: SPIRE-shaped output, and the persistent state of `pdp serve --dev`."""

from __future__ import annotations

import ipaddress
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.devca import DevCA, ensure_dev_state
from pdp.identity.peer import PeerVerifier

from .conftest import GOOD_ID, NOW


def test_root_is_a_spiffe_signing_certificate(ca_a: DevCA) -> None:
    root = ca_a.root
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://prod.example"]


def test_svid_has_the_spire_shape(ca_a: DevCA) -> None:
    cert = ca_a.issue_svid(GOOD_ID, now=NOW).cert
    ext = cert.extensions
    assert len(cert.subject) == 0
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        GOOD_ID
    ]
    assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - NOW == timedelta(hours=1)


def test_unknown_key_usage_bit_is_refused(ca_a: DevCA) -> None:
    with pytest.raises(ValueError, match="unknown keyUsage"):
        ca_a.issue_svid(GOOD_ID, key_usage={"signing"})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_state_is_created_once_then_reused(tmp_path: Path) -> None:
    state = ensure_dev_state(tmp_path / "dev", now=NOW)
    files = [
        state.bundle_file,
        state.ca_key_file,
        state.server_cert_file,
        state.server_key_file,
        state.gateway_cert_file,
        state.gateway_key_file,
    ]
    contents = [f.read_bytes() for f in files]
    assert _mode(state.state_dir) == 0o700
    for key_file in (state.ca_key_file, state.server_key_file, state.gateway_key_file):
        assert _mode(key_file) == 0o600
    assert ensure_dev_state(tmp_path / "dev", now=NOW + timedelta(hours=1)) == state
    assert [f.read_bytes() for f in files] == contents


def test_dev_server_svid_is_usable_by_standard_tls_clients(tmp_path: Path) -> None:
    state = ensure_dev_state(tmp_path, "pdp.dev", now=NOW)
    cert = x509.load_pem_x509_certificate(state.server_cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://pdp.dev/pdp"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_dev_gateway_svid_authenticates_against_the_dev_bundle(tmp_path: Path) -> None:
    state = ensure_dev_state(tmp_path, now=NOW)
    bundles = TrustDomainBundles.from_files({state.trust_domain: state.bundle_file})
    caller = PeerVerifier(lambda: bundles).authenticate(
        state.gateway_cert_file.read_bytes(), b"", NOW
    )
    assert caller.spiffe_id == "spiffe://pdp.dev/gateway/dev" == state.gateway_id


def test_leaves_are_reissued_past_half_life_and_the_ca_is_kept(tmp_path: Path) -> None:
    state = ensure_dev_state(tmp_path, now=NOW, svid_lifetime=timedelta(hours=24))
    ca_before = state.bundle_file.read_bytes()
    server_before = state.server_cert_file.read_bytes()
    ensure_dev_state(tmp_path, now=NOW + timedelta(hours=11), svid_lifetime=timedelta(hours=24))
    assert state.server_cert_file.read_bytes() == server_before
    ensure_dev_state(tmp_path, now=NOW + timedelta(hours=13), svid_lifetime=timedelta(hours=24))
    assert state.server_cert_file.read_bytes() != server_before
    assert state.bundle_file.read_bytes() == ca_before


def test_a_damaged_leaf_is_reissued(tmp_path: Path) -> None:
    state = ensure_dev_state(tmp_path, now=NOW)
    state.gateway_key_file.write_bytes(b"garbage")
    ensure_dev_state(tmp_path, now=NOW)
    bundles = TrustDomainBundles.from_files({state.trust_domain: state.bundle_file})
    assert PeerVerifier(lambda: bundles).authenticate(
        state.gateway_cert_file.read_bytes(), b"", NOW
    )


def test_a_ca_near_expiry_is_replaced_with_all_leaves(tmp_path: Path) -> None:
    state = ensure_dev_state(tmp_path, now=NOW, ca_lifetime=timedelta(days=3))
    ca_before = state.bundle_file.read_bytes()
    later = NOW + timedelta(days=2)
    ensure_dev_state(tmp_path, now=later, ca_lifetime=timedelta(days=3))
    assert state.bundle_file.read_bytes() != ca_before
    bundles = TrustDomainBundles.from_files({state.trust_domain: state.bundle_file})
    assert PeerVerifier(lambda: bundles).authenticate(
        state.gateway_cert_file.read_bytes(), b"", later
    )


def test_state_dir_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    ensure_dev_state(tmp_path, "one.dev", now=NOW)
    with pytest.raises(ValueError, match="another state directory"):
        ensure_dev_state(tmp_path, "two.dev", now=NOW)
