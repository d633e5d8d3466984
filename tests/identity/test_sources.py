"""The server's own identity from files and from the dev CA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.devca import DevCA
from pdp.identity.sources import (
    DevSource,
    IdentityError,
    IdentitySnapshot,
    IdentitySource,
    StaticFileSource,
)

from .conftest import TD_A, TD_B

SERVER_ID = f"spiffe://{TD_A}/pdp"


def _write_identity(directory: Path, ca: DevCA, spiffe_id: str = SERVER_ID) -> None:
    issued = ca.issue_intermediate().issue_svid(spiffe_id)
    (directory / "svid.pem").write_bytes(issued.chain_pem)
    (directory / "svid.key").write_bytes(issued.key_pem)
    (directory / "bundle.pem").write_bytes(ca.bundle_pem)


@pytest.fixture
def files(tmp_path: Path, ca_a: DevCA, ca_b: DevCA) -> Path:
    _write_identity(tmp_path, ca_a)
    (tmp_path / "partner.pem").write_bytes(ca_b.bundle_pem)
    return tmp_path


def _source(directory: Path) -> StaticFileSource:
    return StaticFileSource(
        directory / "svid.pem",
        directory / "svid.key",
        {TD_A: directory / "bundle.pem", TD_B: directory / "partner.pem"},
    )


def test_static_files_make_a_snapshot(files: Path, ca_a: DevCA) -> None:
    with _source(files) as source:
        snapshot = source.current()
    assert snapshot.spiffe_id == SERVER_ID and snapshot.trust_domain == TD_A
    assert snapshot.cert_chain_pem == (files / "svid.pem").read_bytes()
    assert snapshot.bundles.for_trust_domain(TD_A) == (ca_a.root,)
    assert set(snapshot.bundles) == {TD_A, TD_B}
    assert "PRIVATE KEY" not in repr(snapshot)


def test_reload_notifies_only_on_change(files: Path, ca_a: DevCA) -> None:
    seen: list[IdentitySnapshot] = []
    source: IdentitySource
    with _source(files) as source:
        source.subscribe(seen.append)
        assert source.reload() is False and seen == []

        _write_identity(files, ca_a)  # rotated SVID
        assert source.reload() is True
        assert len(seen) == 1 and seen[0] is source.current()
        assert seen[0].cert_chain_pem == (files / "svid.pem").read_bytes()

        (files / "partner.pem").write_bytes(b"")  # federated trust domain revoked
        assert source.reload() is True
        assert seen[-1].bundles.for_trust_domain(TD_B) == ()


def test_reload_keeps_the_last_good_snapshot(files: Path, ca_a: DevCA) -> None:
    with _source(files) as source:
        before = source.current()
        # The key rotated before the certificate: the pair does not match.
        (files / "svid.key").write_bytes(ca_a.issue_svid(SERVER_ID).key_pem)
        with pytest.raises(IdentityError, match="does not match"):
            source.reload()
        (files / "svid.key").unlink()
        with pytest.raises(IdentityError, match="cannot read"):
            source.reload()
        assert source.current() is before


def test_unusable_svid_files_are_named_without_library_internals(files: Path) -> None:
    with _source(files) as source:
        (files / "svid.pem").write_bytes(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        with pytest.raises(IdentityError) as info:
            source.reload()
        assert "not a PEM list of X.509 certificates" in str(info.value)
        assert "ParseError" not in str(info.value)
        (files / "svid.pem").write_bytes(source.current().cert_chain_pem)
        (files / "svid.key").write_bytes(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        with pytest.raises(IdentityError) as info:
            source.reload()
        assert "not an unencrypted PEM private key" in str(info.value)
        assert "Tag {" not in str(info.value) and "ASN.1" not in str(info.value)


def test_a_failing_subscriber_does_not_stop_the_others(files: Path, ca_a: DevCA) -> None:
    seen: list[str] = []

    def broken(_: IdentitySnapshot) -> None:
        raise RuntimeError("boom")

    with _source(files) as source:
        source.subscribe(broken)
        source.subscribe(lambda s: seen.append(s.spiffe_id))
        _write_identity(files, ca_a)
        source.reload()
    assert seen == [SERVER_ID]


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        (f"spiffe://{TD_A}", "must have a path"),
        (f"spiffe://{TD_A}/pdp\n", "not a valid SPIFFE ID"),
    ],
)
def test_own_svid_must_be_a_strict_spiffe_id(
    files: Path, ca_a: DevCA, spiffe_id: str, message: str
) -> None:
    _write_identity(files, ca_a, spiffe_id)
    with pytest.raises(IdentityError, match=message):
        _source(files)


def test_snapshot_rejects_two_uri_sans(ca_a: DevCA) -> None:
    issued = ca_a.issue_svid(SERVER_ID, uris=[SERVER_ID, f"spiffe://{TD_A}/other"])
    with pytest.raises(IdentityError, match="exactly one URI SAN"):
        IdentitySnapshot.from_pem(issued.chain_pem, issued.key_pem, TrustDomainBundles())


def test_dev_source_serves_the_dev_server_svid(tmp_path: Path) -> None:
    with DevSource(tmp_path / "dev") as source:
        snapshot = source.current()
        assert snapshot.spiffe_id == "spiffe://pdp.dev/pdp"
        assert list(snapshot.bundles) == ["pdp.dev"]
        assert source.reload() is False

        shutil.rmtree(tmp_path / "dev")  # state lost: re-created on reload
        assert source.reload() is True
        assert source.current().cert_chain_pem != snapshot.cert_chain_pem
