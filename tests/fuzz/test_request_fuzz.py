"""Fuzzing the request parser, the protobuf decode path and the decision on both."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from hypothesis import example, given
from hypothesis import strategies as st

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.model import parse_request
from tests.fuzz import targets
from tests.fuzz.strategies import json_values, mutated_requests, requests


@given(json_values)
@example({1: 0, "agent": "spiffe://acme.test/agent/x"})  # mixed key types (YAML) once crashed
def test_any_json_value_is_a_named_error_or_a_request(data: Any) -> None:
    targets.check_request_data(data)


@given(mutated_requests())
def test_a_mutated_request_is_never_allowed_unless_it_still_parses(data: Any) -> None:
    targets.check_request_data(data)


@given(requests())
def test_well_formed_requests_decide_alike_through_json_protobuf_and_service(
    data: dict[str, Any],
) -> None:
    targets.check_request_data(data)
    request = parse_request(data, now=targets.NOW)
    single = targets.engine().decide(request)
    batch = targets.engine().decide_batch([request, request])
    assert [targets.outcome(d) for d in batch] == [targets.outcome(single)] * 2


@given(st.binary(max_size=512))
@example(b"\x0a\xff\xff\xff\xff\x0f")  # a length prefix far beyond the message
@example(b"\x22" + b"\x0a\x02" * 200)  # nested Structs past protobuf's recursion limit
def test_arbitrary_bytes_as_a_check_request(raw: bytes) -> None:
    targets.check_request_bytes(raw)


@given(requests(), st.data())
def test_a_corrupted_check_request_is_never_an_allow_unless_it_still_decodes(
    data: dict[str, Any], draw: st.DataObject
) -> None:
    raw = bytearray(json_format.ParseDict(data, pb.CheckRequest()).SerializeToString())
    if raw:
        for _ in range(draw.draw(st.integers(1, 4))):
            position = draw.draw(st.integers(0, len(raw) - 1))
            raw[position] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(raw)))
    targets.check_request_bytes(bytes(raw[:cut]))
