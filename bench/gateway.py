"""What pdp costs an MCP gateway: Envoy + ext_authz + pdp against Envoy alone.

    .venv/bin/python bench/gateway.py [--seconds 3] [--rounds 3] [--concurrency 8]
                                      [--latency-calls 300] [--json]

One run, same machine, same MCP server (the sample ``crm`` server of pdp.gateway, the
``mcp`` SDK over streamable HTTP, in its own process), two Envoys from the bundled
configuration (pdp/gateway/envoy-files.yaml) side by side:

- ``envoy``: Envoy alone (mTLS with the agent's SVID, routing), the ext_authz filter taken
  out of the configuration;
- ``envoy+pdp``: the same Envoy configuration with ext_authz asking ``pdp serve --dev``
  (async file audit, dev CA, mTLS) about every request.

The client is an agent with its X.509-SVID posting MCP 2026-07-28 ``tools/call``
requests (``Mcp-Method``/``Mcp-Name`` headers, the intent in ``params._meta``), each
answered by the tool's result, over keep-alive HTTP/1.1 connections (httpx2):
``--concurrency`` workers for ``--seconds`` per load, the two variants alternating
``--rounds`` times (median printed), then ``--latency-calls`` sequential calls each for
p50/p99. Before measuring, a call outside the intent must come back 403 and never reach
the server: a gateway that allowed everything would otherwise look fast.

The client, the MCP server, Envoy and pdp share this machine's cores: absolute calls/s
are bound by the Python client and server; the ratio and the added latency are the
figures to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdp.gateway.agent import agent_ssl_context
from pdp.gateway.dev import AGENT_ID, AGENT_TRUST_DOMAIN, INTENT, PdpProcess
from pdp.gateway.envoy import EnvoyProcess, EnvoySettings, render_envoy_config
from pdp.identity.devca import DevCA, ensure_dev_state, load_dev_ca

HEADERS = {
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
}


def body(tool: str, intent: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": index,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": {"ticket_id": f"T-{index}"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "pdp.dev/intent": intent,
            },
        },
    }


def without_ext_authz(config: str) -> str:
    """The same Envoy configuration with the ext_authz filter and its route settings gone."""
    data = yaml.safe_load(config)
    for listener in data["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                manager["http_filters"] = [
                    f
                    for f in manager["http_filters"]
                    if f["name"] != "envoy.filters.http.ext_authz"
                ]
                for host in manager["route_config"]["virtual_hosts"]:
                    for route in host["routes"]:
                        route.pop("typed_per_filter_config", None)
    return str(yaml.safe_dump(data))


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post(client: httpx2.AsyncClient, url: str, tool: str, index: int) -> int:
    response = await client.post(
        url, json=body(tool, INTENT, index), headers={**HEADERS, "mcp-name": tool}
    )
    return int(response.status_code)


async def load(
    url: str, tls: ssl.SSLContext, concurrency: int, seconds: float
) -> tuple[float, int]:
    """(calls/s answered 200, other answers) with ``concurrency`` workers for ``seconds``."""
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done, errors
        async with httpx2.AsyncClient(verify=tls, timeout=30) as client:
            index = offset
            while time.perf_counter() < stop:
                status = await post(client, url, "get_ticket", index)
                index += concurrency
                if status == 200:
                    done += 1
                else:
                    errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done / (time.perf_counter() - start), errors


async def latencies(url: str, tls: ssl.SSLContext, calls: int) -> list[float]:
    out = []
    async with httpx2.AsyncClient(verify=tls, timeout=30) as client:
        for index in range(calls + 10):
            started = time.perf_counter()
            status = await post(client, url, "get_ticket", index)
            if status != 200:
                raise RuntimeError(f"{url}: a call inside the intent answered {status}")
            if index >= 10:  # warm-up
                out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pdp-bench-gateway-") as tmp_name:
        tmp = Path(tmp_name)
        state = ensure_dev_state(tmp / "state")
        ca = load_dev_ca(state)
        envoy_svid = ca.issue_svid(
            f"spiffe://{state.trust_domain}/gateway/envoy", ip_addresses=("127.0.0.1",)
        )
        agent_ca = DevCA.create(AGENT_TRUST_DOMAIN)
        agent = agent_ca.issue_svid(AGENT_ID)
        files = {
            "envoy.pem": envoy_svid.chain_pem,
            "envoy.key": envoy_svid.key_pem,
            "agent-bundle.pem": agent_ca.bundle_pem,
            "agent.pem": agent.chain_pem,
            "agent.key": agent.key_pem,
        }
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        tls = agent_ssl_context(tmp / "agent.pem", tmp / "agent.key", state.bundle_file)
        mcp_port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "pdp.gateway.sample_server", "--port", str(mcp_port)]
        )
        pdp = PdpProcess(tmp / "state", audit_mode="async")
        wait_for_port(mcp_port)
        settings = EnvoySettings(
            gateway_cert=tmp / "envoy.pem",
            gateway_key=tmp / "envoy.key",
            agent_bundle=tmp / "agent-bundle.pem",
            agent_trust_domain=AGENT_TRUST_DOMAIN,
            pdp_bundle=state.bundle_file,
            pdp_id=state.server_id,
            pdp_port=pdp.port,
            mcp_port=mcp_port,
        )
        config = render_envoy_config(settings)
        (tmp / "plain").mkdir()
        (tmp / "authz").mkdir()
        variants = {
            "envoy": EnvoyProcess(without_ext_authz(config), work_dir=tmp / "plain"),
            "envoy+pdp": EnvoyProcess(config, work_dir=tmp / "authz"),
        }
        try:
            for envoy in variants.values():
                envoy.start()
            urls = {name: f"https://127.0.0.1:{e.port}/mcp" for name, e in variants.items()}
            results = asyncio.run(measure(urls, tls, args))
        finally:
            for envoy in variants.values():
                envoy.stop()
            pdp.stop()
            server.terminate()
            server.wait(10)
    report(results, args)
    return 0


async def measure(urls: dict[str, str], tls: ssl.SSLContext, args: Any) -> dict[str, Any]:
    # Honesty check: pdp must deny what the intent does not cover (and only through pdp).
    async with httpx2.AsyncClient(verify=tls, timeout=30) as client:
        denied = await post(client, urls["envoy+pdp"], "delete_ticket", 1)
        plain = await post(client, urls["envoy"], "get_ticket", 1)
    if denied != 403 or plain != 200:
        raise RuntimeError(f"setup check failed: deny answered {denied}, plain Envoy {plain}")
    for url in urls.values():  # warm both paths
        await load(url, tls, args.concurrency, 0.5)
    rates: dict[str, list[float]] = {name: [] for name in urls}
    errors = dict.fromkeys(urls, 0)
    for round_index in range(args.rounds):
        order = list(urls) if round_index % 2 == 0 else list(reversed(urls))
        for name in order:
            rate, failed = await load(urls[name], tls, args.concurrency, args.seconds)
            rates[name].append(rate)
            errors[name] += failed
    lat = {name: await latencies(url, tls, args.latency_calls) for name, url in urls.items()}
    return {"rates": rates, "errors": errors, "latencies": lat}


def report(results: dict[str, Any], args: Any) -> None:
    rates, lat = results["rates"], results["latencies"]
    rows = {}
    for name in rates:
        rows[name] = {
            "calls_per_s": statistics.median(rates[name]),
            "p50_ms": percentile(lat[name], 0.50),
            "p99_ms": percentile(lat[name], 0.99),
            "non_200": results["errors"][name],
        }
    base, authz = rows["envoy"], rows["envoy+pdp"]
    summary = {
        "ratio_calls_per_s": authz["calls_per_s"] / base["calls_per_s"],
        "added_p50_ms": authz["p50_ms"] - base["p50_ms"],
        "added_p99_ms": authz["p99_ms"] - base["p99_ms"],
    }
    if args.json:
        print(json.dumps({"rows": rows, **summary}, indent=2))
        return
    print(
        f"tools/call through Envoy, {args.concurrency} workers x {args.seconds:g} s,"
        f" median of {args.rounds} rounds; latency over {args.latency_calls} sequential calls"
    )
    print(f"{'variant':<10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    for name, row in rows.items():
        print(
            f"{name:<10} {row['calls_per_s']:>9,.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
            f" {row['non_200']:>8}"
        )
    print(
        f"envoy+pdp / envoy: {summary['ratio_calls_per_s']:.2f} of the calls/s;"
        f" added p50 {summary['added_p50_ms']:+.2f} ms, p99 {summary['added_p99_ms']:+.2f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
