"""The NATS JetStream sink against a real nats-server: exactly once, across a kill -9."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats

from pdp.audit import (
    Audit,
    AuditConfig,
    DeliveryMode,
    FileSinkConfig,
    NatsShipperConfig,
    PipelineConfig,
)
from pdp.audit.chain import list_log_files, parse_line
from tests.audit.conftest import NatsServer
from tests.audit.helpers import ALLOW, CALLER, INSTANCE, make_request, record_ids
from tests.audit.test_record import PLANTED, SECRETS

STREAM = "PDP_AUDIT_TEST"


def open_audit(
    log_dir: Path, server: NatsServer, mode: DeliveryMode = DeliveryMode.SYNC, **nats_options: Any
) -> Audit:
    options: dict[str, Any] = {
        "servers": (server.url,),
        "stream": STREAM,
        "ack_timeout_s": 1.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "poll_interval_s": 0.1,
        "connect_timeout_s": 1.0,
    }
    options.update(nats_options)
    return Audit(
        AuditConfig(
            FileSinkConfig(log_dir, checkpoint_every=100),
            instance_id=INSTANCE,
            pipeline=PipelineConfig(mode=mode),
            nats=NatsShipperConfig(**options),
        )
    )


def stream_messages(url: str) -> list[tuple[dict[str, str], bytes]]:
    """Every message stored in the stream, read back by stream sequence."""

    async def read() -> list[tuple[dict[str, str], bytes]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(STREAM, seq)
                out.append((dict(msg.headers or {}), bytes(msg.data or b"")))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def records_in_stream(url: str) -> list[str]:
    ids = []
    for headers, data in stream_messages(url):
        record = json.loads(data)
        if record["kind"] in ("decision", "refusal"):
            assert headers["Nats-Msg-Id"] == record["decision_id"]
            ids.append(record["decision_id"])
    return ids


def decide(audit: Audit, arguments: dict[str, Any] | None = None) -> str:
    from pdp.audit import new_decision_id

    decision_id = new_decision_id()
    answer = audit.record_decision(
        decision_id, make_request(arguments), ALLOW, CALLER, latency_us=7
    )
    assert answer.allowed
    return decision_id


def test_exactly_once_across_a_nats_kill_and_restart(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    log_dir = tmp_path / "log"
    audit = open_audit(log_dir, nats_server, DeliveryMode.ASYNC, max_inflight=64)
    assert audit.shipper is not None
    decided: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(decided) < 3000:
            decided.append(decide(audit))
            time.sleep(0.0005)

    writer = threading.Thread(target=load)
    writer.start()
    deadline = time.monotonic() + 10
    while audit.shipper.stats().shipped < 300 and time.monotonic() < deadline:
        time.sleep(0.005)
    nats_server.kill()  # in the middle of a stream of acks
    killed_at = len(decided)
    time.sleep(1.0)  # decisions go on; the file takes them
    assert len(decided) > killed_at
    nats_server.start()
    time.sleep(0.5)
    stop.set()
    writer.join()
    assert audit.close(timeout=30)
    stats = audit.shipper.stats()
    assert stats.retries > 0, stats  # the outage was seen (and possibly lost acks re-sent)

    in_files = record_ids(log_dir)
    assert sorted(in_files) == sorted(decided)
    in_stream = records_in_stream(nats_server.url)
    counts = Counter(in_stream)
    assert not [i for i, n in counts.items() if n > 1], "a record was stored twice"
    assert len(in_stream) == len(in_files)
    assert set(in_stream) == set(in_files)
    # The stream is a replica of the chain: every line, in order, hashes intact.
    lines = [parse_line(data) for _, data in stream_messages(nats_server.url)]
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))


def test_records_written_while_nats_is_down_are_shipped_later(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    log_dir = tmp_path / "log"
    nats_server.kill()
    audit = open_audit(log_dir, nats_server)
    assert audit.shipper is not None
    ids = [decide(audit) for _ in range(50)]  # sync mode: durable in the file, NATS down
    assert audit.shipper.stats().shipped == 0
    nats_server.start()
    assert audit.shipper.wait_caught_up(20)
    assert audit.close()
    assert sorted(records_in_stream(nats_server.url)) == sorted(ids)


def test_restarted_shipper_resumes_from_its_position(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    log_dir = tmp_path / "log"
    first = open_audit(log_dir, nats_server)
    ids = [decide(first) for _ in range(20)]
    assert first.close()
    second = open_audit(log_dir, nats_server)
    ids += [decide(second) for _ in range(20)]
    assert second.close()
    assert second.shipper is not None
    # The second run shipped only its own lines (plus nothing twice).
    assert second.shipper.stats().duplicates == 0
    assert sorted(records_in_stream(nats_server.url)) == sorted(ids)


def test_stream_is_created_with_the_configured_duplicate_window(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    audit = open_audit(tmp_path / "log", nats_server, duplicate_window_s=42.0)
    decide(audit)
    assert audit.close()

    async def window() -> float:
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(STREAM)
            return float(info.config.duplicate_window)
        finally:
            await nc.close()

    assert asyncio.run(window()) == 42.0
    # A second start with another window updates the stream.
    audit = open_audit(tmp_path / "log", nats_server, duplicate_window_s=120.0)
    assert audit.close()
    assert asyncio.run(window()) == 120.0


def test_no_planted_secret_reaches_any_sink_byte(tmp_path: Path, nats_server: NatsServer) -> None:
    log_dir = tmp_path / "log"
    audit = open_audit(log_dir, nats_server)
    seen: list[dict[str, Any]] = []
    audit.pipeline.add_listener(seen.append)
    decide(audit, dict(PLANTED))
    audit.record_refusal(
        "unauthenticated",
        f"bad header {PLANTED['header']}",
        caller=None,
        request=make_request(dict(PLANTED)),
    )
    assert audit.close()
    file_bytes = b"".join(p.read_bytes() for p in list_log_files(log_dir))
    nats_bytes = b"".join(
        json.dumps(headers).encode() + data for headers, data in stream_messages(nats_server.url)
    )
    listener_bytes = json.dumps(seen).encode()
    assert b"[REDACTED]" in file_bytes and b"[REDACTED]" in nats_bytes
    for secret in SECRETS:
        for where, data in (
            ("file", file_bytes),
            ("nats", nats_bytes),
            ("listener", listener_bytes),
        ):
            assert secret.encode() not in data, f"{secret!r} leaked to {where}"
    assert all(r["arguments_redacted"] for r in seen)


def test_the_nats_stream_is_a_witness_verify_can_check(
    tmp_path: Path, nats_server: NatsServer, capsys: Any
) -> None:
    """The shipper publishes every checkpoint line: `verify --witness nats://…` checks
    the log against the latest one, so cutting the log back to an older run fails."""
    from pdp.audit.verify import main as verify

    log_dir = tmp_path / "log"
    for _ in range(2):  # two runs: two files, each ending with a closing checkpoint
        audit = open_audit(log_dir, nats_server)
        for _ in range(5):
            decide(audit)
        assert audit.close(timeout=30)
    witness = f"{nats_server.url}/{STREAM}/pdp.audit.{INSTANCE}"
    assert verify([str(log_dir), "--require-sealed", "--witness", witness]) == 0
    list_log_files(log_dir)[-1].unlink()  # the second run, gone; the rest ends sealed
    assert verify([str(log_dir), "--require-sealed"]) == 0
    assert verify([str(log_dir), "--require-sealed", "--witness", witness]) == 1
    assert "truncated" in capsys.readouterr().out
