"""Prometheus metrics of one ``pdp serve`` process (one worker), on a port of their own.

The endpoint is plain HTTP on a separate listener (``metrics_listen`` in the config,
``pdp serve --metrics [HOST:]PORT``; loopback unless a host is named; off unless asked
for): scraping it needs no SVID, so it carries nothing a caller could not see from its
own answers, only counts. With ``--workers N`` worker K listens on PORT+K (each worker
has its own engine, audit chain and counters); every sample carries ``worker="K"``.

Names follow Prometheus practice (base units, ``_total`` counters, ``pdp_`` prefix) and
every label set is bounded: ``reason`` is a built-in reason code or the ``@id`` of a
policy of a set this process has loaded (anything else is ``other``), ``method`` is one
of the service's gRPC methods, ``code`` a refusal code, ``trust_domain`` one of the
trust bundles the server holds. Nothing takes an agent, a caller or an argument as a
label.

What is counted and where it comes from:

* decisions, their latency and the size of each coalesced batch: :class:`MeteredSink`
  wraps the service's decision sink, which sees every decided request once (a decision
  the audit log could not take is counted as the ``audit_unavailable`` deny it became);
* refusals: the same wrapper (every refused call passes through the sink);
* policy reloads: a reload listener of the policy runtime;
* gauges read at scrape time (:class:`_StateCollector`): audit queue depth and lag,
  NATS shipping lag, policy versions, own SVID and trust bundle expiry, health.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from pdp.audit.filesink import LogPosition
from pdp.engine import Engine
from pdp.engine.runtime import ReloadEvent
from pdp.identity.sources import IdentitySource
from pdp.identity.spiffe_id import SpiffeIdPattern
from pdp.model import (
    REASON_AUDIT_UNAVAILABLE,
    REASON_CALLER_NOT_BOUND,
    REASON_DEFAULT_DENY,
    REASON_EVALUATION_ERROR,
    REASON_INTERNAL_ERROR,
    REASON_INVALID_ARGUMENTS,
    REASON_INVALID_REQUEST,
    REASON_UNKNOWN_TOOL,
    Decision,
)
from pdp.service.config import ConfigError
from pdp.service.sink import (
    DecisionEvent,
    DecisionSink,
    DeferredDecisionSink,
    PendingRecords,
    RefusalEvent,
)

log = logging.getLogger(__name__)

BUILTIN_REASONS = frozenset(
    {
        REASON_AUDIT_UNAVAILABLE,
        REASON_CALLER_NOT_BOUND,
        REASON_DEFAULT_DENY,
        REASON_EVALUATION_ERROR,
        REASON_INTERNAL_ERROR,
        REASON_INVALID_ARGUMENTS,
        REASON_INVALID_REQUEST,
        REASON_UNKNOWN_TOOL,
    }
)
OTHER = "other"
# Decisions take tens of microseconds to milliseconds: the client's default buckets
# start at 5 ms and would put nearly every decision in the first one.
LATENCY_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class EngineSource(Protocol):
    @property
    def engine(self) -> Engine: ...


@dataclass(frozen=True, slots=True)
class AuditState:
    """What the gauges read from the audit stream; ``None`` where it does not apply."""

    queued: int
    lag_s: float
    written: int
    rejected: int
    failed: int
    healthy: bool
    nats_connected: bool | None = None
    nats_lag_bytes: int | None = None
    nats_shipped: int | None = None


class ServiceMetrics:
    """The counters of one process and the registry the endpoint serves."""

    def __init__(
        self,
        engines: EngineSource,
        *,
        worker: str = "0",
        identity: IdentitySource | None = None,
        audit: Callable[[], AuditState | None] | None = None,
        serving: Callable[[], bool] | None = None,
        refusals_by_caller: Callable[[], Mapping[tuple[str, str], int]] | None = None,
        caller_patterns: Sequence[str] = (),
        in_flight: Callable[[], int] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.worker = worker
        self._engines = engines
        self._inner = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "pdp_decisions",
            "Decisions answered, by decision and determining reason (policy @id or code)",
            ("decision", "reason"),
            registry=self._inner,
        )
        self.latency = Histogram(
            "pdp_decision_duration_seconds",
            "From receiving a call to having its decision, before recording, by gRPC method",
            ("method",),
            buckets=LATENCY_BUCKETS,
            registry=self._inner,
        )
        self.batch = Histogram(
            "pdp_coalesced_batch_requests",
            "Requests decided together in one Cedar batch and one audit submission",
            buckets=BATCH_BUCKETS,
            registry=self._inner,
        )
        self.refusals = Counter(
            "pdp_refusals",
            "Calls refused without a decision, by refusal code",
            ("code",),
            registry=self._inner,
        )
        self.reloads = Counter(
            "pdp_policy_reloads",
            "Policy reload attempts by role (active, shadow) and outcome"
            " (applied, unchanged, rejected)",
            ("role", "outcome"),
            registry=self._inner,
        )
        self._inner.register(_StateCollector(engines, identity, audit, serving, clock))
        if refusals_by_caller is not None:
            self._inner.register(_CallerRefusals(refusals_by_caller, caller_patterns, in_flight))
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerLabel(self._inner, worker))
        self._known: tuple[int, frozenset[str]] = (0, frozenset())
        self._lock = threading.Lock()

    def _reason_label(self, decision: Decision) -> str:
        if not decision.reasons:
            return "none"
        reason = decision.reasons[0].policy
        if reason in BUILTIN_REASONS:
            return reason
        return reason if reason in self._policy_ids() else OTHER

    def _policy_ids(self) -> Collection[str]:
        # Ids of the sets loaded so far: a reload may add some (the label set grows by
        # what the operator deployed, never by what a caller sends).
        compiled = self._engines.engine.compiled
        with self._lock:
            marker, known = self._known
            if marker != id(compiled):
                known = known | frozenset(compiled.policies)
                self._known = (id(compiled), known)
        return known

    def count_decisions(self, events: Sequence[DecisionEvent], recorded: Sequence[bool]) -> None:
        if not events:
            return
        self.batch.observe(len(events))
        for event, ok in zip(events, recorded, strict=False):
            if ok:
                decision, reason = event.decision.effect.value, self._reason_label(event.decision)
            else:
                decision, reason = "deny", REASON_AUDIT_UNAVAILABLE
            self.decisions.labels(decision, reason).inc()
            self.latency.labels(event.method).observe(event.latency_us / 1e6)

    def count_refusal(self, event: RefusalEvent) -> None:
        self.refusals.labels(event.code.value).inc()

    def on_reload(self, event: ReloadEvent) -> None:
        if not event.ok:
            outcome = "rejected"
        elif event.detail == "unchanged":
            outcome = "unchanged"
        else:
            outcome = "applied"
        self.reloads.labels(event.role, outcome).inc()

    def exposition(self) -> bytes:
        """The text format, as the endpoint serves it (for tests and `pdp` tooling)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MeteredSink:
    """A :class:`DecisionSink` that counts what passes to the sink it wraps."""

    def __init__(self, inner: DecisionSink, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        # The service decides on its event loop only for a sink that never blocks.
        self.blocks = getattr(inner, "blocks", True)

    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        flags = self._inner.record_decisions(events, timeout)
        try:
            self._metrics.count_decisions(events, [flag is True for flag in flags])
        except Exception:  # counting must never cost a decision
            log.exception("counting decisions for the metrics failed")
        return flags

    def record_refusal(self, event: RefusalEvent) -> None:
        try:
            self._metrics.count_refusal(event)
        except Exception:
            log.exception("counting a refusal for the metrics failed")
        self._inner.record_refusal(event)


class MeteredDeferredSink(MeteredSink):
    """:class:`MeteredSink` for a sink that calls back (``DeferredDecisionSink``, the
    durable audit log): decisions are counted when the service reads their outcome."""

    def __init__(self, inner: DeferredDecisionSink, metrics: ServiceMetrics) -> None:
        super().__init__(inner, metrics)
        self._deferred = inner

    def submit_decisions(
        self,
        events: Sequence[DecisionEvent],
        timeout: float | None,
        on_settled: Callable[[], None],
    ) -> PendingRecords:
        pending = self._deferred.submit_decisions(events, timeout, on_settled)
        return _MeteredPending(pending, events, self._metrics)


class _MeteredPending:
    def __init__(
        self, inner: PendingRecords, events: Sequence[DecisionEvent], metrics: ServiceMetrics
    ) -> None:
        self._inner, self._events, self._metrics = inner, events, metrics
        self.wait_s = inner.wait_s

    def flags(self) -> Sequence[bool]:
        flags = self._inner.flags()
        try:
            self._metrics.count_decisions(self._events, [flag is True for flag in flags])
        except Exception:  # counting must never cost a decision
            log.exception("counting decisions for the metrics failed")
        return flags


def metered(inner: DecisionSink, metrics: ServiceMetrics) -> MeteredSink:
    """The counting wrapper that keeps ``inner``'s shape (deferred or not)."""
    if hasattr(inner, "submit_decisions"):
        return MeteredDeferredSink(inner, metrics)  # type: ignore[arg-type]
    return MeteredSink(inner, metrics)


class _WorkerLabel(Collector):
    """Adds ``worker="K"`` to every sample of a registry."""

    def __init__(self, inner: CollectorRegistry, worker: str) -> None:
        self._inner = inner
        self._worker = worker

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():
            metric.samples = [
                Sample(
                    s.name,
                    {**s.labels, "worker": self._worker},
                    s.value,
                    s.timestamp,
                    s.exemplar,
                    s.native_histogram,
                )
                for s in metric.samples
            ]
            yield metric

    def describe(self) -> Iterable[Metric]:
        return []  # the inner registry checked the names; collecting here runs callbacks


UNAUTHENTICATED = "unauthenticated"
UNLISTED = "unlisted"


def caller_label(key: str, patterns: Sequence[SpiffeIdPattern]) -> str:
    """A bounded label for a caller key: the configured ``callers`` pattern it matches,
    ``unlisted`` for another SPIFFE ID, ``unauthenticated`` for a peer address."""
    if not key.startswith("spiffe://"):
        return UNAUTHENTICATED
    for pattern in patterns:
        if pattern.matches(key):
            return pattern.text
    return UNLISTED


class _CallerRefusals(Collector):
    """Refused calls per caller (pdp.service.admission's counts), labelled by the
    configured caller pattern: a per-caller view whose label set the operator bounds."""

    def __init__(
        self,
        counts: Callable[[], Mapping[tuple[str, str], int]],
        patterns: Sequence[str],
        in_flight: Callable[[], int] | None,
    ) -> None:
        self._counts = counts
        self._patterns = [SpiffeIdPattern(p) for p in patterns]
        self._in_flight = in_flight

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], int] = {}
        callers: dict[str, set[str]] = {}
        for (key, code), count in self._counts().items():
            label = caller_label(key, self._patterns)
            totals[(label, code)] = totals.get((label, code), 0) + count
            callers.setdefault(label, set()).add(key)
        family = CounterMetricFamily(
            "pdp_caller_refusals",
            "Refused calls by the callers pattern the caller matches (unlisted:"
            " another SPIFFE ID; unauthenticated: by peer address) and refusal code",
            labels=["caller", "code"],
        )
        for (label, code), count in sorted(totals.items()):
            family.add_metric([label, code], count)
        yield family
        distinct = GaugeMetricFamily(
            "pdp_refused_callers",
            "Distinct callers (SPIFFE IDs or peer addresses) refused at least once",
            labels=["caller"],
        )
        for label, keys in sorted(callers.items()):
            distinct.add_metric([label], len(keys))
        yield distinct
        if self._in_flight is not None:
            yield GaugeMetricFamily(
                "pdp_rpcs_in_flight", "Calls holding a slot now", value=self._in_flight()
            )


