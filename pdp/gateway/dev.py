"""``pdp gateway --dev``: a real MCP tool call allowed and one denied, in one command.

Starts ``pdp serve --dev`` (its dev CA, audit log in the state directory), the sample
MCP server, and Envoy with the bundled configuration in front of it, all on free
loopback ports; then, as the agent ``spiffe://acme.test/agent/support-bot`` with an
X.509-SVID and the ``mcp`` SDK client, calls ``crm/get_ticket`` inside its declared
intent (allowed: the tool's answer) and ``crm/delete_ticket`` (denied: the reasons and
the decision id), and prints the two audit records. ``--keep-running`` leaves the
gateway up for your own client (the files it needs are printed).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pdp.audit.chain import list_log_files
from pdp.gateway.agent import agent_ssl_context, call_tool, mcp_error
from pdp.gateway.envoy import EnvoyError, EnvoyProcess, EnvoySettings, render_envoy_config
from pdp.gateway.sample_server import SERVER_NAME, SampleServer
from pdp.identity.devca import DevCA, ensure_dev_state, load_dev_ca
from pdp.model import format_time

AGENT_TRUST_DOMAIN = "acme.test"
AGENT_ID = f"spiffe://{AGENT_TRUST_DOMAIN}/agent/support-bot"
INTENT = {"purpose": "support.triage", "tools": [f"{SERVER_NAME}/get_ticket"]}


@dataclass(frozen=True, slots=True)
class DevGateway:
    url: str
    agent_cert: Path
    agent_key: Path
    gateway_bundle: Path
    audit_dir: Path
    envoy: EnvoyProcess
    sample: SampleServer


class PdpProcess:
    """``pdp serve --dev`` as a child; learns its address from the start-up lines."""

    def __init__(
        self, state_dir: Path, policies: Path | None = None, *, audit_mode: str = "sync"
    ) -> None:
        argv = [sys.executable, "-m", "pdp.cli", "serve", "--dev", "--state-dir", str(state_dir)]
        argv += ["--listen", "127.0.0.1:0", "--audit-mode", audit_mode]
        if policies is not None:
            argv += ["--policies", str(policies)]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.port = 0
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line.rstrip())
                if "listening on " in line and not self.port:
                    address = line.split("listening on ", 1)[1].split(" ", 1)[0]
                    self.port = int(address.rpartition(":")[2])
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(90) or not self.port:
            self.stop()
            raise RuntimeError("pdp serve --dev did not start:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@contextmanager
def dev_gateway(state_dir: Path, *, policies: Path | None = None) -> Iterator[DevGateway]:
    """pdp, the sample MCP server and Envoy, running until the block ends."""
    state = ensure_dev_state(state_dir)
    ca = load_dev_ca(state)
    files = state_dir / "gateway"
    files.mkdir(mode=0o700, exist_ok=True)
    # Envoy's SVID: the gateway pdp's dev callers allow, also valid for https://127.0.0.1.
    envoy_svid = ca.issue_svid(
        f"spiffe://{state.trust_domain}/gateway/envoy",
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    agent_ca = DevCA.create(AGENT_TRUST_DOMAIN)
    agent = agent_ca.issue_svid(AGENT_ID)
    with ExitStack() as stack:
        pdp = PdpProcess(state_dir, policies)
        stack.callback(pdp.stop)
        sample = SampleServer().start()
        stack.callback(sample.stop)
        settings = EnvoySettings(
            gateway_cert=_write(files / "envoy.pem", envoy_svid.chain_pem),
            gateway_key=_write(files / "envoy.key", envoy_svid.key_pem),
            agent_bundle=_write(files / "agent-bundle.pem", agent_ca.bundle_pem),
            agent_trust_domain=AGENT_TRUST_DOMAIN,
            pdp_bundle=state.bundle_file,
            pdp_id=state.server_id,
            pdp_port=pdp.port,
            mcp_port=sample.port,
            mcp_server=SERVER_NAME,
        )
        envoy = EnvoyProcess(render_envoy_config(settings)).start()
        stack.callback(envoy.stop)
        yield DevGateway(
            url=f"https://127.0.0.1:{envoy.port}/mcp",
            agent_cert=_write(files / "agent.pem", agent.chain_pem),
            agent_key=_write(files / "agent.key", agent.key_pem),
            gateway_bundle=state.bundle_file,
            audit_dir=state_dir / "audit",
            envoy=envoy,
            sample=sample,
        )


def _tool_call_records(audit_dir: Path, since: str) -> list[dict[str, Any]]:
    """The decision records of tools/call made at or after ``since`` (RFC 3339, UTC)."""
    found = []
    for path in list_log_files(audit_dir):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            mcp = record.get("mcp") or {}
            if (
                record.get("kind") == "decision"
                and mcp.get("method") == "tools/call"
                and str(record.get("time", "")) >= since
            ):
                found.append(record)
    return found


async def _demo(gateway: DevGateway) -> bool:
    tls = agent_ssl_context(gateway.agent_cert, gateway.agent_key, gateway.gateway_bundle)
    ok = True
    print(f"agent {AGENT_ID} -> Envoy {gateway.url} -> pdp -> MCP server {SERVER_NAME!r}")
    print(f"intent: {json.dumps(INTENT)}\n")
    result = await call_tool(gateway.url, tls, "get_ticket", {"ticket_id": "T-123"}, intent=INTENT)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    print(f"1. crm/get_ticket  -> ALLOWED: {text}")
    ok &= not result.is_error
    try:
        await call_tool(gateway.url, tls, "delete_ticket", {"ticket_id": "T-123"}, intent=INTENT)
        print("2. crm/delete_ticket -> ALLOWED (unexpected)")
        ok = False
    except BaseException as exc:
        error = mcp_error(exc)
        if error is None:
            raise
        print(f"2. crm/delete_ticket -> DENIED (JSON-RPC error {error.code}): {error.message}")
    return ok


def run(state_dir: Path, *, policies: Path | None = None, keep_running: bool = False) -> int:
    try:
        with dev_gateway(state_dir, policies=policies) as gateway:
            since = format_time(datetime.now(UTC))
            ok = asyncio.run(_demo(gateway))
            calls = dict(gateway.sample.calls)
            print(f"\nthe MCP server ran: {calls} (the denied call never reached it)")
            time.sleep(0.2)
            for record in _tool_call_records(gateway.audit_dir, since):
                print(
                    f"audit: {record['decision_id']} {record['decision']} caller"
                    f" {record['caller']['spiffe_id']} agent {record['request'].get('agent')}"
                    f" {record.get('mcp', {}).get('method')} {record['request'].get('tool')}"
                )
            print(f"audit log: {gateway.audit_dir}")
            if keep_running:
                print(
                    f"\ngateway up at {gateway.url}; agent SVID {gateway.agent_cert}"
                    f" (key {gateway.agent_key}), trust {gateway.gateway_bundle}. Ctrl-C stops."
                )
                try:
                    while (
                        gateway.envoy.process is not None and gateway.envoy.process.poll() is None
                    ):
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
            return 0 if ok and calls.get("delete_ticket", 0) == 0 else 1
    except (EnvoyError, RuntimeError, OSError, ValueError) as exc:
        print(f"pdp gateway: {exc}", file=sys.stderr)
        return 2
