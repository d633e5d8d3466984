"""What pdp.client's verified channel costs: Check over grpc's own mTLS channel
(which cannot check the server's SPIFFE ID) vs through pdp.client (TLS terminated in
the client, the SPIFFE ID checked on the connection, grpc relayed over a private Unix
socket), against one `pdp serve --dev --no-audit`, in the same run.

    .venv/bin/python bench/client.py [--calls 3000] [--threads 8]

Prints calls/s and latency for sequential and concurrent calls, and the ratio of the
client to grpc's channel. The machine may be shared: read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pdp._proto.pdp.v1 import decision_pb2 as pb  # noqa: E402
from pdp.client import Client, ClientIdentity  # noqa: E402
from pdp.client.client import CHECK_METHOD  # noqa: E402

REQUEST = {
    "agent": "spiffe://acme.test/agent/support-bot",
    "server": "crm",
    "tool": "get_ticket",
    "arguments": {"ticket_id": "T-123"},
    "intent": {"purpose": "support.triage", "tools": ["crm/*"]},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    target = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "pdp.cli", "serve", "--dev", "--state-dir", str(state),
         "--listen", target, "--no-audit"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if b"try: " in line:
            return process, target
    sys.exit("bench/client.py: pdp serve did not start")


def measure(call: Callable[[], bool], calls: int, threads: int) -> tuple[float, float]:
    """(calls per second, median latency in ms); every answer must be an allow."""
    latencies: list[float] = []

    def one(_: int) -> None:
        started = time.perf_counter()
        if not call():
            raise SystemExit("bench/client.py: a call was not allowed")
        latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(calls)))
    elapsed = time.perf_counter() - began
    return calls / elapsed, statistics.median(latencies) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdp-bench-client-") as work:
        state = Path(work) / "state"
        process, target = start(state)
        try:
            credentials = grpc.ssl_channel_credentials(
                (state / "bundle.pem").read_bytes(),
                (state / "gateway.key").read_bytes(),
                (state / "gateway.pem").read_bytes(),
            )
            channel = grpc.secure_channel(
                target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
            )
            check = channel.unary_unary(
                CHECK_METHOD,
                request_serializer=pb.CheckRequest.SerializeToString,
                response_deserializer=pb.CheckResponse.FromString,
            )
            from google.protobuf import json_format

            message = json_format.ParseDict(REQUEST, pb.CheckRequest())
            identity = ClientIdentity.dev(state)
            client = Client(target, identity)

            def direct() -> bool:
                return bool(check(message, timeout=10).decision == pb.DECISION_ALLOW)

            def verified() -> bool:
                return client.check(REQUEST).allowed

            for warm in (direct, verified):
                measure(warm, 200, args.threads)
            print("pdp.client vs grpc's own mTLS channel, Check, pdp serve --dev --no-audit")
            print("(one run on this machine, which may be shared with other work)")
            for threads in (1, args.threads):
                base_rate, base_p50 = measure(direct, args.calls, threads)
                rate, p50 = measure(verified, args.calls, threads)
                print(
                    f"  {threads} thread(s): grpc channel {base_rate:8.0f} calls/s"
                    f" p50 {base_p50:6.2f} ms | pdp.client {rate:8.0f} calls/s"
                    f" p50 {p50:6.2f} ms | ratio {rate / base_rate:4.2f}"
                )
            client.close()
            identity.close()
            channel.close()
        finally:
            process.terminate()
            process.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
