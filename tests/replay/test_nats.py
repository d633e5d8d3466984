"""Replaying from NATS JetStream: a real ``nats-server -js``, the real audit shipper."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import NatsShipper, NatsShipperConfig
from pdp.replay.cli import main
from tests.replay.conftest import CandidateFactory
from tests.replay.helpers import INSTANCE, POLICIES, REPS, TEMPLATES, make_narrowing

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
STREAM = "PDP_AUDIT"
DECISIONS = len(TEMPLATES) * REPS

pytestmark = pytest.mark.skipif(
    not Path(NATS_SERVER).is_file(),
    reason=f"nats-server binary not found ({NATS_SERVER}); install nats-server to run",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "nats.log").open("wb")
    process = subprocess.Popen(
        [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, (tmp_path / "nats.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def ship(log_dir: Path, state_dir: Path, url: str, instance: str = INSTANCE) -> None:
    """Ships a log directory to JetStream with the audit shipper, as the service does."""
    state_dir.mkdir(exist_ok=True)
    config = NatsShipperConfig(servers=(url,), stream=STREAM, poll_interval_s=0.05)
    shipper = NatsShipper(log_dir, state_dir, config).start()
    try:
        assert shipper.wait_caught_up(30), shipper.stats()
    finally:
        shipper.stop()


def publish(url: str, subject: str, payloads: list[bytes]) -> None:
    async def run() -> None:
        import nats

        client = await nats.connect(url)
        try:
            js = client.jetstream()
            for index, payload in enumerate(payloads):
                await js.publish(subject, payload, headers={"Nats-Msg-Id": f"extra-{index}"})
        finally:
            await client.close()

    asyncio.run(run())


def replay_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    if "--policies" not in args:
        args = ("--policies", str(POLICIES), *args)
    code = main(["replay", "--no-progress", "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return code, report


def test_replay_from_a_stream_matches_the_files(
    capsys: pytest.CaptureFixture[str],
    audit_log: Path,
    tmp_path: Path,
    nats_url: str,
    candidate: CandidateFactory,
) -> None:
    ship(audit_log, tmp_path / "shipper", nats_url)
    _, from_files = replay_json(capsys, str(audit_log))
    source = f"{nats_url}/{STREAM}"
    _, from_stream = replay_json(capsys, source)
    assert from_stream["totals"]["records"] == DECISIONS
    for key in ("totals", "skipped", "unreadable", "by_agent", "by_tool", "by_recorded_policy"):
        assert from_stream[key] == from_files[key], key
    assert from_stream["sources"] == [source]

    # A subject filter for this instance gives the same; another instance gives nothing.
    _, filtered = replay_json(capsys, f"{source}?subject=pdp.audit.{INSTANCE}")
    assert filtered["totals"] == from_files["totals"]
    _, other = replay_json(capsys, f"{source}?subject=pdp.audit.someone-else")
    assert other["totals"]["records"] == 0

    # Deterministic from the stream too.
    code = main(["replay", "--no-progress", "--policies", str(POLICIES), source])
    first = capsys.readouterr().out
    main(["replay", "--no-progress", "--policies", str(POLICIES), source])
    assert code == 0 and capsys.readouterr().out == first

    # Changes found in the stream are the same as in the files, positioned by stream seq.
    narrow = str(make_narrowing(candidate("narrow")))
    _, files_narrowed = replay_json(capsys, "--policies", narrow, str(audit_log))
    _, stream_narrowed = replay_json(capsys, "--policies", narrow, source)
    assert stream_narrowed["totals"] == files_narrowed["totals"]
    assert stream_narrowed["transitions"] == files_narrowed["transitions"]
    examples = stream_narrowed["examples"]["narrowed"]
    assert [e["decision_id"] for e in examples] == [
        e["decision_id"] for e in files_narrowed["examples"]["narrowed"]
    ]
    assert all(e["at"].startswith(f"{source}#") for e in examples)


def test_stream_duplicates_garbage_and_positions(
    capsys: pytest.CaptureFixture[str], audit_log: Path, tmp_path: Path, nats_url: str
) -> None:
    ship(audit_log, tmp_path / "shipper", nats_url)
    first_record = next(
        line
        for path in sorted(audit_log.glob("audit-*.jsonl"))
        for line in path.read_bytes().splitlines()
        if b'"kind":"decision"' in line
    )
    # Stored twice (a re-publication after the duplicate window), and a line that is
    # not an audit record at all.
    publish(nats_url, f"pdp.audit.{INSTANCE}", [first_record, b"not json"])
    _, report = replay_json(capsys, "--examples", "5", f"{nats_url}/{STREAM}")
    assert report["totals"]["records"] == DECISIONS
    assert report["skipped"]["duplicates"] == 1
    assert report["unreadable"]["lines"] == 1
    position = report["unreadable"]["examples"][0]["at"]
    assert position.startswith(f"{nats_url}/{STREAM}#")
    assert int(position.rpartition("#")[2]) > DECISIONS


def test_an_empty_stream(capsys: pytest.CaptureFixture[str], nats_url: str) -> None:
    async def create() -> None:
        import nats

        client = await nats.connect(nats_url)
        try:
            await client.jetstream().add_stream(name="EMPTY", subjects=["empty.>"])
        finally:
            await client.close()

    asyncio.run(create())
    _, report = replay_json(capsys, f"{nats_url}/EMPTY")
    assert report["totals"]["records"] == 0


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{url}/NO_SUCH_STREAM", "no stream 'NO_SUCH_STREAM'"),
        ("nats://127.0.0.1:{closed}/PDP_AUDIT", "cannot connect to NATS"),
        ("{url}/PDP_AUDIT?limit=3", "unknown query parameter 'limit'"),
    ],
)
def test_unreadable_streams_exit_2(
    capsys: pytest.CaptureFixture[str], nats_url: str, source: str, message: str
) -> None:
    spec = source.format(url=nats_url, closed=_free_port())
    code = main(["replay", "--no-progress", "--policies", str(POLICIES), spec])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert message in err
