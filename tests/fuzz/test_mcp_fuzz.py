"""Fuzzing the MCP mapping of the gateway doors (pdp/mcp/mapping.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pdp.mcp.mapping import HttpRequest
from tests.fuzz import targets
from tests.fuzz.strategies import hostile, json_documents, requests

header_names = st.sampled_from(
    [
        "mcp-session-id",
        "mcp-method",
        "mcp-name",
        "mcp-protocol-version",
        "x-pdp-intent",
        "x-pdp-agent-svid",
        "content-type",
    ]
)


def tool_call(data: dict[str, Any], **params: Any) -> dict[str, Any]:
    meta = {"pdp.dev/intent": data["intent"]} if "intent" in data else {}
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": data["tool"], "arguments": data["arguments"], "_meta": meta, **params},
    }


@given(st.binary(max_size=400))
def test_arbitrary_bodies(raw: bytes) -> None:
    targets.mcp_body(raw)


@given(json_documents, st.lists(st.tuples(header_names, st.text(max_size=40)), max_size=4))
def test_any_json_body_with_any_decision_headers(body: Any, headers: list[tuple[str, str]]) -> None:
    raw = json.dumps(body).encode()
    targets.check_mcp_http(HttpRequest.build("POST", [*targets.MCP_HEADERS.items(), *headers], raw))


@given(requests(), st.sampled_from(["params", "meta", "arguments"]), hostile, st.text(max_size=12))
def test_a_tool_call_with_one_hostile_member(
    data: dict[str, Any], where: str, value: Any, key: str
) -> None:
    body = tool_call(data)
    target = {
        "params": body["params"],
        "meta": body["params"]["_meta"],
        "arguments": body["params"]["arguments"],
    }[where]
    target[key] = value
    try:
        raw = json.dumps(body, allow_nan=True).encode()
    except (TypeError, ValueError):
        return
    targets.check_mcp_http(HttpRequest.build("POST", targets.MCP_HEADERS, raw), agent=data["agent"])


@given(requests())
def test_a_well_formed_tool_call_decides_as_the_request_it_carries(data: dict[str, Any]) -> None:
    raw = json.dumps(tool_call(data)).encode()
    headers = dict(targets.MCP_HEADERS)
    if data.get("session"):
        headers["mcp-session-id"] = data["session"]
    http = HttpRequest.build("POST", headers, raw)
    mapping = targets.check_mcp_http(http, agent=data["agent"], server=data["server"])
    (message,) = mapping.messages
    assert message.error is None, message.error
    assert message.request is not None
    mapped = targets.engine().decide_json(dict(message.request), now=targets.NOW)
    direct = targets.engine().decide_json(
        {k: v for k, v in data.items() if k != "time"}, now=targets.NOW
    )
    assert targets.outcome(mapped) == targets.outcome(direct)
