"""WorkloadApiSource against a Workload API server speaking the real protocol."""

from __future__ import annotations

import queue
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from pdp.identity.devca import DevCA
from pdp.identity.peer import PeerAuthError, PeerVerifier
from pdp.identity.sources import IdentityError, IdentitySnapshot, WorkloadApiSource

from .conftest import TD_B
from .workload_api import WorkloadApiServer

SERVER_ID = "spiffe://prod.example/pdp"
TIMEOUT = 10.0


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; tmp_path can be longer than that.
    directory = Path(tempfile.mkdtemp(prefix="pdp-wl-"))
    yield directory / "agent.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(socket_path: Path) -> Iterator[WorkloadApiServer]:
    with WorkloadApiServer(socket_path, SERVER_ID) as server:
        yield server


def _next(updates: queue.Queue[IdentitySnapshot]) -> IdentitySnapshot:
    return updates.get(timeout=TIMEOUT)


def test_calls_without_the_security_header_are_refused(agent: WorkloadApiServer) -> None:
    with grpc.insecure_channel(agent.address) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=TIMEOUT)))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        header = (("workload.spiffe.io", "true"),)
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=header)
        assert next(iter(stream)).svids[0].spiffe_id == SERVER_ID
        stream.cancel()
    assert agent.rejected_calls == 1


def test_first_snapshot_comes_from_the_agent(agent: WorkloadApiServer) -> None:
    with WorkloadApiSource(agent.address, timeout=TIMEOUT) as source:
        snapshot = source.current()
    assert snapshot.spiffe_id == SERVER_ID
    assert snapshot.not_after == agent.svid.cert.not_valid_after_utc
    assert dict(snapshot.bundles) == {"prod.example": (agent.ca.root,)}


def test_socket_from_the_environment(
    agent: WorkloadApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", agent.address)
    with WorkloadApiSource(timeout=TIMEOUT) as source:
        assert source.current().spiffe_id == SERVER_ID


def test_missing_socket_fails_at_start(socket_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        WorkloadApiSource(str(socket_path), timeout=1)


def test_svid_rotation_reaches_subscribers(agent: WorkloadApiServer) -> None:
    updates: queue.Queue[IdentitySnapshot] = queue.Queue()
    with WorkloadApiSource(agent.address, timeout=TIMEOUT) as source:
        source.subscribe(updates.put)
        first = source.current()
        rotated = agent.rotate_svid()
        snapshot = _next(updates)
        assert snapshot.cert_chain_pem == rotated.chain_pem
        assert snapshot.private_key_pem != first.private_key_pem
        assert source.current() is snapshot


def test_bundle_changes_reach_subscribers_and_the_peer_verifier(
    agent: WorkloadApiServer,
) -> None:
    partner = DevCA.create(TD_B)
    partner_leaf = partner.issue_svid(f"spiffe://{TD_B}/api")
    now = datetime.now(UTC)
    updates: queue.Queue[IdentitySnapshot] = queue.Queue()
    with WorkloadApiSource(agent.address, timeout=TIMEOUT) as source:
        source.subscribe(updates.put)
        verifier = PeerVerifier(lambda: source.current().bundles)
        with pytest.raises(PeerAuthError, match="not trusted"):
            verifier.authenticate(
                partner_leaf.cert_pem, b"", partner_leaf.cert.not_valid_before_utc
            )

        agent.set_federated_bundle(TD_B, [partner.root])
        assert _next(updates).bundles.for_trust_domain(TD_B) == (partner.root,)
        assert verifier.authenticate(partner_leaf.cert_pem, b"", now).trust_domain == TD_B

        old_ca = agent.ca
        new_ca = agent.rotate_bundle(keep_old_roots=True)
        snapshot = _next(updates)
        roots = snapshot.bundles.for_trust_domain("prod.example")
        assert roots is not None and set(roots) == {old_ca.root, new_ca.root}

        agent.remove_federated_bundle(TD_B)  # full state: a missing bundle is dropped
        assert TD_B not in _next(updates).bundles
        with pytest.raises(PeerAuthError, match="not trusted"):
            verifier.authenticate(partner_leaf.cert_pem, b"", now)


def test_an_unusable_update_keeps_the_last_good_snapshot(
    agent: WorkloadApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    updates: queue.Queue[IdentitySnapshot] = queue.Queue()
    with WorkloadApiSource(agent.address, timeout=TIMEOUT) as source:
        source.subscribe(updates.put)
        good = source.current()
        # py-spiffe accepts a trailing newline in the ID; pdp's strict grammar does not.
        agent.rotate_svid(spiffe_id=SERVER_ID + "\n")
        rotated = agent.rotate_svid()
        assert _next(updates).cert_chain_pem == rotated.chain_pem
        assert updates.empty()
        assert good.spiffe_id == SERVER_ID
    assert any("not a valid SPIFFE ID" in record.getMessage() for record in caplog.records)


def test_source_survives_py_spiffe_giving_up(agent: WorkloadApiServer) -> None:
    """An empty SVID list makes py-spiffe's X509Source close itself for good; the last
    snapshot stays current and the watchdog reopens the source once the agent recovers."""
    updates: queue.Queue[IdentitySnapshot] = queue.Queue()
    with WorkloadApiSource(agent.address, timeout=TIMEOUT, reconnect_interval=0.05) as source:
        source.subscribe(updates.put)
        good = source.current()
        agent.redact_svids()
        time.sleep(0.3)  # py-spiffe gives up; reconnects see the same empty list and fail
        assert source.current() is good and updates.empty()
        rotated = agent.rotate_svid()
        assert _next(updates).cert_chain_pem == rotated.chain_pem
