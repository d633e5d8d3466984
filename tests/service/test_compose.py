"""docker-compose.yml, checked without a container engine: structure, pinned images,
and that the identities, sockets and configs the services share actually line up."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.identity.spiffe_id import SpiffeIdPattern
from pdp.service import WorkloadApiIdentity, load_config

from .conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
SPIRE = REPO / "deploy" / "spire"
PINNED = re.compile(r"^[\w./-]+:\d+\.\d+(\.\d+)?([-\w.]*)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (volume name or host path), without the :ro suffix."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts[target] = source
    return mounts


def _conf_value(text: str, key: str) -> str:
    match = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    assert match, f"{key} not set"
    return match.group(1)


def test_services_are_there(services: dict[str, Any]) -> None:
    assert {
        "spire-server",
        "spire-bootstrap",
        "spire-agent",
        "nats",
        "pdp",
        "gateway",
        "mcp-gateway",
        "mcp-server",
    } <= set(services)


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image or "build" in service, f"{name}: no image and no build"
        if image and "build" not in service and not image.startswith("pdp:"):
            assert PINNED.match(image), f"{name}: image {image!r} is not pinned to a version"
    spire_versions = {
        services[name]["image"].rsplit(":", 1)[1] for name in ("spire-server", "spire-agent")
    }
    assert len(spire_versions) == 1, "SPIRE server and agent must run the same version"
    dockerfiles = [REPO / "Dockerfile", SPIRE / "bootstrap.Dockerfile"]
    for dockerfile in dockerfiles:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                image = line.split()[1]
                assert PINNED.match(image), f"{dockerfile.name}: {image!r} is not pinned"
    bootstrap_spire = re.search(
        r"spire-server:([\d.]+)", (SPIRE / "bootstrap.Dockerfile").read_text()
    )
    assert bootstrap_spire and bootstrap_spire.group(1) in spire_versions


def test_build_contexts_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = REPO / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    for line in (SPIRE / "bootstrap.Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            assert (SPIRE / line.split()[1]).is_file(), line


def test_host_files_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, source in _mounts(service).items():
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name}: {source} -> {target} is missing"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in services.items():
        for source in _mounts(service).values():
            if not source.startswith(("./", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_workload_api_socket_is_shared(services: dict[str, Any]) -> None:
    agent_conf = (SPIRE / "agent.conf.template").read_text()
    socket_path = Path(_conf_value(agent_conf, "socket_path"))
    agent_volume = _mounts(services["spire-agent"])[str(socket_path.parent)]
    for name in ("pdp", "gateway"):
        service = services[name]
        assert service["environment"]["SPIFFE_ENDPOINT_SOCKET"] == f"unix://{socket_path}"
        assert _mounts(service)[str(socket_path.parent)] == agent_volume, name
    # The agent is configured from what bootstrap writes, with the server's bundle.
    bootstrap = _mounts(services["spire-bootstrap"])
    assert services["spire-agent"]["command"][-1].startswith("/run/spire/bootstrap/")
    assert (
        bootstrap["/run/spire/bootstrap"]
        == _mounts(services["spire-agent"])["/run/spire/bootstrap"]
    )
    assert _conf_value(agent_conf, "trust_bundle_path").startswith("/run/spire/bootstrap/")


def test_server_admin_socket_is_shared_with_bootstrap(services: dict[str, Any]) -> None:
    server_conf = (REPO / "deploy" / "spire" / "server.conf").read_text()
    admin = Path(_conf_value(server_conf, "socket_path"))
    server_volume = _mounts(services["spire-server"])[str(admin.parent)]
    assert _mounts(services["spire-bootstrap"])[str(admin.parent)] == server_volume
    assert services["spire-bootstrap"]["environment"]["SPIRE_SERVER_SOCKET"] == str(admin)
    trust_domain = _conf_value(server_conf, "trust_domain")
    assert services["spire-bootstrap"]["environment"]["TRUST_DOMAIN"] == trust_domain
    assert _conf_value((SPIRE / "agent.conf.template").read_text(), "trust_domain") == trust_domain


def _registrations() -> dict[str, str]:
    """SPIFFE ID path -> docker label value, from the bootstrap script."""
    script = (SPIRE / "bootstrap.sh").read_text()
    found = re.findall(
        r'^register "spiffe://\$TD(/[^"]+)" -selector docker:label:org\.pdp\.workload:(\S+)',
        script,
        re.MULTILINE,
    )
    return dict(found)


def test_registrations_match_service_labels(services: dict[str, Any]) -> None:
    registered = _registrations()
    assert set(registered) == {"/pdp", "/gateway/edge", "/agent/support-bot", "/gateway/envoy"}
    assert services["pdp"]["labels"]["org.pdp.workload"] == registered["/pdp"]
    assert services["mcp-gateway"]["labels"]["org.pdp.workload"] == registered["/gateway/envoy"]
    assert services["gateway"]["labels"]["org.pdp.workload"] == registered["/gateway/edge"]
    assert "-dns pdp" in (SPIRE / "bootstrap.sh").read_text()  # the gateway dials pdp:8443


def test_pdp_config_allows_the_sample_gateway(services: dict[str, Any]) -> None:
    pdp = services["pdp"]
    config_file = next(t for t, s in _mounts(pdp).items() if s == "./deploy/pdp/pdp.yaml")
    assert pdp["command"][-1] == config_file
    config = load_config(REPO / "deploy" / "pdp" / "pdp.yaml")
    assert isinstance(config.identity, WorkloadApiIdentity)
    assert config.identity.socket is None  # from SPIFFE_ENDPOINT_SOCKET
    assert config.listen.endswith(":8443") and not config.listen.startswith("127.")
    trust_domain = _conf_value((SPIRE / "server.conf").read_text(), "trust_domain")
    gateway = f"spiffe://{trust_domain}/gateway/edge"
    agent = f"spiffe://{trust_domain}/agent/support-bot"
    bindings = [b for b in config.callers if SpiffeIdPattern(b.caller).matches(gateway)]
    assert bindings and any(SpiffeIdPattern(a).matches(agent) for b in bindings for a in b.agents)
    # The gateway's request is about that agent, against that server ID and port.
    command = services["gateway"]["command"]
    assert command[command.index("--server-id") + 1] == f"spiffe://{trust_domain}/pdp"
    assert command[command.index("--target") + 1] == "pdp:8443"
    assert "--workload-api" in command


def test_nats_runs_jetstream(services: dict[str, Any]) -> None:
    nats = services["nats"]
    assert "-js" in nats["command"]
    store = nats["command"][nats["command"].index("-sd") + 1]
    assert store in _mounts(nats)


def test_start_order(services: dict[str, Any]) -> None:
    assert services["spire-agent"]["depends_on"]["spire-bootstrap"]["condition"] == (
        "service_completed_successfully"
    )
    assert "spire-agent" in services["pdp"]["depends_on"]
    assert services["gateway"]["depends_on"]["pdp"]["condition"] == "service_healthy"


def test_envoy_gets_its_svid_from_the_agent_and_asks_pdp(services: dict[str, Any]) -> None:
    """deploy/envoy/envoy.yaml: SDS over the agent's socket, the SVID registered for the
    mcp-gateway label, pdp as the only authorizer (failing closed), the sample server
    behind it, and a pdp config that admits Envoy for the agents it serves."""
    envoy_service = services["mcp-gateway"]
    config_target = next(
        t for t, s in _mounts(envoy_service).items() if s == "./deploy/envoy/envoy.yaml"
    )
    assert envoy_service["command"][envoy_service["command"].index("-c") + 1] == config_target
    text = (REPO / "deploy" / "envoy" / "envoy.yaml").read_text()
    agent_conf = (SPIRE / "agent.conf.template").read_text()
    socket_path = Path(_conf_value(agent_conf, "socket_path"))
    assert f"pipe: {{path: {socket_path}}}" in text
    assert (
        _mounts(envoy_service)[str(socket_path.parent)]
        == (_mounts(services["spire-agent"])[str(socket_path.parent)])
    )
    trust_domain = _conf_value((SPIRE / "server.conf").read_text(), "trust_domain")
    envoy_id = f"spiffe://{trust_domain}/gateway/envoy"
    assert f'name: "{envoy_id}"' in text
    assert f'exact: "spiffe://{trust_domain}/pdp"' in text
    assert "failure_mode_allow: false" in text
    assert "address: pdp, port_value: 8443" in text
    server = services["mcp-server"]
    port = server["command"][server["command"].index("--port") + 1]
    assert f"address: mcp-server, port_value: {port}" in text
    config = load_config(REPO / "deploy" / "pdp" / "pdp.yaml")
    agent = f"spiffe://{trust_domain}/agent/support-bot"
    bindings = [b for b in config.callers if SpiffeIdPattern(b.caller).matches(envoy_id)]
    assert any(SpiffeIdPattern(a).matches(agent) for b in bindings for a in b.agents)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
