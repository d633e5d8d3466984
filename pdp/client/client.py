"""The blocking and the asyncio client of pdp's DecisionService.

Both fail closed: when pdp cannot be reached, the deadline passes or the answer
cannot be read, a call returns a deny whose reason carries a ``FAILURE_*`` code
(:mod:`pdp.client.errors`), unless the client was built with ``on_failure="raise"``,
in which case it raises :class:`DecisionUnavailable` with the same code. No option
turns a failure into an allow. Only transport failures (UNAVAILABLE: no connection)
are retried, a bounded number of times within the call's deadline; an answer, deny
included, is never retried or altered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import grpc
import grpc.aio

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.client.errors import (
    FAILURE_BAD_ANSWER,
    FAILURE_ERROR,
    FAILURE_REFUSED,
    FAILURE_TIMEOUT,
    FAILURE_UNREACHABLE,
    FAILURE_WRONG_SERVER,
    ClientConfigError,
    DecisionUnavailable,
)
from pdp.client.identity import ClientIdentity
from pdp.client.transport import VerifiedRelay
from pdp.client.values import (
    AllowedToolsResult,
    CheckResult,
    IntentLike,
    ToolCall,
    allowed_tools_request,
    allowed_tools_result,
    check_request,
    check_result,
)

OnFailure = Literal["deny", "raise"]
Request = ToolCall | Mapping[str, Any]

DEFAULT_TIMEOUT = 5.0
DEFAULT_ATTEMPTS = 3
_FIRST_BACKOFF = 0.1  # then doubled per retry, and never past the deadline

_SERVICE = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
CHECK_METHOD = f"/{_SERVICE}/Check"
CHECK_BATCH_METHOD = f"/{_SERVICE}/CheckBatch"
ALLOWED_TOOLS_METHOD = f"/{_SERVICE}/AllowedTools"

_REFUSED = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class _Connection:
    """What both clients share: the identity, the verified relay, the options."""

    def __init__(
        self,
        target: str,
        identity: ClientIdentity,
        *,
        timeout: float,
        attempts: int,
        on_failure: OnFailure,
        server_name: str | None,
    ) -> None:
        if timeout <= 0:
            raise ClientConfigError("timeout must be > 0 seconds")
        if attempts < 1:
            raise ClientConfigError("attempts must be >= 1")
        if on_failure not in ("deny", "raise"):
            raise ClientConfigError('on_failure must be "deny" or "raise"')
        self.identity = identity
        self.timeout = timeout
        self.attempts = attempts
        self.on_failure = on_failure
        self.relay = VerifiedRelay(
            target,
            expected_id=identity.server_id,
            tls_context=identity.tls_context,
            server_name=server_name,
            connect_timeout=timeout,
        )
        self.channel_options = [
            ("grpc.default_authority", target),
            # Reconnect soon after pdp comes back instead of grpc's default (1 s, growing
            # to 120 s), which would make calls fail long after pdp is serving again.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]

    def failure(self, error: grpc.RpcError) -> DecisionUnavailable:
        """The client's account of a failed call, with its ``FAILURE_*`` code."""
        code = error.code()
        details = error.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE:
            seen = self.relay.last_failure
            if seen is not None:
                return DecisionUnavailable(seen.code, seen.detail)
            return DecisionUnavailable(FAILURE_UNREACHABLE, f"{self.relay.target}: {details}")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return DecisionUnavailable(FAILURE_TIMEOUT, "no answer from pdp before the deadline")
        if code in _REFUSED:
            return DecisionUnavailable(FAILURE_REFUSED, f"{code.name}: {details}")
        if code is grpc.StatusCode.INTERNAL and "serializ" in details:
            return DecisionUnavailable(FAILURE_BAD_ANSWER, f"unreadable answer: {details}")
        name = code.name if code is not None else "UNKNOWN"
        return DecisionUnavailable(FAILURE_ERROR, f"{name}: {details}")

    def retry_after(self, failure: DecisionUnavailable, attempt: int, deadline: float) -> float:
        """Seconds to wait before the next attempt, or -1: do not retry."""
        if failure.code != FAILURE_UNREACHABLE or attempt + 1 >= self.attempts:
            return -1  # an impostor, a refusal, a timeout or an answer is final
        pause = _FIRST_BACKOFF * 2.0**attempt
        if time.monotonic() + pause >= deadline:
            return -1
        return pause

    def denied(self, failure: DecisionUnavailable, count: int) -> list[CheckResult]:
        """The client's answer to ``count`` requests without pdp's: denies, or raise."""
        if self.on_failure == "raise":
            raise failure
        return [CheckResult.failed(failure.code, failure.detail)] * count

    def no_tools(self, failure: DecisionUnavailable) -> AllowedToolsResult:
        if self.on_failure == "raise":
            raise failure
        return AllowedToolsResult.failed(failure.code, failure.detail)

    def checked(self, response: Any) -> CheckResult:
        if isinstance(response, DecisionUnavailable):
            return self.denied(response, 1)[0]
        return check_result(response)

    def checked_batch(self, response: Any, count: int) -> list[CheckResult]:
        if isinstance(response, DecisionUnavailable):
            return self.denied(response, count)
        try:
            return _batch_results(response, count)
        except DecisionUnavailable as failure:
            return self.denied(failure, count)

    def listed(self, response: Any) -> AllowedToolsResult:
        if isinstance(response, DecisionUnavailable):
            return self.no_tools(response)
        return allowed_tools_result(response)

    def close(self) -> None:
        self.relay.close()


