"""The bundled Envoy configurations are accepted by the real Envoy (``--mode validate``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pdp.gateway.envoy import EnvoySettings, envoy_binary, render_envoy_config
from pdp.identity.devca import DevCA

REPO = Path(__file__).resolve().parents[2]


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(180)
def test_compose_config_with_sds_is_valid() -> None:
    result = validate(REPO / "deploy" / "envoy" / "envoy.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(180)
def test_rendered_file_config_is_valid(tmp_path: Path) -> None:
    ca = DevCA.create("pdp.test")
    svid = ca.issue_svid("spiffe://pdp.test/gateway/envoy")
    for name, data in {
        "gw.pem": svid.chain_pem,
        "gw.key": svid.key_pem,
        "ca.pem": ca.bundle_pem,
    }.items():
        (tmp_path / name).write_bytes(data)
    settings = EnvoySettings(
        gateway_cert=tmp_path / "gw.pem",
        gateway_key=tmp_path / "gw.key",
        agent_bundle=tmp_path / "ca.pem",
        agent_trust_domain="acme.test",
        pdp_bundle=tmp_path / "ca.pem",
        pdp_id="spiffe://pdp.test/pdp",
        pdp_port=8443,
        mcp_port=8000,
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy_config(settings))
    text = config.read_text()
    assert "failure_mode_allow: false" in text
    assert 'mcp_server: "crm"' in text and 'prefix: "spiffe://acme.test/"' in text
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr
