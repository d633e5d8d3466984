"""The hook through which every decision and every refused call leaves the service.

The service calls :meth:`DecisionSink.record_decisions` once per RPC, after deciding
and *before* answering, and waits for it: a sink that returns ``False`` for a decision
(or raises, or times out) turns that answer into a deny with reason
``audit_unavailable``. That is how a synchronous audit log makes "no answer without a
durable record" hold. A sink can only take an allow away, never grant one.

A sink whose ``record_decisions`` never waits for I/O says so with a class attribute
``blocks = False``; the service then decides on its event loop. A sink that must wait
(the durable audit log) can offer :meth:`DeferredDecisionSink.submit_decisions`: it
hands the decisions over without waiting and calls back once they are settled, so the
service still decides on its event loop and answers each call when its records are
durable, while the loop goes on deciding (group commit across calls). A blocking sink
without it (``blocks`` True or absent) is called on the service's thread pool, so that
a sink waiting for an fsync cannot stall every other call.

Refusals (unauthenticated, permission denied, rate limited, batch too large or
undecodable) go to
:meth:`DecisionSink.record_refusal`, which must not block: the call is refused anyway.
Every refusal reaches it; ``RefusalEvent.record`` is False when the caller has spent
its record budget, and an audit sink then writes nothing for it.

An audit adapter is expected to look like::

    class AuditSink:
        def record_decisions(self, events, timeout):
            tickets = [pipeline.submit(build_record(e)) for e in events]  # group commit
            return [ticket.wait(timeout) for ticket in tickets]

        def record_refusal(self, event):
            pipeline.submit(build_refusal_record(...))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pdp.model import Caller, Decision, JsonValue, Request


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """One decided request. ``request`` is ``None`` when it could not be parsed (the
    decision is then an ``invalid_request`` deny); ``data`` is always the request as
    received, in the JSON shape of ``pdp check``, with ``gateway`` set to the caller and
    without ``time``: the service decides at its own clock, and a ``time`` the caller
    sent is kept apart in ``caller_time`` (for the record, never for the decision)."""

    decision_id: str
    method: str  # full gRPC method, e.g. "/pdp.v1.DecisionService/Check"
    caller: Caller
    data: Mapping[str, JsonValue]
    request: Request | None
    decision: Decision
    latency_us: int  # from receiving the call to having the decision, before recording
    shadow: Decision | None = None  # the shadow policy set's answer, recorded, never enforced
    caller_time: str | None = None  # the ``time`` the caller sent (RFC 3339), ignored
    # Through an MCP front door: the JSON-RPC method, its id, the HTTP method (pdp.mcp).
    mcp: Mapping[str, JsonValue] | None = None
    # Set when the request broke a rule (the decision is an ``invalid_request`` deny):
    # bounded facts about the body, which the record keeps instead of the body.
    rejected: RejectedBody | None = None
    tools: tuple[dict[str, Any], ...] | None = None  # AllowedTools: every tool's answer


@dataclass(frozen=True, slots=True)
class RejectedBody:
    """Bounded facts about a request that broke a rule, for its record: never the body.

    ``data`` of its :class:`DecisionEvent` then holds what was decoded before the rule
    broke (each field within its limit), or, when the caller has spent its record
    budget (``kept`` False), only the names of who asked about what.
    """

    size: int  # bytes of the request message
    sha256: str  # hex digest of the request message as received
    field: str  # the offending field, e.g. "arguments.items[3]"
    rule: str  # the rule it broke, e.g. "too_large"
    excerpt: str  # the first characters of the offending value ("" if none, or not kept)
    kept: bool  # False: over the caller's record budget, only the facts are recorded


class RefusalCode(StrEnum):
    """Why a call was refused without a decision (also the audit record's code)."""

    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    INVALID_ARGUMENT = "invalid_argument"
    # The request message did not arrive in time (server.request_timeout_s).
    DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True, slots=True)
class RefusalEvent:
    refusal_id: str  # UUIDv7, also sent to the client in the status details
    code: RefusalCode
    message: str
    method: str
    peer: str  # grpc's peer address, e.g. "ipv4:127.0.0.1:53412"
    caller: Caller | None  # None when the peer was not authenticated
    # False when the caller (or peer address) has spent its record budget
    # (limits.refusal_record_bytes_per_s): the sink counts the refusal, writes no record.
    record: bool = True


class DecisionSink(Protocol):
    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        """Records the decisions of one RPC; one flag per event, True when recorded
        (durably, if the sink promises durability). ``timeout`` is what is left of the
        call's deadline (None: no deadline); returning late is a failure anyway."""
        ...

    def record_refusal(self, event: RefusalEvent) -> None:
        """Records a refused call; must not block."""
        ...


class PendingRecords(Protocol):
    """Decisions handed to a :class:`DeferredDecisionSink`, on their way to the record."""

    @property
    def wait_s(self) -> float:
        """How long to wait for them at most; a decision not recorded by then is denied."""
        ...

    def flags(self) -> Sequence[bool]:
        """One flag per event, True when recorded (durably, if the sink promises it),
        as of now."""
        ...


class DeferredDecisionSink(DecisionSink, Protocol):
    def submit_decisions(
        self,
        events: Sequence[DecisionEvent],
        timeout: float | None,
        on_settled: Callable[[], None],
    ) -> PendingRecords:
        """Hands the decisions of one or more RPCs over without waiting; ``on_settled``
        is called once, from any thread (it must not block), when every one of them is
        recorded or has failed. ``timeout`` as for :meth:`DecisionSink.record_decisions`."""
        ...


class NullSink:
    """Records nothing and reports success: the default until audit is configured."""

    blocks = False

    def record_decisions(
        self, events: Sequence[DecisionEvent], timeout: float | None
    ) -> Sequence[bool]:
        return [True] * len(events)

    def record_refusal(self, event: RefusalEvent) -> None:
        return None