class _Methods:
    """The DecisionService methods on one channel (blocking or grpc.aio)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.check = channel.unary_unary(
            CHECK_METHOD,
            request_serializer=pb.CheckRequest.SerializeToString,
            response_deserializer=pb.CheckResponse.FromString,
        )
        self.check_batch = channel.unary_unary(
            CHECK_BATCH_METHOD,
            request_serializer=pb.CheckBatchRequest.SerializeToString,
            response_deserializer=pb.CheckBatchResponse.FromString,
        )
        self.allowed_tools = channel.unary_unary(
            ALLOWED_TOOLS_METHOD,
            request_serializer=pb.AllowedToolsRequest.SerializeToString,
            response_deserializer=pb.AllowedToolsResponse.FromString,
        )


def _batch(requests: Sequence[Request]) -> pb.CheckBatchRequest:
    return pb.CheckBatchRequest(requests=[check_request(request) for request in requests])


def _batch_results(response: pb.CheckBatchResponse, count: int) -> list[CheckResult]:
    if len(response.responses) != count:
        detail = f"{len(response.responses)} answers to {count} requests"
        raise DecisionUnavailable(FAILURE_BAD_ANSWER, detail)
    return [check_result(answer) for answer in response.responses]


class Client:
    """A blocking pdp client; thread-safe; one connection reused by every call.

    ``target`` is ``HOST:PORT``; ``identity`` says who the client is and which SPIFFE
    ID pdp must present (checked on every connection the calls travel on).
    ``timeout`` is the default deadline of one call, retries included; ``attempts``
    bounds tries after transport failures; ``on_failure`` is ``"deny"`` (default:
    return a deny with a ``FAILURE_*`` reason) or ``"raise"`` (raise
    :class:`DecisionUnavailable`). ``server_name`` is sent as TLS SNI only.
    """

    def __init__(
        self,
        target: str,
        identity: ClientIdentity,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        on_failure: OnFailure = "deny",
        server_name: str | None = None,
    ) -> None:
        self._connection = _Connection(
            target,
            identity,
            timeout=timeout,
            attempts=attempts,
            on_failure=on_failure,
            server_name=server_name,
        )
        self._channel = grpc.insecure_channel(  # plain HTTP/2 to our own verified relay
            self._connection.relay.grpc_target, options=self._connection.channel_options
        )
        self._methods = _Methods(self._channel)

    @property
    def server_id(self) -> str:
        return self._connection.identity.server_id

    def wait_until_connected(self, timeout: float | None = None) -> None:
        """Connects now (pdp's SPIFFE ID checked) instead of at the first call; raises
        :class:`DecisionUnavailable` if no verified connection is up within ``timeout``,
        at once when pdp is not the expected SPIFFE ID."""
        ready = grpc.channel_ready_future(self._channel)
        deadline = time.monotonic() + (timeout or self._connection.timeout)
        while True:
            try:
                ready.result(timeout=min(0.1, max(deadline - time.monotonic(), 0.0)))
                return
            except grpc.FutureTimeoutError:
                seen = self._connection.relay.last_failure
                if seen is not None and (
                    seen.code == FAILURE_WRONG_SERVER or time.monotonic() >= deadline
                ):
                    ready.cancel()
                    raise DecisionUnavailable(seen.code, seen.detail) from None
                if time.monotonic() >= deadline:
                    ready.cancel()
                    raise DecisionUnavailable(
                        FAILURE_UNREACHABLE, f"no connection to {self._connection.relay.target}"
                    ) from None

    def check(self, request: Request, *, timeout: float | None = None) -> CheckResult:
        """One decision. Raises :class:`InvalidRequestError` for a request that cannot
        be encoded; otherwise returns pdp's answer or the client's deny."""
        message = check_request(request)
        return self._connection.checked(self._call(self._methods.check, message, timeout))

    def check_batch(
        self, requests: Sequence[Request], *, timeout: float | None = None
    ) -> list[CheckResult]:
        """Many decisions in one call, answers in request order."""
        if not requests:
            return []
        response = self._call(self._methods.check_batch, _batch(requests), timeout)
        return self._connection.checked_batch(response, len(requests))

    def allowed_tools(
        self,
        agent: str,
        server: str,
        *,
        intent: IntentLike | None = None,
        session: str = "",
        agent_svid: str = "",
        timeout: float | None = None,
    ) -> AllowedToolsResult:
        """Which tools of ``server`` ``agent`` may call under ``intent`` (an
        :class:`Intent` or its JSON object): one verdict per tool of the server in
        pdp's inventory. ``agent_svid``: the agent's JWT-SVID where pdp requires proof
        of the agent. No answer: no tools, with the ``FAILURE_*`` code."""
        message = allowed_tools_request(agent, server, intent, session, agent_svid)
        return self._connection.listed(self._call(self._methods.allowed_tools, message, timeout))

    def _call(self, method: Any, message: Any, timeout: float | None) -> Any:
        """The response, or the :class:`DecisionUnavailable` that ended the attempts."""
        connection = self._connection
        deadline = time.monotonic() + (timeout or connection.timeout)
        attempt = 0
        while True:
            try:
                return method(message, timeout=max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as error:
                failure = connection.failure(error)
            pause = connection.retry_after(failure, attempt, deadline)
            if pause < 0:
                return failure
            time.sleep(pause)
            attempt += 1

    def close(self) -> None:
        self._channel.close()
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of :class:`Client` (same arguments, same answers); use it
    from one event loop, as ``async with AsyncClient(...) as pdp:``."""

    def __init__(
        self,
        target: str,
        identity: ClientIdentity,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        on_failure: OnFailure = "deny",
        server_name: str | None = None,
    ) -> None:
        self._connection = _Connection(
            target,
            identity,
            timeout=timeout,
            attempts=attempts,
            on_failure=on_failure,
            server_name=server_name,
        )
        # grpc.aio channels belong to the event loop they are made on: made at the first
        # call, so that a client built before the loop runs (e.g. at import) works.
        self._methods: _Methods | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _stub(self) -> _Methods:
        loop = asyncio.get_running_loop()
        if self._methods is None or self._loop is not loop:
            channel = grpc.aio.insecure_channel(
                self._connection.relay.grpc_target, options=self._connection.channel_options
            )
            self._methods, self._loop = _Methods(channel), loop
        return self._methods

    @property
    def server_id(self) -> str:
        return self._connection.identity.server_id

    async def check(self, request: Request, *, timeout: float | None = None) -> CheckResult:
        """One decision. Raises :class:`InvalidRequestError` for a request that cannot
        be encoded; otherwise returns pdp's answer or the client's deny."""
        message = check_request(request)
        return self._connection.checked(await self._call(self._stub().check, message, timeout))

    async def check_batch(
        self, requests: Sequence[Request], *, timeout: float | None = None
    ) -> list[CheckResult]:
        """Many decisions in one call, answers in request order."""
        if not requests:
            return []
        response = await self._call(self._stub().check_batch, _batch(requests), timeout)
        return self._connection.checked_batch(response, len(requests))

    async def allowed_tools(
        self,
        agent: str,
        server: str,
        *,
        intent: IntentLike | None = None,
        session: str = "",
        agent_svid: str = "",
        timeout: float | None = None,
    ) -> AllowedToolsResult:
        """Which tools of ``server`` ``agent`` may call under ``intent`` (an
        :class:`Intent` or its JSON object): one verdict per tool of the server in
        pdp's inventory. ``agent_svid``: the agent's JWT-SVID where pdp requires proof
        of the agent. No answer: no tools, with the ``FAILURE_*`` code."""
        message = allowed_tools_request(agent, server, intent, session, agent_svid)
        return self._connection.listed(
            await self._call(self._stub().allowed_tools, message, timeout)
        )

    async def _call(self, method: Any, message: Any, timeout: float | None) -> Any:
        """The response, or the :class:`DecisionUnavailable` that ended the attempts."""
        connection = self._connection
        deadline = time.monotonic() + (timeout or connection.timeout)
        attempt = 0
        while True:
            try:
                return await method(message, timeout=max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as error:
                failure = connection.failure(error)
            pause = connection.retry_after(failure, attempt, deadline)
            if pause < 0:
                return failure
            await asyncio.sleep(pause)
            attempt += 1

    async def close(self) -> None:
        if self._methods is not None and self._loop is asyncio.get_running_loop():
            await self._methods.channel.close(None)
        self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
