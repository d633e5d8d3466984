"""``pdp replay --target``: send recorded requests to a running pdp and time the answers.

Each recorded request is sent as a ``Check`` call over mTLS, with the identity options
of ``pdp call`` (``--dev``, ``--workload-api`` or ``--cert/--key/--bundle``), at ``--rate``
requests per second with at most ``--concurrency`` in flight. The answer is compared
with the recorded decision like any re-decision, so the same report (and
``--fail-on``) applies, plus throughput and latency percentiles.

Latency is the round trip of one call, measured in the client (connection set-up
excluded: the channel is connected and the server's SPIFFE ID checked before the
first request). When the server cannot keep up, the achieved throughput falls below the
target rate rather than calls queueing in the client.

Three things differ from the recorded calls: the server sets ``gateway`` to *this*
client's SPIFFE ID (policies on ``context.gateway`` may answer otherwise, and the
caller must be bound to the recorded agents), it decides at its own clock (the
recorded ``time`` is ignored: an intent that has expired since is denied), and the
server writes audit records for these calls like any other.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pdp.client_options import ClientOptions
from pdp.model import Decision, Effect
from pdp.replay.records import RecordedDecision
from pdp.replay.redecide import Failed, Outcome


class TargetError(Exception):
    """The target cannot be used (bad address, identity files, server identity)."""


@dataclass(frozen=True, slots=True)
class TargetOptions:
    client: ClientOptions  # the server and the client identity, as for ``pdp call``
    rate: float
    concurrency: int = 8


class LatencyHistogram:
    """Latencies in log-spaced buckets (2% wide): bounded memory, percentiles within 2%."""

    _BASE = math.log(1.02)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        micros = max(seconds * 1e6, 1.0)
        index = int(math.log(micros) / self._BASE)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def percentile(self, fraction: float) -> float:
        """The latency (seconds) below which ``fraction`` of the calls fall (upper bound)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(math.exp((index + 1) * self._BASE) / 1e6, self.max_s)
        return self.max_s


@dataclass
class SendStats:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    started: float = 0.0
    finished: float = 0.0


def performance_json(stats: SendStats, options: TargetOptions) -> dict[str, Any]:
    duration = max(stats.finished - stats.started, 0.0)
    latency = stats.latency
    return {
        "sent": stats.sent,
        "answered": stats.answered,
        "failed": stats.failed,
        "errors": dict(sorted(stats.errors.items())),
        "duration_s": round(duration, 3),
        "target_rate": options.rate,
        "concurrency": options.concurrency,
        "throughput": round(stats.sent / duration, 1) if duration > 0 else 0.0,
        "latency_ms": {
            "p50": round(latency.percentile(0.50) * 1000, 3),
            "p90": round(latency.percentile(0.90) * 1000, 3),
            "p99": round(latency.percentile(0.99) * 1000, 3),
            "max": round(latency.max_s * 1000, 3),
        },
        "served_versions": [
            {"version": version, "records": count}
            for version, count in sorted(stats.versions.items())
        ],
    }


class GrpcSender:
    """Sends recorded requests to one pdp through :class:`pdp.client.Client`;
    ``decide`` is a replay decider."""

    def __init__(self, options: TargetOptions) -> None:
        from pdp.client import Client, ClientError, identity_from_options

        client_options = options.client
        try:
            self._identity = identity_from_options(client_options)
        except ClientError as exc:
            raise TargetError(str(exc)) from None
        try:
            # Every failure is reported per record (replay counts them), never as a deny,
            # and a record is sent once: no retries that would distort the timings.
            self._client = Client(
                client_options.target,
                self._identity,
                timeout=client_options.timeout,
                attempts=1,
                on_failure="raise",
                server_name=client_options.server_name,
            )
        except ClientError as exc:
            self._identity.close()
            raise TargetError(str(exc)) from None
        self.options = options
        self.stats = SendStats()
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="pdp-replay")
        self._slots = threading.BoundedSemaphore(options.concurrency)
        self._lock = threading.Lock()
        self._next_at = 0.0

    def connect(self) -> None:
        """Makes one connection now, so that its set-up and the server's SPIFFE ID check
        are neither in the first latency nor deferred to the first record."""
        from pdp.client import DecisionUnavailable

        try:
            self._client.wait_until_connected()
        except DecisionUnavailable as exc:
            raise TargetError(f"cannot connect to {self.options.client.target}: {exc}") from None

    def send(self, record: RecordedDecision) -> Outcome:
        """One recorded request as one Check call: the decision, or why there is none."""
        from pdp.client import DecisionUnavailable, InvalidRequestError

        started = time.perf_counter()
        try:
            # The recorded proof cannot be sent (its tokens were never recorded): the
            # target decides the intent as unsigned and the agent as unproven.
            result = self._client.check({k: v for k, v in record.request.items() if k != "proof"})
        except InvalidRequestError as exc:
            return self._failed("invalid_request", str(exc))
        except DecisionUnavailable as exc:
            return self._failed(exc.code, str(exc))
        elapsed = time.perf_counter() - started
        decision = Decision(
            Effect.ALLOW if result.allowed else Effect.DENY,
            result.reasons,
            result.policy_version,
            result.errors,
        )
        with self._lock:
            self.stats.answered += 1
            self.stats.latency.add(elapsed)
            version = decision.policy_version
            self.stats.versions[version] = self.stats.versions.get(version, 0) + 1
        return decision

    def _failed(self, code: str, error: str) -> Failed:
        with self._lock:
            self.stats.failed += 1
            self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        return Failed(error)

    def _send_and_release(self, record: RecordedDecision) -> Outcome:
        try:
            return self.send(record)
        finally:
            self._slots.release()

    def decide(self, records: Sequence[RecordedDecision]) -> list[Outcome]:
        """Sends ``records`` paced at the rate; answers in order."""
        interval = 1.0 / self.options.rate
        futures: list[Future[Outcome]] = []
        for record in records:
            now = time.monotonic()
            if not self.stats.started:
                self.stats.started, self._next_at = now, now
            if self._next_at > now:
                time.sleep(self._next_at - now)
            # Never schedule into the past: a stall must not turn into a burst.
            self._next_at = max(self._next_at, time.monotonic() - interval) + interval
            self._slots.acquire()
            self.stats.sent += 1
            futures.append(self._pool.submit(self._send_and_release, record))
        outcomes = [future.result() for future in futures]
        self.stats.finished = time.monotonic()
        return outcomes

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
        self._identity.close()

    def __enter__(self) -> GrpcSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_sender(options: TargetOptions) -> GrpcSender:
    """Connects to the target and checks its SPIFFE ID; raises :class:`TargetError`."""
    sender = GrpcSender(options)
    try:
        sender.connect()
    except TargetError:
        sender.close()
        raise
    return sender
