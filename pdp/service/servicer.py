"""The decision service: Check and CheckBatch.

:class:`DecisionCore` is the decision path of one call without grpc: decode, parse,
check the caller's binding, decide, record, answer. It never raises and never allows
on failure: a request it cannot read is an ``invalid_request`` deny, a caller asking
about an agent outside its binding gets ``caller_not_bound``, an unexpected exception
is an ``internal_error`` deny and an unrecorded decision is ``audit_unavailable``.

The service decides at its own clock: the decision time of every request is the
server's clock when the call is decided, whatever ``time`` the request carries (a
caller could otherwise backdate a request to revive an expired intent or step around a
time-window policy). Such a ``time`` is ignored, not refused, so that gateways that
stamp their requests keep working; it is kept apart in the audit record
(``caller_time``). :func:`at_server_clock` is that rule: every front door feeds
:meth:`DecisionCore.decide_calls`, which applies it. ``pdp check``, ``pdp test`` and
replay decide at an explicit time instead.

Requests arrive as raw bytes and are decoded here rather than by grpc, so that an
undecodable ``Check`` is answered with a deny naming the problem (grpc itself would
answer INTERNAL) and recorded like any other decision.

:class:`DecisionServicer` is the grpc.aio face. ``Check`` calls that arrive together
are coalesced: each call queues itself and the first one schedules a flush for the
next turn of the event loop, which decides everything queued in one
``Engine.decide_batch`` and one ``record_decisions``. Nothing waits on a timer, so a
lone call is decided at once; under load, calls share Cedar and audit work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit.record import METHOD_ALLOWED_TOOLS
from pdp.engine import Engine
from pdp.engine.tools import allowed_tools
from pdp.identity.spiffe_id import MAX_SPIFFE_ID_BYTES, InvalidSpiffeId, parse_spiffe_id
from pdp.model import (
    REASON_AUDIT_UNAVAILABLE,
    REASON_CALLER_NOT_BOUND,
    REASON_INTERNAL_ERROR,
    Decision,
    Effect,
    JsonValue,
    Limits,
    Reason,
    Request,
    RequestError,
    ToolListing,
    deny,
    parse_request,
)
from pdp.proof import Prover
from pdp.service.admission import RecordBudget
from pdp.service.convert import (
    OversizeRequest,
    allowed_tools_response,
    check_response,
    listing_data,
    request_data,
)
from pdp.service.gate import CallerGrant, RateLimiter
from pdp.service.interceptor import Admission, Refuser, require_admission
from pdp.service.sink import (
    DecisionEvent,
    DecisionSink,
    DeferredDecisionSink,
    RefusalCode,
    RejectedBody,
)
from pdp.service.wire import Malformed, batch_requests, check_request_bytes

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
CHECK_METHOD = f"/{SERVICE_NAME}/Check"
CHECK_BATCH_METHOD = f"/{SERVICE_NAME}/CheckBatch"
ALLOWED_TOOLS_METHOD = METHOD_ALLOWED_TOOLS
assert f"/{SERVICE_NAME}/AllowedTools" == ALLOWED_TOOLS_METHOD

# What an invalid request's record may keep beyond fixed-size facts: what was decoded,
# each field within its limit, at most this much is charged to the caller's budget.
_MAX_KEPT_DETAIL = 96 * 1024
# Kept in the record of an invalid request whatever the budget (each within its limit).
_ALWAYS_KEPT = frozenset({"agent", "server", "tool", "gateway"})

# Time kept back from the call's deadline for sending the answer after recording.
_ANSWER_MARGIN_S = 0.005
_NO_DEADLINE_S = 10.0**9
REASON_ALLOWED_TOOLS = "allowed_tools"  # the summary reason of an AllowedTools record

Context = grpc.aio.ServicerContext[Any, Any]


class EngineHolder(Protocol):
    """Holds the engine in force, e.g. :class:`pdp.engine.runtime.PolicyRuntime`, which
    swaps it on reload. Read once per call, so a call is decided by one policy version."""

    @property
    def engine(self) -> Engine: ...


class FixedEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request a front door has already read from its own protocol (e.g. an MCP body,
    pdp.service.ext_authz): the request data in the ``pdp check`` JSON shape, and either
    nothing more (the policies decide) or the ``verdict`` that door's rules gave (a
    housekeeping method allowed, a body that breaks a rule denied). A verdict never
    bypasses the caller's binding: an allow for an agent outside it is still denied.
    ``mcp`` goes to the audit record."""

    data: Mapping[str, JsonValue]
    verdict: tuple[Effect, Reason] | None = None
    mcp: Mapping[str, JsonValue] | None = None


