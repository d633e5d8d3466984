"""Fixtures for the decision service: a PKI of three trust domains, in-process servers
on free loopback ports, mTLS clients and a recording sink.

Trust domains: ``pdp.test`` (the server's and the gateways'), ``partner.test``
(federated: its bundle is trusted too) and ``evil.test`` (not trusted). The example
policies decide about agents in ``acme.test`` and ``partner.test``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.engine import Engine, load_policies
from pdp.identity.devca import DevCA, IssuedCert
from pdp.identity.sources import StaticFileSource
from pdp.service import (
    CallerBinding,
    DecisionEvent,
    DecisionServer,
    RateLimit,
    RefusalEvent,
    ServerOptions,
    ServiceConfig,
)
from pdp.service.servicer import CHECK_BATCH_METHOD, CHECK_METHOD
from tests.identity.workload_api import WorkloadApiServer

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
REQUESTS = POLICIES / "examples" / "requests"

TD, PARTNER_TD, EVIL_TD = "pdp.test", "partner.test", "evil.test"
SERVER_ID = f"spiffe://{TD}/pdp"
GATEWAY_ID = f"spiffe://{TD}/gateway/edge"
PARTNER_GATEWAY_ID = f"spiffe://{PARTNER_TD}/gateway/bridge"
STRANGER_ID = f"spiffe://{TD}/batch/job"  # authenticated, but not on the allow-list

CALLERS = (
    CallerBinding(f"spiffe://{TD}/gateway/*", ("spiffe://acme.test/agent/*",)),
    CallerBinding(f"spiffe://{PARTNER_TD}/gateway/*", ("spiffe://partner.test/agent/*",)),
)
TIMEOUT = 10.0


def example_request(name: str = "support-get-ticket") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REQUESTS / f"{name}.json").read_text())
    return data


def to_message(data: dict[str, Any]) -> pb.CheckRequest:
    return json_format.ParseDict(data, pb.CheckRequest())


@dataclass
class Pki:
    ca: DevCA
    partner: DevCA
    evil: DevCA
    server: IssuedCert
    gateway: IssuedCert
    partner_gateway: IssuedCert
    stranger: IssuedCert

    def svid(self, spiffe_id: str, **kwargs: Any) -> IssuedCert:
        return self.ca.issue_svid(spiffe_id, **kwargs)


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = DevCA.create(TD)
    partner = DevCA.create(PARTNER_TD)
    return Pki(
        ca=ca,
        partner=partner,
        evil=DevCA.create(EVIL_TD),
        server=ca.issue_svid(SERVER_ID, dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
        gateway=ca.issue_svid(GATEWAY_ID),
        partner_gateway=partner.issue_svid(PARTNER_GATEWAY_ID),
        stranger=ca.issue_svid(STRANGER_ID),
    )


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(load_policies(POLICIES))


@pytest.fixture
def identity(pki: Pki, tmp_path: Path) -> Iterator[StaticFileSource]:
    files = {
        "svid.pem": pki.server.chain_pem,
        "svid.key": pki.server.key_pem,
        "pdp.pem": pki.ca.bundle_pem,
        "partner.pem": pki.partner.bundle_pem,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    source = StaticFileSource(
        tmp_path / "svid.pem",
        tmp_path / "svid.key",
        {TD: tmp_path / "pdp.pem", PARTNER_TD: tmp_path / "partner.pem"},
    )
    with source:
        yield source


@dataclass
class RecordingSink:
    """Keeps every event; ``fail`` makes it report failure, ``error`` makes it raise."""

    decisions: list[DecisionEvent] = field(default_factory=list)
    refusals: list[RefusalEvent] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)
    fail: bool = False
    error: Exception | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        if self.error is not None:
            raise self.error
        with self.lock:
            self.decisions.extend(events)
            self.timeouts.append(timeout)
        return [not self.fail] * len(events)

    def record_refusal(self, event: RefusalEvent) -> None:
        with self.lock:
            self.refusals.append(event)


def service_config(**changes: Any) -> ServiceConfig:
    base = ServiceConfig(
        listen="127.0.0.1:0",
        policies=POLICIES,
        callers=CALLERS,
        rate_limit=RateLimit(decisions_per_second=100_000, burst=100_000),
        server=ServerOptions(threads=8, shutdown_grace_s=2),
    )
    return base.replace(**changes)


ServerFactory = Callable[..., DecisionServer]


@pytest.fixture
def make_server(
    engine: Engine, identity: StaticFileSource
) -> Iterator[Callable[..., DecisionServer]]:
    servers: list[DecisionServer] = []

    def make(*, sink: Any = None, engine_: Any = None, **changes: Any) -> DecisionServer:
        server = DecisionServer(
            service_config(**changes), engine_ or engine, identity, sink=sink
        ).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(0)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def server(make_server: ServerFactory, sink: RecordingSink) -> DecisionServer:
    return make_server(sink=sink)


class Client:
    """An mTLS client of one server. ``svid=None`` connects without a client certificate."""

    def __init__(
        self, address: str, svid: IssuedCert | None, roots: bytes, *, cert_pem: bytes = b""
    ) -> None:
        if svid is None:
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=roots,
                private_key=svid.key_pem,
                certificate_chain=cert_pem or svid.chain_pem,
            )
        self.channel = grpc.secure_channel(address, credentials)
        self._check = self.channel.unary_unary(
            CHECK_METHOD,
            request_serializer=pb.CheckRequest.SerializeToString,
            response_deserializer=pb.CheckResponse.FromString,
        )
        self._batch = self.channel.unary_unary(
            CHECK_BATCH_METHOD,
            request_serializer=pb.CheckBatchRequest.SerializeToString,
            response_deserializer=pb.CheckBatchResponse.FromString,
        )
        self._raw_check = self.channel.unary_unary(
            CHECK_METHOD,
            request_serializer=bytes,  # already encoded (or deliberately broken)
            response_deserializer=pb.CheckResponse.FromString,
        )

    def check(self, request: dict[str, Any] | pb.CheckRequest, **kwargs: Any) -> pb.CheckResponse:
        message = request if isinstance(request, pb.CheckRequest) else to_message(request)
        kwargs.setdefault("timeout", TIMEOUT)
        response: pb.CheckResponse = self._check(message, **kwargs)
        return response

    def check_batch(
        self, requests: Sequence[dict[str, Any]], **kwargs: Any
    ) -> pb.CheckBatchResponse:
        message = pb.CheckBatchRequest(requests=[to_message(r) for r in requests])
        kwargs.setdefault("timeout", TIMEOUT)
        response: pb.CheckBatchResponse = self._batch(message, **kwargs)
        return response

    def check_raw(self, data: bytes) -> pb.CheckResponse:
        response: pb.CheckResponse = self._raw_check(data, timeout=TIMEOUT)
        return response

    def close(self) -> None:
        self.channel.close()


ClientFactory = Callable[..., Client]


@pytest.fixture
def connect(pki: Pki) -> Iterator[ClientFactory]:
    clients: list[Client] = []

    def make(
        server: DecisionServer,
        svid: IssuedCert | None = None,
        *,
        anonymous: bool = False,
        roots: bytes | None = None,
        cert_pem: bytes = b"",
    ) -> Client:
        client = Client(
            server.address,
            None if anonymous else (svid or pki.gateway),
            roots or pki.ca.bundle_pem,
            cert_pem=cert_pem,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Runs ``call`` and returns the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def now() -> datetime:
    return datetime.now(UTC)


# --- `pdp serve` as a child process -----------------------------------------------


class ServeProcess:
    """``pdp serve`` in a subprocess; reads its start-up lines to learn the address."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        state_dir: Path | None = None,
        cwd: Path = REPO,
        ready_timeout: float = 60,
    ) -> None:
        self.state_dir = state_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pdp.cli", "serve", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._lines_changed = threading.Condition()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True).start()
        line = self.wait_for_line("try: ", ready_timeout)
        self.try_command = line.removeprefix("pdp: try: ")
        listening = self.wait_for_line("listening on ", 1)
        self.address = listening.split("listening on ", 1)[1].split(" ", 1)[0]
        self.port = int(self.address.rpartition(":")[2])

    def _read(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                with self._lines_changed:
                    self.lines.append(line.rstrip("\n"))
                    self._lines_changed.notify_all()
            else:
                self.stderr.append(line)

    def wait_for_line(self, fragment: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._lines_changed:
            while True:
                for line in self.lines:
                    if fragment in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"pdp serve did not print {fragment!r}; stdout={self.lines}"
                        f" stderr={''.join(self.stderr)[-2000:]}"
                    )
                self._lines_changed.wait(min(left, 0.1))

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[ServeProcess]:
    state = tmp_path / "state"
    served = ServeProcess(
        ["--dev", "--state-dir", str(state), "--listen", "127.0.0.1:0"], state_dir=state
    )
    yield served
    served.kill()


# --- a SPIFFE Workload API ------------------------------------------------------


class _LoopbackCA(DevCA):
    """Issues SVIDs that also name 127.0.0.1: grpc's Python client insists on matching
    the target host against an IP or DNS SAN, and cannot be told to check the SPIFFE ID."""

    def issue_svid(self, spiffe_id: str, **kwargs: Any) -> IssuedCert:
        kwargs.setdefault("ip_addresses", ("127.0.0.1",))
        return super().issue_svid(spiffe_id, **kwargs)


class LoopbackAgent(WorkloadApiServer):
    """The identity helpers' Workload API server, with loopback-addressable SVIDs."""

    @property
    def ca(self) -> DevCA:
        return self._loopback_ca

    @ca.setter
    def ca(self, value: DevCA) -> None:
        self._loopback_ca = _LoopbackCA(value.trust_domain, value.key, value.path)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="pdp-svc-wl-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(socket_dir: Path) -> Iterator[LoopbackAgent]:
    """A Workload API serving the pdp server's SVID (trust domain pdp.test)."""
    server = LoopbackAgent(socket_dir / "agent.sock", SERVER_ID)
    with server:
        yield server