class _StateCollector(Collector):
    """Gauges read when scraped: nothing to keep up to date on the decision path."""

    def __init__(
        self,
        engines: EngineSource,
        identity: IdentitySource | None,
        audit: Callable[[], AuditState | None] | None,
        serving: Callable[[], bool] | None,
        clock: Callable[[], datetime],
    ) -> None:
        self._engines = engines
        self._identity = identity
        self._audit = audit
        self._serving = serving
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only: values change between scrapes

    def collect(self) -> Iterator[Metric]:
        version = GaugeMetricFamily(
            "pdp_policy_version_info",
            "The policy set in force (value 1), by role and version hash",
            labels=["role", "version"],
        )
        count = GaugeMetricFamily("pdp_policies", "Policies in force, by role", labels=["role"])
        engine = self._engines.engine
        version.add_metric(["active", engine.version], 1)
        count.add_metric(["active"], len(engine.compiled))
        shadow: Engine | None = getattr(self._engines, "shadow", None)
        if shadow is not None:
            version.add_metric(["shadow", shadow.version], 1)
            count.add_metric(["shadow"], len(shadow.compiled))
        yield version
        yield count
        if self._serving is not None:
            yield GaugeMetricFamily(
                "pdp_serving", "1 while gRPC health is SERVING", value=int(self._serving())
            )
        yield from self._identity_metrics()
        yield from self._audit_metrics()

    def _identity_metrics(self) -> Iterator[Metric]:
        if self._identity is None:
            return
        now = self._clock()
        snapshot = self._identity.current()
        yield GaugeMetricFamily(
            "pdp_svid_expiry_seconds",
            "Seconds until the server's own X.509-SVID expires (negative: expired)",
            value=(snapshot.not_after - now).total_seconds(),
        )
        bundles = GaugeMetricFamily(
            "pdp_bundle_expiry_seconds",
            "Seconds until the first CA certificate of a trust bundle expires",
            labels=["trust_domain"],
        )
        for trust_domain, certificates in sorted(snapshot.bundles.items()):
            if certificates:
                first = min(c.not_valid_after_utc for c in certificates)
                bundles.add_metric([trust_domain], (first - now).total_seconds())
        yield bundles

    def _audit_metrics(self) -> Iterator[Metric]:
        state = self._audit() if self._audit is not None else None
        if state is None:
            return
        yield GaugeMetricFamily(
            "pdp_audit_queue_records", "Audit records waiting to be written", value=state.queued
        )
        yield GaugeMetricFamily(
            "pdp_audit_queue_lag_seconds",
            "How long records have been waiting in the audit queue (0 when empty)",
            value=state.lag_s,
        )
        yield CounterMetricFamily(
            "pdp_audit_written", "Audit records committed to the log", value=state.written
        )
        yield CounterMetricFamily(
            "pdp_audit_rejected",
            "Audit records refused (queue full, log failing): answered audit_unavailable",
            value=state.rejected,
        )
        yield CounterMetricFamily(
            "pdp_audit_failed", "Audit records accepted but never written", value=state.failed
        )
        yield GaugeMetricFamily(
            "pdp_audit_healthy", "1 while the audit log can be written", value=int(state.healthy)
        )
        if state.nats_connected is not None:
            yield GaugeMetricFamily(
                "pdp_nats_connected", "1 while the NATS shipper is connected",
                value=int(state.nats_connected),
            )  # fmt: skip
        if state.nats_lag_bytes is not None:
            yield GaugeMetricFamily(
                "pdp_nats_lag_bytes",
                "Bytes of the committed audit log not yet acknowledged by JetStream",
                value=state.nats_lag_bytes,
            )
        if state.nats_shipped is not None:
            yield CounterMetricFamily(
                "pdp_nats_shipped", "Audit lines acknowledged by JetStream",
                value=state.nats_shipped,
            )  # fmt: skip


