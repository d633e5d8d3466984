"""Engine throughput against raw cedarpy, measured in the same run on the same policies.

    .venv/bin/python bench/engine.py [--seconds 2] [--sizes 10,1000,10000]

For each policy count N it builds a policy directory (N permits, each for one agent,
plus the floor), loads it with pdp, and times, single-threaded:

- raw:          cedarpy.is_authorized(request_dict, policy_set, entities) — the same
                pre-parsed PolicySet and Entities handles the engine uses
- engine:       Engine.decide(Request)     (reasons, error mapping, fail-closed)
- engine+parse: Engine.decide_json(dict)   (plus request validation and limits)
- batch:        Engine.decide_batch(100 requests), per decision

and prints decisions/s, p50 and p99 per call, and the ratios to raw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pdp.engine import Engine, cedar_context, load_policies  # noqa: E402
from pdp.model import parse_request  # noqa: E402
from tests.conftest import MINI_INVENTORY, MINI_SCHEMA  # noqa: E402

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)


def write_policies(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.cedarschema").write_text(MINI_SCHEMA)
    (root / "entities.json").write_text(json.dumps(MINI_INVENTORY))
    lines = []
    for i in range(count):
        lines.append(
            f'@id("grant.{i}")\n@reason("agent {i} may read tickets")\n'
            f'permit (principal == Agent::"spiffe://acme.test/agent/a{i}", '
            f'action == Action::"crm/get_ticket", resource == McpServer::"crm")\n'
            f'when {{ context.input.ticket_id like "T-*" }};\n'
        )
    (root / "grants.cedar").write_text("\n".join(lines))


def measure(call: Callable[[], Any], seconds: float, per_call: int = 1) -> dict[str, float]:
    for _ in range(50):  # warm-up
        call()
    samples: list[int] = []
    deadline = time.perf_counter() + seconds
    clock = time.perf_counter_ns
    while time.perf_counter() < deadline:
        start = clock()
        call()
        samples.append(clock() - start)
    samples.sort()
    total_s = sum(samples) / 1e9
    return {
        "rate": len(samples) * per_call / total_s,
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e3,
        "calls": len(samples),
    }


def bench_size(count: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "policies"
        write_policies(root, count)
        started = time.perf_counter()
        compiled = load_policies(root)
        load_s = time.perf_counter() - started
    engine = Engine(compiled)
    data = {
        "agent": f"spiffe://acme.test/agent/a{count // 2}",
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T-123"},
        "intent": {"purpose": "triage", "tools": ["crm/get_ticket"]},
        "session": "s-1",
        "time": "2026-11-23T10:00:00Z",
    }
    request = parse_request(data, now=NOW)
    raw_request = {
        "principal": {"type": "Agent", "id": request.agent},
        "action": {"type": "Action", "id": "crm/get_ticket"},
        "resource": {"type": "McpServer", "id": "crm"},
        "context": cedar_context(request),
    }
    # Same answer from both, or the comparison is meaningless.
    full_set = compiled.full_policy_set()
    raw_result = cedarpy.is_authorized(raw_request, full_set, compiled.entities)
    decision = engine.decide(request)
    assert raw_result.allowed and decision.allowed, (raw_result, decision)
    assert [r.policy for r in decision.reasons] == [f"grant.{count // 2}"]

    def raw() -> None:
        cedarpy.is_authorized(raw_request, full_set, compiled.entities)

    batch = [request] * 100
    results = {
        "policies": count,
        "load_s": load_s,
        "raw": measure(raw, seconds),
        "engine": measure(lambda: engine.decide(request), seconds),
        "engine+parse": measure(lambda: engine.decide_json(data, now=NOW), seconds),
        "batch100": measure(lambda: engine.decide_batch(batch), seconds, per_call=100),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = [bench_size(int(n), args.seconds) for n in args.sizes.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'policies':>9} {'variant':<13} {'decisions/s':>12} {'p50 µs':>9} {'p99 µs':>9}"
        f" {'vs raw':>7}"
    )
    for row in rows:
        raw_rate = row["raw"]["rate"]
        for variant in ("raw", "engine", "engine+parse", "batch100"):
            m = row[variant]
            print(
                f"{row['policies']:>9} {variant:<13} {m['rate']:>12,.0f} {m['p50_us']:>9.1f}"
                f" {m['p99_us']:>9.1f} {m['rate'] / raw_rate:>7.2f}"
            )
        print(f"{row['policies']:>9} {'load':<13} {row['load_s'] * 1000:>10.0f}ms")
    ratios = [row["engine"]["rate"] / row["raw"]["rate"] for row in rows]
    print(
        "engine/raw: "
        + ", ".join(f"{r['policies']}: {x:.2f}" for r, x in zip(rows, ratios, strict=True))
    )
    print(f"median engine/raw ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
