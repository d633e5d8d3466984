"""The adapter the gRPC service calls: ``pdp.service.sink.DecisionSink`` over an :class:`Audit`.

The service hands over the decisions of one RPC and waits; this sink submits them all
(one group commit in sync mode) and reports, per decision, whether its record is durable
(sync) or accepted (async). A False makes the service answer ``audit_unavailable``.
With ``fail_open`` every flag is True and failures are only logged and counted.

The event types are matched structurally (no import of ``pdp.service``), so the data
keeps flowing one way: service -> audit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pdp.audit.config import Audit
from pdp.audit.pipeline import DeliveryMode
from pdp.audit.record import build_decision_record, build_refusal_record
from pdp.model import Caller, Decision, Request

log = logging.getLogger(__name__)


class DecisionEventLike(Protocol):
    @property
    def decision_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def caller(self) -> Caller: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def request(self) -> Request | None: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def latency_us(self) -> int: ...


class RefusalEventLike(Protocol):
    @property
    def refusal_id(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def caller(self) -> Caller | None: ...


class AuditDecisionSink:
    """``DecisionSink`` for :class:`pdp.service.server.DecisionServer` (``sink=``)."""

    def __init__(self, audit: Audit) -> None:
        self.audit = audit

    def record_decisions(
        self, events: Sequence[DecisionEventLike], timeout: float | None
    ) -> Sequence[bool]:
        audit, pipeline = self.audit, self.audit.pipeline
        tickets = [
            pipeline.submit(
                build_decision_record(
                    event.decision_id,
                    event.request if event.request is not None else event.data,
                    event.decision,
                    event.caller,
                    event.latency_us,
                    audit.instance_id,
                    audit.redactor,
                    getattr(event, "shadow", None),
                    method=event.method,
                )
            )
            for event in events
        ]
        if pipeline.mode is DeliveryMode.SYNC:
            limit = pipeline.config.sync_timeout_s
            wait = limit if timeout is None else min(timeout, limit)
            deadline = time.monotonic() + wait
            flags = [t.wait(max(0.0, deadline - time.monotonic())) for t in tickets]
        else:
            flags = [t.accepted for t in tickets]
        if all(flags):
            return flags
        for ticket, ok in zip(tickets, flags, strict=True):
            if not ok:
                reason = ticket.error or "timed out waiting for the audit log"
                log.warning("audit record %s not durable: %s", ticket.decision_id, reason)
        return [True] * len(flags) if pipeline.fail_open else flags

    def record_refusal(self, event: RefusalEventLike) -> None:
        record = build_refusal_record(
            event.refusal_id,
            str(event.code),
            event.message,
            caller=event.caller,
            instance_id=self.audit.instance_id,
            redactor=self.audit.redactor,
            method=event.method,
            peer=event.peer,
        )
        ticket = self.audit.pipeline.submit(record)  # never blocks
        if not ticket.accepted:
            log.warning("refusal %s not recorded: %s", event.refusal_id, ticket.error)
