"""A legitimate caller beside each attack: its success rate, p50/p99, and recovery.

    .venv/bin/python bench/abuse.py [--seconds 5] [--rate 50] [--attacks a,b,...]
                                    [--baseline-src DIR] [--json]

Starts ``pdp serve`` (dev CA, file audit log in async mode, loopback mTLS) with the
open-file soft limit at 1,024 (a common default: pdp raises it to the hard limit
itself), connects a legitimate gateway that makes ``--rate`` Check calls per second over
one connection, and runs each attack for ``--seconds`` in a child process of its own
(so that it does not share this process's interpreter with the legitimate caller):

- ``none``:       no attack (the reference)
- ``stalled``:    4 connections x 100 Check streams that never send their message
- ``oversized``:  2 callers sending Checks with 150,000 keys in ``arguments`` (3 MB)
- ``raw``:        1,200 TCP connections that never speak TLS
- ``handshake``:  300 connections that send a ClientHello and stop
- ``idle``:       300 mTLS connections that make no call

The attackers hold SVIDs of their own, on the ``callers`` list. Printed per attack: the
legitimate caller's calls, success rate, p50 and p99 of its successful calls, the time a
call on a new connection opened halfway through the attack took to succeed ("failed"
after 5 s), and the time from the end of the attack until a call on a new connection
succeeds (recovery).
``--baseline-src DIR`` runs the same from another source tree (say a git worktree of an
earlier commit; ``PYTHONPATH=DIR``) in the same run: before and after side by side.
Figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.compare import free_port  # noqa: E402
from tests.service import abuse  # noqa: E402

PYTHON = Path(sys.executable)
TRUST_DOMAIN = "pdp.dev"
ATTACKER_ID = f"spiffe://{TRUST_DOMAIN}/gateway/attacker"
REQUEST = REPO / "policies" / "examples" / "requests" / "support-get-ticket.json"
ATTACKS = ("none", "stalled", "oversized", "raw", "handshake", "idle")


def write_state(state: Path) -> None:
    """A dev CA in the layout ``pdp serve --dev`` reuses, plus an attacker's SVID."""
    from pdp.identity.devca import DevCA, DevState, key_pem

    state.mkdir(mode=0o700, parents=True)
    layout = DevState(state, TRUST_DOMAIN)
    ca = DevCA.create(TRUST_DOMAIN)
    (state / "ca.key").write_bytes(key_pem(ca.key))
    layout.bundle_file.write_bytes(ca.bundle_pem)
    issued = {
        "server": ca.issue_svid(
            layout.server_id, dns_names=("localhost",), ip_addresses=("127.0.0.1",)
        ),
        "gateway": ca.issue_svid(layout.gateway_id),
        "attacker": ca.issue_svid(ATTACKER_ID),
    }
    for name, svid in issued.items():
        (state / f"{name}.pem").write_bytes(svid.chain_pem)
        (state / f"{name}.key").write_bytes(svid.key_pem)
        os.chmod(state / f"{name}.key", 0o600)


def credentials(state: Path, name: str) -> Any:
    import grpc

    return grpc.ssl_channel_credentials(
        (state / "bundle.pem").read_bytes(),
        (state / f"{name}.key").read_bytes(),
        (state / f"{name}.pem").read_bytes(),
    )


def write_config(work: Path, state: Path) -> Path:
    config = work / "pdp.yaml"
    config.write_text(
        json.dumps(
            {
                "policies": str(REPO / "policies"),
                "identity": {"source": "dev", "state_dir": str(state)},
                "callers": [
                    {"id": f"spiffe://{TRUST_DOMAIN}/gateway/*", "agents": ["spiffe://acme.test/*"]}
                ],
            }
        )
    )
    return config


