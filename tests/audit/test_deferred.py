"""The cheap decision path: records built by the writer from the service's events.

What the request thread no longer does (redaction, building, encoding) must come out
byte for byte as before; batching must not lose, reorder or half-accept anything; fast
paths (redaction walk, decision ids) must equal the plain code they replace.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.audit import (
    REDACTED,
    Audit,
    AuditConfig,
    DeliveryMode,
    FileSinkConfig,
    PipelineConfig,
    Redactor,
    build_decision_record,
    build_refusal_record,
    new_decision_id,
)
from pdp.audit.chain import encode_body, list_log_files
from pdp.audit.pipeline import AuditPipeline
from pdp.audit.service_sink import AuditDecisionSink
from pdp.model import REASON_INVALID_REQUEST, Decision, Effect, Intent, Reason, deny
from pdp.service.sink import DecisionEvent, RefusalCode, RefusalEvent
from tests.audit.helpers import (
    ALLOW,
    CALLER,
    INSTANCE,
    REDACTOR,
    make_record,
    make_request,
    open_pipeline,
    record_ids,
)

CHECK = "/pdp.v1.DecisionService/Check"


def open_audit(log_dir: Path, **pipeline: Any) -> Audit:
    return Audit(
        AuditConfig(
            FileSinkConfig(log_dir), instance_id=INSTANCE, pipeline=PipelineConfig(**pipeline)
        )
    )


def event(arguments: dict[str, Any] | None = None, **fields: Any) -> DecisionEvent:
    values: dict[str, Any] = {
        "decision_id": new_decision_id(),
        "method": CHECK,
        "caller": CALLER,
        "data": {},
        "request": make_request(arguments),
        "decision": ALLOW,
        "latency_us": 77,
    }
    values.update(fields)
    return DecisionEvent(**values)


def raw_lines(log_dir: Path) -> dict[str, bytes]:
    """decision_id -> the line's body as the writer encoded it (chain members cut off)."""
    out: dict[str, bytes] = {}
    for path in list_log_files(log_dir):
        for raw in path.read_bytes().splitlines():
            data = json.loads(raw)
            if "decision_id" in data:
                out[data["decision_id"]] = raw[: raw.rindex(b',"seq":')] + b"}"
    return out


def when(line: bytes) -> datetime:
    return datetime.strptime(json.loads(line)["time"], "%Y-%m-%dT%H:%M:%S.%f%z")


# --- same bytes as building in the request thread ---------------------------------------


@pytest.mark.parametrize("mode", [DeliveryMode.SYNC, DeliveryMode.ASYNC])
def test_records_built_by_the_writer_are_the_records_built_before(
    tmp_path: Path, mode: DeliveryMode
) -> None:
    intent = Intent("triage", ("files/read_file", "files/*"), datetime(2027, 1, 1, tzinfo=UTC))
    shadow = Decision(Effect.DENY, (Reason("new", "token=planted-shadow-secret"),), "sha256:n")
    denied = deny("sha256:abc", REASON_INVALID_REQUEST, "tool: must start with a letter")
    unparsed = {"agent": "spiffe://example.org/agent/a", "tool": "bad tool", "token": "planted"}
    events = [
        event({"path": "/a", "api_key": "planted-key", "rows": [{"password": "p"}, 3, None]}),
        event({"q": "Bearer plantedbearertoken0123456789"}, shadow=shadow),
        event(request=make_request({"n": 1.5}, intent=intent)),
        event(request=None, data=unparsed, decision=denied),
    ]
    audit = open_audit(tmp_path, mode=mode)
    assert list(AuditDecisionSink(audit).record_decisions(events, timeout=5.0)) == [True] * 4
    assert audit.close()
    lines = raw_lines(tmp_path)
    assert list(lines) == [e.decision_id for e in events]  # in order
    for e in events:
        line = lines[e.decision_id]
        expected = build_decision_record(
            e.decision_id,
            e.request if e.request is not None else e.data,
            e.decision,
            e.caller,
            e.latency_us,
            INSTANCE,
            REDACTOR,
            e.shadow,
            time=when(line),
            method=CHECK,
        )
        assert line == encode_body(expected)
    assert b"planted" not in b"".join(p.read_bytes() for p in list_log_files(tmp_path))


def test_refusal_built_by_the_writer_is_the_refusal_built_before(tmp_path: Path) -> None:
    audit = open_audit(tmp_path, mode=DeliveryMode.ASYNC)
    refusal = RefusalEvent(
        new_decision_id(),
        RefusalCode.PERMISSION_DENIED,
        "caller not allowed (Authorization: Basic cGxhbnRlZA==)",
        CHECK,
        "ipv4:127.0.0.1:5555",
        CALLER,
    )
    AuditDecisionSink(audit).record_refusal(refusal)
    assert audit.close()
    line = raw_lines(tmp_path)[refusal.refusal_id]
    expected = build_refusal_record(
        refusal.refusal_id,
        "permission_denied",
        refusal.message,
        caller=CALLER,
        instance_id=INSTANCE,
        redactor=REDACTOR,
        method=CHECK,
        peer=refusal.peer,
        time=when(line),
    )
    assert line == encode_body(expected)


