"""What a `pdp serve` process really negotiates (security-tests.md section 3.2, case 13).

grpcio cannot require TLS 1.3 from Python, so TLS 1.2 stays possible; the claim we make
is "TLS 1.3 by default, TLS 1.2 only with ECDHE + AEAD". The probes run in their own
process: grpcio's BoringSSL and Python's OpenSSL in one process with a grpc server gave
inconsistent results in exploration, and grpc reads its cipher list only at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ServeProcess

PROBE = r"""
import json, socket, ssl, sys
port, cert, key, bundle = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def handshake(max_version=None, ciphers=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(bundle)
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    if max_version:
        context.maximum_version = getattr(ssl.TLSVersion, max_version)
    if ciphers:
        context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                return [tls.version(), tls.cipher()[0]]
    except (OSError, ssl.SSLError) as exc:
        return ["refused", type(exc).__name__]
print(json.dumps({
    "default": handshake(),
    "tls12": handshake("TLSv1_2"),
    "tls12_chacha": handshake("TLSv1_2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    "tls12_cbc": handshake("TLSv1_2", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"),
    "tls11": handshake("TLSv1_1"),
}))
"""


def probe(port: int, state: Path) -> dict[str, list[str]]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(port),
            str(state / "gateway.pem"),
            str(state / "gateway.key"),
            str(state / "bundle.pem"),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    probed: dict[str, list[str]] = json.loads(result.stdout)
    return probed


def test_negotiated_protocols(dev_server: ServeProcess) -> None:
    assert dev_server.state_dir is not None
    results = probe(dev_server.port, dev_server.state_dir)
    # A current client gets TLS 1.3.
    assert results["default"][0] == "TLSv1.3"
    # TLS 1.2 still works (grpcio cannot turn it off) but only with ECDHE + AEAD...
    assert results["tls12"][0] == "TLSv1.2"
    assert results["tls12"][1].startswith("ECDHE-") and "GCM" in results["tls12"][1]
    # ...including ChaCha20-Poly1305, which is NOT in grpc's built-in list: this proves
    # pdp's GRPC_SSL_CIPHER_SUITES setting reached grpc in the serving process.
    assert results["tls12_chacha"] == ["TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"]
    # A TLS 1.2 client offering only CBC suites, and anything older, are refused.
    assert results["tls12_cbc"][0] == "refused"
    assert results["tls11"][0] == "refused"


def test_weak_cipher_suites_in_the_environment_stop_the_server(tmp_path: Path) -> None:
    environment = {**os.environ, "GRPC_SSL_CIPHER_SUITES": "ECDHE-ECDSA-AES128-SHA"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdp.cli",
            "serve",
            "--dev",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "127.0.0.1:0",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GRPC_SSL_CIPHER_SUITES allows ECDHE-ECDSA-AES128-SHA" in result.stderr
