"""pdp against the Cerbos PDP, side by side, on this machine, in one run.

    .venv/bin/python bench/compare.py [--sizes 10,1000,10000] [--requests 30000]
                                      [--workers N]

Setup (done here when missing): h2load from Debian's nghttp2-client; the Cerbos
binary from the npm package @cerbos/cerbos-linux-x64; a small LD_PRELOAD shim
(bench/h2load_client_cert.c) that gives h2load a client certificate, since pdp
accepts mutual TLS only and h2load has no client-certificate option.

Both servers get equivalent policy sets of N policies of which exactly one applies
to the request (pdp: one permit per agent on top of the floor, whose intent check
is a condition; Cerbos: one resource policy per resource kind, the intent check as
a CEL condition), both speak TLS 1.3 with client certificates to the same h2load
(pre-encoded gRPC bodies), and answers are checked separately with a gRPC client,
since h2load reads only HTTP status. Both use both cores; audit logging is off for
both. Printed: decisions/s, p50/p99, start time, resident memory, and pdp/Cerbos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
CERBOS_VERSION = "0.55.0"
sys.path.insert(0, str(REPO))

from tests.conftest import MINI_INVENTORY, MINI_SCHEMA  # noqa: E402

# --- setup -----------------------------------------------------------------------------


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nghttp2-client"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = shutil.which("h2load")
    if not found:
        sys.exit("compare: h2load is missing (Debian: apt-get install nghttp2-client)")
    return found


def ensure_cerbos() -> Path:
    binary = CACHE / "cerbos" / "package" / "cerbos-linux-x64"
    if binary.exists():
        return binary
    (CACHE / "cerbos").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "pack", f"@cerbos/cerbos-linux-x64@{CERBOS_VERSION}"],
        cwd=CACHE / "cerbos",
        check=True,
        capture_output=True,
    )
    archive = next((CACHE / "cerbos").glob("cerbos-cerbos-linux-x64-*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE / "cerbos", filter="data")
    binary.chmod(0o755)
    return binary


def ensure_shim() -> Path:
    shim = CACHE / "h2load_client_cert.so"
    source = REPO / "bench" / "h2load_client_cert.c"
    if not shim.exists() or shim.stat().st_mtime < source.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True
        )
    return shim


def cerbos_messages() -> Any:
    import grpc_tools
    from grpc_tools import protoc

    out = CACHE / "proto"
    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{REPO / 'bench' / 'proto'}",
            f"-I{include}",
            f"--python_out={out}",
            str(REPO / "bench" / "proto" / "cerbos_min.proto"),
        ]
    )
    if code != 0:
        sys.exit("compare: cannot compile bench/proto/cerbos_min.proto")
    sys.path.insert(0, str(out))
    import cerbos_min_pb2

    return cerbos_min_pb2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def gateway_credentials(state: Path) -> Any:
    """mTLS client credentials of the dev gateway (``state``: a dev CA directory)."""
    import grpc

    return grpc.ssl_channel_credentials(
        (state / "bundle.pem").read_bytes(),
        (state / "gateway.key").read_bytes(),
        (state / "gateway.pem").read_bytes(),
    )


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (pdp's supervisor and workers)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        total += sum(rss_mb(int(child)) for child in children.read_text().split())
    return total


# --- the two servers ---------------------------------------------------------------------


AGENT = "spiffe://acme.test/agent/a{}"
# Probe every 50 ms while a server starts: grpc's growing reconnect backoff would
# otherwise add seconds to the measured start time.
PROBE_OPTIONS = [
    ("grpc.ssl_target_name_override", "localhost"),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 50),
]


def pdp_policies(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    (root / "schema.cedarschema").write_text(MINI_SCHEMA)
    (root / "entities.json").write_text(json.dumps(MINI_INVENTORY))
    (root / "grants.cedar").write_text(
        "\n".join(
            f'@id("grant.{i}")\n@reason("agent {i} reads tickets")\n'
            f'permit (principal == Agent::"{AGENT.format(i)}", action in Action::"read",'
            f' resource == McpServer::"crm");'
            for i in range(count)
        )
    )


def cerbos_policies(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"mcp_server_{i:05d}.yaml").write_text(f"""---
apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: mcp_server_{i:05d}
  rules:
    - actions: [get_ticket]
      effect: EFFECT_ALLOW
      roles: [agent]
      condition:
        match:
          expr: '"get_ticket" in request.resource.attr.intent_tools'
    - actions: [search_tickets]
      effect: EFFECT_ALLOW
      roles: [agent]
      condition:
        match:
          expr: '"search_tickets" in request.resource.attr.intent_tools'
    - actions: [delete_ticket]
      effect: EFFECT_DENY
      roles: [agent]
