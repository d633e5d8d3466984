"""The one place where every call is authenticated: a server interceptor.

It wraps the handler of every method (decision service, audit service, health,
reflection), so no method can run unauthenticated, whoever registers it. Methods of a
protected service also need the caller on that service's allow-list (the decision
service: ``callers``; the audit service: ``audit_watchers``); the resulting
:class:`Admission` reaches the servicer through a context variable (grpc.aio runs each
call in its own task, with its own ``contextvars.Context``, so nothing leaks from one
call to the next).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from pdp.model import Caller
from pdp.service.gate import AuthContext, CallerGate, CallerGrant, NotAllowed, NotAuthenticated
from pdp.service.sink import DecisionSink, RefusalCode, RefusalEvent

log = logging.getLogger(__name__)

_STATUS_OF = {
    RefusalCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RefusalCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    RefusalCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
}


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
    """Ends a call with a status and tells the sink, with an id the operator can look up."""

    def __init__(self, sink: DecisionSink, new_id: Callable[[], str]) -> None:
        self._sink = sink
        self._new_id = new_id

    async def refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        code: RefusalCode,
        message: str,
        method: str,
        caller: Caller | None = None,
    ) -> NoReturn:
        refusal_id = self._new_id()
        try:
            self._sink.record_refusal(
                RefusalEvent(refusal_id, code, message, method, context.peer(), caller)
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
    """

    def __init__(
        self,
        gate: CallerGate,
        refuser: Refuser,
        protected_services: Mapping[str, Admit] | Collection[str],
    ) -> None:
        self._gate = gate
        self._refuser = refuser
        if not isinstance(protected_services, Mapping):
            protected_services = dict.fromkeys(protected_services, gate.admit)
        self._protected: tuple[tuple[str, Admit], ...] = tuple(
            (f"/{service}/", admit) for service, admit in protected_services.items()
        )
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
        wrapped = _wrap_handler(handler, self._guard(method))
        self._wrapped[method] = wrapped
        return wrapped

    def _guard(self, method: str) -> Callable[[Behavior], Behavior]:
        protected = next(
            (admit for prefix, admit in self._protected if method.startswith(prefix)), None
        )

        def guard(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):

                async def admitted_stream(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> AsyncIterator[Any]:
                    await self._admit(context, method, protected, time.perf_counter_ns())
                    async for response in behavior(request, context):
                        yield response

                return admitted_stream

            async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await self._admit(context, method, protected, time.perf_counter_ns())
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

            return admitted

        return guard

    async def _admit(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        protected: Admit | None,
        started_ns: int,
    ) -> None:
        try:
            # grpc-stubs say Mapping[str, bytes]; grpc returns lists of values.
            auth_context: AuthContext = context.auth_context()  # type: ignore[assignment]
            if protected is not None:
                _ADMISSION.set(Admission(protected(auth_context), started_ns))
            else:
                self._gate.authenticate(auth_context)
            return
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


def _wrap_handler(handler: Handler, guard: Callable[[Behavior], Behavior]) -> Handler:
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            guard(handler.unary_stream), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            guard(handler.stream_unary), deserializer, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            guard(handler.stream_stream), deserializer, serializer
        )
    raise ValueError("method handler without a behavior")
