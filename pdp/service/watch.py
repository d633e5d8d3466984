"""``pdp.v1.AuditService``: a live feed of the audit log (WatchDecisions) and GetStatus.

Records come from the audit pipeline's listener mechanism, after they are committed to
the log: the very records of the log (redacted, hash-chained), never the requests as
received. One :class:`WatchHub` per server subscribes to the pipeline while at least
one watcher is connected (so that no watcher costs nothing) and fans records out to the
watchers on the event loop::

    audit writer thread --offer--> pipeline listener thread --call_soon_threadsafe-->
        event loop: filter, per-watcher bounded queue --> the watcher's stream

Nothing on that path waits for a watcher. A watcher whose queue is full (it does not
read fast enough) is cut off: its stream ends with RESOURCE_EXHAUSTED and the number of
records it missed. If the loop itself fell behind the feed (the hub's own buffer
overflowed, or the pipeline dropped the hub's listener), every watcher is cut off the
same way: a watcher is never silently given a gap.

``record_json`` is the record as the log holds it. The listener hands over decoded
JSON; encoding it again the way the writer does (compact, UTF-8, insertion order) gives
the same bytes, which :func:`feed_item` checks against the record's own ``hash``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from pdp._proto.pdp.v1 import audit_pb2 as apb
from pdp.identity.spiffe_id import InvalidSpiffeId, SpiffeIdPattern
from pdp.service.interceptor import Refuser, current_admission, require_admission
from pdp.service.sink import RefusalCode

log = logging.getLogger(__name__)

AUDIT_SERVICE_NAME = apb.DESCRIPTOR.services_by_name["AuditService"].full_name
WATCH_METHOD = f"/{AUDIT_SERVICE_NAME}/WatchDecisions"
STATUS_METHOD = f"/{AUDIT_SERVICE_NAME}/GetStatus"

# Initial metadata sent once a watcher is subscribed: records committed after the
# client has seen it are in its stream.
WATCHING_HEADER = ("pdp-watch", "subscribed")
# How often an idle watcher checks that the feed is still connected.
_IDLE_CHECK_S = 1.0
# A watcher cut off while its client reads nothing cannot be told at once: its stream
# is stuck behind flow control. After this long its place is freed and the verdict is
# queued behind what is stuck; the client gets it when it reads again (or the call ends
# with the connection, at server.max_connection_age_s).
_CUT_GRACE_S = 5.0

Context = grpc.aio.ServicerContext[Any, Any]


class FeedListener(Protocol):
    @property
    def connected(self) -> bool: ...

    def close(self) -> None: ...


class RecordFeed(Protocol):
    """Where committed audit records come from: :class:`pdp.audit.pipeline.AuditPipeline`."""

    def add_listener(
        self, callback: Callable[[dict[str, Any]], None], *, max_pending: int | None = None
    ) -> FeedListener: ...


# --- records ----------------------------------------------------------------------

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


def record_line(record: dict[str, Any]) -> str:
    """The JSON text of a committed record as the writer encoded it (pdp.audit.chain)."""
    text = _ENCODE(record)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the writer fell back to \\u escapes
        text = _ENCODE_ASCII(record)
    return text


def line_matches_hash(line: str, claimed: object) -> bool:
    """Whether ``line`` hashes to ``claimed`` as in ``pdp audit verify``."""
    raw = line.encode("utf-8")
    cut = raw.rfind(b',"hash":"')
    return cut > 0 and hashlib.sha256(raw[:cut] + b"}").hexdigest() == claimed


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One committed record, with what filters look at and its serialized message."""

    kind: str
    agent: str
    server: str
    tool: str
    decision: str
    caller: str
    message: bytes  # a serialized pdp.v1.AuditRecord


_hash_mismatch_logged = False


def feed_item(record: dict[str, Any]) -> FeedItem:
    global _hash_mismatch_logged  # noqa: PLW0603 -- log once per process
    line = record_line(record)
    if not line_matches_hash(line, record.get("hash")) and not _hash_mismatch_logged:
        _hash_mismatch_logged = True
        log.warning(
            "watch feed: record seq %s does not encode to the bytes of the log;"
            " record_json may differ from the log line",
            record.get("seq"),
        )
    kind = _text(record.get("kind"))
    request = record.get("request")
    request = request if isinstance(request, dict) else {}
    caller = record.get("caller")
    caller_id = _text(caller.get("spiffe_id")) if isinstance(caller, dict) else ""
    seq = record.get("seq")
    version = record.get("version") if kind == "policy_reload" else record.get("policy_version")
    message = apb.AuditRecord(
        record_json=line,
        kind=kind,
        seq=seq if isinstance(seq, int) and seq > 0 else 0,
        decision_id=_text(record.get("decision_id")),
        decision=_text(record.get("decision")) if kind == "decision" else "",
        agent=_text(request.get("agent")),
        server=_text(request.get("server")),
        tool=_text(request.get("tool")),
        caller=caller_id,
        policy_version=_text(version),
    )
    return FeedItem(
        kind,
        message.agent,
        message.server,
        message.tool,
        message.decision,
        caller_id,
        message.SerializeToString(),
    )


