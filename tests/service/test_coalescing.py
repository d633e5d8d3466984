"""Concurrent Check calls share one evaluation (pdp.service.servicer.Coalescer), and each
still gets exactly its own answer: its own caller binding, decision id and record."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit.ids import new_decision_id
from pdp.engine import Engine
from pdp.identity.spiffe_id import SpiffeIdPattern
from pdp.model import Caller
from pdp.service import DecisionEvent, RefusalEvent
from pdp.service.gate import CallerGrant
from pdp.service.servicer import CHECK_METHOD, Coalescer, DecisionCore, FixedEngine, PendingCall

from .conftest import (
    GATEWAY_ID,
    PARTNER_GATEWAY_ID,
    ClientFactory,
    Pki,
    ServerFactory,
    example_request,
    to_message,
)

PARTNER_AGENT = "spiffe://partner.test/agent/helper"


@dataclass
class BatchRecordingSink:
    """Keeps every event and the size of every record_decisions call."""

    blocks: bool
    decisions: list[DecisionEvent] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        with self.lock:
            self.decisions.extend(events)
            self.batch_sizes.append(len(events))
        return [True] * len(events)

    def record_refusal(self, event: RefusalEvent) -> None:
        return None


@pytest.mark.parametrize("blocks", [False, True], ids=["on-loop", "thread-pool"])
def test_concurrent_calls_of_two_callers_each_get_their_own_answer(
    make_server: ServerFactory, connect: ClientFactory, pki: Pki, blocks: bool
) -> None:
    sink = BatchRecordingSink(blocks=blocks)
    server = make_server(sink=sink)
    gateway, partner = connect(server), connect(server, pki.partner_gateway)
    acme = to_message(example_request())
    helper = to_message({**example_request(), "agent": PARTNER_AGENT})
    # (client, message, expected first reason or None for "not caller_not_bound")
    plan: list[tuple[Any, pb.CheckRequest, str]] = []
    for i in range(120):
        plan.append(
            [
                (gateway, acme, "allow"),
                (partner, acme, "caller_not_bound"),
                (partner, helper, "not_bound_ok"),
                (gateway, helper, "caller_not_bound"),
            ][i % 4]
        )
    # Fire everything before collecting anything, so that calls arrive together.
    futures = [client._check.future(message, timeout=20) for client, message, _ in plan]
    responses = [future.result() for future in futures]

    ids = [r.decision_id for r in responses]
    assert len(set(ids)) == len(ids)
    for (_, _, expected), response in zip(plan, responses, strict=True):
        reasons = [r.policy for r in response.reasons]
        if expected == "allow":
            assert response.decision == pb.DECISION_ALLOW
        elif expected == "caller_not_bound":
            assert response.decision == pb.DECISION_DENY and reasons == ["caller_not_bound"]
        else:
            assert "caller_not_bound" not in reasons

    by_id = {event.decision_id: event for event in sink.decisions}
    assert set(by_id) == set(ids)
    for (client, message, _), response in zip(plan, responses, strict=True):
        event = by_id[response.decision_id]
        expected_caller = GATEWAY_ID if client is gateway else PARTNER_GATEWAY_ID
        assert event.caller.spiffe_id == expected_caller
        assert event.data["agent"] == message.agent
        assert event.decision.allowed == (response.decision == pb.DECISION_ALLOW)
    assert sum(sink.batch_sizes) == len(plan)


def test_a_batch_and_single_calls_coalesce_without_mixing_answers(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    sink = BatchRecordingSink(blocks=False)
    server = make_server(sink=sink)
    client = connect(server)
    deny = {**example_request(), "tool": "delete_ticket"}
    batch_future = client._batch.future(
        pb.CheckBatchRequest(requests=[to_message(deny)] * 5 + [to_message(example_request())]),
        timeout=20,
    )
    singles = [client._check.future(to_message(example_request()), timeout=20) for _ in range(20)]
    batch = batch_future.result()
    assert [r.decision for r in batch.responses] == [pb.DECISION_DENY] * 5 + [pb.DECISION_ALLOW]
    assert all(f.result().decision == pb.DECISION_ALLOW for f in singles)


def _grant(caller: str, agents: str) -> CallerGrant:
    return CallerGrant(Caller(spiffe_id=caller), (SpiffeIdPattern(agents),))


def test_calls_queued_in_one_loop_turn_are_decided_in_one_flush(engine: Engine) -> None:
    sink = BatchRecordingSink(blocks=False)
    core = DecisionCore(FixedEngine(engine), sink, new_id=new_decision_id)
    coalescer = Coalescer(core, executor=None)
    acme = to_message(example_request()).SerializeToString()
    grants = [
        _grant(GATEWAY_ID, "spiffe://acme.test/agent/*"),
        _grant(PARTNER_GATEWAY_ID, "spiffe://partner.test/agent/*"),
    ]

    async def main() -> list[list[pb.CheckResponse]]:
        calls = [
            PendingCall((acme,), grants[i % 2], CHECK_METHOD, time.perf_counter_ns(), None)
            for i in range(10)
        ]
        return await asyncio.gather(*(coalescer.decide(call) for call in calls))

    answers = asyncio.run(main())
    assert sink.batch_sizes == [10]
    for i, responses in enumerate(answers):
        assert len(responses) == 1
        reasons = [r.policy for r in responses[0].reasons]
        if i % 2 == 0:
            assert responses[0].decision == pb.DECISION_ALLOW
        else:
            assert reasons == ["caller_not_bound"]
    assert [e.caller.spiffe_id for e in sink.decisions] == [
        GATEWAY_ID if i % 2 == 0 else PARTNER_GATEWAY_ID for i in range(10)
    ]


def test_a_full_queue_flushes_at_once(engine: Engine) -> None:
    sink = BatchRecordingSink(blocks=False)
    core = DecisionCore(FixedEngine(engine), sink, new_id=new_decision_id)
    coalescer = Coalescer(core, executor=None, max_requests=4)
    acme = to_message(example_request()).SerializeToString()
    grant = _grant(GATEWAY_ID, "spiffe://acme.test/agent/*")

    async def main() -> None:
        calls = [
            PendingCall((acme,), grant, CHECK_METHOD, time.perf_counter_ns(), None)
            for _ in range(10)
        ]
        await asyncio.gather(*(coalescer.decide(call) for call in calls))

    asyncio.run(main())
    assert sink.batch_sizes == [4, 4, 2]


def test_a_failing_core_denies_every_queued_call(engine: Engine) -> None:
    class BrokenCore(DecisionCore):
        def decide_calls(self, calls: Sequence[PendingCall]) -> list[list[pb.CheckResponse]]:
            raise RuntimeError("boom")

    sink = BatchRecordingSink(blocks=False)
    coalescer = Coalescer(
        BrokenCore(FixedEngine(engine), sink, new_id=new_decision_id), executor=None
    )
    grant = _grant(GATEWAY_ID, "spiffe://acme.test/agent/*")
    acme = to_message(example_request()).SerializeToString()

    async def main() -> list[list[pb.CheckResponse]]:
        calls = [PendingCall((acme,) * 2, grant, CHECK_METHOD, 0, None) for _ in range(3)]
        return await asyncio.gather(*(coalescer.decide(call) for call in calls))

    answers = asyncio.run(main())
    assert [len(a) for a in answers] == [2, 2, 2]
    assert all(
        r.decision == pb.DECISION_DENY and r.reasons[0].policy == "internal_error"
        for a in answers
        for r in a
    )


def test_a_shut_down_pool_denies_instead_of_hanging(engine: Engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    sink = BatchRecordingSink(blocks=True)
    core = DecisionCore(FixedEngine(engine), sink, new_id=new_decision_id)
    coalescer = Coalescer(core, executor=pool)
    grant = _grant(GATEWAY_ID, "spiffe://acme.test/agent/*")
    acme = to_message(example_request()).SerializeToString()

    async def main() -> list[pb.CheckResponse]:
        call = PendingCall((acme,), grant, CHECK_METHOD, 0, None)
        return await asyncio.wait_for(coalescer.decide(call), 10)

    (response,) = asyncio.run(main())
    assert response.decision == pb.DECISION_DENY
    assert response.reasons[0].policy == "internal_error"
    assert sink.decisions == []


@dataclass
class DeferredSink:
    """A sink that calls back later (the durable audit log's shape): ``settle`` decides
    when; one that never settles must not hold the answer past ``wait_s``."""

    settle: bool
    wait_s: float = 0.3
    blocks: bool = True
    handed: list[DecisionEvent] = field(default_factory=list)

    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        raise AssertionError("a deferred sink is never called to block")

    def submit_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None, on_settled: Any
    ) -> DeferredSink:
        self.handed.extend(events)
        if self.settle:  # from another thread, as the writer does
            threading.Timer(0.05, on_settled).start()
        return self

    def flags(self) -> list[bool]:
        return [self.settle] * len(self.handed)

    def record_refusal(self, event: RefusalEvent) -> None:
        return None


@pytest.mark.parametrize("settle", [True, False], ids=["settled", "never-settled"])
def test_a_deferred_sink_answers_when_it_settles_and_denies_when_it_does_not(
    make_server: ServerFactory, connect: ClientFactory, settle: bool
) -> None:
    sink = DeferredSink(settle=settle)
    server = make_server(sink=sink)
    client = connect(server)
    started = time.monotonic()
    response = client._check(to_message(example_request()), timeout=20)
    assert sink.handed and sink.handed[0].decision_id == response.decision_id
    if settle:
        assert response.decision == pb.DECISION_ALLOW
    else:  # answered at the sink's wait limit, not hung, and never an allow
        assert response.decision == pb.DECISION_DENY
        assert [r.policy for r in response.reasons] == ["audit_unavailable"]
        assert time.monotonic() - started >= sink.wait_s
