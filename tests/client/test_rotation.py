"""pdp.client with its SVID from a SPIFFE Workload API: a rotated SVID is used by the
next connection, without a new client identity."""

from __future__ import annotations

import time
from pathlib import Path

from pdp.client import Client, ClientIdentity
from pdp.engine import Engine
from pdp.identity.sources import StaticFileSource
from pdp.service import DecisionServer
from tests.service.conftest import (
    GATEWAY_ID,
    SERVER_ID,
    TD,
    LoopbackAgent,
    RecordingSink,
    example_request,
    service_config,
)


def test_workload_api_identity_follows_rotation(
    socket_dir: Path, engine: Engine, tmp_path: Path
) -> None:
    with LoopbackAgent(socket_dir / "agent.sock", GATEWAY_ID) as agent:
        server_svid = agent.ca.issue_svid(SERVER_ID)
        (tmp_path / "svid.pem").write_bytes(server_svid.chain_pem)
        (tmp_path / "svid.key").write_bytes(server_svid.key_pem)
        (tmp_path / "bundle.pem").write_bytes(agent.ca.bundle_pem)
        source = StaticFileSource(
            tmp_path / "svid.pem", tmp_path / "svid.key", {TD: tmp_path / "bundle.pem"}
        )
        sink = RecordingSink()
        with source, DecisionServer(service_config(), engine, source, sink=sink) as server:
            identity = ClientIdentity.workload_api(SERVER_ID, agent.address)
            try:
                first = identity.tls_context()
                with Client(server.address, identity) as pdp:
                    assert pdp.check(example_request()).allowed
                rotated = agent.rotate_svid()
                deadline = time.monotonic() + 20
                while identity.tls_context() is first:
                    assert time.monotonic() < deadline, "the rotation never reached the client"
                    time.sleep(0.05)
                with Client(server.address, identity) as pdp:
                    assert pdp.check(example_request()).allowed
            finally:
                identity.close()
    serials = [event.caller.serial for event in sink.decisions]
    assert serials[-1] == format(rotated.cert.serial_number, "x")
    assert serials[0] != serials[-1]
