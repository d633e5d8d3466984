"""What the audit stream costs the decision service: audit off, file async, file sync, NATS.

    .venv/bin/python bench/service.py [--seconds 1] [--rounds 4] [--batch-rounds 2]
                                      [--batch 64] [--modes off,async,sync,nats]
                                      [--baseline-src DIR] [--json]

Starts one ``pdp serve`` subprocess per audit mode, all in the same run, on the same
10-policy set and request as bench/compare.py (dev CA, loopback mTLS):

- ``off``:   ``--no-audit``
- ``async``: the file log, ``--audit-mode async`` (answers once the record is queued)
- ``sync``:  the file log, ``--audit-mode sync``, the default (no answer before its
  record is on disk; one write and one fdatasync per group of records)
- ``nats``:  file async plus ``--nats`` to a real ``nats-server -js`` started here on a
  free loopback port with its own store dir

and loads each with h2load (``-c 4 -m 16`` for ``Check``, ``-m 4`` for ``CheckBatch``;
pre-encoded gRPC bodies, client certificate through bench/h2load_client_cert.c; the
helpers come from bench/compare.py): a Python client would take the 2 cores of this
machine from the server. Each load is about ``--seconds`` long; ``off`` is loaded
before the first mode and after every mode (off, async, off, sync, off, nats, off; the
order of the modes rotates), ``--rounds`` times for ``Check`` and ``--batch-rounds``
times for ``CheckBatch``. A mode's ratio is its decisions/s over the mean of the two
``off`` loads around it, so that load from elsewhere on a shared machine hits both
sides alike; the figure printed is the median over the rounds. After each load the
bench waits until the server (and nats-server) is idle again, so no mode pays for
another's backlog; the server CPU per decision counts that tail (the writer and the
shipper catching up). Printed: median decisions/s, p50/p99, server CPU per decision and
the ratio to ``off``; beside them the engine in-process (``decide_json``,
``decide_batch``).

``--baseline-src DIR`` also runs every mode from another source tree (say a git worktree
of an earlier commit; ``PYTHONPATH=DIR``), as rows ``<mode>@base``, in the same run: a
before/after comparison with ratios to this tree's ``off``.

h2load only sees HTTP status, and a fail-closed answer (``audit_unavailable``) is a fast
deny: so after the load every server is stopped and its log is checked with
``pdp audit verify --require-sealed``; it must hold exactly one decision record per
decision answered, and the NATS stream every line of the log. A mode that failed closed
under load shows there (exit status 1) instead of looking fast. Default run < 90 s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.compare import (  # noqa: E402
    ensure_h2load,
    ensure_shim,
    free_port,
    gateway_credentials,
    grpc_frame,
    h2load,
    pdp_policies,
    pdp_request,
    rss_mb,
    wait_ready,
)

PYTHON = REPO / ".venv" / "bin" / "python"
NATS_SERVER = "/usr/sbin/nats-server"
POLICIES = 10
MODES = ("off", "async", "sync", "nats")
CONNECTIONS, STREAMS, BATCH_STREAMS = 4, 16, 4


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- servers ---------------------------------------------------------------------------


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str

    @classmethod
    def start(cls, store: Path) -> NatsServer:
        port = free_port()
        process = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("nats-server exited at start")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return cls(process, f"nats://127.0.0.1:{port}")
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise RuntimeError("nats-server did not start listening")

    def stream_messages(self, stream: str = "PDP_AUDIT") -> int:
        import asyncio

        import nats

        async def count() -> int:
            nc = await nats.connect(self.url)
            try:
                info = await nc.jetstream().stream_info(stream)
                return int(info.state.messages)
            finally:
                await nc.close()

        return asyncio.run(count())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Pdp:
    name: str  # mode, or mode@base
    mode: str
    process: subprocess.Popen[bytes]
    port: int
    audit_dir: Path | None
    nats: NatsServer | None = None  # its own nats-server (nats mode)
    source: Path | None = None  # the tree it runs from (None: this one)
    sent: int = 0  # decisions answered (readiness checks, warm-up and load)
    rate: dict[str, float] = field(default_factory=dict)  # last calls/s per method
    rows: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/pdp.v1.DecisionService/"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.exit_code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait(5)


def write_config(work: Path, policies: Path, state: Path) -> Path:
    config = work / "pdp.yaml"
    config.write_text(
        json.dumps(
            {
                "policies": str(policies),
                "identity": {"source": "dev", "state_dir": str(state)},
                "callers": [
                    {"id": "spiffe://pdp.dev/gateway/*", "agents": ["spiffe://acme.test/*"]}
                ],
                "rate_limit": {"enabled": False},
            }
        )
    )
    return config


def start_pdp(name: str, mode: str, work: Path, config: Path, source: Path | None) -> Pdp:
    home = work / name  # its own cwd (the policy archive goes to the dev state dir)
    home.mkdir()
    port = free_port()
    command = [str(PYTHON), "-m", "pdp.cli", "serve", "--config", str(config)]
    command += ["--listen", f"127.0.0.1:{port}"]
    audit_dir: Path | None = home / "audit"
    nats = None
    if mode == "off":
        command.append("--no-audit")
        audit_dir = None
    else:
        command += ["--audit-dir", str(audit_dir)]
        command += ["--audit-mode", "sync" if mode == "sync" else "async"]
    if mode == "nats":
        nats = NatsServer.start(home / "nats-store")
        command += ["--nats", nats.url]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(source or REPO)
    process = subprocess.Popen(
        command, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Pdp(name, mode, process, port, audit_dir, nats, source)


def check_answers(server: Pdp, state: Path) -> None:
    """Waits until the server allows the request with intent; it must deny without."""
    import grpc
    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2 as pb

    with grpc.secure_channel(f"127.0.0.1:{server.port}", gateway_credentials(state)) as channel:
        check = channel.unary_unary(
            "/pdp.v1.DecisionService/Check",
            request_serializer=pb.CheckRequest.SerializeToString,
            response_deserializer=pb.CheckResponse.FromString,
        )

        def answer(intent: bool) -> int:
            message = json_format.ParseDict(pdp_request(POLICIES, intent), pb.CheckRequest())
            decision = int(check(message, timeout=5).decision)
            server.sent += 1
            return decision

        wait_ready(lambda: answer(True) == pb.DECISION_ALLOW, server.process)
        if answer(False) != pb.DECISION_DENY:
            raise RuntimeError(f"{server.name}: a request without intent must be denied")


# --- load ------------------------------------------------------------------------------


def settle(pids: list[int], timeout: float = 10.0) -> None:
    """Waits until the processes use under 10 % of a core (say a writer or shipper
    catching up after the load), so that the next load has the machine to itself."""
    deadline = time.monotonic() + timeout
    before = sum(cpu_seconds(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = sum(cpu_seconds(pid) for pid in pids)
        if now - before <= 0.02 * len(pids):
            return
        before = now


def load(
    tools: dict[str, Any],
    server: Pdp,
    method: str,
    body: bytes,
    per_call: int,
    seconds: float,
    others: list[int],
) -> dict[str, float]:
    streams = STREAMS if method == "Check" else BATCH_STREAMS
    calls = max(200 if method == "Check" else 40, int(server.rate[method] * seconds))
    cpu_before = cpu_seconds(server.process.pid)
    result = h2load(
        tools["h2"], tools["shim"], tools["state"], server.url + method, body, calls,
        CONNECTIONS, streams,
    )  # fmt: skip
    settle([server.process.pid, *others])
    cpu = cpu_seconds(server.process.pid) - cpu_before
    server.sent += calls * per_call
    server.rate[method] = result["rps"]
    return {
        "decisions_per_s": result["rps"] * per_call,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "cpu_us_per_decision": cpu * 1e6 / (calls * per_call),
    }


def in_process(policies: Path, seconds: float, batch: int) -> dict[str, float]:
    from pdp.engine import Engine, load_policies
    from pdp.model import parse_request

    engine = Engine(load_policies(policies))
    data = {**pdp_request(POLICIES), "gateway": "spiffe://pdp.dev/gateway/dev"}
    now = datetime.now(UTC)
    requests = [parse_request(data, now=now)] * batch

    def rate(call: Any, per_call: int) -> float:
        for _ in range(20):
            call()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            call()
            count += 1
        return count * per_call / (time.perf_counter() - started)

    return {
        "decide_json": rate(lambda: engine.decide_json(data, now=now), 1),
        "decide_batch": rate(lambda: engine.decide_batch(requests), batch),
    }


# --- after the load: nothing lost ------------------------------------------------------


def log_counts(audit_dir: Path) -> tuple[int, int]:
    """(decision records, lines) in a log dir."""
    records = lines = 0
    for path in audit_dir.glob("audit-*.jsonl"):
        data = path.read_bytes()
        records += data.count(b'"kind":"decision"')
        lines += data.count(b"\n")
    return records, lines


def audit_check(server: Pdp, shipped: int | None) -> tuple[bool, str]:
    """``pdp audit verify`` on the stopped server's log: it must be sealed and hold
    exactly the decisions answered; with NATS, the stream must hold every line."""
    if server.audit_dir is None:
        return True, "-"
    command = [str(PYTHON), "-m", "pdp.cli", "audit", "verify", "--require-sealed"]
    # Each log is verified by the pdp that wrote it (a baseline's log format may differ).
    env = {**os.environ, "PYTHONPATH": str(server.source or REPO)}
    verify = subprocess.run(
        [*command, str(server.audit_dir)],
        cwd=server.source or REPO,  # python -m puts the cwd first on sys.path
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    records, lines = log_counts(server.audit_dir)
    if verify.returncode != 0:
        return False, f"VERIFY FAILED: {(verify.stdout + verify.stderr).strip()[-300:]}"
    if server.exit_code != 0:
        return False, f"pdp serve exited with {server.exit_code}"
    text = f"verified, sealed: {records} decision records for {server.sent} decisions"
    ok = records == server.sent
    if shipped is not None:
        ok = ok and shipped == lines
        text += f"; NATS stream: {shipped} messages for {lines} lines"
    return ok, text + ("" if ok else "  << MISMATCH")


# --- main ------------------------------------------------------------------------------


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help="off is always measured")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one load")
    parser.add_argument("--rounds", type=int, default=4, help="Check loads per mode")
    parser.add_argument("--batch-rounds", type=int, default=2, help="CheckBatch loads per mode")
    parser.add_argument("--batch", type=int, default=64, help="requests per CheckBatch")
    parser.add_argument("--warmup", type=int, default=1000, help="Check calls before measuring")
    parser.add_argument("--baseline-src", type=Path, help="also run every mode from this tree")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    modes = ["off", *(m for m in args.modes.split(",") if m and m != "off")]
    if set(modes) - set(MODES):
        parser.error(f"unknown modes: {sorted(set(modes) - set(MODES))}")
    if args.baseline_src and not (args.baseline_src / "pdp" / "cli.py").exists():
        parser.error(f"--baseline-src {args.baseline_src}: no pdp/cli.py there")
    started = time.monotonic()
    tools: dict[str, Any] = {"h2": ensure_h2load(), "shim": ensure_shim()}

    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2 as pb
    from pdp.identity.devca import ensure_dev_state

    single = json_format.ParseDict(pdp_request(POLICIES), pb.CheckRequest())
    bodies = {
        "Check": (grpc_frame(single.SerializeToString()), 1),
        "CheckBatch": (
            grpc_frame(pb.CheckBatchRequest(requests=[single] * args.batch).SerializeToString()),
            args.batch,
        ),
    }
    variants: list[tuple[str, str, Path | None]] = [(m, m, None) for m in modes]
    if args.baseline_src:
        variants += [(f"{m}@base", m, args.baseline_src.resolve()) for m in modes]

    with tempfile.TemporaryDirectory(prefix="pdp-bench-") as scratch:
        work = Path(scratch)
        tools["state"] = state = work / "state"
        ensure_dev_state(state)
        policies = work / "policies"
        pdp_policies(policies, POLICIES)
        config = write_config(work, policies, state)
        engine = in_process(policies, 1.5, args.batch)

        servers: dict[str, Pdp] = {}
        try:
            for name, mode, source in variants:
                servers[name] = start_pdp(name, mode, work, config, source)
            others = [s.nats.process.pid for s in servers.values() if s.nats]
            for server in servers.values():
                check_answers(server, state)
                warm = h2load(
                    tools["h2"], tools["shim"], state, server.url + "Check",
                    bodies["Check"][0], args.warmup, CONNECTIONS, STREAMS,
                )  # fmt: skip
                server.sent += args.warmup
                server.rate = {"Check": warm["rps"], "CheckBatch": warm["rps"] / args.batch * 4}
                settle([server.process.pid, *others])
            rss = {name: rss_mb(server.process.pid) for name, server in servers.items()}
            others_names = [name for name in servers if name != "off"]
            counts = {"Check": args.rounds, "CheckBatch": args.batch_rounds}
            for round_ in range(max(counts.values())):
                # off between every two modes: each mode is compared with the off loads
                # just before and after it. The order rotates from round to round.
                turn = round_ % len(others_names)
                order = others_names[turn:] + others_names[:turn]
                for method, count in counts.items():
                    if round_ >= count:
                        continue
                    body, per_call = bodies[method]
                    off = servers["off"]
                    before = load(tools, off, method, body, per_call, args.seconds, others)
                    off.rows.setdefault(method, []).append(before)
                    for name in order:
                        server = servers[name]
                        row = load(tools, server, method, body, per_call, args.seconds, others)
                        after = load(tools, off, method, body, per_call, args.seconds, others)
                        off.rows[method].append(after)
                        pair = (before["decisions_per_s"] + after["decisions_per_s"]) / 2
                        row["ratio_to_off"] = row["decisions_per_s"] / pair
                        server.rows.setdefault(method, []).append(row)
                        before = after
                print(f"  round {round_ + 1} done", file=sys.stderr, flush=True)
            for server in servers.values():
                server.stop()
            checks: dict[str, tuple[bool, str]] = {}
            for name, server in servers.items():
                shipped = server.nats.stream_messages() if server.nats else None
                checks[name] = audit_check(server, shipped)
        finally:
            for server in servers.values():
                if server.exit_code is None:
                    server.stop()
                if server.nats:
                    server.nats.stop()

    print(
        f"\npdp serve, {POLICIES} policies, loopback mTLS, h2load -c {CONNECTIONS}; Check -m"
        f" {STREAMS}, {args.rounds} loads per mode; CheckBatch of {args.batch} -m"
        f" {BATCH_STREAMS}, {args.batch_rounds} loads; ~{args.seconds:g} s per load;"
        f" os.cpu_count()={os.cpu_count()}"
    )
    figures: dict[str, Any] = {"engine": engine, "rss_mb": rss, "checks": checks}
    for method in ("Check", "CheckBatch"):
        print(
            f"\n{method:22}{'decisions/s':>12}{'/ off':>7}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'server CPU us/decision':>24}"
        )
        for name, server in servers.items():
            row = summary(server.rows[method])
            row.setdefault("ratio_to_off", 1.0)
            figures[f"{name} {method}"] = row
            print(
                f"  {name:20}{row['decisions_per_s']:12,.0f}{row['ratio_to_off']:7.2f}"
                f"{row['p50_ms']:8.1f}{row['p99_ms']:8.1f}{row['cpu_us_per_decision']:24.0f}"
            )
    off = summary(servers["off"].rows["Check"])["decisions_per_s"]
    off_batch = summary(servers["off"].rows["CheckBatch"])["decisions_per_s"]
    print(
        f"\nin-process: decide_json {engine['decide_json']:,.0f}/s, decide_batch"
        f" {engine['decide_batch']:,.0f}/s; off Check / decide_json"
        f" {off / engine['decide_json']:.2f}, off CheckBatch / decide_batch"
        f" {off_batch / engine['decide_batch']:.2f}"
    )
    print("RSS after warm-up: " + ", ".join(f"{m} {v:.0f} MB" for m, v in rss.items()))
    print("audit logs after stop:")
    for name, (_, text) in checks.items():
        print(f"  {name:12} {text}")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