# --- filters ----------------------------------------------------------------------


class BadFilter(ValueError):
    pass


def _pattern(text: str, field: str) -> SpiffeIdPattern | None:
    if not text:
        return None
    try:
        return SpiffeIdPattern(text)
    except InvalidSpiffeId as exc:
        raise BadFilter(
            f"{field}: {text!r} is not a SPIFFE ID or a prefix ending in '/*' ({exc})"
        ) from None


@dataclass(frozen=True, slots=True)
class WatchFilter:
    agent: SpiffeIdPattern | None = None
    server: str = ""
    tool: str = ""
    decision: str = ""  # "allow", "deny" or "" (both)
    caller: SpiffeIdPattern | None = None
    include_refusals: bool = False
    include_reloads: bool = False

    @classmethod
    def from_request(cls, request: apb.WatchRequest) -> WatchFilter:
        """Raises :class:`BadFilter` with a message for the caller."""
        if request.decision not in ("", "allow", "deny"):
            raise BadFilter(f"decision: {request.decision!r} is not 'allow', 'deny' or ''")
        return cls(
            agent=_pattern(request.agent, "agent"),
            server=request.server,
            tool=request.tool,
            decision=request.decision,
            caller=_pattern(request.caller, "caller"),
            include_refusals=request.include_refusals,
            include_reloads=request.include_reloads,
        )

    def matches(self, item: FeedItem) -> bool:
        if item.kind == "decision":
            return (
                (self.caller is None or self.caller.matches(item.caller))
                and (self.agent is None or self.agent.matches(item.agent))
                and (not self.server or item.server == self.server)
                and (not self.tool or item.tool == self.tool)
                and (not self.decision or item.decision == self.decision)
            )
        if item.kind == "refusal":
            return self.include_refusals and (
                self.caller is None or self.caller.matches(item.caller)
            )
        if item.kind == "policy_reload":
            return self.include_reloads
        return False

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("agent", self.agent.text if self.agent else ""),
                ("server", self.server),
                ("tool", self.tool),
                ("decision", self.decision),
                ("caller", self.caller.text if self.caller else ""),
            )
            if value
        ]
        parts += [flag for flag in ("include_refusals", "include_reloads") if getattr(self, flag)]
        return ", ".join(parts) or "everything"


# --- the hub ----------------------------------------------------------------------


class Watcher:
    """One open WatchDecisions stream. Touched only on the event loop."""

    def __init__(self, watch_filter: WatchFilter, spiffe_id: str, limit: int) -> None:
        self.filter = watch_filter
        self.spiffe_id = spiffe_id
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.sent = 0
        self.missed = 0
        self.cut = ""  # why it was cut off; "" while it keeps up
        self.told = False  # the stream has been ended with the verdict
        self.closed = False  # the server is shutting down
        self.on_cut: Callable[[], None] | None = None

    def verdict(self) -> str:
        return (
            f"watcher cut off: {self.cut}; {self.missed} records missed (decisions are"
            " never held up for a watcher); reconnect, and read the audit log for what"
            " was missed"
        )

    def offer(self, item: FeedItem) -> bool:
        """Queues ``item`` if it matches; True if that cut the watcher off."""
        if not self.filter.matches(item):
            return False
        if self.cut:
            self.missed += 1
            return False
        if len(self.queue) >= self.limit:
            return self.cut_off(f"it fell behind by more than {self.limit} records", 1)
        self.queue.append(item.message)
        self.wake.set()
        return False

    def cut_off(self, why: str, missed: int = 0) -> bool:
        """Drops what is queued, counts it missed; True if it was not cut off before."""
        if self.cut:
            self.missed += missed
            return False
        self.cut = why
        self.missed += len(self.queue) + missed
        self.queue.clear()
        self.wake.set()
        if self.on_cut is not None:
            self.on_cut()
        return True