def common_limit() -> None:
    """In the server's child: the open-file soft limit many hosts start with."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def start_server(name: str, work: Path, config: Path, source: Path) -> tuple[Any, int]:
    home = work / name
    home.mkdir()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(source))
    process = subprocess.Popen(
        [
            *(str(PYTHON), "-m", "pdp.cli", "serve", "--config", str(config)),
            *("--listen", f"127.0.0.1:{port}", "--audit-dir", str(home / "audit")),
        ],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "stderr.log", "wb"),  # noqa: SIM115  # the child keeps it
        preexec_fn=common_limit,
    )
    return process, port


def checker(address: str, state: Path) -> tuple[Any, Any]:
    import grpc

    from pdp._proto.pdp.v1 import decision_pb2 as pb
    from pdp.service.servicer import CHECK_METHOD

    channel = grpc.secure_channel(address, credentials(state, "gateway"))
    call = channel.unary_unary(
        CHECK_METHOD,
        request_serializer=pb.CheckRequest.SerializeToString,
        response_deserializer=pb.CheckResponse.FromString,
    )
    return channel, lambda request, timeout: call(request, timeout=timeout)


def wait_ready(address: str, state: Path, request: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        channel, check = checker(address, state)
        try:
            check(request, 2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            channel.close()


def run_attack(name: str, address: str, state: str, seconds: float) -> None:
    """The attack ``name`` for ``seconds``, in a child process."""
    host, _, port = address.rpartition(":")
    attacker = credentials(Path(state), "attacker")
    attack = {
        "stalled": lambda: abuse.stalled_streams(address, attacker, connections=4, streams=100),
        "oversized": lambda: abuse.oversized_messages(address, attacker, callers=2),
        "raw": lambda: abuse.raw_connections(host, int(port), count=1200),
        "handshake": lambda: abuse.slow_handshakes(host, int(port), count=300),
        "idle": lambda: abuse.idle_tls_connections(address, attacker, count=300),
    }[name]()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    attack(stop)


def recovery(address: str, state: Path, request: Any, limit: float = 30.0) -> float:
    """Seconds until a Check on a new connection succeeds."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        channel, check = checker(address, state)
        try:
            check(request, limit)
            return time.monotonic() - started
        except Exception:
            time.sleep(0.05)
        finally:
            channel.close()
    return float("inf")


def measure(
    name: str, source: Path, args: argparse.Namespace, work: Path, state: Path
) -> list[dict[str, Any]]:
    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2 as pb

    request = json_format.ParseDict(json.loads(REQUEST.read_text()), pb.CheckRequest())
    config = write_config(work, state) if not (work / "pdp.yaml").exists() else work / "pdp.yaml"
    process, port = start_server(name, work, config, source)
    address = f"127.0.0.1:{port}"
    rows = []
    try:
        wait_ready(address, state, request)
        channel, check = checker(address, state)
        check(request, 10)  # connected before any attack
        spawn = multiprocessing.get_context("spawn")
        for attack in args.attacks:
            child = None
            if attack != "none":
                child = spawn.Process(
                    target=run_attack, args=(attack, address, str(state), args.seconds + 1.0)
                )
                child.start()
                time.sleep(1.0)  # under way
            # Halfway through, a new connection tries one call (5 s to succeed).
            fresh: list[float] = []
            probe = threading.Timer(
                args.seconds / 2,
                lambda into=fresh: into.append(recovery(address, state, request, limit=5.0)),
            )
            probe.start()
            outcome = abuse.under_attack(
                None, check, request, seconds=args.seconds, rate=args.rate, warmup=0
            )
            probe.join()
            if child is not None:
                child.join(60)
                if child.is_alive():
                    child.kill()
            rows.append(
                {
                    "tree": name,
                    "attack": attack,
                    "calls": outcome.calls,
                    "success": outcome.success_rate,
                    "p50_ms": 1000 * _quantile(outcome.latencies, 0.5),
                    "p99_ms": 1000 * outcome.p99(),
                    "failures": outcome.failures,
                    "new_connection_s": fresh[0] if fresh else float("inf"),
                    "recovery_s": recovery(address, state, request),
                }
            )
            _print_row(rows[-1])
        channel.close()
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return rows


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _seconds(value: float) -> str:
    return "failed" if value == float("inf") else f"{value:.2f}"


def _print_row(row: dict[str, Any]) -> None:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(row["failures"].items())) or "-"
    print(
        f"{row['tree']:<7} {row['attack']:<10} {row['calls']:>6} {100 * row['success']:>8.1f}%"
        f" {row['p50_ms']:>8.1f} {row['p99_ms']:>9.1f} {_seconds(row['new_connection_s']):>9}"
        f" {row['recovery_s']:>9.2f}  {failures}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--baseline-src", type=Path, help="also run from this source tree")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(
            f"--attacks: unknown {', '.join(sorted(unknown))} (known: {', '.join(ATTACKS)})"
        )
    if args.baseline_src and not (args.baseline_src / "pdp" / "cli.py").exists():
        parser.error(f"--baseline-src {args.baseline_src}: no pdp/cli.py there")
    trees = [("after", REPO)]
    if args.baseline_src:
        trees.insert(0, ("before", args.baseline_src.resolve()))
    print(
        f"legitimate caller: {args.rate:g} Check/s over one connection; {args.seconds:g} s per"
        " attack; server open-file soft limit 1,024 at start (shared machine: figures vary)"
    )
    print(
        f"{'tree':<7} {'attack':<10} {'calls':>6} {'success':>9} {'p50 ms':>8} {'p99 ms':>9}"
        f" {'new conn':>9} {'recover s':>9}  failures"
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pdp-abuse-") as tmp:
        work = Path(tmp)
        state = work / "state"
        write_state(state)
        for name, source in trees:
            rows += measure(name, source, args, work, state)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
