"""Fixtures for the client: the decision service's PKI and servers, client identities
from files, and fake servers that an attacker (or a broken pdp) would run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.client import ClientIdentity
from pdp.client.client import CHECK_BATCH_METHOD, CHECK_METHOD
from pdp.identity.devca import IssuedCert
from tests.service.conftest import (  # noqa: F401  (fixtures used by the tests here)
    SERVER_ID,
    Pki,
    dev_server,
    engine,
    identity,
    make_server,
    pki,
    server,
    sink,
    socket_dir,
)


def write_identity(directory: Path, svid: IssuedCert, bundle_pem: bytes) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"cert": directory / "svid.pem", "key": directory / "svid.key",
             "bundle": directory / "bundle.pem"}  # fmt: skip
    files["cert"].write_bytes(svid.chain_pem)
    files["key"].write_bytes(svid.key_pem)
    files["bundle"].write_bytes(bundle_pem)
    return files


@pytest.fixture
def gateway_identity(pki: Pki, tmp_path: Path) -> Iterator[ClientIdentity]:  # noqa: F811
    """The gateway's SVID from files, expecting pdp as SERVER_ID."""
    files = write_identity(tmp_path / "gateway", pki.gateway, pki.ca.bundle_pem)
    gateway = ClientIdentity.files(files["cert"], files["key"], files["bundle"], SERVER_ID)
    yield gateway
    gateway.close()


class FakeServer:
    """A gRPC server with a real mTLS SVID that answers Check however ``answer`` says;
    counts the calls that reached it."""

    def __init__(self, svid: IssuedCert, roots: bytes, answer: Callable[[bytes], bytes]) -> None:
        self.calls = 0
        self._lock = threading.Lock()

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls += 1
            return answer(request)

        handlers = grpc.method_handlers_generic_handler(
            "pdp.v1.DecisionService",
            {
                name: grpc.unary_unary_rpc_method_handler(handle)  # raw bytes in and out
                for name in ("Check", "CheckBatch")
            },
        )
        assert CHECK_METHOD.endswith("/Check") and CHECK_BATCH_METHOD.endswith("/CheckBatch")
        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handlers])
        credentials = grpc.ssl_server_credentials(
            [(svid.key_pem, svid.chain_pem)], root_certificates=roots,
            require_client_auth=True,
        )  # fmt: skip
        port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


def always_allow(_request: bytes) -> bytes:
    return pb.CheckResponse(
        decision=pb.DECISION_ALLOW, decision_id="forged", policy_version="forged"
    ).SerializeToString()


@pytest.fixture
def fake_server(pki: Pki) -> Iterator[Callable[..., FakeServer]]:  # noqa: F811
    started: list[FakeServer] = []

    def start(svid: IssuedCert | None = None, answer: Callable[[bytes], bytes] = always_allow
              ) -> FakeServer:  # fmt: skip
        fake = FakeServer(svid or pki.server, pki.ca.bundle_pem, answer)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def slow(seconds: float) -> Callable[[bytes], bytes]:
    def answer(request: bytes) -> bytes:
        time.sleep(seconds)
        return always_allow(request)

    return answer
