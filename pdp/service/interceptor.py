"""The one place where every call is authenticated: a server interceptor.

It wraps the handler of every method (decision service, audit service, health,
reflection), so no method can run unauthenticated, whoever registers it. Methods of a
protected service also need the caller on that service's allow-list (the decision
service: ``callers``; the audit service: ``audit_watchers``); the resulting
:class:`Admission` reaches the servicer through a context variable (grpc.aio runs each
call in its own task, with its own ``contextvars.Context``, so nothing leaks from one
call to the next).

It is also where no caller can starve the others (pdp.service.admission), because grpc
takes its own concurrency slot (``maximum_concurrent_rpcs``) when a stream's headers
arrive, before its message and before anyone knows who is calling, so a peer holding
streams open without a body would hold every slot. pdp therefore does not use that pool.
A method taking one request message is served as a request-streaming one, so that its
behavior starts when the stream opens: the peer is authenticated there, the call takes
a slot of its caller's share (:class:`pdp.service.admission.CallerSlots`), and the
request message must arrive within ``request_timeout_s`` or the call ends with
DEADLINE_EXCEEDED. A stalled stream holds one slot of its own caller's share, for a few
seconds; nobody else's.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from pdp.model import Caller
from pdp.service.admission import CallerSlots, RecordBudget, RefusalCounts, caller_key
from pdp.service.gate import AuthContext, CallerGate, CallerGrant, NotAllowed, NotAuthenticated
from pdp.service.sink import DecisionSink, RefusalCode, RefusalEvent

log = logging.getLogger(__name__)

_STATUS_OF = {
    RefusalCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RefusalCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    RefusalCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# What a refusal record takes in the audit log besides its message (for RecordBudget).
REFUSAL_RECORD_BYTES = 400


@dataclass(frozen=True, slots=True)
class Admission:
    grant: CallerGrant
    started_ns: int  # time.perf_counter_ns() when the call reached the server's code


_ADMISSION: ContextVar[Admission] = ContextVar("pdp_admission")


def current_admission() -> Admission | None:
    """The admission of the call being served, or None outside an admitted call."""
    return _ADMISSION.get(None)


async def require_admission(
    context: grpc.aio.ServicerContext[Any, Any], refuser: Refuser, method: str
) -> Admission:
    """The admission of the call being served; a handler registered without the
    :class:`AuthInterceptor` refuses the call rather than serve anyone."""
    admission = current_admission()
    if admission is None:
        await refuser.refuse(
            context,
            RefusalCode.UNAUTHENTICATED,
            "the caller was not authenticated (server misconfigured)",
            method,
        )
    return admission


class Refuser:
    """Ends a call with a status and tells the sink, with an id the operator can look up.

    Every refusal is counted per caller (``counts``); its record is written while the
    caller's ``budget`` lasts (a flood of refusals must not fill the audit log)."""

    def __init__(
        self,
        sink: DecisionSink,
        new_id: Callable[[], str],
        *,
        budget: RecordBudget | None = None,
        counts: RefusalCounts | None = None,
    ) -> None:
        self._sink = sink
        self._new_id = new_id
        self.budget = budget
        self.counts = counts if counts is not None else RefusalCounts()

    async def refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        code: RefusalCode,
        message: str,
        method: str,
        caller: Caller | None = None,
    ) -> NoReturn:
        refusal_id = self._new_id()
        peer = context.peer()
        key = caller_key(caller, peer)
        self.counts.add(key, code)
        # Every refusal reaches the sink (it counts them all); beyond the caller's
        # budget the event says not to write a record.
        record = self.budget is None or self.budget.allow(key, len(message) + REFUSAL_RECORD_BYTES)
        try:
            self._sink.record_refusal(
                RefusalEvent(refusal_id, code, message, method, peer, caller, record)
            )
        except Exception:
            log.exception("recording refusal %s failed", refusal_id)
        await context.abort(_STATUS_OF[code], f"{message} (refusal id {refusal_id})")
        raise AssertionError("context.abort returned")  # pragma: no cover


# A handler's behavior: a coroutine function, an async generator function, or (for
# handlers grpc runs in a thread) a plain function.
Behavior = Callable[..., Any]

if TYPE_CHECKING:  # grpc-stubs make these generic; the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _InterceptorBase = grpc.aio.ServerInterceptor


# Turns an authenticated call's auth context into a grant, or raises Refused.
Admit = Callable[[AuthContext], CallerGrant]


