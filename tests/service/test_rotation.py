"""SVID and bundle rotation through a real (fake) SPIFFE Workload API, under load.

The server takes its identity from :class:`WorkloadApiSource`; the test's agent rotates
the server SVID, then the trust domain's CA, while a client keeps calling on one
connection. No call may fail; new handshakes must see the new certificate; once the
old CA leaves the bundle, the old client is refused on its very next call, on the
connection it already has (security-tests.md section 6.5, cases 47 and 50).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from pdp.engine import Engine
from pdp.identity.devca import IssuedCert
from pdp.identity.sources import WorkloadApiSource
from pdp.service import DecisionServer

from .conftest import (
    GATEWAY_ID,
    SERVER_ID,
    TD,
    Client,
    LoopbackAgent,
    example_request,
    service_config,
)

WAIT = 15.0


PEER_SERIAL = r"""
import socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # only reading which certificate is served
context.load_cert_chain(sys.argv[2], sys.argv[3])
context.set_alpn_protocols(["h2"])
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as raw:
    with context.wrap_socket(raw) as tls:
        from cryptography import x509
        print(format(x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number, "x"))
"""


def served_serial(port: int, svid: IssuedCert, directory: Path) -> str:
    """The serial number of the certificate a new handshake gets (in another process:
    see test_tls.py on mixing Python's ssl with a grpc server in one process)."""
    cert, key = directory / "probe.pem", directory / "probe.key"
    cert.write_bytes(svid.chain_pem)
    key.write_bytes(svid.key_pem)
    result = subprocess.run(
        [sys.executable, "-c", PEER_SERIAL, str(port), str(cert), str(key)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def wait_for_serial(port: int, svid: IssuedCert, directory: Path, expected: IssuedCert) -> None:
    serial = format(expected.cert.serial_number, "x")
    deadline = time.monotonic() + WAIT
    seen = ""
    while time.monotonic() < deadline:
        seen = served_serial(port, svid, directory)
        if seen == serial:
            return
        time.sleep(0.1)
    raise AssertionError(f"new handshakes still get serial {seen}, not {serial}")


def test_rotation_under_load(agent: LoopbackAgent, engine: Engine, tmp_path: Path) -> None:
    first_ca = agent.ca
    old_client_svid = first_ca.issue_svid(GATEWAY_ID)
    with WorkloadApiSource(agent.address, timeout=WAIT) as identity:
        server = DecisionServer(service_config(), engine, identity).start()
        try:
            assert server.spiffe_id == SERVER_ID
            steady = Client(server.address, old_client_svid, first_ca.bundle_pem)
            failures: list[str] = []
            answered = 0
            stop = threading.Event()

            def keep_calling() -> None:
                nonlocal answered
                while not stop.is_set():
                    try:
                        steady.check(example_request(), timeout=5)
                        answered += 1
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    time.sleep(0.002)

            caller = threading.Thread(target=keep_calling)
            caller.start()
            try:
                # 1. A new server SVID from the same CA.
                new_svid = agent.rotate_svid()
                wait_for_serial(server.port, old_client_svid, tmp_path, new_svid)
                # 2. A new CA for the trust domain; the old root stays in the bundle.
                second_ca = agent.rotate_bundle(keep_old_roots=True)
                wait_for_serial(server.port, old_client_svid, tmp_path, agent.svid)
                # A client that trusts ONLY the new CA, with an SVID of the new CA.
                fresh = Client(
                    server.address, second_ca.issue_svid(GATEWAY_ID), second_ca.bundle_pem
                )
                assert fresh.check(example_request()).decision == 1
                fresh.close()
                before = answered
                time.sleep(0.3)
                assert answered > before, "the steady caller stalled"
            finally:
                stop.set()
                caller.join(10)
            assert not failures, failures[:5]
            assert answered > 20

            # 3. The old CA leaves the bundle: the steady client, on its existing
            # connection, is refused at its next call (the TLS layer never re-checks).
            agent.rotate_bundle(keep_old_roots=False)
            deadline = time.monotonic() + WAIT
            while (
                TD in identity.current().bundles
                and first_ca.root in (identity.current().bundles[TD])
            ):
                assert time.monotonic() < deadline, "bundle update did not arrive"
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as info:
                steady.check(example_request(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            steady.close()
        finally:
            server.stop(0)
