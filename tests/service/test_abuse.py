"""No caller can starve the others: each attack, short, beside a legitimate caller.

The legitimate caller makes paced Check calls over its own connection while the attack
runs; it must keep >= 99 % success, and a call right after the attack must succeed at
once. Loopback only, bounded in count and time; no timing is asserted (bench/abuse.py
measures p99 under each attack).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit import AuditConfig, open_audit
from pdp.audit.filesink import FileSinkConfig
from pdp.audit.pipeline import DeliveryMode, PipelineConfig
from pdp.audit.service_sink import AuditDecisionSink
from pdp.engine import Engine
from pdp.identity.sources import StaticFileSource
from pdp.service import DecisionServer, ServerOptions, ServiceLimits
from pdp.service.servicer import CHECK_METHOD

from .abuse import (
    CallerOutcome,
    channel_credentials,
    oversized_arguments,
    oversized_messages,
    raw_connections,
    running,
    slow_handshakes,
    stalled_streams,
    under_attack,
)
from .conftest import (
    GATEWAY_ID,
    STRANGER_ID,
    TD,
    ClientFactory,
    Pki,
    RecordingSink,
    ServerFactory,
    example_request,
    service_config,
    to_message,
)

ATTACKER_ID = f"spiffe://{TD}/gateway/attacker"  # on the callers list (gateway/*)
SECONDS = 2.5


def _check(client: Any) -> Any:
    return lambda request, timeout: client.check(request, timeout=timeout)


def _assert_unharmed(outcome: CallerOutcome) -> None:
    assert outcome.calls >= 10, outcome
    assert outcome.success_rate >= 0.99, outcome.failures


def test_stalled_streams_hold_only_their_callers_share(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    server = make_server(
        sink=sink,
        server=ServerOptions(
            threads=4, shutdown_grace_s=1, request_timeout_s=1.0, max_rpcs_per_caller=16
        ),
    )
    attacker = pki.svid(ATTACKER_ID)
    client = connect(server)
    request = to_message(example_request())
    attack = stalled_streams(
        server.address, channel_credentials(attacker, pki.ca.bundle_pem), connections=3, streams=60
    )
    outcome = under_attack(attack, _check(client), request, seconds=SECONDS)
    _assert_unharmed(outcome)
    # The attacker was refused beyond its share, and its stalled streams were cancelled.
    counts = server.refusals.snapshot()
    assert counts.get((ATTACKER_ID, "resource_exhausted"), 0) > 0, counts
    assert counts.get((ATTACKER_ID, "deadline_exceeded"), 0) > 0, counts
    assert not any(key == GATEWAY_ID for key, _ in counts), counts
    # Recovered at once: the attacker holds nothing, and it may call again.
    assert _eventually(lambda: server.slots.held_by(ATTACKER_ID) == 0)
    assert connect(server, attacker).check(request).decision == pb.DECISION_ALLOW


def test_a_stream_without_its_message_is_cancelled_after_request_timeout(
    make_server: ServerFactory, pki: Pki, sink: RecordingSink
) -> None:
    server = make_server(
        sink=sink, server=ServerOptions(threads=4, shutdown_grace_s=1, request_timeout_s=0.5)
    )
    with grpc.secure_channel(
        server.address, channel_credentials(pki.gateway, pki.ca.bundle_pem)
    ) as channel:
        call = channel.stream_unary(CHECK_METHOD, request_serializer=bytes)

        def never() -> Any:
            time.sleep(30)
            yield b""

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            call(never(), timeout=20)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "server.request_timeout_s" in (info.value.details() or "")
    assert time.monotonic() - started < 15  # cut by the server, not the client's deadline
    assert [r.code for r in sink.refusals] == ["deadline_exceeded"]


def test_health_has_a_reserve_when_the_pool_is_full(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = make_server(
        sink=sink,
        server=ServerOptions(
            threads=4,
            shutdown_grace_s=1,
            request_timeout_s=30,
            max_concurrent_rpcs=10,
            reserved_rpcs=4,
            max_rpcs_per_caller=6,
        ),
    )
    attacker = pki.svid(ATTACKER_ID)
    attack = stalled_streams(
        server.address, channel_credentials(attacker, pki.ca.bundle_pem), connections=1, streams=6
    )
    with running(attack):
        assert _eventually(lambda: server.slots.in_flight >= 6)
        # The pool outside the reserve is full: a decision call is refused...
        client = connect(server)
        with pytest.raises(grpc.RpcError) as info:
            client.check(example_request())
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_concurrent_rpcs" in (info.value.details() or "")
        # ...and health still answers from the reserve.
        health = health_pb2_grpc.HealthStub(client.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert _eventually(lambda: server.slots.in_flight == 0)
    assert client.check(example_request()).decision == pb.DECISION_ALLOW


def test_oversized_messages_are_refused_before_conversion(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    server = make_server(sink=sink)
    attacker = pki.svid(ATTACKER_ID)
    client = connect(server)
    attack = oversized_messages(
        server.address, channel_credentials(attacker, pki.ca.bundle_pem), callers=2
    )
    outcome = under_attack(attack, _check(client), to_message(example_request()), seconds=SECONDS)
    _assert_unharmed(outcome)
    bad = [e for e in sink.decisions if e.caller.spiffe_id == ATTACKER_ID]
    assert bad, "the attack made no call"
    for event in bad:
        assert event.decision.reasons[0].policy == "invalid_request"
        assert event.rejected is not None
        assert event.rejected.field == "arguments" and event.rejected.rule == "too_large"
        assert event.rejected.size > 3_000_000 and len(event.rejected.sha256) == 64
        assert "arguments" not in event.data  # never the body
    # Recovered at once.
    assert client.check(example_request()).decision == pb.DECISION_ALLOW


def test_records_of_invalid_requests_are_bounded_and_budgeted(
    engine: Engine, identity: StaticFileSource, connect: ClientFactory, pki: Pki, tmp_path: Path
) -> None:
    audit = open_audit(
        AuditConfig(
            file=FileSinkConfig(tmp_path / "audit"),
            instance_id="abuse-test",
            pipeline=PipelineConfig(mode=DeliveryMode.ASYNC),
        )
    )
    limits = ServiceLimits(refusal_record_bytes_per_s=1, refusal_record_burst_bytes=200_000)
    server = DecisionServer(
        service_config(limits=limits), engine, identity, sink=AuditDecisionSink(audit)
    ).start()
    try:
        attacker = connect(server, pki.svid(ATTACKER_ID))
        big = oversized_arguments(20_000)  # 300 KB: the wire check refuses it
        many = oversized_arguments(1_500)  # small enough on the wire, over the JSON size
        for message in [big, many] * 10:
            answer = attacker.check(message)
            assert answer.reasons[0].policy == "invalid_request"
        assert connect(server).check(example_request()).decision == pb.DECISION_ALLOW
    finally:
        server.stop(0)
        audit.close()
    lines = [
        line for path in sorted((tmp_path / "audit").glob("*.jsonl")) for line in path.open("rb")
    ]
    records = [json.loads(line) for line in lines]
    rejected = [r for r in records if r.get("rejected")]
    assert len(rejected) == 20
    assert max(len(line) for line in lines) < 8192  # bounded facts, never the body
    first = rejected[0]["rejected"]
    assert first["field"] == "arguments" and first["rule"] == "too_large"
    assert first["excerpt"].startswith("{k") and first["detail_kept"] is True
    assert "arguments" not in rejected[0]["request"]
    # The budget (200 KB, hardly refilled) ran out: later records keep the facts only.
    assert rejected[-1]["rejected"]["detail_kept"] is False
    assert rejected[-1]["rejected"]["excerpt"] == ""
    assert len(rejected[-1]["rejected"]["sha256"]) == 64


def test_raw_connections_and_slow_handshakes_time_out(
    make_server: ServerFactory, connect: ClientFactory, sink: RecordingSink
) -> None:
    server = make_server(
        sink=sink,
        server=ServerOptions(
            threads=4, shutdown_grace_s=1, handshake_timeout_s=1.0, max_connections=60
        ),
    )
    client = connect(server)
    request = to_message(example_request())
    assert client.check(request).decision == pb.DECISION_ALLOW  # connected before
    host = "127.0.0.1"
    for attack in (
        raw_connections(host, server.port, count=100),
        slow_handshakes(host, server.port, count=100),
    ):
        outcome = under_attack(attack, _check(client), request, seconds=SECONDS)
        _assert_unharmed(outcome)
        # Recovered at once: a new connection gets in.
        fresh = connect(server)
        assert fresh.check(request, timeout=10).decision == pb.DECISION_ALLOW
        fresh.close()


def test_the_handshake_timeout_and_the_connection_cap_hold(
    make_server: ServerFactory, sink: RecordingSink
) -> None:
    server = make_server(
        sink=sink,
        server=ServerOptions(
            threads=4, shutdown_grace_s=1, handshake_timeout_s=1.0, max_connections=20
        ),
    )
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    try:
        # Beyond the cap, connections are closed at once...
        assert _eventually(lambda: sum(_closed(s) for s in sockets) >= 10, timeout=0.9)
        # ...and the others when the handshake timeout passes.
        assert _eventually(lambda: all(_closed(s) for s in sockets), timeout=20)
    finally:
        for sock in sockets:
            sock.close()


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _eventually(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_refusals_past_the_record_budget_are_counted_not_recorded(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    limits = ServiceLimits(refusal_record_bytes_per_s=1, refusal_record_burst_bytes=2_000)
    server = make_server(sink=sink, limits=limits)
    stranger = connect(server, pki.stranger)  # authenticated, not on the callers list
    for _ in range(10):
        with pytest.raises(grpc.RpcError) as info:
            stranger.check(example_request())
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # Every refusal reaches the sink (metrics count them all); past the budget the
    # event says not to write a record, and the audit sink writes none.
    assert len(sink.refusals) == 10
    flags = [event.record for event in sink.refusals]
    assert flags[0] is True and flags[-1] is False
    assert flags == sorted(flags, reverse=True)
    assert server.refusals.of(STRANGER_ID) == 10


def test_oversized_metadata_is_refused_and_harms_nobody(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, sink: RecordingSink
) -> None:
    server = make_server(
        sink=sink, server=ServerOptions(threads=4, shutdown_grace_s=1, max_metadata_bytes=4096)
    )
    attacker = connect(server, pki.svid(ATTACKER_ID))
    client = connect(server)
    request = to_message(example_request())
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as info:
            attacker.check(request, metadata=(("x-padding", "p" * 20_000),))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.check(request).decision == pb.DECISION_ALLOW
    # Headers under the limit pass.
    assert attacker.check(request, metadata=(("x-padding", "p" * 1_000),)).decision == (
        pb.DECISION_ALLOW
    )
