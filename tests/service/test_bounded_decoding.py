"""Decoding is bounded by the limits: an invalid request costs about what a valid one
does (pdp.service.wire before protobuf, pdp.service.convert while converting)."""

from __future__ import annotations

import time

import pytest
from google.protobuf import json_format

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.engine import Engine
from pdp.model import Caller, Limits, RequestError
from pdp.service.convert import OversizeRequest, request_data
from pdp.service.gate import CallerGrant
from pdp.service.servicer import DecisionCore, FixedEngine, PendingCall
from pdp.service.wire import batch_requests, check_request_bytes

from .abuse import oversized_arguments
from .conftest import (
    GATEWAY_ID,
    ClientFactory,
    RecordingSink,
    ServerFactory,
    example_request,
    to_message,
)

LIMITS = Limits()


def test_the_wire_pass_refuses_arguments_too_large_to_be_valid() -> None:
    body = oversized_arguments(150_000).SerializeToString()
    with pytest.raises(OversizeRequest) as info:
        check_request_bytes(body, LIMITS)
    assert (info.value.field, info.value.rule) == ("arguments", "too_large")
    assert info.value.excerpt.startswith("{k") and len(info.value.excerpt) <= 64


def test_the_wire_pass_lets_valid_and_malformed_bytes_through() -> None:
    check_request_bytes(to_message(example_request()).SerializeToString(), LIMITS)
    check_request_bytes(b"\x0a\xff\xff\xff", LIMITS)  # protobuf names the problem later
    check_request_bytes(b"", LIMITS)


def test_a_batch_is_split_into_its_requests_at_the_wire() -> None:
    one = to_message(example_request())
    batch = pb.CheckBatchRequest(requests=[one, oversized_arguments(10), one])
    parts = batch_requests(batch.SerializeToString())
    assert [pb.CheckRequest.FromString(p) for p in parts] == list(batch.requests)


def test_conversion_stops_at_the_first_limit() -> None:
    # Small enough on the wire, over the encoded size: stopped while converting.
    wide = to_message(example_request())
    for index in range(1_000):
        wide.arguments.fields[f"k{index}"].string_value = "v" * 100
    with pytest.raises(OversizeRequest) as info:
        request_data(wide, LIMITS)
    assert (info.value.field, info.value.rule) == ("arguments", "too_large")
    assert "stopped reading at" in info.value.detail
    # A collection over the count limit is refused before its entries are read.
    with pytest.raises(OversizeRequest) as info:
        request_data(oversized_arguments(LIMITS.max_collection_items + 1), LIMITS)
    assert (info.value.field, info.value.rule) == ("arguments", "too_many")
    # Strings are measured before they are copied.
    message = json_format.ParseDict(
        {**example_request(), "arguments": {"note": "x" * 10_000}}, pb.CheckRequest()
    )
    with pytest.raises(OversizeRequest) as info:
        request_data(message, LIMITS)
    assert (info.value.field, info.value.rule) == ("arguments.note", "too_long")
    assert info.value.excerpt == "x" * 64


def test_a_top_level_field_over_its_limit_is_refused_before_the_rest() -> None:
    message = to_message(example_request())
    message.tool = "t" * 100_000
    into: dict[str, object] = {}
    with pytest.raises(OversizeRequest) as info:
        request_data(message, LIMITS, into)
    assert (info.value.field, info.value.rule) == ("tool", "too_long")
    assert "arguments" not in into and "tool" not in into


def test_a_nan_never_reaches_the_data() -> None:
    message = to_message(example_request())
    message.arguments.fields["x"].number_value = float("nan")
    with pytest.raises(RequestError) as info:
        request_data(message, LIMITS)
    assert (info.value.field, info.value.rule) == ("arguments.x", "type")


def test_an_oversized_request_in_a_batch_is_refused_alone(
    make_server: ServerFactory, connect: ClientFactory, sink: RecordingSink
) -> None:
    client = connect(make_server(sink=sink))
    one = to_message(example_request())
    batch = pb.CheckBatchRequest(requests=[one, oversized_arguments(30_000), one])
    answers = client._batch(batch, timeout=10).responses
    assert [a.decision for a in answers] == [pb.DECISION_ALLOW, pb.DECISION_DENY, pb.DECISION_ALLOW]
    assert answers[1].reasons[0].policy == "invalid_request"
    rejected = [e.rejected for e in sink.decisions if e.rejected is not None]
    assert len(rejected) == 1 and rejected[0].rule == "too_large"


def test_a_doors_invalid_data_is_recorded_bounded(engine: Engine) -> None:
    # A door with its own wire format hands DecisionCore parsed data, not decoded
    # within the limits here: its record keeps who asked about what, cut, never the rest.
    sink = RecordingSink()
    core = DecisionCore(FixedEngine(engine), sink, new_id=lambda: "door-1")
    grant = CallerGrant(Caller(GATEWAY_ID, "1", "pdp.test"), ())
    data = {
        **example_request(),
        "agent": "x" * 100_000,
        "arguments": {f"k{i}": "v" * 100 for i in range(5_000)},
    }
    ((response,),) = core.decide_calls(
        [PendingCall((data,), grant, "/door/Check", time.perf_counter_ns(), None)]
    )
    assert [r.policy for r in response.reasons] == ["invalid_request"]
    (event,) = sink.decisions
    assert event.rejected is not None and event.rejected.field == "agent"
    assert set(event.data) <= {"agent", "server", "tool", "gateway"}
    assert len(event.data["agent"]) == 2048
