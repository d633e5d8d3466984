"""Engine scale: load time, decisions/s and resident memory from 100 to 100,000 policies.

    .venv/bin/python bench/engine.py [--sizes 100,1000,10000,100000] [--seconds 2]
                                     [--serve 100000] [--json]

For each policy count N the parent writes a policy directory (write_policies; the
inventory grows with N: N/4 agents in N/100 nested groups, N/500 servers of 8 tools
(4..200), tool input types differing between 50 server kinds; 60 % permits for one
agent on one server, 30 % permits for a group, 10 % forbids, most of them with
conditions), and a fresh child interpreter, so that sizes do not pollute each other,
loads it, decides and reports:

- load:    load_policies + Engine(...) + the first decision, in seconds
- reload:  the same as the service reloads (pdp.engine.runtime.build_engine: load,
           engine, the directory's test suites) while the first engine still serves
- single:  Engine.decide over a pool of 512 requests (many agents, servers and tools;
           allows and denies), warm subset cache, decisions/s (best of 3 rounds)
- batch:   Engine.decide_batch(100 requests from the same pool), decisions/s
- cold:    the first pass over the pool, every distinct (agent, server, tool) a
           subset-cache miss (index selection and a Cedar set built), decisions/s
- args:    single and batch decisions/s with argument validation (each tool's input
           schema, pdp.engine.arguments) on vs off, alternating rounds; ratio on/off
- raw:     cedarpy.is_authorized(one request, every policy in one set), for N up to
           --raw-max (Cedar evaluates every policy: ≈ 10 s per 100 calls at 100,000)
- RSS:     VmRSS after deciding and VmHWM (peak) of the child, MiB, and the peak
           after the reload (two policy sets alive)

Ratios are to the first size (100 by default), from the same run. Each child checks
a sample of its requests against unindexed evaluation (every policy in one Cedar set)
after its figures are taken.

--serve N (opt-in) starts ``pdp serve --no-audit`` on N policies with a dev CA and
reports its start time (until the first answered Check) and the server's VmRSS/VmHWM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
AGENT = "spiffe://acme.test/agent/a{}"
# Eight tools per server, in the cross-server action groups read / write / destructive.
TOOLS = (
    ("get", "read"),
    ("list", "read"),
    ("search", "read"),
    ("export", "read"),
    ("create", "write"),
    ("update", "write"),
    ("comment", "write"),
    ("delete", "destructive"),
)
# Servers of one kind share their tools' input types (like two deployments of one MCP
# server); each kind's tools differ from every other's: up to 50 * 8 = 400 distinct
# tool contexts.
SERVER_KINDS = 50
POOL_SIZE = 512
BATCH = 100
CHECKED = 16  # pool requests compared with unindexed evaluation per size


# --- the policy directory -------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The inventory for N policies: grows with N, like an organisation's would."""

    policies: int
    agents: int
    groups: int
    servers: int

    @classmethod
    def of(cls, count: int) -> Shape:
        return cls(
            policies=count,
            agents=max(10, count // 4),
            groups=max(4, count // 100),
            servers=max(4, min(200, count // 500)),
        )


def _schema(shape: Shape) -> str:
    lines = [
        "entity AgentGroup in [AgentGroup];",
        "entity Agent in [AgentGroup] { team?: String };",
        "entity McpServer { tools: Set<String>, reserved_for?: String };",
        "type Intent = { purpose: String, tools: Set<String>, expires_at?: Long };",
        "type ToolRef = { server: String, name: String, ref: String, server_wildcard: String };",
        "type AgentRef = { trust_domain: String, path: String };",
        "type Time = { epoch: Long, hour: Long, weekday: Long };",
        'action "read", "write", "destructive";',
        "action " + ", ".join(f'"srv{s}"' for s in range(shape.servers)) + ";",
    ]
    for s in range(shape.servers):
        kind = s % SERVER_KINDS
        for tool, group in TOOLS:
            lines.append(
                f'action "srv{s}/{tool}" in [Action::"srv{s}", Action::"{group}"] appliesTo {{\n'
                "  principal: [Agent], resource: [McpServer],\n"
                f"  context: {{ input: {{ id: String, limit?: Long, {tool}_{kind}?: String }},"
                " intent?: Intent, tool: ToolRef, agent: AgentRef, gateway: String,"
                " session: String, time: Time }\n"
                "};"
            )
    return "\n".join(lines) + "\n"


def _input_schema(tool: str, kind: int) -> dict[str, Any]:
    """The JSON Schema of a tool's input, the same shape as its Cedar declaration."""
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "maxLength": 64},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            f"{tool}_{kind}": {"type": "string"},
        },
        "required": ["id"],
    }


def _inventory(shape: Shape) -> dict[str, Any]:
    groups = {f"g{g}": {"parents": [f"g{g // 8}"]} if g >= 8 else {} for g in range(shape.groups)}
    agents: dict[str, Any] = {}
    for a in range(shape.agents):
        member = [f"g{a % shape.groups}"]
        second = f"g{(a * 7 + 3) % shape.groups}"
        if a % 3 == 0 and second not in member:
            member.append(second)
        agents[AGENT.format(a)] = {"groups": member, "attrs": {"team": f"t{a % 50}"}}
    servers = {
        f"srv{s}": {
            "tools": {
                tool: {"groups": [group], "input_schema": _input_schema(tool, s % SERVER_KINDS)}
                for tool, group in TOOLS
            }
        }
        for s in range(shape.servers)
    }
    return {"agent_groups": groups, "agents": agents, "servers": servers}


_CONDITIONS = (
    "",
    '\nwhen { context.input.id like "T-*" }',
    "\nwhen { context.time.hour >= 6 && context.time.hour < 22 }",
    '\nwhen { context has intent && context.intent.purpose == "triage" }',
)


def _policies(shape: Shape) -> tuple[dict[str, list[str]], list[tuple[int, int, str]]]:
    """Policy texts by file (one file per server, group-wide forbids apart) and the
    (agent, server, tool) of every agent grant (requests are drawn from those)."""
    rng = random.Random(shape.policies)
    files: dict[str, list[str]] = {}
    grants: list[tuple[int, int, str]] = []
    for i in range(shape.policies):
        kind = i % 10
        s = rng.randrange(shape.servers)
        server = f"srv{s}"
        condition = rng.choice(_CONDITIONS)
        if kind < 6:  # one agent, one server: a tool, the whole server or a few tools
            agent = rng.randrange(shape.agents)
            style = rng.randrange(4)
            tool = rng.choice(TOOLS)[0]
            if style < 2:
                action = f'action == Action::"{server}/{tool}"'
            elif style == 2:
                action = f'action in Action::"{server}"'
            else:
                other = rng.choice(TOOLS)[0]
                action = f'action in [Action::"{server}/{tool}", Action::"{server}/{other}"]'
            grants.append((agent, s, tool))
            text = (
                f'@id("grant.{i}")\n@reason("agent a{agent} works with {server}")\n'
                f'permit (principal == Agent::"{AGENT.format(agent)}", {action},'
                f' resource == McpServer::"{server}"){condition};'
            )
            name = f"servers/{server}.cedar"
        elif kind < 9:  # a group, a server, an action group or one tool
            group = rng.randrange(shape.groups)
            choice = rng.randrange(3)
            action = (
                'action in Action::"read"',
                'action in Action::"write"',
                f'action == Action::"{server}/{rng.choice(TOOLS)[0]}"',
            )[choice]
            text = (
                f'@id("group.{i}")\n@reason("group g{group} uses {server}")\n'
                f'permit (principal in AgentGroup::"g{group}", {action},'
                f' resource == McpServer::"{server}"){condition};'
            )
            name = f"servers/{server}.cedar"
        elif rng.randrange(2):  # a group may not destroy anything outside ops sessions
            group = rng.randrange(shape.groups)
            text = (
                f'@id("guard.{i}")\n@reason("g{group}: destructive tools in ops sessions only")\n'
                f'forbid (principal in AgentGroup::"g{group}", action in Action::"destructive",'
                ' resource)\nunless { context.session like "ops-*" };'
            )
            name = "guards.cedar"
        else:  # an agent is off a server at weekends
            agent = rng.randrange(shape.agents)
            text = (
                f'@id("guard.{i}")\n@reason("a{agent} is off {server} at weekends")\n'
                f'forbid (principal == Agent::"{AGENT.format(agent)}", action,'
                f' resource == McpServer::"{server}")\nwhen {{ context.time.weekday >= 5 }};'
            )
            name = f"servers/{server}.cedar"
        files.setdefault(name, []).append(text)
    return files, grants


def write_policies(root: Path, count: int) -> list[dict[str, Any]]:
    """Writes a policy directory of ``count`` author policies (plus the built-in floor)
    and returns a pool of requests for it."""
    shape = Shape.of(count)
    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.cedarschema").write_text(_schema(shape))
    (root / "entities.json").write_text(json.dumps(_inventory(shape), indent=1))
    files, grants = _policies(shape)
    for name, texts in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n\n".join(texts) + "\n")
    rng = random.Random(-count)
    pool = []
    for n in range(POOL_SIZE):
        agent, s, tool = rng.choice(grants)
        if n % 4 == 3:  # another tool of the server: mostly a deny
            tool = rng.choice(TOOLS)[0]
        pool.append(
            {
                "agent": AGENT.format(agent),
                "server": f"srv{s}",
                "tool": tool,
                # Valid for the tool's input schema (_input_schema), so that the check
                # runs in full: the id, a bound integer and the kind's own string.
                "arguments": {
                    "id": "T-123" if n % 5 else "X-1",
                    "limit": 1 + n % 100,
                    f"{tool}_{s % SERVER_KINDS}": "free text, with ünïcödé",
                },
                "intent": {"purpose": "triage" if n % 3 else "audit", "tools": [f"srv{s}/*"]},
                "session": "ops-1" if n % 7 == 0 else "s-1",
                "time": "2026-11-23T10:00:00Z" if n % 11 else "2026-11-28T23:00:00Z",
            }
        )
    return pool


# --- measuring ---------------------------------------------------------------------------


def measure(
    call: Callable[[], Any], seconds: float, per_call: int = 1, rounds: int = 3
) -> dict[str, float]:
    """Decisions/s of ``call``: the best of ``rounds`` rounds (other processes share the
    machine; the best round is the least disturbed), p50/p99 over all calls."""
    for _ in range(20):  # warm-up
        call()
    samples: list[int] = []
    best = 0.0
    clock = time.perf_counter_ns
    for _ in range(rounds):
        taken: list[int] = []
        deadline = time.perf_counter() + seconds / rounds
        while time.perf_counter() < deadline:
            start = clock()
            call()
            taken.append(clock() - start)
        best = max(best, len(taken) * per_call / (sum(taken) / 1e9))
        samples += taken
    samples.sort()
    return {
        "rate": best,
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e3,
        "calls": len(samples),
    }


def memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def child(directory: Path, pool_file: Path, seconds: float, raw_max: int) -> dict[str, Any]:
    """One size, in a fresh interpreter: the figures, then the equivalence check."""
    import cedarpy

    from pdp.engine import Engine, cedar_context, load_policies
    from pdp.model import parse_request

    base = memory()
    pool = [parse_request(d, now=NOW) for d in json.loads(pool_file.read_text())]
    started = time.perf_counter()
    compiled = load_policies(directory)
    loaded = time.perf_counter()
    engine = Engine(compiled)
    engine.decide(pool[0])
    load_s = time.perf_counter() - started
    parse_s = loaded - started

    started = time.perf_counter()
    cold = engine.decide_batch(pool[:1]) + [engine.decide(r) for r in pool[1:]]
    cold_rate = len(pool) / (time.perf_counter() - started)
    allowed = sum(d.allowed for d in cold)

    requests = itertools.cycle(pool)
    batches = itertools.cycle([pool[k : k + BATCH] for k in range(0, len(pool) - BATCH, BATCH)])
    result: dict[str, Any] = {
        "policies": len(compiled),
        "load_s": load_s,
        "parse_s": parse_s,
        "cold_rate": cold_rate,
        "allowed": allowed / len(pool),
        "subsets": len({id(engine.subset(r.agent, r.server, r.tool)) for r in pool}),
        "subset_mean": statistics.mean(
            len(engine.subset(r.agent, r.server, r.tool).units) for r in pool
        ),
        "single": measure(lambda: engine.decide(next(requests)), seconds),
        "batch": measure(lambda: engine.decide_batch(next(batches)), seconds, per_call=BATCH),
    }
    # Argument validation (the invalid_arguments rule) on vs off, same policies and
    # pool, alternating rounds so that a noisy neighbour hits both alike.
    unchecked = Engine(compiled, check_arguments=False)
    for request in pool:
        unchecked.decide(request)  # the same warm subset cache as `engine`
    assert [unchecked.decide(r) for r in pool] == [engine.decide(r) for r in pool], (
        "every pooled request is valid: checking must not change a decision"
    )
    on: list[float] = []
    off: list[float] = []
    on_batch: list[float] = []
    off_batch: list[float] = []
    for _ in range(3):
        on.append(measure(lambda: engine.decide(next(requests)), seconds / 3, rounds=1)["rate"])
        off.append(measure(lambda: unchecked.decide(next(requests)), seconds / 3, rounds=1)["rate"])
        on_batch.append(
            measure(lambda: engine.decide_batch(next(batches)), seconds / 3, BATCH, 1)["rate"]
        )
        off_batch.append(
            measure(lambda: unchecked.decide_batch(next(batches)), seconds / 3, BATCH, 1)["rate"]
        )
    # The check alone, per call (steadier than a ratio of two noisy rates).
    checks = compiled.inventory.arguments
    started = time.perf_counter()
    for _ in range(20):
        for request in pool:
            checks[(request.server, request.tool)].violations(request.arguments)
    check_us = (time.perf_counter() - started) / (20 * len(pool)) * 1e6
    result["arguments"] = {
        "check_us": check_us,
        "single_on": max(on),
        "single_off": max(off),
        "batch_on": max(on_batch),
        "batch_off": max(off_batch),
    }
    result["memory"] = {"base": base["VmRSS"], **memory()}

    # A reload as the service does it (pdp.engine.runtime.build_engine: load, engine,
    # the directory's test suites), while the current engine still serves.
    from pdp.engine.runtime import build_engine
    from pdp.model import DEFAULT_LIMITS

    started = time.perf_counter()
    reloaded = build_engine(directory, DEFAULT_LIMITS, run_tests=True)
    reloaded.decide(pool[0])
    result["reload_s"] = time.perf_counter() - started
    result["memory"]["reload_VmHWM"] = memory()["VmHWM"]
    del reloaded

    # After the figures: the raw comparison and unindexed evaluation build a full set.
    sample = pool[:: len(pool) // CHECKED][:CHECKED]
    full = Engine(compiled, indexed=False)
    indexed_answers = engine.decide_batch(sample)
    assert indexed_answers == full.decide_batch(sample), "indexed != unindexed"
    if len(compiled.units) - sum(u.floor for u in compiled.units) <= raw_max:
        request = sample[0]
        raw_request = {
            "principal": {"type": "Agent", "id": request.agent},
            "action": {"type": "Action", "id": f"{request.server}/{request.tool}"},
            "resource": {"type": "McpServer", "id": request.server},
            "context": cedar_context(request),
        }
        full_set = compiled.full_policy_set()
        raw = cedarpy.is_authorized(raw_request, full_set, compiled.entities)
        assert raw.allowed == indexed_answers[0].allowed
        result["raw"] = measure(
            lambda: cedarpy.is_authorized(raw_request, full_set, compiled.entities), seconds / 2
        )
        result["engine_same_request"] = measure(lambda: engine.decide(request), seconds / 2)
    return result


def bench_size(count: int, seconds: float, raw_max: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "policies"
        pool = write_policies(root, count)
        pool_file = Path(tmp) / "requests.json"
        pool_file.write_text(json.dumps(pool))
        command = [sys.executable, __file__, "--child", str(root), str(pool_file)]
        command += ["--seconds", str(seconds), "--raw-max", str(raw_max)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"engine bench: the {count}-policy child failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["author_policies"] = count
    return result


# --- pdp serve ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_serve(count: int, timeout: float = 300) -> dict[str, Any]:
    """Starts ``pdp serve --no-audit`` on ``count`` policies; start time to the first
    answered Check, and the server's memory right after it."""
    import grpc
    from google.protobuf import json_format

    from pdp._proto.pdp.v1 import decision_pb2
    from pdp.identity.devca import ensure_dev_state

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool = write_policies(work / "policies", count)
        state = work / "state"
        ensure_dev_state(state)
        port = _free_port()
        config = work / "pdp.yaml"
        config.write_text(
            json.dumps(
                {
                    "listen": f"127.0.0.1:{port}",
                    "policies": str(work / "policies"),
                    "identity": {"source": "dev", "state_dir": str(state)},
                    "callers": [
                        {"id": "spiffe://pdp.dev/gateway/*", "agents": ["spiffe://acme.test/*"]}
                    ],
                }
            )
        )
        credentials = grpc.ssl_channel_credentials(
            (state / "bundle.pem").read_bytes(),
            (state / "gateway.key").read_bytes(),
            (state / "gateway.pem").read_bytes(),
        )
        message = json_format.ParseDict(
            {k: v for k, v in pool[0].items() if k != "time"}, decision_pb2.CheckRequest()
        )
        listening: list[float] = []
        errors = (work / "stderr").open("w+")
        started = time.monotonic()
        process = subprocess.Popen(
            [str(REPO / ".venv/bin/pdp"), "serve", "--config", str(config), "--no-audit"],
            cwd=work,  # the policy archive goes to the dev identity's state directory
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )

        def read_stdout() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("pdp: listening on") and not listening:
                    listening.append(time.monotonic() - started)

        threading.Thread(target=read_stdout, daemon=True).start()
        try:
            channel = grpc.secure_channel(
                f"127.0.0.1:{port}",
                credentials,
                options=[
                    ("grpc.ssl_target_name_override", "localhost"),
                    # retry the connection every 50 ms, not with gRPC's growing backoff
                    ("grpc.initial_reconnect_backoff_ms", 50),
                    ("grpc.min_reconnect_backoff_ms", 50),
                    ("grpc.max_reconnect_backoff_ms", 50),
                ],
            )
            check = channel.unary_unary(
                "/pdp.v1.DecisionService/Check",
                request_serializer=decision_pb2.CheckRequest.SerializeToString,
                response_deserializer=decision_pb2.CheckResponse.FromString,
            )
            answer = None
            deadline = started + timeout
            while answer is None:
                if process.poll() is not None:
                    errors.seek(0)
                    sys.exit(
                        f"engine bench: pdp serve exited ({process.returncode}):\n{errors.read()}"
                    )
                if time.monotonic() > deadline:
                    sys.exit("engine bench: pdp serve did not answer in time")
                try:
                    answer = check(message, timeout=5)
                except grpc.RpcError:
                    time.sleep(0.05)
            start_s = time.monotonic() - started
            after_first = memory(process.pid)
            for _ in range(200):
                check(message, timeout=5)
            after_200 = memory(process.pid)
            channel.close()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            errors.close()
    return {
        "author_policies": count,
        "start_s": start_s,
        "listening_s": listening[0] if listening else None,
        "decision": decision_pb2.Decision.Name(answer.decision),
        "rss_mib": after_first["VmRSS"],
        "hwm_mib": after_first["VmHWM"],
        "rss_after_200_mib": after_200["VmRSS"],
    }


# --- report -------------------------------------------------------------------------------


def print_table(rows: Sequence[dict[str, Any]], served: Sequence[dict[str, Any]]) -> None:
    first = rows[0]
    print(
        f"{'policies':>9} {'load s':>7} {'reload s':>8} {'single/s':>9} {'batch/s':>9}"
        f" {'cold/s':>7} {'single x':>8} {'batch x':>7} {'RSS MiB':>7} {'peak':>5}"
        f" {'reload peak':>11} {'raw/s':>7}"
    )
    for row in rows:
        raw = f"{row['raw']['rate']:>7,.0f}" if "raw" in row else f"{'-':>7}"
        mem = row["memory"]
        print(
            f"{row['author_policies']:>9,} {row['load_s']:>7.2f} {row['reload_s']:>8.2f}"
            f" {row['single']['rate']:>9,.0f} {row['batch']['rate']:>9,.0f}"
            f" {row['cold_rate']:>7,.0f}"
            f" {row['single']['rate'] / first['single']['rate']:>8.2f}"
            f" {row['batch']['rate'] / first['batch']['rate']:>7.2f}"
            f" {mem['VmRSS']:>7.0f} {mem['VmHWM']:>5.0f} {mem['reload_VmHWM']:>11.0f} {raw}"
        )
    print(
        f"x: ratio to {first['author_policies']:,} policies. RSS: VmRSS of the child after"
        " deciding; peak: its VmHWM then; reload peak: VmHWM after a reload beside the"
        f" serving engine (interpreter with pdp imported: {first['memory']['base']:.0f} MiB)."
    )
    print(
        "p50/p99 µs per decision (single): "
        + ", ".join(
            f"{r['author_policies']:,}: {r['single']['p50_us']:.0f}/{r['single']['p99_us']:.0f}"
            for r in rows
        )
        + "; policies Cedar evaluates per request (mean): "
        + ", ".join(f"{r['author_policies']:,}: {r['subset_mean']:.1f}" for r in rows)
    )
    print(
        "argument validation (invalid_arguments) on vs off, decisions/s, same run: "
        + "; ".join(
            f"{r['author_policies']:,}: single {r['arguments']['single_on']:,.0f} vs"
            f" {r['arguments']['single_off']:,.0f}"
            f" ({r['arguments']['single_on'] / r['arguments']['single_off']:.2f}x),"
            f" batch {r['arguments']['batch_on']:,.0f} vs {r['arguments']['batch_off']:,.0f}"
            f" ({r['arguments']['batch_on'] / r['arguments']['batch_off']:.2f}x),"
            f" the check alone {r['arguments']['check_us']:.1f} µs"
            for r in rows
        )
    )
    for row in served:
        print(
            f"pdp serve, {row['author_policies']:,} policies: start {row['start_s']:.2f} s"
            f" to the first answered Check ({row['decision']}; 'listening' printed at"
            f" {row['listening_s'] or 0:.2f} s), RSS {row['rss_mib']:.0f} MiB"
            f" (peak {row['hwm_mib']:.0f}, after 200 Checks {row['rss_after_200_mib']:.0f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--raw-max", type=int, default=10000, help="raw cedarpy up to N")
    parser.add_argument("--serve", default="", help="policy counts for pdp serve, e.g. 100000")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", nargs=2, metavar=("DIR", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory, requests = (Path(p) for p in args.child)
        print(json.dumps(child(directory, requests, args.seconds, args.raw_max)))
        return
    rows = [bench_size(int(n), args.seconds, args.raw_max) for n in args.sizes.split(",")]
    served = [bench_serve(int(n)) for n in args.serve.split(",") if n]
    if args.json:
        print(json.dumps({"engine": rows, "serve": served}, indent=2))
    else:
        print_table(rows, served)


if __name__ == "__main__":
    main()