def audit_state(audit: Any) -> Callable[[], AuditState | None]:
    """Reads a running :class:`pdp.audit.config.Audit` for the gauges."""

    def read() -> AuditState | None:
        stats = audit.pipeline.stats()
        state = AuditState(
            queued=stats.queued,
            lag_s=audit.pipeline.queue_lag(),
            written=stats.written,
            rejected=stats.rejected,
            failed=stats.failed,
            healthy=stats.healthy,
        )
        shipper = audit.shipper
        if shipper is None:
            return state
        shipped = shipper.stats()
        lag = unshipped_bytes(audit.config.file.log_dir, audit.sink.committed, shipped.position)
        return AuditState(
            **{
                **state.__dict__,
                "nats_connected": shipped.connected,
                "nats_lag_bytes": lag,
                "nats_shipped": shipped.shipped,
            }
        )

    return read


def unshipped_bytes(log_dir: Path, committed: LogPosition | None, acked: LogPosition | None) -> int:
    """Bytes between the shipper's acknowledged position and the log's committed end
    (both :class:`pdp.audit.filesink.LogPosition`, files in rotation order)."""
    if committed is None:
        return 0
    from pdp.audit.chain import log_file_order

    start_name: str
    start_offset: int
    if acked is None:
        start_name, start_offset = "", 0
    else:
        start_name, start_offset = acked.file, acked.offset
    if start_name == committed.file:
        return max(0, committed.offset - start_offset)
    start_key = log_file_order(start_name) if start_name else None
    end_key = log_file_order(committed.file)
    total = 0
    try:
        names = [p.name for p in log_dir.iterdir()]
    except OSError:
        return 0
    for name in names:
        key = log_file_order(name)
        if key is None or end_key is None or key > end_key:
            continue
        if start_key is not None and key < start_key:
            continue
        if name == committed.file:
            total += committed.offset
        elif name == start_name:
            total += max(0, _size(log_dir / name) - start_offset)
        else:
            total += _size(log_dir / name)
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class MetricsEndpoint:
    """The HTTP listener serving ``/metrics`` from a registry (a daemon thread)."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, host, metrics.registry)
        except OSError as exc:
            raise ConfigError(f"cannot listen for metrics on {host}:{port}: {exc}") from None
        self.host = host
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
