"""The decision service over loopback mTLS against the engine in-process, same run.

    .venv/bin/python bench/service.py [--seconds 6] [--clients 2] [--threads 4] [--batch 64]
                                      [--no-aio]

Starts ``pdp serve`` (the grpc sync server) as a subprocess on the example policies
with a dev CA, loads it from ``--clients`` client processes with ``--threads`` threads
each (one mTLS channel per process), and prints decisions/s and per-call p50/p99 for
``Check`` and ``CheckBatch``, beside the engine's in-process decisions/s for the same
request (``Engine.decide_json`` one by one, ``Engine.decide_batch``), and the ratios.
Then, unless ``--no-aio``, the same through a ``grpc.aio`` server built from the same
pdp.service parts (authentication, rate limit, decision core), to compare the two.

Client and server share the machine (2 cores here), so absolute figures understate a
server with cores of its own; the ratios are what to compare. Default run < 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pdp.service  # noqa: E402, F401  (sets grpc's TLS 1.2 cipher list before grpc loads)

REQUEST_FILE = REPO / "policies" / "examples" / "requests" / "support-get-ticket.json"
CALLER_PATTERN = "spiffe://pdp.dev/gateway/*"
AGENTS = ["spiffe://acme.test/*", "spiffe://partner.test/*"]


# --- servers ------------------------------------------------------------------------


def write_config(work: Path, state: Path, server_threads: int | None) -> Path:
    config = work / "pdp.yaml"
    config.write_text(
        json.dumps(
            {
                "listen": "127.0.0.1:0",
                "policies": str(REPO / "policies"),
                "identity": {"source": "dev", "state_dir": str(state)},
                "callers": [{"id": CALLER_PATTERN, "agents": AGENTS}],
                "rate_limit": {"enabled": False},
                "limits": {"max_batch": 1024},
                "server": {"threads": server_threads} if server_threads else {},
            }
        )
    )
    return config


def start_server(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            address = line.split("listening on ", 1)[1].split()[0]
            # Keep draining stdout so the server never blocks on a full pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, address
    process.kill()
    raise RuntimeError(f"server did not start: {command}")


def stop_server(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def serve_aio(config_file: str) -> None:
    """A grpc.aio server with the same parts as DecisionServer (bench only)."""
    import grpc

    from pdp._proto.pdp.v1 import decision_pb2 as pb
    from pdp.audit.ids import new_decision_id
    from pdp.engine import Engine, load_policies
    from pdp.identity.peer import PeerVerifier
    from pdp.service import load_config, open_identity
    from pdp.service.gate import CallerGate, CallerPolicy, RateLimiter, Refused
    from pdp.service.servicer import SERVICE_NAME, DecisionCore, FixedEngine
    from pdp.service.sink import NullSink
    from pdp.service.tls import RotatingServerCredentials

    config = load_config(config_file)
    engine = Engine(load_policies(config.policies), config.limits.request)
    identity = open_identity(config.identity)
    credentials = RotatingServerCredentials(identity)
    gate = CallerGate(
        PeerVerifier(lambda: identity.current().bundles), CallerPolicy(config.callers)
    )
    limiter = RateLimiter(config.rate_limit)
    core = DecisionCore(FixedEngine(engine), NullSink(), new_id=new_decision_id)

    async def admit(context: Any, cost: int) -> Any:
        try:
            grant = gate.admit(context.auth_context())
        except Refused as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        if not limiter.take(grant.caller.spiffe_id, cost):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited")
        return grant

    async def check(data: bytes, context: Any) -> Any:
        started = time.perf_counter_ns()
        grant = await admit(context, 1)
        return core.decide((data,), grant, method="Check", started_ns=started, timeout=None)[0]

    async def check_batch(data: bytes, context: Any) -> Any:
        started = time.perf_counter_ns()
        batch = pb.CheckBatchRequest.FromString(data)
        grant = await admit(context, len(batch.requests))
        responses = core.decide(
            batch.requests, grant, method="CheckBatch", started_ns=started, timeout=None
        )
        return pb.CheckBatchResponse(responses=responses)

    async def main() -> None:
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", config.limits.max_message_bytes)]
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        "Check": grpc.unary_unary_rpc_method_handler(
                            check, response_serializer=pb.CheckResponse.SerializeToString
                        ),
                        "CheckBatch": grpc.unary_unary_rpc_method_handler(
                            check_batch,
                            response_serializer=pb.CheckBatchResponse.SerializeToString,
                        ),
                    },
                ),
            )
        )
        port = server.add_secure_port(config.listen, credentials.server_credentials())
        await server.start()
        print(f"aio: listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# --- load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    address: str
    state: str
    method: str  # "Check" | "CheckBatch"
    batch: int
    threads: int
    start_at: float  # wall-clock time.time() at which every client starts measuring
    seconds: float


def client_process(spec: LoadSpec, results: Any) -> None:
    """Runs in a child process: ``threads`` threads, one channel, closed loop."""
    import grpc
    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2 as pb

    state = Path(spec.state)
    credentials = grpc.ssl_channel_credentials(
        (state / "bundle.pem").read_bytes(),
        (state / "gateway.key").read_bytes(),
        (state / "gateway.pem").read_bytes(),
    )
    single = json_format.Parse(REQUEST_FILE.read_text(), pb.CheckRequest())
    if spec.method == "Check":
        payload = single.SerializeToString()
        decode: Any = pb.CheckResponse.FromString
    else:
        payload = pb.CheckBatchRequest(requests=[single] * spec.batch).SerializeToString()
        decode = pb.CheckBatchResponse.FromString
    per_call = 1 if spec.method == "Check" else spec.batch
    with grpc.secure_channel(spec.address, credentials) as channel:
        call = channel.unary_unary(
            f"/pdp.v1.DecisionService/{spec.method}",
            request_serializer=lambda b: b,
            response_deserializer=decode,
        )
        call(payload, timeout=30)  # connect and check once
        # Load from now on (warm-up); measure in the common window.
        start = time.monotonic() + (spec.start_at - time.time())
        end = start + spec.seconds
        latencies: list[list[float]] = [[] for _ in range(spec.threads)]
        errors = [0] * spec.threads

        def loop(index: int) -> None:
            mine = latencies[index]
            while True:
                before = time.monotonic()
                if before >= end:
                    return
                try:
                    call(payload, timeout=30)
                except grpc.RpcError:
                    errors[index] += 1
                    continue
                if before >= start:
                    mine.append(time.monotonic() - before)

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(spec.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    merged = [x for per_thread in latencies for x in per_thread]
    results.put({"latencies": merged, "errors": sum(errors), "per_call": per_call})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(spec: LoadSpec, clients: int, server_pid: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")  # no grpc state inherited by fork
    results = context.Queue()
    processes = [
        context.Process(target=client_process, args=(spec, results)) for _ in range(clients)
    ]
    for process in processes:
        process.start()
    time.sleep(max(0.0, spec.start_at - time.time()))
    cpu_before = cpu_seconds(server_pid)
    time.sleep(spec.seconds)
    server_cpu = cpu_seconds(server_pid) - cpu_before
    collected = [results.get(timeout=spec.seconds + 120) for _ in processes]
    for process in processes:
        process.join(30)
    latencies = sorted(x for c in collected for x in c["latencies"])
    calls = len(latencies)
    per_call = collected[0]["per_call"]
    return {
        "decisions_per_s": calls * per_call / spec.seconds,
        "calls_per_s": calls / spec.seconds,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(0.99 * (calls - 1))] * 1000 if latencies else float("nan"),
        "errors": float(sum(c["errors"] for c in collected)),
        "server_cores": server_cpu / spec.seconds,
        # What the server could do with one core of its own (clients share this machine).
        "decisions_per_server_cpu_s": calls * per_call / server_cpu if server_cpu else 0.0,
    }


# --- in-process ---------------------------------------------------------------------


def in_process(seconds: float, batch: int) -> dict[str, float]:
    from pdp.engine import Engine, load_policies
    from pdp.model import parse_request

    engine = Engine(load_policies(REPO / "policies"))
    data = json.loads(REQUEST_FILE.read_text())
    data["gateway"] = "spiffe://pdp.dev/gateway/dev"
    now = datetime.now(UTC)
    requests = [parse_request(data, now=now)] * batch

    def rate(call: Any, per_call: int) -> float:
        for _ in range(20):
            call()
        count, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            call()
            count += 1
        return count * per_call / (time.perf_counter() - started)

    return {
        "decide_json": rate(lambda: engine.decide_json(data, now=now), 1),
        "decide_batch": rate(lambda: engine.decide_batch(requests), batch),
    }


# --- main ---------------------------------------------------------------------------


def measure_server(
    name: str, command: list[str], state: Path, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    process, address = start_server(command)
    try:
        figures = {}
        for method, batch in (("Check", 1), ("CheckBatch", args.batch)):
            # Spawned clients need ~2 s to import and connect, then 1 s of warm-up.
            start_at = time.time() + 3.0
            spec = LoadSpec(
                address, str(state), method, batch, args.threads, start_at, args.seconds
            )
            figures[method] = run_load(spec, args.clients, process.pid)
            print(f"  {name:5} {method:10} done", file=sys.stderr, flush=True)
        return figures
    finally:
        stop_server(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per load")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per client process")
    parser.add_argument("--batch", type=int, default=64, help="requests per CheckBatch")
    parser.add_argument(
        "--server-threads", type=int, help="sync server thread pool (default: pdp's default)"
    )
    parser.add_argument("--no-aio", action="store_true", help="skip the grpc.aio comparison")
    parser.add_argument("--serve-aio", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_aio:
        serve_aio(args.serve_aio)
        return 0

    with tempfile.TemporaryDirectory(prefix="pdp-bench-") as scratch:
        work = Path(scratch)
        state = work / "state"
        from pdp.identity.devca import ensure_dev_state

        ensure_dev_state(state)
        config = write_config(work, state, args.server_threads)
        engine_rates = in_process(min(args.seconds, 3.0), args.batch)
        serve = [sys.executable, "-m", "pdp.cli", "serve", "--config", str(config)]
        servers = {"sync": measure_server("sync", serve, state, args)}
        if not args.no_aio:
            servers["aio"] = measure_server(
                "aio", [sys.executable, __file__, "--serve-aio", str(config)], state, args
            )

    in_flight = args.clients * args.threads
    print(
        f"\npdp decision service, loopback mTLS, example policies; {args.clients} client"
        f" processes x {args.threads} threads ({in_flight} calls in flight),"
        f" {args.seconds:g} s per row, CheckBatch of {args.batch}; os.cpu_count()={os.cpu_count()}"
    )
    print(
        f"\n{'':28}{'decisions/s':>12}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'server cores':>14}{'dec/server-cpu-s':>18}"
    )
    for name, figures in servers.items():
        for method, row in figures.items():
            print(
                f"{name + ' ' + method:28}{row['decisions_per_s']:12,.0f}"
                f"{row['calls_per_s']:10,.0f}{row['p50_ms']:9.2f}{row['p99_ms']:9.2f}"
                f"{row['errors']:8.0f}{row['server_cores']:14.2f}"
                f"{row['decisions_per_server_cpu_s']:18,.0f}"
            )
    print(f"{'in-process decide_json':28}{engine_rates['decide_json']:12,.0f}")
    print(f"{'in-process decide_batch':28}{engine_rates['decide_batch']:12,.0f}")

    sync = servers["sync"]
    print("\nratios")
    print(
        f"  sync Check / in-process decide_json:       "
        f"{sync['Check']['decisions_per_s'] / engine_rates['decide_json']:.2f}"
    )
    print(
        f"  sync CheckBatch / in-process decide_batch: "
        f"{sync['CheckBatch']['decisions_per_s'] / engine_rates['decide_batch']:.2f}"
    )
    print(
        f"  sync CheckBatch / sync Check:              "
        f"{sync['CheckBatch']['decisions_per_s'] / sync['Check']['decisions_per_s']:.2f}"
    )
    print(
        f"  per server CPU-second, Check / decide_json: "
        f"{sync['Check']['decisions_per_server_cpu_s'] / engine_rates['decide_json']:.2f}"
    )
    print(
        f"  per server CPU-second, CheckBatch / decide_batch: "
        f"{sync['CheckBatch']['decisions_per_server_cpu_s'] / engine_rates['decide_batch']:.2f}"
    )
    if "aio" in servers:
        for method in ("Check", "CheckBatch"):
            ratio = sync[method]["decisions_per_s"] / servers["aio"][method]["decisions_per_s"]
            print(f"  sync / aio, {method + ':':12}                 {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
