"""`pdp serve` as an operator runs it: the README's file-identity configuration, one
configured state directory (never the working directory's ./.pdp-state by accident),
and the version at start."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from pdp import __version__
from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.identity.devca import DevCA
from pdp.service.servicer import CHECK_METHOD

from .conftest import POLICIES, REPO, ServeProcess

README = REPO / "README.md"


def readme_configuration() -> str:
    """The README's complete file-identity configuration (the YAML block naming it)."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "source: files" in b]
    return block


def _spiffe_bundle(ca: DevCA) -> str:
    der = ca.root.public_bytes(serialization.Encoding.DER)
    key = {"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(der).decode()]}
    return json.dumps({"keys": [key], "spiffe_sequence": 1})


def test_the_readme_file_identity_configuration_serves(tmp_path: Path) -> None:
    prod, partner = DevCA.create("prod.example"), DevCA.create("partner.example")
    spiffe = tmp_path / "spiffe"
    spiffe.mkdir()
    server = prod.issue_svid("spiffe://prod.example/pdp", ip_addresses=("127.0.0.1",))
    (spiffe / "svid.pem").write_bytes(server.chain_pem)
    (spiffe / "svid.key").write_bytes(server.key_pem)
    (spiffe / "bundle.pem").write_bytes(prod.bundle_pem)
    (spiffe / "partner.bundle.json").write_text(_spiffe_bundle(partner))
    state = tmp_path / "state"
    text = (
        readme_configuration()
        .replace("/run/spiffe/", f"{spiffe}/")
        .replace("/var/lib/pdp", str(state))
        .replace("/etc/pdp/policies", str(POLICIES))
        .replace("0.0.0.0:8443", "127.0.0.1:0")
    )
    config = tmp_path / "pdp.yaml"
    config.write_text(text)
    served = ServeProcess(["--config", str(config)], cwd=tmp_path)
    try:
        assert served.lines[0] == f"pdp: pdp {__version__}"
        assert served.wait_for_line(f"state directory {state} (", 5).endswith(
            "(policy archive, audit log; from config state_dir)"
        )
        gateway = prod.issue_svid("spiffe://prod.example/gateway/edge")
        credentials = grpc.ssl_channel_credentials(
            prod.bundle_pem, gateway.key_pem, gateway.chain_pem
        )
        with grpc.secure_channel(served.address, credentials) as channel:
            check = channel.unary_unary(
                CHECK_METHOD,
                request_serializer=pb.CheckRequest.SerializeToString,
                response_deserializer=pb.CheckResponse.FromString,
            )
            request = pb.CheckRequest(
                agent="spiffe://prod.example/agent/bot", server="crm", tool="get_ticket"
            )
            response = check(request, timeout=30)
        assert response.decision_id  # authenticated, allowed to ask, decided
        assert response.reasons[0].policy != "caller_not_bound"
    finally:
        served.kill()  # the start is what is tested here (see test_serve_lifecycle for stops)
    assert (state / "policy-versions").is_dir()
    assert list((state / "audit").iterdir())
    assert not (tmp_path / ".pdp-state").exists()


def _file_identity_config(tmp_path: Path, extra: str = "") -> Path:
    ca = DevCA.create("prod.example")
    server = ca.issue_svid("spiffe://prod.example/pdp", ip_addresses=("127.0.0.1",))
    (tmp_path / "svid.pem").write_bytes(server.chain_pem)
    (tmp_path / "svid.key").write_bytes(server.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    config = tmp_path / "pdp.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\npolicies: {POLICIES}\n{extra}"
        "identity: {source: files, cert: svid.pem, key: svid.key,"
        " bundles: {prod.example: bundle.pem}}\n"
    )
    return config


def test_without_a_state_directory_a_non_dev_server_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _file_identity_config(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    result = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "serve", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "no state directory" in result.stderr and "--state-dir" in result.stderr
    assert not (tmp_path / ".pdp-state").exists()


def test_state_dir_is_accepted_without_dev(tmp_path: Path) -> None:
    config = _file_identity_config(tmp_path)
    state = tmp_path / "elsewhere"
    served = ServeProcess(["--config", str(config), "--state-dir", str(state)], cwd=tmp_path)
    try:
        assert served.wait_for_line("state directory", 5).endswith(
            f"state directory {state} (policy archive, audit log; from --state-dir)"
        )
    finally:
        served.kill()  # the start is what is tested here (see test_serve_lifecycle for stops)
    assert (state / "policy-versions").is_dir() and (state / "audit").is_dir()
    assert not (tmp_path / ".pdp-state").exists()


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"pdp {__version__}"


def test_a_running_pdp_serve_stops_trusting_a_removed_bundle(tmp_path: Path) -> None:
    """The whole path: pdp serve's own periodic reload of file identity, a partner's
    connection refused once its bundle file is gone, the home trust domain served."""
    prod, partner = DevCA.create("prod.example"), DevCA.create("partner.example")
    server = prod.issue_svid("spiffe://prod.example/pdp", ip_addresses=("127.0.0.1",))
    (tmp_path / "svid.pem").write_bytes(server.chain_pem)
    (tmp_path / "svid.key").write_bytes(server.key_pem)
    (tmp_path / "bundle.pem").write_bytes(prod.bundle_pem)
    (tmp_path / "partner.json").write_text(_spiffe_bundle(partner))
    config = tmp_path / "pdp.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\npolicies: {POLICIES}\nstate_dir: state\n"
        "identity: {source: files, cert: svid.pem, key: svid.key, reload_interval_s: 0.2,"
        " bundles: {prod.example: bundle.pem, partner.example: partner.json}}\n"
        "callers:\n"
        "  - {id: 'spiffe://prod.example/gateway/*', agents: ['spiffe://prod.example/*']}\n"
        "  - {id: 'spiffe://partner.example/gateway/*', agents: ['spiffe://partner.example/*']}\n"
    )
    served = ServeProcess(["--config", str(config)], cwd=tmp_path)

    def checker(ca: DevCA, gateway: str) -> Any:
        svid = ca.issue_svid(gateway)
        credentials = grpc.ssl_channel_credentials(prod.bundle_pem, svid.key_pem, svid.chain_pem)
        channel = grpc.secure_channel(served.address, credentials)
        channels.append(channel)
        return channel.unary_unary(
            CHECK_METHOD,
            request_serializer=pb.CheckRequest.SerializeToString,
            response_deserializer=pb.CheckResponse.FromString,
        )

    channels: list[grpc.Channel] = []
    helper = pb.CheckRequest(agent="spiffe://partner.example/agent/h", server="crm", tool="t")
    bot = pb.CheckRequest(agent="spiffe://prod.example/agent/bot", server="crm", tool="t")
    try:
        partner_check = checker(partner, "spiffe://partner.example/gateway/bridge")
        assert partner_check(helper, timeout=30).decision_id  # trusted: decided
        (tmp_path / "partner.json").unlink()
        deadline = time.monotonic() + 30
        while True:  # the next periodic reload (0.2 s) stops the trust
            try:
                partner_check(helper, timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAUTHENTICATED, exc.details()
                assert "'partner.example' is not trusted" in (exc.details() or "")
                break
            assert time.monotonic() < deadline, "the partner is still trusted"
            time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as info:  # a new connection: the handshake fails
            checker(partner, "spiffe://partner.example/gateway/bridge")(helper, timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        home = checker(prod, "spiffe://prod.example/gateway/edge")
        assert home(bot, timeout=30).decision_id  # the home trust domain is served
        assert any("not trusting partner.example any more" in line for line in served.stderr)
    finally:
        for channel in channels:
            channel.close()
        served.kill()
