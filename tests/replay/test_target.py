"""`pdp replay --target`: recorded requests sent to a real pdp server over mTLS."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pdp.engine import Engine, load_policies
from pdp.identity.devca import DEV_TRUST_DOMAIN, ensure_dev_state
from pdp.replay.cli import main
from pdp.replay.target import LatencyHistogram
from pdp.service import CallerBinding, DecisionServer, DevIdentity, ServiceConfig, open_identity
from tests.replay.conftest import CandidateFactory
from tests.replay.helpers import (
    POLICIES,
    REPS,
    TEMPLATES,
    make_narrowing,
    synthesize,
    write_log,
)

DECISIONS = len(TEMPLATES) * REPS
ServerFactory = Callable[[Path], tuple[str, Path]]


@pytest.fixture(scope="module")
def live_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthesized corpus recorded from now on: the server decides at its own clock,
    so only intents that are still live replay unchanged against a target."""
    log_dir = tmp_path_factory.mktemp("live") / "log"
    write_log(synthesize(base=datetime.now(UTC)).records, log_dir)
    return log_dir


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """Starts an in-process pdp (dev identity) deciding with the given policies."""
    state = tmp_path / "state"
    ensure_dev_state(state)
    servers: list[DecisionServer] = []
    closers: list[Any] = []

    def start(policies: Path) -> tuple[str, Path]:
        config = ServiceConfig(
            listen="127.0.0.1:0",
            policies=policies,
            identity=DevIdentity(state_dir=state),
            callers=(
                CallerBinding(
                    f"spiffe://{DEV_TRUST_DOMAIN}/gateway/*",
                    ("spiffe://acme.test/*", "spiffe://partner.test/*"),
                ),
            ),
        )
        identity = open_identity(config.identity)
        closers.append(identity)
        server = DecisionServer(config, Engine(load_policies(policies)), identity).start()
        servers.append(server)
        return server.address, state

    yield start
    for server in servers:
        server.stop(0)
    for identity in closers:
        identity.close()


def target(
    capsys: pytest.CaptureFixture[str], address: str, state: Path, *args: str
) -> tuple[int, dict[str, Any], str]:
    code = main(
        [
            "replay",
            "--no-progress",
            "--json",
            "--target",
            address,
            "--dev",
            "--state-dir",
            str(state),
            *args,
        ]
    )
    out, err = capsys.readouterr()
    report: dict[str, Any] = json.loads(out) if out else {}
    return code, report, err


def test_replay_against_a_running_pdp(
    capsys: pytest.CaptureFixture[str], serve: ServerFactory, live_log: Path
) -> None:
    address, state = serve(POLICIES)
    code, report, err = target(capsys, address, state, "--rate", "2000", str(live_log))
    assert code == 0, err
    assert report["mode"] == "target"
    assert report["candidate"] == {"target": address}
    totals = report["totals"]
    assert (totals["records"], totals["unchanged"], totals["failed"]) == (DECISIONS,) * 2 + (0,)
    performance = report["performance"]
    assert (performance["sent"], performance["answered"], performance["failed"]) == (
        DECISIONS,
        DECISIONS,
        0,
    )
    version = load_policies(POLICIES).version
    assert performance["served_versions"] == [{"version": version, "records": DECISIONS}]
    latency = performance["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert performance["throughput"] > 0


def test_the_target_decides_at_its_own_clock(
    capsys: pytest.CaptureFixture[str], serve: ServerFactory, shared_log: Path
) -> None:
    # Recorded in 2024 with intents live for five minutes: the recorded time is sent and
    # ignored, so every allow under an intent is now denied as expired.
    address, state = serve(POLICIES)
    code, report, err = target(capsys, address, state, "--rate", "2000", str(shared_log))
    assert code == 0, err
    allows = sum(1 for t in TEMPLATES if t.expect == "allow") * REPS
    assert report["totals"]["narrowed"] == allows
    narrowed = {t["candidate"] for t in report["transitions"] if t["change"] == "narrowed"}
    assert narrowed == {"floor.intent_expired"}


def test_mismatches_and_rate(
    capsys: pytest.CaptureFixture[str],
    serve: ServerFactory,
    live_log: Path,
    candidate: CandidateFactory,
) -> None:
    address, state = serve(make_narrowing(candidate("narrow")))
    args = ["--rate", "100", "--concurrency", "2", "--fail-on", "narrowed", str(live_log)]
    code, report, err = target(capsys, address, state, *args)
    assert code == 1, err
    assert report["totals"]["narrowed"] == 2 * REPS
    assert report["transitions"][0]["candidate"] == "default_deny"
    # Paced: 39 requests at 100/s take at least 0.38 s.
    assert report["performance"]["duration_s"] >= (DECISIONS - 1) / 100 * 0.9
    assert report["performance"]["throughput"] <= 100 * 1.2
    # The table carries the performance section.
    main(["replay", "--no-progress", "--target", address, "--dev", "--state-dir", str(state),
          "--rate", "1000", str(live_log)])  # fmt: skip
    out = capsys.readouterr().out
    assert "latency p99 (ms)" in out and "narrowed (allow -> deny)" in out


def test_wrong_server_identity_exits_2(
    capsys: pytest.CaptureFixture[str], serve: ServerFactory, shared_log: Path
) -> None:
    address, state = serve(POLICIES)
    code, report, err = target(
        capsys, address, state, "--server-id", "spiffe://pdp.dev/not-the-pdp", str(shared_log)
    )
    assert code == 2 and report == {}
    assert "not the expected spiffe://pdp.dev/not-the-pdp" in err
    code, _, err = target(capsys, address, state / "missing", str(shared_log))
    assert code == 2 and "no dev credentials" in err


def test_latency_histogram() -> None:
    histogram = LatencyHistogram()
    for millis in range(1, 101):
        histogram.add(millis / 1000)
    assert histogram.count == 100
    assert histogram.percentile(0.5) == pytest.approx(0.050, rel=0.03)
    assert histogram.percentile(0.9) == pytest.approx(0.090, rel=0.03)
    assert histogram.percentile(0.99) == pytest.approx(0.099, rel=0.03)
    assert histogram.percentile(1.0) == histogram.max_s == 0.1
    assert len(histogram.buckets) < 100
    assert LatencyHistogram().percentile(0.5) == 0.0
