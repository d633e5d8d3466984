"""Prometheus metrics: counted on the decision path, scraped from a real `pdp serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdp.engine import Engine, load_policies
from pdp.engine.runtime import ReloadEvent
from pdp.model import Caller, Decision, Effect, Reason
from pdp.service.config import ConfigError, ServiceConfig, config_from_mapping
from pdp.service.metrics import MeteredSink, ServiceMetrics
from pdp.service.servicer import CHECK_METHOD, FixedEngine
from pdp.service.sink import DecisionEvent, RefusalCode, RefusalEvent
from tests.conftest import EXAMPLE_POLICIES
from tests.service.conftest import ServeProcess

PDP = str(Path(sys.executable).parent / "pdp")
REQUESTS = EXAMPLE_POLICIES / "examples" / "requests"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


class _Recorder:
    blocks = False

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.refusals: list[RefusalEvent] = []

    def record_decisions(self, events: object, timeout: float | None) -> list[bool]:
        return [self.ok] * len(events)  # type: ignore[arg-type]

    def record_refusal(self, event: RefusalEvent) -> None:
        self.refusals.append(event)


def _event(engine: Engine, decision: Decision) -> DecisionEvent:
    caller = Caller("spiffe://acme.test/gateway/edge", "01", "acme.test")
    return DecisionEvent("id", CHECK_METHOD, caller, {}, None, decision, 120)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_policies(EXAMPLE_POLICIES))


def test_reason_labels_are_bounded_to_loaded_policies_and_codes(engine: Engine) -> None:
    metrics = ServiceMetrics(FixedEngine(engine), worker="3")
    sink = MeteredSink(_Recorder(), metrics)
    version = engine.version
    sink.record_decisions(
        [
            _event(engine, Decision(Effect.ALLOW, (Reason("support.read_tickets", ""),), version)),
            _event(engine, Decision(Effect.DENY, (Reason("default_deny", ""),), version)),
            # A reason no loaded policy has (a caller cannot mint label values).
            _event(engine, Decision(Effect.DENY, (Reason("spiffe://x/attacker-1", ""),), version)),
        ],
        None,
    )
    found = samples(metrics.exposition().decode())
    assert (
        value(
            found,
            "pdp_decisions_total",
            decision="allow",
            reason="support.read_tickets",
            worker="3",
        )
        == 1
    )
    assert (
        value(found, "pdp_decisions_total", decision="deny", reason="default_deny", worker="3") == 1
    )
    assert value(found, "pdp_decisions_total", decision="deny", reason="other", worker="3") == 1
    assert not any("attacker" in str(labels) for _, labels in found)
    assert value(found, "pdp_coalesced_batch_requests_count", worker="3") == 1
    assert value(found, "pdp_coalesced_batch_requests_sum", worker="3") == 3
    assert value(found, "pdp_decision_duration_seconds_count", method=CHECK_METHOD, worker="3") == 3
    # 120 µs falls in the 250 µs bucket, not the 100 µs one.
    assert (
        value(
            found,
            "pdp_decision_duration_seconds_bucket",
            method=CHECK_METHOD,
            le="0.0001",
            worker="3",
        )
        == 0
    )
    assert (
        value(
            found,
            "pdp_decision_duration_seconds_bucket",
            method=CHECK_METHOD,
            le="0.00025",
            worker="3",
        )
        == 3
    )
    assert value(found, "pdp_policies", role="active", worker="3") == len(engine.compiled)
    assert value(found, "pdp_policy_version_info", role="active", version=version, worker="3") == 1


def test_unrecorded_decisions_count_as_the_deny_they_became(engine: Engine) -> None:
    metrics = ServiceMetrics(FixedEngine(engine))
    sink = MeteredSink(_Recorder(ok=False), metrics)
    allow = Decision(Effect.ALLOW, (Reason("support.read_tickets", ""),), engine.version)
    assert sink.record_decisions([_event(engine, allow)], None) == [False]
    found = samples(metrics.exposition().decode())
    assert (
        value(found, "pdp_decisions_total", decision="deny", reason="audit_unavailable", worker="0")
        == 1
    )
    assert (
        "pdp_decisions_total",
        frozenset({("decision", "allow"), ("reason", "support.read_tickets"), ("worker", "0")}),
    ) not in found


def test_refusals_and_reloads_are_counted(engine: Engine) -> None:
    metrics = ServiceMetrics(FixedEngine(engine))
    inner = _Recorder()
    sink = MeteredSink(inner, metrics)
    sink.record_refusal(
        RefusalEvent("r1", RefusalCode.RESOURCE_EXHAUSTED, "rate", CHECK_METHOD, "ipv4:x", None)
    )
    assert len(inner.refusals) == 1  # still recorded
    now = datetime.now(UTC)
    metrics.on_reload(ReloadEvent(now, "p", True, "active", "v2", "v2"))
    metrics.on_reload(ReloadEvent(now, "p", True, "active", "v2", "v2", "unchanged"))
    metrics.on_reload(ReloadEvent(now, "p", False, "shadow", "v1", "", "bad.cedar:1: oops"))
    found = samples(metrics.exposition().decode())
    assert value(found, "pdp_refusals_total", code="resource_exhausted", worker="0") == 1
    assert (
        value(found, "pdp_policy_reloads_total", role="active", outcome="applied", worker="0") == 1
    )
    assert (
        value(found, "pdp_policy_reloads_total", role="active", outcome="unchanged", worker="0")
        == 1
    )
    assert (
        value(found, "pdp_policy_reloads_total", role="shadow", outcome="rejected", worker="0") == 1
    )


def test_metrics_listen_is_checked() -> None:
    assert config_from_mapping({"metrics_listen": 9464}).metrics_listen == "9464"
    assert ServiceConfig(metrics_listen="[::1]:0").metrics_listen == "[::1]:0"
    for bad in ("localhost", "host:99999", ":", "a:b"):
        with pytest.raises(ConfigError, match="metrics_listen"):
            ServiceConfig(metrics_listen=bad)


def _call(state: Path, address: str, request: Path) -> dict[str, object]:
    result = subprocess.run(
        [PDP, "call", str(request), "--dev", "--state-dir", str(state), "--target", address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_a_real_pdp_serve_is_scraped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    served = ServeProcess(
        ["--dev", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--metrics", "0"],
        state_dir=state,
    )
    try:
        line = served.wait_for_line("metrics on ", 10)
        url = line.split("metrics on ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")  # loopback unless a host is named
        allowed = _call(state, served.address, REQUESTS / "support-get-ticket.json")
        denied = _call(state, served.address, REQUESTS / "support-delete-ticket.json")
        assert allowed["decision"] == "allow" and denied["decision"] == "deny"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        assert served.stop() == 0
    found = samples(text)
    allow_reason = allowed["reasons"][0]["policy"]  # type: ignore[index]
    deny_reason = denied["reasons"][0]["policy"]  # type: ignore[index]
    assert (
        value(found, "pdp_decisions_total", decision="allow", reason=allow_reason, worker="0") == 1
    )
    assert value(found, "pdp_decisions_total", decision="deny", reason=deny_reason, worker="0") == 1
    assert value(found, "pdp_decision_duration_seconds_count", method=CHECK_METHOD, worker="0") == 2
    assert value(found, "pdp_serving", worker="0") == 1
    assert value(found, "pdp_rpcs_in_flight", worker="0") >= 0  # per-caller slots wired in
    assert value(found, "pdp_audit_healthy", worker="0") == 1
    assert value(found, "pdp_audit_written_total", worker="0") >= 2
    assert value(found, "pdp_audit_queue_records", worker="0") >= 0
    assert (
        value(
            found,
            "pdp_policy_version_info",
            role="active",
            version=str(allowed["policy_version"]),
            worker="0",
        )
        == 1
    )
    svid_left = value(found, "pdp_svid_expiry_seconds", worker="0")
    assert 0 < svid_left < 400 * 86400
    assert value(found, "pdp_bundle_expiry_seconds", trust_domain="pdp.dev", worker="0") > svid_left
    # Every sample carries the worker label; no SPIFFE ID or argument is a label value.
    assert all(dict(labels).get("worker") == "0" for _, labels in found)
    assert "spiffe://" not in text.replace("# HELP", "")


def test_nats_lag_counts_bytes_across_rotated_files(tmp_path: Path) -> None:
    from pdp.audit.filesink import LogPosition
    from pdp.service.metrics import unshipped_bytes

    first, second = "audit-00000000000000000001.jsonl", "audit-00000000000000000100.jsonl"
    (tmp_path / first).write_bytes(b"x" * 1000)
    (tmp_path / second).write_bytes(b"y" * 500)
    (tmp_path / "unrelated.txt").write_bytes(b"z" * 9999)
    end = LogPosition(second, 400)
    assert unshipped_bytes(tmp_path, end, LogPosition(second, 100)) == 300
    assert unshipped_bytes(tmp_path, end, LogPosition(first, 900)) == 100 + 400
    assert unshipped_bytes(tmp_path, end, None) == 1000 + 400
    assert unshipped_bytes(tmp_path, None, None) == 0


def test_refusals_per_caller_are_labelled_by_the_configured_pattern(engine: Engine) -> None:
    from pdp.service.admission import RefusalCounts

    counts = RefusalCounts()
    counts.add("spiffe://acme.test/gateway/edge-1", "resource_exhausted")
    counts.add("spiffe://acme.test/gateway/edge-2", "resource_exhausted")
    counts.add("spiffe://evil.test/x", "permission_denied")
    counts.add("ipv4:10.0.0.9", "unauthenticated")
    metrics = ServiceMetrics(
        FixedEngine(engine),
        refusals_by_caller=counts.snapshot,
        caller_patterns=["spiffe://acme.test/gateway/*"],
        in_flight=lambda: 3,
    )
    text = metrics.exposition().decode()
    found = samples(text)
    pattern = "spiffe://acme.test/gateway/*"
    labels = {"caller": pattern, "code": "resource_exhausted", "worker": "0"}
    assert value(found, "pdp_caller_refusals_total", **labels) == 2
    assert value(found, "pdp_refused_callers", caller=pattern, worker="0") == 2
    unlisted = {"caller": "unlisted", "code": "permission_denied", "worker": "0"}
    assert value(found, "pdp_caller_refusals_total", **unlisted) == 1
    anonymous = {"caller": "unauthenticated", "code": "unauthenticated", "worker": "0"}
    assert value(found, "pdp_caller_refusals_total", **anonymous) == 1
    assert value(found, "pdp_rpcs_in_flight", worker="0") == 3
    # No caller's own ID or address becomes a label value.
    assert "edge-1" not in text and "evil.test" not in text and "10.0.0.9" not in text
