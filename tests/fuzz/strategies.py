"""Hypothesis strategies: well-formed requests over the example inventory, and the
mutations that make them malformed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.conftest import EXAMPLE_POLICIES

_INVENTORY = json.loads((EXAMPLE_POLICIES / "entities.json").read_text())
AGENTS = sorted(_INVENTORY["agents"])
TOOLS = sorted(
    (server, tool) for server, spec in _INVENTORY["servers"].items() for tool in spec["tools"]
)

names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,15}\Z")
segments = st.from_regex(r"\A[A-Za-z0-9._-]{1,12}\Z").filter(lambda s: s not in {".", ".."})
trust_domains = st.sampled_from(["acme.test", "partner.test", "evil.test"]) | st.from_regex(
    r"\A[a-z0-9][a-z0-9._-]{0,20}\Z"
)
spiffe_ids = st.builds(
    lambda td, path: f"spiffe://{td}/" + "/".join(path),
    trust_domains,
    st.lists(segments, min_size=1, max_size=4),
)
agents = st.sampled_from(AGENTS) | spiffe_ids
# Integers a protobuf Struct (doubles) carries exactly, so every path sees the same value.
scalars = st.text(max_size=40) | st.booleans() | st.integers(-(2**53), 2**53)
arguments = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)
times = st.datetimes(
    min_value=__import__("datetime").datetime(2020, 1, 1),
    max_value=__import__("datetime").datetime(2035, 1, 1),
).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))


@st.composite
def intents(draw: st.DrawFn) -> dict[str, Any]:
    tools = draw(
        st.lists(
            st.sampled_from([f"{s}/{t}" for s, t in TOOLS] + [f"{s}/*" for s, _ in TOOLS]),
            max_size=4,
        )
    )
    intent: dict[str, Any] = {"purpose": draw(names), "tools": tools}
    if draw(st.booleans()):
        intent["expires_at"] = draw(times)
    return intent


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed request: mostly inventory agents and tools, so allows happen."""
    server, tool = draw(st.sampled_from(TOOLS) | st.tuples(names, names))
    data: dict[str, Any] = {
        "agent": draw(agents),
        "server": server,
        "tool": tool,
        "arguments": draw(st.dictionaries(names, arguments, max_size=4)),
        "time": draw(times),
    }
    if draw(st.integers(0, 4)):
        data["intent"] = draw(intents())
    if draw(st.booleans()):
        data["session"] = draw(names)
    return data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4)
        # Non-string keys: YAML test files (pdp test) can produce them.
        | st.dictionaries(st.text(max_size=12) | st.integers(-3, 3), inner)
    ),
    max_leaves=20,
)

# What JSON text can hold (string keys only): token headers and claims, MCP bodies.
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)

# Values that break some rule wherever they land in a request.
hostile = json_values | st.sampled_from(
    [
        None,
        "",
        "spiffe://ACME.test/agent/x",
        "spiffe://acme.test/agent/../admin",
        "crm/get_ticket",
        "x" * 5000,
        {"__entity": {"type": "Agent", "id": "spiffe://acme.test/agent/support-bot"}},
        [[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]],
        1.5,
        2**70,
        float("nan"),
        "\ud800",
        "2026-13-40T00:00:00Z",
    ]
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> Any:
    """A well-formed request with one part replaced, removed or added."""
    data = draw(requests())
    paths: list[tuple[Any, Any]] = [(data, key) for key in data]
    if isinstance(data.get("intent"), dict):
        paths += [(data["intent"], key) for key in data["intent"]]
    if data["arguments"]:
        paths += [(data["arguments"], key) for key in data["arguments"]]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    container, key = draw(st.sampled_from(paths))
    if action == "replace":
        container[key] = draw(hostile)
    elif action == "delete":
        del container[key]
    else:
        container[draw(st.text(max_size=12))] = draw(hostile)
    return data