""")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    start_s: float
    url: str
    body: bytes
    batch_body: bytes = b""
    batch_url: str = ""
    batch_size: int = 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_ready(check: Any, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError("server did not become ready")


def pdp_request(count: int, intent: bool = True) -> dict[str, Any]:
    request: dict[str, Any] = {
        "agent": AGENT.format(count // 2),
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-1"},
    }
    if intent:
        request["intent"] = {"purpose": "triage", "tools": ["crm/get_ticket", "crm/search_tickets"]}
    return request


def start_pdp(work: Path, count: int, state: Path, batch_size: int, workers: int = 1) -> Server:
    import grpc
    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2
    from pdp.identity.devca import ensure_dev_state

    policies = work / "pdp-policies"
    pdp_policies(policies, count)
    port = free_port()
    config = work / "pdp.yaml"
    config.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "policies": str(policies),
                "identity": {"source": "dev", "state_dir": str(state)},
                "callers": [
                    {"id": "spiffe://pdp.dev/gateway/*", "agents": ["spiffe://acme.test/*"]}
                ],
                "rate_limit": {"decisions_per_second": 10_000_000, "burst": 10_000_000},
            }
        )
    )
    ensure_dev_state(state)
    started = time.monotonic()
    process = subprocess.Popen(
        [
            str(REPO / ".venv/bin/pdp"),
            "serve",
            "--config",
            str(config),
            "--workers",
            str(workers),
            "--no-audit",  # Cerbos runs with audit off too
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", gateway_credentials(state), options=PROBE_OPTIONS
    )
    check = channel.unary_unary(
        "/pdp.v1.DecisionService/Check",
        request_serializer=decision_pb2.CheckRequest.SerializeToString,
        response_deserializer=decision_pb2.CheckResponse.FromString,
    )

    def answer(intent: bool) -> int:
        message = json_format.ParseDict(pdp_request(count, intent), decision_pb2.CheckRequest())
        return int(check(message, timeout=5).decision)

    wait_ready(lambda: answer(True) == decision_pb2.DECISION_ALLOW, process)
    start_s = time.monotonic() - started
    assert answer(False) == decision_pb2.DECISION_DENY, "pdp: a request without intent must deny"
    channel.close()
    single = json_format.ParseDict(pdp_request(count), decision_pb2.CheckRequest())
    batch = decision_pb2.CheckBatchRequest(requests=[single] * batch_size)
    base = f"https://127.0.0.1:{port}/pdp.v1.DecisionService/"
    return Server(
        "pdp",
        process,
        port,
        start_s,
        base + "Check",
        grpc_frame(single.SerializeToString()),
        grpc_frame(batch.SerializeToString()),
        base + "CheckBatch",
        batch_size,
    )


def start_cerbos(work: Path, count: int, binary: Path, state: Path, pb: Any) -> Server:
    import grpc
    from google.protobuf import struct_pb2

    policies = work / "cerbos-policies"
    cerbos_policies(policies, count)
    port = free_port()
    config = work / "cerbos.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {
                    "grpcListenAddr": f"127.0.0.1:{port}",
                    "httpListenAddr": f"127.0.0.1:{free_port()}",
                    "tls": {
                        "cert": str(state / "server.pem"),
                        "key": str(state / "server.key"),
                        "caCert": str(state / "bundle.pem"),
                    },
                },
                "storage": {
                    "driver": "disk",
                    "disk": {"directory": str(policies), "watchForChanges": False},
                },
                "audit": {"enabled": False},
                "telemetry": {"disabled": True},
            }
        )
    )
    started = time.monotonic()
    process = subprocess.Popen(
        [str(binary), "server", f"--config={config}", "--log-level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", gateway_credentials(state), options=PROBE_OPTIONS
    )
    check = channel.unary_unary(
        "/cerbos.svc.v1.CerbosService/CheckResources",
        request_serializer=pb.CheckResourcesRequest.SerializeToString,
        response_deserializer=pb.CheckResourcesResponse.FromString,
    )

    def request(action: str, intent: bool) -> Any:
        tools = struct_pb2.Value(
            list_value=struct_pb2.ListValue(
                values=[
                    struct_pb2.Value(string_value="get_ticket"),
                    struct_pb2.Value(string_value="search_tickets"),
                ]
                if intent
                else []
            )
        )
        resource = pb.Resource(
            kind=f"mcp_server_{count // 2:05d}", id="crm", attr={"intent_tools": tools}
        )
        return pb.CheckResourcesRequest(
            request_id="1",
            principal=pb.Principal(id=AGENT.format(count // 2), roles=["agent"]),
            resources=[pb.CheckResourcesRequest.ResourceEntry(actions=[action], resource=resource)],
        )

    def effect(action: str, intent: bool) -> int:
        return int(check(request(action, intent), timeout=5).results[0].actions[action])

    wait_ready(lambda: effect("get_ticket", True) == pb.EFFECT_ALLOW, process, timeout=300)
    start_s = time.monotonic() - started
    assert effect("get_ticket", False) == pb.EFFECT_DENY, "cerbos: without intent must deny"
    assert effect("delete_ticket", True) == pb.EFFECT_DENY
    channel.close()
    return Server(
        "cerbos",
        process,
        port,
        start_s,
        f"https://127.0.0.1:{port}/cerbos.svc.v1.CerbosService/CheckResources",
        grpc_frame(request("get_ticket", True).SerializeToString()),
    )


# --- load ----------------------------------------------------------------------------------


def h2load(
    h2: str,
    shim: Path,
    state: Path,
    url: str,
    body: bytes,
    requests: int,
    connections: int,
    streams: int,
    rate: int = 0,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        body_file.write_bytes(body)
        command = [
            h2,
            "-n",
            str(requests),
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-d",
            str(body_file),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--log-file",
            str(log_file),
            url,
        ]
        if rate:
            command[1:1] = ["--rps", str(max(1, rate // connections))]
        env = {
            **os.environ,
            "LD_PRELOAD": str(shim),
            "H2LOAD_CLIENT_CERT": str(state / "gateway.pem"),
            "H2LOAD_CLIENT_KEY": str(state / "gateway.key"),
        }
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        durations, statuses = [], []
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                statuses.append(parts[1])
                durations.append(int(parts[2]))
    rate_line = next(
        (line for line in result.stdout.splitlines() if line.startswith("finished in")), ""
    )
    ok = statuses.count("200")
    if ok != requests:
        raise RuntimeError(f"h2load: {ok}/{requests} succeeded\n{result.stdout[-800:]}")
    durations.sort()
    return {
        "rps": float(rate_line.split(",")[1].split()[0]) if rate_line else 0.0,
        "p50_ms": durations[len(durations) // 2] / 1000,
        "p99_ms": durations[int(len(durations) * 0.99)] / 1000,
    }


def run_size(count: int, args: argparse.Namespace, tools: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"policies": count}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("pdp", "cerbos"):
            server = (
                start_pdp(work, count, tools["state"], args.batch, args.workers)
                if name == "pdp"
                else start_cerbos(work, count, tools["cerbos"], tools["state"], tools["pb"])
            )
            try:
                load = (tools["h2"], tools["shim"], tools["state"])
                h2load(*load, server.url, server.body, 2000, 4, 16)  # warm-up
                full = h2load(*load, server.url, server.body, args.requests, 4, 16)
                half = h2load(
                    *load,
                    server.url,
                    server.body,
                    max(2000, args.requests // 4),
                    4,
                    4,
                    rate=int(full["rps"] / 2),
                )
                result = {
                    "start_s": server.start_s,
                    "rss_mb": rss_mb(server.process.pid),
                    "check": full,
                    "half_load": half,
                }
                if server.batch_body:
                    batch = h2load(
                        *load,
                        server.batch_url,
                        server.batch_body,
                        max(200, args.requests // server.batch_size),
                        4,
                        4,
                    )
                    batch["decisions_per_s"] = batch["rps"] * server.batch_size
                    result["batch"] = batch
                row[name] = result
            finally:
                server.stop()
    return row


def measure_floor(args: argparse.Namespace, tools: dict[str, Any]) -> dict[str, float]:
    """Check decisions/s of the grpc floor (bench/grpc_floor.py: the transport answering
    a canned response) and of pdp with one worker, one process each, 10 policies."""
    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2

    load = (tools["h2"], tools["shim"], tools["state"])
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        config = work / "floor.yaml"
        identity = {"source": "dev", "state_dir": str(tools["state"])}
        config.write_text(json.dumps({"listen": f"127.0.0.1:{port}", "identity": identity}))
        floor = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "grpc_floor.py"), str(config)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert floor.stdout is not None
            floor.stdout.readline()  # "floor: listening on PORT"
            body = grpc_frame(
                json_format.ParseDict(
                    pdp_request(10), decision_pb2.CheckRequest()
                ).SerializeToString()
            )
            url = f"https://127.0.0.1:{port}/pdp.v1.DecisionService/Check"
            h2load(*load, url, body, 2000, 4, 16)
            figures["floor"] = h2load(*load, url, body, args.requests, 4, 16)["rps"]
        finally:
            floor.kill()
            floor.wait()
        server = start_pdp(work, 10, tools["state"], args.batch, 1)
        try:
            h2load(*load, server.url, server.body, 2000, 4, 16)
            figures["pdp_1"] = h2load(*load, server.url, server.body, args.requests, 4, 16)["rps"]
        finally:
            server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--batch", type=int, default=50, help="requests per CheckBatch")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="pdp serve --workers (default: one per core, as Cerbos uses every core)",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the grpc floor (canned answers) row"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tools: dict[str, Any] = {
        "h2": ensure_h2load(),
        "cerbos": ensure_cerbos(),
        "shim": ensure_shim(),
        "pb": cerbos_messages(),
    }
    with tempfile.TemporaryDirectory() as state_dir:
        from pdp.identity.devca import ensure_dev_state

        tools["state"] = Path(state_dir)
        ensure_dev_state(tools["state"])
        rows = [run_size(int(n), args, tools) for n in args.sizes.split(",")]
        floor = measure_floor(args, tools) if not args.no_floor else {}
    if args.json:
        print(json.dumps({"sizes": rows, "floor": floor}, indent=2))
        return
    print(f"pdp: serve --workers {args.workers}, audit off; Cerbos {CERBOS_VERSION}: audit off")
    print(
        f"{'policies':>8} {'server':<7} {'decisions/s':>12} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'p99@half':>9} {'batch dec/s':>12} {'start s':>8} {'RSS MB':>7}"
    )
    for row in rows:
        for name in ("pdp", "cerbos"):
            r = row[name]
            batch = f"{r['batch']['decisions_per_s']:>12,.0f}" if "batch" in r else f"{'-':>12}"
            print(
                f"{row['policies']:>8} {name:<7} {r['check']['rps']:>12,.0f}"
                f" {r['check']['p50_ms']:>7.2f} {r['check']['p99_ms']:>7.2f}"
                f" {r['half_load']['p99_ms']:>9.2f} {batch} {r['start_s']:>8.2f}"
                f" {r['rss_mb']:>7.0f}"
            )
        p, c = row["pdp"], row["cerbos"]
        print(
            f"{row['policies']:>8} {'ratio':<7} {p['check']['rps'] / c['check']['rps']:>12.2f}"
            f" {'':>7} {'':>7} {'':>9}"
            f" {p['batch']['decisions_per_s'] / c['check']['rps']:>12.2f}"
            f" {p['start_s'] / c['start_s']:>8.2f} {p['rss_mb'] / c['rss_mb']:>7.2f}"
        )
    ratios = [r["pdp"]["check"]["rps"] / r["cerbos"]["check"]["rps"] for r in rows]
    print(f"median pdp/cerbos Check ratio: {statistics.median(ratios):.2f}")
    if floor:
        cerbos = rows[0]["cerbos"]["check"]["rps"]
        print(
            f"one process, 10 policies, Check/s: grpc floor (canned answer) {floor['floor']:,.0f},"
            f" pdp {floor['pdp_1']:,.0f}; pdp / floor {floor['pdp_1'] / floor['floor']:.2f},"
            f" floor / Cerbos {floor['floor'] / cerbos:.2f}"
        )


if __name__ == "__main__":
    main()
