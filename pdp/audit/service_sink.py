"""The adapter the gRPC service calls: ``pdp.service.sink.DecisionSink`` over an :class:`Audit`.

The service hands over the decisions of one RPC (or of several coalesced ones) and
waits; this sink submits them all at once (one group commit in sync mode) and reports,
per decision, whether its record is durable (sync) or accepted (async). A False makes
the service answer ``audit_unavailable``. With ``fail_open`` every flag is True and
failures are only logged and counted.

The decision path only queues the events: the pipeline's writer thread builds the
records (redaction, JSON, hash) from them, many per wake-up, for valid and invalid
requests alike: nothing of a record is built on the caller's thread, which in async
mode, and in sync mode through :meth:`AuditDecisionSink.submit_decisions`, is the
service's event loop. Events are frozen and the service does not touch them
afterwards; the data of an invalid request is what the service decoded within the
limits (never a NaN: it refuses those while decoding), plus bounded facts about the
body (``rejected``). In async mode :meth:`AuditDecisionSink.record_decisions` never
waits (``blocks`` is False), so the service may call it from its event loop; the
pipeline is then told not to build records on the caller's thread when its writer
falls behind (the queue bound refuses instead). In sync mode (the default) the service
uses :meth:`AuditDecisionSink.submit_decisions`: it decides on its event loop, hands
the events over and answers when the writer's callback says the group commit holding
them is on disk, so no thread blocks on the disk for a call.

The event types are matched structurally (no import of ``pdp.service``), so the data
keeps flowing one way: service -> audit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pdp.audit.config import Audit
from pdp.audit.pipeline import Commit, DeliveryMode
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
    @property
    def caller_time(self) -> str | None: ...


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


class PendingDecisions:
    """What :meth:`AuditDecisionSink.submit_decisions` handed over (``PendingRecords``)."""

    __slots__ = ("_commit", "_events", "_sink", "wait_s")

    def __init__(
        self,
        sink: AuditDecisionSink,
        events: Sequence[DecisionEventLike],
        commit: Commit,
        wait_s: float,
    ) -> None:
        self._sink, self._events, self._commit, self.wait_s = sink, events, commit, wait_s

    def flags(self) -> list[bool]:
        return self._sink._flags(self._events, self._commit)


class AuditDecisionSink:
    """``DecisionSink`` for :class:`pdp.service.server.DecisionServer` (``sink=``)."""

    def __init__(self, audit: Audit) -> None:
        self.audit = audit
        self._instance_id = audit.instance_id
        self._redactor = audit.redactor

    @property
    def blocks(self) -> bool:
        """True when ``record_decisions`` waits for the disk (sync mode)."""
        return self.audit.pipeline.mode is DeliveryMode.SYNC

    def record_decisions(
        self, events: Sequence[DecisionEventLike], timeout: float | None
    ) -> Sequence[bool]:
        pipeline = self.audit.pipeline
        commit = pipeline.submit_all(
            self._entries(events), self._decision_record, build_here=self.blocks
        )
        if commit.accepted and pipeline.mode is DeliveryMode.SYNC:
            commit.wait(self._wait_s(timeout))
        return self._flags(events, commit)

    def submit_decisions(
        self,
        events: Sequence[DecisionEventLike],
        timeout: float | None,
        on_settled: Callable[[], None],
    ) -> PendingDecisions:
        """``record_decisions`` without the wait (``pdp.service.sink.DeferredDecisionSink``):
        ``on_settled`` runs on the writer thread once the group commit that holds them
        is on disk (or failed); then :meth:`PendingDecisions.flags` says which made it."""
        commit = self.audit.pipeline.submit_all(
            self._entries(events),
            self._decision_record,
            build_here=False,  # the caller is the service's event loop
            on_settled=on_settled,
        )
        return PendingDecisions(self, events, commit, self._wait_s(timeout))

    def _entries(self, events: Sequence[DecisionEventLike]) -> list[Any]:
        stamp = time.time()  # when the decisions were made: now, not when written
        return [(event, stamp) for event in events]

    def _wait_s(self, timeout: float | None) -> float:
        limit = self.audit.pipeline.config.sync_timeout_s
        return limit if timeout is None else min(timeout, limit)

    def _flags(self, events: Sequence[DecisionEventLike], commit: Commit) -> list[bool]:
        """Per event, whether to answer its decision: recorded (durably in sync mode,
        queued in async mode), or anyway when the pipeline fails open."""
        pipeline = self.audit.pipeline
        if not commit.accepted:
            flags = [False] * len(events)
        elif pipeline.mode is DeliveryMode.SYNC:
            flags = commit.flags
        elif not commit.refused:
            return [True] * len(events)  # async: queued is enough
        else:
            flags = [True] * len(events)
            for index in commit.refused:
                flags[index] = False
        if all(flags):
            return flags
        reason = commit.error or "timed out waiting for the audit log"
        for event, ok in zip(events, flags, strict=True):
            if not ok:
                log.warning("audit record %s not durable: %s", event.decision_id, reason)
        return [True] * len(flags) if pipeline.fail_open else flags

    def _decision_record(self, entry: tuple[DecisionEventLike, float]) -> dict[str, Any]:
        event, stamp = entry
        return build_decision_record(
            event.decision_id,
            event.request if event.request is not None else event.data,
            event.decision,
            event.caller,
            event.latency_us,
            self._instance_id,
            self._redactor,
            getattr(event, "shadow", None),
            time=datetime.fromtimestamp(stamp, UTC),
            method=event.method,
            caller_time=event.caller_time,
            rejected=getattr(event, "rejected", None),
            tools=getattr(event, "tools", None),
            mcp=getattr(event, "mcp", None),
        )

    def record_refusal(self, event: RefusalEventLike) -> None:
        if not getattr(event, "record", True):
            return  # over the caller's record budget: counted by the service, not written
        commit = self.audit.pipeline.submit_all(
            [(event, time.time())], self._refusal_record, build_here=False
        )
        if not commit.accepted:  # never blocks
            log.warning("refusal %s not recorded: %s", event.refusal_id, commit.error)

    def _refusal_record(self, entry: tuple[RefusalEventLike, float]) -> dict[str, Any]:
        event, stamp = entry
        return build_refusal_record(
            event.refusal_id,
            str(event.code),
            event.message,
            caller=event.caller,
            instance_id=self._instance_id,
            redactor=self._redactor,
            method=event.method,
            peer=event.peer,
            time=datetime.fromtimestamp(stamp, UTC),
        )