# What a call carries, per request: a CheckRequest (decoded or raw bytes), or request
# data in the JSON shape of ``pdp check``, as a front door with its own wire format
# (Envoy ext_authz, MCP) maps it, or a PreparedRequest that may carry the door's own
# verdict. Each goes through the same parser and clock rule.
CallMessage = pb.CheckRequest | bytes | Mapping[str, JsonValue] | PreparedRequest


@dataclass(frozen=True, slots=True)
class PendingCall:
    """The requests of one admitted call, waiting to be decided."""

    messages: Sequence[CallMessage]
    grant: CallerGrant
    method: str
    started_ns: int  # time.perf_counter_ns() when the call reached pdp's code
    timeout: float | None  # seconds left before the call's deadline


def at_server_clock(data: dict[str, JsonValue]) -> str | None:
    """Takes the caller's ``time`` out of request ``data`` (the service decides at its
    own clock) and returns it, as sent, for the audit record; None when there was none."""
    sent = data.pop("time", None)
    return None if sent is None else str(sent)


class DecisionCore:
    """Decides the requests of one call for an admitted caller; never raises."""

    def __init__(
        self,
        engines: EngineHolder,
        sink: DecisionSink,
        *,
        new_id: Callable[[], str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prover: Prover | None = None,
        record_budget: RecordBudget | None = None,
    ) -> None:
        self.engines = engines
        self.sink = sink
        self._new_id = new_id
        self._clock = clock
        # Without a configured prover tokens are still checked, against no keys: a
        # signed intent or JWT-SVID is then denied, never ignored.
        self.prover = prover if prover is not None else Prover.unconfigured()
        self._record_budget = record_budget

    @property
    def engine(self) -> Engine:
        return self.engines.engine

    def _shadow(self, requests: Sequence[Request | None]) -> list[Decision | None]:
        """The shadow set's decisions (for the audit record only); a failure there is
        logged and never touches the answer."""
        shadow: Engine | None = getattr(self.engines, "shadow", None)
        if shadow is None:
            return [None] * len(requests)
        parsed = [r for r in requests if r is not None]
        try:
            answers = iter(shadow.decide_batch(parsed))
            return [next(answers) if r is not None else None for r in requests]
        except Exception:
            log.exception("shadow evaluation failed")
            return [None] * len(requests)

    def decide_calls(self, calls: Sequence[PendingCall]) -> list[list[pb.CheckResponse]]:
        """Decides the requests of several calls together (one policy version, one
        Cedar batch, one audit submission); one list of responses per call."""
        decided = self.decide(calls)
        return decided.answers(self._record(decided.events, decided.timeout))

    def decide(self, calls: Sequence[PendingCall]) -> Decided:
        """The decisions of several calls, not yet recorded: :meth:`Decided.answers`
        turns them into responses once the sink says which were recorded."""
        engine = self.engines.engine  # one policy version for the whole flush
        messages = [m for call in calls for m in call.messages]
        grants = [call.grant for call in calls for _ in call.messages]
        ids = [self._new_id() for _ in messages]
        datas: list[dict[str, JsonValue]] = [{} for _ in messages]
        caller_times: list[str | None] = [None] * len(messages)
        requests: list[Request | None] = [None] * len(messages)
        rejected: list[RejectedBody | None] = [None] * len(messages)
        try:
            decisions = self._evaluate(
                engine, messages, grants, datas, caller_times, requests, rejected
            )
        except Exception:
            log.exception("internal error deciding %d request(s)", len(ids))
            decisions = [_internal_error(engine.version)] * len(messages)
        decided_ns = time.perf_counter_ns()
        shadows = self._shadow(requests)
        events: list[DecisionEvent] = []
        index = 0
        for call in calls:
            latency_us = (decided_ns - call.started_ns) // 1000
            for _ in call.messages:
                events.append(
                    DecisionEvent(
                        decision_id=ids[index],
                        method=call.method,
                        caller=grants[index].caller,
                        data=datas[index],
                        request=requests[index],
                        decision=decisions[index],
                        latency_us=latency_us,
                        shadow=shadows[index],
                        caller_time=caller_times[index],
                        rejected=rejected[index],
                        mcp=_mcp_note(messages[index]),
                    )
                )
                index += 1
        timeouts = [call.timeout for call in calls if call.timeout is not None]
        timeout = min(timeouts) if timeouts else None
        if timeout is not None:
            timeout = max(0.0, timeout - _ANSWER_MARGIN_S)
        return Decided(calls, events, timeout)

    def checked_flags(self, flags: Sequence[bool], count: int) -> list[bool]:
        """A sink's flags as answers may use them: any malformed reply denies all."""
        if len(flags) != count:
            log.error("decision sink returned %d flags for %d decisions", len(flags), count)
            return [False] * count
        return [flag is True for flag in flags]

    def _evaluate(
        self,
        engine: Engine,
        messages: Sequence[CallMessage],
        grants: Sequence[CallerGrant],
        datas: list[dict[str, JsonValue]],
        caller_times: list[str | None],
        requests: list[Request | None],
        rejected: list[RejectedBody | None],
    ) -> list[Decision]:
        limits = engine.limits
        now = self._clock()  # the decision time of every request of this flush
        decisions: list[Decision | None] = [None] * len(messages)
        for index, message in enumerate(messages):
            grant = grants[index]
            if isinstance(message, PreparedRequest):
                if message.verdict is not None:  # decided by the door's own rules
                    datas[index] = {**message.data, "gateway": grant.caller.spiffe_id}
                    decisions[index] = _verdict(engine.version, message, grant)
                    continue
                message = message.data  # for the policies, like any door's request data
            data: dict[str, JsonValue] = {}
            datas[index] = data
            try:
                if isinstance(message, bytes):
                    message = _decode_check_request(message, limits)
                # The gateway is whoever authenticated, whatever the request claims.
                if isinstance(message, pb.CheckRequest):
                    request_data(message, limits, into=data, gateway=grant.caller.spiffe_id)
                else:  # request data a door mapped from its own wire format (copied)
                    data.update(message)
                    data["gateway"] = grant.caller.spiffe_id
                caller_times[index] = at_server_clock(data)
                request = parse_request(data, now=now, limits=limits)
            except RequestError as exc:
                decisions[index] = engine.invalid(exc)
                if caller_times[index] is None:  # the rule broke before the time was taken out
                    caller_times[index] = at_server_clock(data)
                rejected[index], datas[index] = self._rejected(message, exc, data, grant)
                continue
            requests[index] = request
            if not grant.may_ask_about(request.agent):
                decisions[index] = deny(
                    engine.version,
                    REASON_CALLER_NOT_BOUND,
                    f"caller {grant.caller.spiffe_id} may not ask about agent {request.agent}",
                )
                continue
            # Tokens are checked at the server's clock, never at a time the caller sent.
            try:
                request, denial = self.prover.prove(request, now, engine.groups_of)
            except Exception:
                log.exception("internal error verifying the tokens of a request")
                decisions[index] = _internal_error(engine.version)
                continue
            requests[index] = request
            if denial is not None:
                decisions[index] = deny(engine.version, denial.code, denial.message)
        pending = [i for i, d in enumerate(decisions) if d is None]
        if pending:
            decided = engine.decide_batch([requests[i] for i in pending])  # type: ignore[misc]
            for index, decision in zip(pending, decided, strict=True):
                decisions[index] = decision
        return [d if d is not None else _internal_error(engine.version) for d in decisions]

    def _rejected(
        self,
        message: CallMessage,
        error: RequestError,
        data: dict[str, JsonValue],
        grant: CallerGrant,
    ) -> tuple[RejectedBody, dict[str, JsonValue]]:
        """Bounded facts about an invalid request, and the data its record may keep.

        ``data`` holds what was decoded before the rule broke, each field within its
        limit (decoding stops at the first limit: pdp.service.convert). Beyond the
        caller's record budget only who asked about what is kept. Hashing the body
        costs about what decoding it did."""
        if isinstance(message, bytes):
            body = message
        elif isinstance(message, pb.CheckRequest):
            body = message.SerializeToString()
        else:  # a door's request data: its JSON encoding stands for the body
            body = json.dumps(message, sort_keys=True, default=repr).encode(
                "utf-8", "surrogatepass"
            )
        excerpt = error.excerpt if isinstance(error, OversizeRequest) else ""
        detail = min(len(body), _MAX_KEPT_DETAIL) + len(excerpt)
        kept = self._record_budget is None or self._record_budget.allow(
            grant.caller.spiffe_id, detail
        )
        if not kept:
            data = {k: v for k, v in data.items() if k in _ALWAYS_KEPT}
            excerpt = ""
        if not isinstance(message, bytes | pb.CheckRequest):
            # A door's data was not decoded within the limits here (only parsed): keep
            # who asked about what, each cut to the longest valid value, never the rest.
            data = {
                k: v[:MAX_SPIFFE_ID_BYTES] if isinstance(v, str) else "?"
                for k, v in data.items()
                if k in _ALWAYS_KEPT
            }
        facts = RejectedBody(
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            field=error.field,
            rule=error.rule,
            excerpt=excerpt,
            kept=kept,
        )
        return facts, data

    def list_tools(
        self, data: bytes, grant: CallerGrant, started_ns: int, timeout: float | None
    ) -> pb.AllowedToolsResponse:
        """AllowedTools for an admitted caller: every tool's verdict, audited as one
        decision record (its ``tools`` field); never raises, never allows on failure."""
        engine = self.engines.engine
        decision_id = self._new_id()
        try:
            return self._list_tools(engine, decision_id, data, grant, started_ns, timeout)
        except Exception:
            log.exception("internal error answering AllowedTools")
            refused = _internal_error(engine.version).reasons
            return allowed_tools_response(None, decision_id, engine.version, refused)

    def _list_tools(
        self,
        engine: Engine,
        decision_id: str,
        data: bytes,
        grant: CallerGrant,
        started_ns: int,
        timeout: float | None,
    ) -> pb.AllowedToolsResponse:
        limits = engine.limits
        request_json: dict[str, JsonValue] = {}
        template: Request | None = None
        listing: ToolListing | None = None
        try:
            message = parse_message(pb.AllowedToolsRequest(), data)
            request_json = listing_data(message, limits)
            request_json["gateway"] = grant.caller.spiffe_id
            # The one request parser; the tool is each of the server's in turn.
            now = self._clock()
            parsed = parse_request({**request_json, "tool": "tools"}, now=now,
                                   limits=limits)  # fmt: skip
            template = dataclasses.replace(parsed, tool="")
        except RequestError as exc:
            summary = engine.invalid(exc)
        else:
            denial = None
            if grant.may_ask_about(template.agent):
                # Signed intents and proof of the agent, exactly as for Check.
                # A listing authorizes nothing: it does not spend a signed intent's jti.
                template, denial = self.prover.prove(
                    template, now, engine.groups_of, claim_intent=False
                )
            if not grant.may_ask_about(template.agent):
                summary = deny(
                    engine.version,
                    REASON_CALLER_NOT_BOUND,
                    f"caller {grant.caller.spiffe_id} may not ask about agent {template.agent}",
                )
            elif denial is not None:
                summary = deny(engine.version, denial.code, denial.message)
            else:
                listing = allowed_tools(engine, template)
                summary = _listing_summary(listing)
        event = DecisionEvent(
            decision_id=decision_id,
            method=ALLOWED_TOOLS_METHOD,
            caller=grant.caller,
            data=request_json,
            request=template,
            decision=summary,
            latency_us=(time.perf_counter_ns() - started_ns) // 1000,
            tools=tuple(v.to_json() for v in listing.verdicts) if listing is not None else (),
        )
        if not self._record([event], timeout)[0]:
            refused = _audit_unavailable(engine.version).reasons
            return allowed_tools_response(None, decision_id, engine.version, refused)
        if listing is None:
            return allowed_tools_response(None, decision_id, engine.version, summary.reasons)
        return allowed_tools_response(listing, decision_id, engine.version)

    def _record(self, events: list[DecisionEvent], timeout: float | None) -> list[bool]:
        try:
            flags = list(self.sink.record_decisions(events, timeout))
        except Exception:
            log.exception("decision sink failed; denying %d decision(s)", len(events))
            return [False] * len(events)
        return self.checked_flags(flags, len(events))


@dataclass(frozen=True, slots=True)
class Decided:
    """The decisions of some calls, in call order, waiting for the sink's verdict."""

    calls: Sequence[PendingCall]
    events: list[DecisionEvent]
    timeout: float | None  # for the sink: what is left of the nearest call deadline

    def answers(self, recorded: Sequence[bool]) -> list[list[pb.CheckResponse]]:
        """One list of responses per call; an unrecorded decision is ``audit_unavailable``."""
        responses = [
            check_response(
                event.decision if ok else _audit_unavailable(event.decision.policy_version),
                event.decision_id,
            )
            for event, ok in zip(self.events, recorded, strict=True)
        ]
        answers: list[list[pb.CheckResponse]] = []
        index = 0
        for call in self.calls:
            answers.append(responses[index : index + len(call.messages)])
            index += len(call.messages)
        return answers


def _mcp_note(message: CallMessage) -> Mapping[str, JsonValue] | None:
    return message.mcp if isinstance(message, PreparedRequest) else None


def _verdict(policy_version: str, message: PreparedRequest, grant: CallerGrant) -> Decision:
    """The decision a front door's rule gave, unless the agent is outside the caller's
    binding (an allow never widens what the caller may ask about)."""
    assert message.verdict is not None
    effect, reason = message.verdict
    if effect is Effect.ALLOW:
        agent = str(message.data.get("agent", ""))
        try:
            parse_spiffe_id(agent, require_path=True)
            bound = grant.may_ask_about(agent)
        except InvalidSpiffeId:
            bound = False
        if not bound:
            return deny(
                policy_version,
                REASON_CALLER_NOT_BOUND,
                f"caller {grant.caller.spiffe_id} may not ask about agent {agent}",
            )
    return Decision(effect, (reason,), policy_version)


def time_remaining(context: Context) -> float | None:
    """Seconds left before the call's deadline; None without a deadline (grpc then
    reports about 2**63 seconds)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return remaining


_M = TypeVar("_M", bound=Message)


def parse_message(message: _M, data: bytes) -> _M:
    """``message`` parsed from ``data``; a RequestError naming the message type when the
    bytes are not one (every door decodes its requests through here)."""
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        name = message.DESCRIPTOR.full_name
        raise RequestError("request", "malformed", f"not a valid {name} message ({exc})") from None
    return message


def _decode_check_request(data: bytes, limits: Limits) -> pb.CheckRequest:
    check_request_bytes(data, limits)  # before protobuf parses what it must not
    return parse_message(pb.CheckRequest(), data)


def _listing_summary(listing: ToolListing) -> Decision:
    """The decision a listing is recorded with: allow when some tool may be called."""
    counts = Counter(verdict.answer.value for verdict in listing.verdicts)
    detail = ", ".join(f"{count} {answer}" for answer, count in sorted(counts.items()))
    effect = Effect.ALLOW if listing.callable_tools() else Effect.DENY
    reason = Reason(
        REASON_ALLOWED_TOOLS, detail or f"no tools of {listing.server} in the inventory"
    )
    return Decision(effect, (reason,), listing.policy_version)


def _internal_error(policy_version: str) -> Decision:
    return deny(
        policy_version, REASON_INTERNAL_ERROR, "internal error in the decision service; denied"
    )


def _audit_unavailable(policy_version: str) -> Decision:
    return deny(
        policy_version,
        REASON_AUDIT_UNAVAILABLE,
        "the decision could not be recorded in the audit log; denied until it recovers",
    )


class Coalescer:
    """Decides the calls queued during one turn of the event loop together.

    With a ``deferred`` sink (the durable audit log) each flush decides on the loop,
    hands its records over and answers its calls from the sink's callback once they
    are on disk, so the loop never waits for the disk and the records of the flushes
    made meanwhile share the next fdatasync. Otherwise ``executor`` runs each flush
    (a sink that waits for I/O must not hold up the event loop), or, without one, flushes
    run on the loop itself. Concurrent flushes are fine: each decides its own calls
    with the engine in force when it starts.
    """

    def __init__(
        self,
        core: DecisionCore,
        *,
        executor: Executor | None,
        max_requests: int = 512,
        deferred: DeferredDecisionSink | None = None,
    ) -> None:
        self._core = core
        self._executor = executor
        self.executor = executor  # also used by calls that are not coalesced
        self._deferred = deferred
        self._max_requests = max_requests
        self._queued: list[tuple[PendingCall, asyncio.Future[list[pb.CheckResponse]]]] = []
        self._queued_requests = 0
        self._flush_scheduled = False

    async def decide(self, call: PendingCall) -> list[pb.CheckResponse]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[pb.CheckResponse]] = loop.create_future()
        self._queued.append((call, answer))
        self._queued_requests += len(call.messages)
        if self._queued_requests >= self._max_requests:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await answer

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued, self._queued_requests = self._queued, [], 0
        if not queued:
            return
        calls = [call for call, _ in queued]
        if self._deferred is not None:
            self._decide_deferred(queued, calls, self._deferred)
            return
        if self._executor is None:
            self._deliver(queued, self._decide(calls))
            return
        loop = asyncio.get_running_loop()
        try:
            flush = loop.run_in_executor(self._executor, self._decide, calls)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._deliver(queued, self._denied(calls))
            return
        flush.add_done_callback(
            lambda done: self._deliver(
                queued, self._denied(calls) if done.cancelled() else done.result()
            )
        )

    def _decide_deferred(
        self,
        queued: list[tuple[PendingCall, asyncio.Future[list[pb.CheckResponse]]]],
        calls: list[PendingCall],
        sink: DeferredDecisionSink,
    ) -> None:
        """Decides on the loop, hands the records over and returns at once; the calls are
        answered when the sink calls back (their records durable) or at its wait limit,
        whichever comes first. Meanwhile the loop decides the next calls, whose records
        join the next group commit."""
        loop = asyncio.get_running_loop()
        try:
            decided = self._core.decide(calls)
        except Exception:  # decide does not raise; this is the last line of defense
            log.exception("internal error deciding %d call(s)", len(calls))
            self._deliver(queued, self._denied(calls))
            return
        count = len(decided.events)
        finished = False
        timer: asyncio.TimerHandle | None = None

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            if timer is not None:
                timer.cancel()
            try:
                flags = self._core.checked_flags(pending.flags(), count)
            except Exception:
                log.exception("decision sink failed; denying %d decision(s)", count)
                flags = [False] * count
            self._deliver(queued, decided.answers(flags))

        def settled() -> None:  # on the sink's thread
            loop.call_soon_threadsafe(finish)

        try:
            pending = sink.submit_decisions(decided.events, decided.timeout, settled)
        except Exception:
            log.exception("decision sink failed; denying %d decision(s)", count)
            finished = True
            self._deliver(queued, decided.answers([False] * count))
            return
        if not finished:
            timer = loop.call_later(pending.wait_s, finish)

    def _decide(self, calls: list[PendingCall]) -> list[list[pb.CheckResponse]]:
        try:
            return self._core.decide_calls(calls)
        except Exception:  # decide_calls does not raise; this is the last line of defense
            log.exception("internal error deciding %d call(s)", len(calls))
            return self._denied(calls)

    def _denied(self, calls: list[PendingCall]) -> list[list[pb.CheckResponse]]:
        denied = check_response(_internal_error(self._core.engine.version), "")
        return [[denied] * len(call.messages) for call in calls]

    @staticmethod
    def _deliver(
        queued: list[tuple[PendingCall, asyncio.Future[list[pb.CheckResponse]]]],
        answers: list[list[pb.CheckResponse]],
    ) -> None:
        for (_, answer), responses in zip(queued, answers, strict=True):
            if not answer.done():  # a cancelled call has gone; its record is written anyway
                answer.set_result(responses)


class DecisionServicer:
    """The grpc.aio face of :class:`DecisionCore`: rate limits, batch size, deadlines."""

    def __init__(
        self,
        core: DecisionCore,
        rate_limiter: RateLimiter,
        refuser: Refuser,
        *,
        max_batch: int,
        executor: Executor | None = None,
        deferred: DeferredDecisionSink | None = None,
    ) -> None:
        self.core = core
        self._rate_limiter = rate_limiter
        self._refuser = refuser
        self._max_batch = max_batch
        self._coalescer = Coalescer(core, executor=executor, deferred=deferred)

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """The service's methods, taking raw request bytes (decoded by the core)."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check, response_serializer=pb.CheckResponse.SerializeToString
                ),
                "CheckBatch": grpc.unary_unary_rpc_method_handler(
                    self.check_batch,
                    response_serializer=pb.CheckBatchResponse.SerializeToString,
                ),
                "AllowedTools": grpc.unary_unary_rpc_method_handler(
                    self.allowed_tools,
                    response_serializer=pb.AllowedToolsResponse.SerializeToString,
                ),
            },
        )

    async def check(self, data: bytes, context: Context) -> pb.CheckResponse:
        admission = await self._admitted(context, CHECK_METHOD)
        await self._charge(context, CHECK_METHOD, admission, 1)
        call = PendingCall(
            (data,),
            admission.grant,
            CHECK_METHOD,
            admission.started_ns,
            time_remaining(context),
        )
        try:
            return (await self._coalescer.decide(call))[0]
        except Exception:
            log.exception("internal error answering Check")
            return check_response(_internal_error(self.core.engine.version), "")

    async def check_batch(self, data: bytes, context: Context) -> pb.CheckBatchResponse:
        admission = await self._admitted(context, CHECK_BATCH_METHOD)
        try:
            # Split at the wire: each request is checked and decoded on its own.
            requests = batch_requests(data)
        except Malformed as exc:
            # Without the list there is no way to answer request by request.
            await self._refuser.refuse(
                context,
                RefusalCode.INVALID_ARGUMENT,
                f"not a valid pdp.v1.CheckBatchRequest message ({exc})",
                CHECK_BATCH_METHOD,
                admission.grant.caller,
            )
        count = len(requests)
        if count > self._max_batch:
            await self._refuser.refuse(
                context,
                RefusalCode.RESOURCE_EXHAUSTED,
                f"batch has {count} requests; the limit is {self._max_batch}",
                CHECK_BATCH_METHOD,
                admission.grant.caller,
            )
        await self._charge(context, CHECK_BATCH_METHOD, admission, count)
        call = PendingCall(
            requests,
            admission.grant,
            CHECK_BATCH_METHOD,
            admission.started_ns,
            time_remaining(context),
        )
        try:
            responses = await self._coalescer.decide(call)
        except Exception:
            log.exception("internal error answering CheckBatch")
            denied = check_response(_internal_error(self.core.engine.version), "")
            responses = [denied] * count
        return pb.CheckBatchResponse(responses=responses)

    async def allowed_tools(self, data: bytes, context: Context) -> pb.AllowedToolsResponse:
        admission = await self._admitted(context, ALLOWED_TOOLS_METHOD)
        await self._charge(context, ALLOWED_TOOLS_METHOD, admission, 1)
        arguments = (data, admission.grant, admission.started_ns, time_remaining(context))
        executor = self._coalescer.executor
        if executor is None:
            return self.core.list_tools(*arguments)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, self.core.list_tools, *arguments)
        except RuntimeError:  # the pool is shut down: the server is stopping
            refused = _internal_error(self.core.engine.version).reasons
            return allowed_tools_response(None, "", self.core.engine.version, refused)

    # The shared admission, rate limit and coalesced decision path, for the other faces
    # of this service on the same port (pdp.service.ext_authz).
    async def admitted(self, context: Context, method: str) -> Admission:
        return await self._admitted(context, method)

    async def charge(self, context: Context, method: str, admission: Admission, cost: int) -> None:
        await self._charge(context, method, admission, cost)

    async def decide(self, call: PendingCall) -> list[pb.CheckResponse]:
        return await self._coalescer.decide(call)

    async def _admitted(self, context: Context, method: str) -> Admission:
        admission = await require_admission(context, self._refuser, method)
        remaining = time_remaining(context)
        if remaining is not None and remaining <= 0:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before deciding"
            )
        return admission

    async def _charge(self, context: Context, method: str, admission: Admission, cost: int) -> None:
        caller = admission.grant.caller
        if not self._rate_limiter.take(caller.spiffe_id, cost):
            await self._refuser.refuse(
                context,
                RefusalCode.RESOURCE_EXHAUSTED,
                f"rate limit for {caller.spiffe_id} exceeded; retry with backoff",
                method,
                caller,
            )