class AuthInterceptor(_InterceptorBase):
    """Authenticates every call; admits calls to ``protected_services`` by allow-list.

    ``protected_services`` maps a service name to how its callers are admitted; a plain
    collection of names admits them all with ``gate.admit`` (the ``callers`` list).
    With ``slots``, every call with one response takes a slot of its caller's share
    while it runs; methods starting with one of ``reserved`` (health, status) may use
    the reserve. With ``request_timeout_s``, a call's request message must arrive that
    soon after its stream opens (see the module docstring).
    """

    def __init__(
        self,
        gate: CallerGate,
        refuser: Refuser,
        protected_services: Mapping[str, Admit] | Collection[str],
        *,
        slots: CallerSlots | None = None,
        reserved: Collection[str] = (),
        request_timeout_s: float | None = None,
    ) -> None:
        self._gate = gate
        self._refuser = refuser
        if not isinstance(protected_services, Mapping):
            protected_services = dict.fromkeys(protected_services, gate.admit)
        self._protected: tuple[tuple[str, Admit], ...] = tuple(
            (f"/{service}/", admit) for service, admit in protected_services.items()
        )
        self.slots = slots
        self._reserved = tuple(reserved)
        self._request_timeout_s = request_timeout_s
        # Handlers are fixed once the server starts: wrap each method once.
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(  # type: ignore[override]  # None means UNIMPLEMENTED
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED; nothing runs
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        protected = next(
            (admit for prefix, admit in self._protected if method.startswith(prefix)), None
        )
        reserved = method.startswith(self._reserved) if self._reserved else False
        deserializer = handler.request_deserializer
        serializer = handler.response_serializer

        if handler.unary_unary is not None:
            unary: Behavior = handler.unary_unary

            async def one_answer(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                caller = await self._admit(context, method, protected, time.perf_counter_ns())
                key = await self._take_slot(context, method, caller, reserved)
                try:
                    request = await self._request(requests, context, method, caller)
                    result = unary(request, context)
                    return await result if inspect.isawaitable(result) else result
                finally:
                    if key is not None and self.slots is not None:
                        self.slots.release(key)

            return grpc.stream_unary_rpc_method_handler(one_answer, deserializer, serializer)

        if handler.unary_stream is not None:
            # Long-lived (watch streams): no slot, their services bound them
            # (limits.max_watchers), and grpc's own request handling.
            return grpc.unary_stream_rpc_method_handler(
                self._guard_streaming(handler.unary_stream, method, protected),
                deserializer,
                serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._guard_streaming(handler.stream_unary, method, protected),
                deserializer,
                serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._guard_streaming(handler.stream_stream, method, protected),
                deserializer,
                serializer,
            )
        raise ValueError("method handler without a behavior")

    def _guard_streaming(
        self, behavior: Behavior, method: str, protected: Admit | None
    ) -> Behavior:
        """Authentication only, for methods that answer with a stream (watches) or take
        one (reflection): long-lived, bounded by their own services."""
        if inspect.isasyncgenfunction(behavior):

            async def admitted_stream(
                requests: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await self._admit(context, method, protected, time.perf_counter_ns())
                async for response in behavior(requests, context):
                    yield response

            return admitted_stream

        async def admitted(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._admit(context, method, protected, time.perf_counter_ns())
            result = behavior(requests, context)
            return await result if inspect.isawaitable(result) else result

        return admitted

    async def _take_slot(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        caller: Caller,
        reserved: bool,
    ) -> str | None:
        if self.slots is None:
            return None
        key = caller.spiffe_id
        refused = self.slots.take(key, reserved=reserved)
        if refused:
            await self._refuser.refuse(
                context, RefusalCode.RESOURCE_EXHAUSTED, refused, method, caller
            )
        return key

    async def _request(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        caller: Caller,
    ) -> Any:
        """The call's one request message, within ``request_timeout_s`` of its start."""
        try:
            async with asyncio.timeout(self._request_timeout_s):
                request = await anext(aiter(requests), _NO_MESSAGE)
        except TimeoutError:
            await self._refuser.refuse(
                context,
                RefusalCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {self._request_timeout_s:g} s"
                " of the call's start (server.request_timeout_s)",
                method,
                caller,
            )
        if request is _NO_MESSAGE:
            await self._refuser.refuse(
                context,
                RefusalCode.INVALID_ARGUMENT,
                "the call carried no request message",
                method,
                caller,
            )
        admission = current_admission()
        if admission is not None:  # decision latency counts from here, not the stream open
            _ADMISSION.set(Admission(admission.grant, time.perf_counter_ns()))
        return request

    async def _admit(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        protected: Admit | None,
        started_ns: int,
    ) -> Caller:
        try:
            # grpc-stubs say Mapping[str, bytes]; grpc returns lists of values.
            auth_context: AuthContext = context.auth_context()  # type: ignore[assignment]
            if protected is not None:
                grant = protected(auth_context)
                _ADMISSION.set(Admission(grant, started_ns))
                return grant.caller
            return self._gate.authenticate(auth_context)
        except NotAuthenticated as exc:
            code, message, caller = RefusalCode.UNAUTHENTICATED, exc.message, None
        except NotAllowed as exc:
            code, message, caller = RefusalCode.PERMISSION_DENIED, exc.message, exc.caller
        except Exception:
            # Fail closed: a bug in authentication must never let a call through.
            log.exception("authentication of a call to %s failed unexpectedly", method)
            code, message, caller = (
                RefusalCode.UNAUTHENTICATED,
                "the caller could not be authenticated (internal error)",
                None,
            )
        await self._refuser.refuse(context, code, message, method, caller)


_NO_MESSAGE: Any = object()