def test_the_sink_blocks_only_in_sync_mode(tmp_path: Path) -> None:
    for mode, blocks in ((DeliveryMode.SYNC, True), (DeliveryMode.ASYNC, False)):
        audit = open_audit(tmp_path / mode.value, mode=mode)
        assert AuditDecisionSink(audit).blocks is blocks
        audit.close()


# --- nothing lost, nothing half-accepted -------------------------------------------------


@pytest.mark.parametrize("mode", [DeliveryMode.SYNC, DeliveryMode.ASYNC])
def test_unencodable_data_fails_alone_on_the_writer(tmp_path: Path, mode: DeliveryMode) -> None:
    # The service never sends a NaN (it refuses them while decoding); another caller
    # might. Records are built on the writer, never on the caller's thread (in async
    # mode the service's event loop): the bad one fails there, alone, and is counted.
    denied = deny("v1", REASON_INVALID_REQUEST, "arguments: numbers must be integers")
    bad = event(request=None, data={"arguments": {"x": float("nan")}}, decision=denied)
    good = [event(), event()]
    audit = open_audit(tmp_path, mode=mode)
    flags = AuditDecisionSink(audit).record_decisions([good[0], bad, good[1]], timeout=5)
    # sync: the service answers audit_unavailable for it; async: queued is enough.
    assert list(flags) == ([True, False, True] if mode is DeliveryMode.SYNC else [True] * 3)
    audit.close()  # False in async mode: a record was accepted and then not written
    assert record_ids(tmp_path) == [good[0].decision_id, good[1].decision_id]
    assert audit.pipeline.stats().failed == 1


def stalled(pipeline: AuditPipeline) -> threading.Event:
    """Blocks the writer in a commit hook after its next commit, until set."""
    release = threading.Event()
    pipeline.add_commit_hook(lambda _position: release.wait(10))
    return release


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return bool(predicate())


def test_a_call_is_queued_whole_or_not_at_all(tmp_path: Path) -> None:
    audit = open_audit(tmp_path, mode=DeliveryMode.ASYNC, queue_size=5)
    sink = AuditDecisionSink(audit)
    release = stalled(audit.pipeline)
    assert list(sink.record_decisions([event()], timeout=None)) == [True]
    assert wait_until(lambda: audit.pipeline.stats().written == 1)  # now stuck in the hook
    first = [event() for _ in range(3)]
    assert list(sink.record_decisions(first, timeout=None)) == [True] * 3
    second = [event() for _ in range(3)]  # 3 + 3 > 5: none of them
    assert list(sink.record_decisions(second, timeout=None)) == [False] * 3
    release.set()
    assert audit.close()
    ids = record_ids(tmp_path)
    assert ids[1:] == [e.decision_id for e in first]
    assert audit.pipeline.stats().rejected == 3


def test_when_the_writer_falls_behind_submitters_build_their_records(tmp_path: Path) -> None:
    # A sync sink's caller is a worker thread: under backpressure it helps build.
    audit = open_audit(tmp_path, mode=DeliveryMode.ASYNC, queue_size=8)
    pipeline = audit.pipeline
    sink = AuditDecisionSink(audit)
    release = stalled(pipeline)
    sink.record_decisions([event()], timeout=None)
    assert wait_until(lambda: pipeline.stats().written == 1)
    deferred = [event({"token": "planted-1"}) for _ in range(4)]  # the queue is now half full
    built_here = [event({"token": "planted-2"}) for _ in range(3)]
    render = sink._decision_record
    assert pipeline.submit_all([(e, 0.0) for e in deferred], render).accepted
    assert pipeline.submit_all([(e, 0.0) for e in built_here], render).accepted
    # Queued as events for the writer, then as encoded lines (no builder left to call).
    assert [item[3] is None for item in pipeline._items] == [False] * 4 + [True] * 3
    release.set()
    assert audit.close()
    lines = raw_lines(tmp_path)
    assert list(lines)[1:] == [e.decision_id for e in deferred + built_here]
    for e in deferred + built_here:
        record = json.loads(lines[e.decision_id])
        assert record["request"]["arguments"] == {"token": REDACTED}


def test_an_async_sink_never_builds_records_on_the_callers_thread(tmp_path: Path) -> None:
    # In async mode the caller is the service's event loop: records are built on the
    # writer only, however far behind it is (the queue bound refuses instead).
    audit = open_audit(tmp_path, mode=DeliveryMode.ASYNC, queue_size=8)
    sink = AuditDecisionSink(audit)
    release = stalled(audit.pipeline)
    sink.record_decisions([event()], timeout=None)
    assert wait_until(lambda: audit.pipeline.stats().written == 1)
    assert list(sink.record_decisions([event() for _ in range(7)], timeout=None)) == [True] * 7
    assert [item[3] is None for item in audit.pipeline._items] == [False] * 7
    assert list(sink.record_decisions([event() for _ in range(2)], timeout=None)) == [False] * 2
    release.set()
    assert audit.close()