class WatchHub:
    """Fans committed audit records out to the watchers; see the module docstring.

    ``join``/``leave``/``close`` run on the event loop; records arrive on the pipeline's
    listener thread. ``buffer`` bounds the records handed to the loop and not yet
    dispatched.
    """

    def __init__(
        self,
        feed: RecordFeed,
        loop: asyncio.AbstractEventLoop,
        *,
        max_watchers: int,
        queue_size: int,
        buffer: int = 8192,
    ) -> None:
        self._feed = feed
        self._loop = loop
        self.max_watchers = max_watchers
        self.queue_size = queue_size
        self._buffer = buffer
        self._watchers: list[Watcher] = []
        self._listener: FeedListener | None = None
        self._lock = threading.Lock()
        self._pending: deque[FeedItem | None] = deque()  # None: a record not usable
        self._overflow = 0  # records lost because the loop fell behind
        self._scheduled = False
        self._closed = False
        self._generation = 0  # of the subscription; a closed listener may still deliver
        self.cut_off = 0  # watchers cut off so far

    @property
    def count(self) -> int:
        return len(self._watchers)

    @property
    def watchers(self) -> tuple[Watcher, ...]:
        return tuple(self._watchers)

    @property
    def closed(self) -> bool:
        return self._closed

    def join(self, watch_filter: WatchFilter, spiffe_id: str) -> Watcher | None:
        """A new watcher, subscribed from now on; None when there are already
        ``max_watchers``."""
        if self._closed or len(self._watchers) >= self.max_watchers:
            return None
        self.check_feed()  # never resubscribe under watchers that missed records
        watcher = Watcher(watch_filter, spiffe_id, self.queue_size)
        self._watchers = [*self._watchers, watcher]
        if self._listener is None:
            self._subscribe()
        return watcher

    def leave(self, watcher: Watcher) -> None:
        self._watchers = [w for w in self._watchers if w is not watcher]
        if not self._watchers:
            self._unsubscribe()

    def check_feed(self) -> None:
        """Cuts every watcher off if the pipeline dropped the hub's listener."""
        listener = self._listener
        if listener is None or listener.connected:
            return
        self._unsubscribe()
        if self._watchers:
            log.warning("watch feed: the audit pipeline disconnected the hub (it fell behind)")
        for watcher in self._watchers:
            self.cut_off += watcher.cut_off("the server's watch feed fell behind the audit log")

    def close(self) -> None:
        """Ends every stream (OK) and stops listening: the server is shutting down."""
        self._closed = True
        for watcher in self._watchers:
            watcher.closed = True
            watcher.wake.set()
        self._unsubscribe()

    def _subscribe(self) -> None:
        with self._lock:
            self._generation += 1
            self._pending.clear()
            self._overflow = 0
        self._listener = self._feed.add_listener(
            functools.partial(self._on_record, self._generation), max_pending=self._buffer
        )

    def _unsubscribe(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    # -- the pipeline's listener thread ------------------------------------------------
    def _on_record(self, generation: int, record: dict[str, Any]) -> None:
        if generation != self._generation:
            return  # from a listener closed since: records from before the watchers
        # Encoding and serializing happen here, off the event loop that decides.
        item: FeedItem | None
        try:
            item = feed_item(record)
        except Exception:
            log.exception("watch feed: record seq %s not usable", record.get("seq"))
            item = None
        with self._lock:
            if generation != self._generation:
                return
            if len(self._pending) >= self._buffer:
                self._overflow += 1
                return
            self._pending.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        # RuntimeError: the loop is closed, so nobody is watching any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drain)

    # -- the event loop ----------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, deque()
            overflow, self._overflow = self._overflow, 0
            self._scheduled = False
        watchers = self._watchers
        if not watchers:
            return
        if overflow:
            log.warning(
                "watch feed: the event loop fell behind; %d records not fanned out", overflow
            )
            for watcher in watchers:
                self.cut_off += watcher.cut_off(
                    "the server's watch feed fell behind the audit log", overflow
                )
        for item in items:
            if item is None:
                for watcher in watchers:
                    self.cut_off += watcher.cut_off("a record could not be sent", 1)
                continue
            for watcher in watchers:
                self.cut_off += watcher.offer(item)


# --- the service ------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


class AuditServicer:
    """The grpc.aio face of :class:`WatchHub` and of the server's status.

    ``hub`` is None when the server has no audit log (``--no-audit``): WatchDecisions
    then answers FAILED_PRECONDITION. ``status`` builds the GetStatus answer (the
    server knows its health checks and policies).
    """

    def __init__(
        self,
        hub: WatchHub | None,
        refuser: Refuser,
        status: Callable[[], apb.StatusResponse],
    ) -> None:
        self.hub = hub
        self._refuser = refuser
        self._status = status

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            AUDIT_SERVICE_NAME,
            {
                "WatchDecisions": grpc.unary_stream_rpc_method_handler(
                    self.watch_decisions,
                    request_deserializer=apb.WatchRequest.FromString,
                    response_serializer=_identity,  # each record is serialized once
                ),
                "GetStatus": grpc.unary_unary_rpc_method_handler(
                    self.get_status,
                    request_deserializer=apb.StatusRequest.FromString,
                    response_serializer=apb.StatusResponse.SerializeToString,
                ),
            },
        )

    async def get_status(self, request: apb.StatusRequest, context: Context) -> apb.StatusResponse:
        await self._admitted(context, STATUS_METHOD)
        response = self._status()
        response.watchers = self.hub.count if self.hub is not None else 0
        return response

    async def watch_decisions(self, request: apb.WatchRequest, context: Context) -> Any:
        # An async generator: grpc.aio sends what it yields, one message at a time.
        spiffe_id = await self._admitted(context, WATCH_METHOD)
        hub = self.hub
        if hub is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server runs without an audit log (--no-audit): there are no"
                " decision records to watch",
            )
            return
        try:
            watch_filter = WatchFilter.from_request(request)
        except BadFilter as exc:
            await self._refuser.refuse(
                context,
                RefusalCode.INVALID_ARGUMENT,
                f"bad watch filter: {exc}",
                WATCH_METHOD,
                _caller(),
            )
        watcher = hub.join(watch_filter, spiffe_id)
        if watcher is None:
            if hub.closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            await self._refuser.refuse(
                context,
                RefusalCode.RESOURCE_EXHAUSTED,
                f"{hub.count} watchers are connected, the limit (limits.max_watchers);"
                " try again later",
                WATCH_METHOD,
                _caller(),
            )
        log.info("watcher %s connected (%s)", spiffe_id, watch_filter.describe())
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []
        late: set[asyncio.Task[None]] = set()

        def tell_late() -> None:
            # Still stuck in a send: free the place, queue the verdict behind the send.
            if watcher.told:
                return
            watcher.told = True
            hub.leave(watcher)
            log.warning("watcher %s %s (it reads nothing)", spiffe_id, watcher.verdict())
            task = loop.create_task(_abort(context, watcher.verdict()))
            late.add(task)
            task.add_done_callback(late.discard)

        watcher.on_cut = lambda: timers.append(loop.call_later(_CUT_GRACE_S, tell_late))
        try:
            await context.send_initial_metadata((WATCHING_HEADER,))
            while True:
                while watcher.queue:
                    watcher.sent += 1
                    yield watcher.queue.popleft()
                if watcher.cut:
                    if watcher.told:
                        return  # the verdict is on its way (tell_late)
                    watcher.told = True
                    log.warning("watcher %s %s", spiffe_id, watcher.verdict())
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, watcher.verdict())
                if watcher.closed:
                    return
                watcher.wake.clear()
                try:
                    await asyncio.wait_for(watcher.wake.wait(), _IDLE_CHECK_S)
                except TimeoutError:
                    hub.check_feed()
        finally:
            for timer in timers:
                timer.cancel()
            hub.leave(watcher)
            log.info(
                "watcher %s disconnected after %d records (%d missed)",
                spiffe_id,
                watcher.sent,
                watcher.missed,
            )

    async def _admitted(self, context: Context, method: str) -> str:
        return (await require_admission(context, self._refuser, method)).grant.caller.spiffe_id


async def _abort(context: Context, message: str) -> None:
    """Ends a call from outside its handler (the handler then stops at its next step)."""
    with contextlib.suppress(Exception):  # AbortError, always; or the call is gone
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def _caller() -> Any:
    admission = current_admission()
    return admission.grant.caller if admission is not None else None


def reload_attempt(event: Any) -> apb.ReloadAttempt:
    """A ``ReloadAttempt`` from a :class:`pdp.engine.runtime.ReloadEvent`."""
    attempt = apb.ReloadAttempt(
        role=event.role,
        directory=event.directory,
        ok=event.ok,
        version=event.version,
        candidate_version=event.candidate_version,
        detail=event.detail,
        duration_ms=event.duration_ms,
    )
    attempt.time.FromDatetime(event.time)
    return attempt


def health_checks(checks: Sequence[tuple[str, bool, str]]) -> list[apb.HealthCheck]:
    return [apb.HealthCheck(name=name, ok=ok, detail=detail) for name, ok, detail in checks]
