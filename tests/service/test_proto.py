"""The wire contract: generated code is current, and the proto3 JSON form of a
CheckRequest is exactly the request JSON that ``pdp check`` reads."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from pdp._proto.pdp.v1 import audit_pb2 as apb
from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.client.values import check_result
from pdp.model import Decision, Effect, Limits, Reason, RequestError, parse_request
from pdp.service.convert import check_response, request_data

from .conftest import REPO, REQUESTS

GENERATED = REPO / "pdp" / "_proto"
LIMITS = Limits()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.py*")}
    committed = {
        p.relative_to(GENERATED): p.read_bytes()
        for p in GENERATED.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    stale = sorted(
        str(name)
        for name in fresh.keys() | committed.keys()
        if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"pdp/_proto is stale ({stale}); run: python scripts/gen_proto.py"


def test_every_proto_file_is_generated() -> None:
    protos = sorted((REPO / "proto").rglob("*.proto"))
    assert [p.name for p in protos] == ["audit.proto", "decision.proto"]
    for proto in protos:
        module = GENERATED / proto.relative_to(REPO / "proto").with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert module.with_name(module.name + suffix).is_file(), (proto, suffix)
    assert list(apb.DESCRIPTOR.services_by_name) == ["AuditService"]
    assert list(apb.DESCRIPTOR.services_by_name["AuditService"].methods_by_name) == [
        "WatchDecisions",
        "GetStatus",
    ]


def test_decision_zero_value_is_deny() -> None:
    assert pb.CheckResponse().decision == pb.DECISION_DENY == 0


REQUEST_FILES = sorted(REQUESTS.glob("*.json"))


@pytest.mark.parametrize("path", REQUEST_FILES, ids=[p.stem for p in REQUEST_FILES])
def test_example_requests_are_check_requests(path: Path) -> None:
    original = json.loads(path.read_text())
    message = json_format.Parse(path.read_text(), pb.CheckRequest())
    # Round trip with proto field names gives back the very same JSON...
    again = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert again == original
    # ...and the service's conversion gives what the model parses from the file.
    assert parse_request(request_data(message, LIMITS), now=NOW) == parse_request(original, now=NOW)


def test_standard_json_printers_use_lower_camel_case() -> None:
    """``MessageToJson`` without ``preserving_proto_field_name`` writes ``expiresAt``,
    which ``pdp check`` does not read: print with proto field names for request files."""
    message = json_format.Parse(
        (REQUESTS / "support-get-ticket.json").read_text(), pb.CheckRequest()
    )
    camel = json_format.MessageToDict(message)
    assert "expiresAt" in camel["intent"]
    with pytest.raises(RequestError, match=r"intent\.expiresAt"):
        parse_request(camel, now=NOW)


def _convert(**fields: Any) -> dict[str, Any]:
    return request_data(json_format.ParseDict(fields, pb.CheckRequest()), LIMITS)


def test_conversion_leaves_out_empty_fields() -> None:
    assert _convert() == {}
    data = _convert(agent="spiffe://a.test/x", arguments={}, intent={})
    assert data == {
        "agent": "spiffe://a.test/x",
        "arguments": {},
        "intent": {"purpose": "", "tools": []},
    }


def test_struct_numbers_are_doubles_until_the_model_normalises_them() -> None:
    data = _convert(
        agent="spiffe://acme.test/agent/support-bot",
        server="crm",
        tool="get_ticket",
        arguments={"n": 3, "list": [1, 2.0], "flag": True, "s": "x"},
    )
    assert data["arguments"] == {"n": 3.0, "list": [1.0, 2.0], "flag": True, "s": "x"}
    request = parse_request(data, now=NOW)
    assert request.arguments == {"n": 3, "list": [1, 2], "flag": True, "s": "x"}
    assert all(type(v) is int for v in request.arguments["list"])
    with pytest.raises(RequestError, match=r"arguments\.x"):
        parse_request({**data, "arguments": _convert(arguments={"x": 0.5})["arguments"]}, now=NOW)


def test_timestamps_become_rfc3339() -> None:
    data = _convert(time="2026-11-23T10:00:00.250Z", intent={"expires_at": "2026-12-01T00:00:00Z"})
    assert data["time"] == "2026-11-23T10:00:00.250Z"
    assert data["intent"]["expires_at"] == "2026-12-01T00:00:00Z"


def test_out_of_range_timestamp_is_a_request_error() -> None:
    message = pb.CheckRequest()
    message.time.seconds = 2**62
    with pytest.raises(RequestError) as info:
        request_data(message, LIMITS)
    assert info.value.field == "time"


def test_response_prints_like_pdp_check() -> None:
    decision = Decision(Effect.ALLOW, (Reason("p.id", "because"),), "v1", ())
    printed = check_result(check_response(decision, "id-1")).to_json()
    assert printed == {**decision.to_json(), "decision_id": "id-1"}
    assert list(printed) == ["decision", "reasons", "errors", "policy_version", "decision_id"]