def boom(entry: Any) -> dict[str, Any]:
    if entry == "bad":
        raise RuntimeError("a bug in a record builder")
    return dict(make_record(), decision_id=entry)


@pytest.mark.parametrize("mode", [DeliveryMode.SYNC, DeliveryMode.ASYNC])
def test_a_record_that_cannot_be_built_fails_alone_and_is_counted(
    tmp_path: Path, mode: DeliveryMode
) -> None:
    pipeline = open_pipeline(tmp_path, mode)
    ids = [new_decision_id(), new_decision_id()]
    commit = pipeline.submit_all([ids[0], "bad", ids[1]], boom)
    assert commit.accepted
    assert pipeline.flush(5)
    assert commit.wait(5) is False  # settled, not all written
    assert commit.flags == [True, False, True]
    assert "a bug in a record builder" in commit.error
    stats = pipeline.stats()
    assert (stats.written, stats.failed) == (2, 1)
    assert pipeline.close()
    assert record_ids(tmp_path) == ids


# --- batching ----------------------------------------------------------------------------


def test_async_records_are_written_many_per_wakeup(tmp_path: Path) -> None:
    slow = {"async_linger_s": 30.0, "async_flush_interval_s": 30.0, "tick_s": 30.0}
    pipeline = open_pipeline(tmp_path, DeliveryMode.ASYNC, **slow)
    tickets = [pipeline.submit(make_record()) for _ in range(100)]
    assert all(t.accepted for t in tickets)
    time.sleep(0.2)
    assert pipeline.stats().written == 0  # lingering: nobody woke it per record
    assert pipeline.flush(5)
    stats = pipeline.stats()
    assert (stats.written, stats.batches) == (100, 1)
    assert pipeline.close()
    assert record_ids(tmp_path) == [t.decision_id for t in tickets]


def test_an_idle_sync_writer_sleeps(tmp_path: Path) -> None:
    pipeline = open_pipeline(tmp_path, DeliveryMode.SYNC, tick_s=0.1)
    assert pipeline.submit(make_record()).wait(5)
    before = pipeline.stats().wakeups
    time.sleep(0.5)
    # One turn per tick (about 5); a writer spinning on a past deadline makes thousands.
    assert pipeline.stats().wakeups - before < 50
    assert pipeline.close()


# --- fast paths equal the plain code ------------------------------------------------------


def reference_walk(redactor: Redactor, value: Any, path: str, masked: list[str], depth: int) -> Any:
    """Redactor._walk as it was written before its fast paths."""
    if isinstance(value, str):
        cleaned = redactor.text(value)
        if cleaned != value:
            masked.append(path)
        return cleaned
    if depth >= 64 and isinstance(value, Mapping | list | tuple):
        masked.append(path)
        return REDACTED
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = redactor.text(key) if isinstance(key, str) else str(key)
            if name != key:
                masked.append(f"{path}.{REDACTED}")
                base, n = name, 2
                while name in out or name in value:
                    name, n = f"{base}#{n}", n + 1
            item_path = f"{path}.{name}"
            if isinstance(key, str) and redactor.is_secret_key(key):
                masked.append(item_path)
                out[name] = REDACTED
            else:
                out[name] = reference_walk(redactor, item, item_path, masked, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [
            reference_walk(redactor, item, f"{path}[{i}]", masked, depth + 1)
            for i, item in enumerate(value)
        ]
    return value


_TEXTS = st.sampled_from(
    ["plain", "T-123", "Bearer plantedbearertoken0123456789", "password=hunter2", "x" * 300]
) | st.text(max_size=12)
_KEYS = st.sampled_from(["path", "token", "apiKey", "max_tokens", "Bearer abcdefghijklmnop"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXTS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_KEYS | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_redaction_walk_equals_the_plain_walk(value: Any) -> None:
    masked: list[str] = []
    expected = reference_walk(REDACTOR, value, "arguments", masked, 0)
    assert REDACTOR.value(value, "arguments") == (expected, tuple(masked))


def test_the_redaction_walk_cuts_at_the_same_depth() -> None:
    deep: Any = {"leaf": "Bearer plantedbearertoken0123456789"}
    for _ in range(70):
        deep = {"a": [deep]}
    masked: list[str] = []
    expected = reference_walk(REDACTOR, deep, "x", masked, 0)
    assert REDACTOR.value(deep, "x") == (expected, tuple(masked))
    assert REDACTED in json.dumps(expected)


def test_decision_ids_of_a_forked_child_are_its_own() -> None:
    new_decision_id()  # the parent has a pool of random words now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the next id, then leave without cleanup
        os.write(write, new_decision_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_decision_id()
    assert len(child) == 36
    assert child[19:] != parent[19:]  # rand_b: not the same word of a shared pool
