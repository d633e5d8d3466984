"""Reading audit lines from a NATS JetStream stream (what the audit shipper publishes).

``nats://HOST:PORT/STREAM[?subject=SUBJECT]`` is read with an ephemeral *ordered*
consumer (push, flow-controlled, no acks, nothing left behind on the server) from the
first message of the stream. The end is the last message stored when the read began,
so a busy stream still ends; with ``subject`` (e.g. ``pdp.audit.pdp-1`` for one
instance) the read also ends when no matching message is pending. Each message body is
one audit line; positions read ``nats://HOST:PORT/STREAM#<stream sequence>``.

The asyncio client runs on its own thread and hands messages over through a bounded
queue, so the replay loop stays synchronous and memory stays bounded whatever the
stream size.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from pdp.replay.sources import SourceError

QUEUE_SIZE = 4096
IDLE_POLL_S = 1.0
STALL_LIMIT_S = 60.0  # pending messages but none delivered for this long: give up
CONNECT_TIMEOUT_S = 5.0
_STREAM_RE = re.compile(r"\A[A-Za-z0-9_-]{1,255}\Z")
_SUBJECT_RE = re.compile(r"\A[^\s]+\Z")

_Item = tuple[int, bytes] | BaseException | None
_Putter = Callable[[_Item], Awaitable[bool]]


class NatsSource:
    """A JetStream stream as a source of audit lines."""

    def __init__(self, spec: str) -> None:
        parts = urlsplit(spec)
        if parts.scheme != "nats" or not parts.hostname:
            raise SourceError(f"{spec}: expected nats://HOST:PORT/STREAM[?subject=SUBJECT]")
        try:
            port = parts.port or 4222
        except ValueError:
            raise SourceError(f"{spec}: the port is not a number") from None
        stream = parts.path.strip("/")
        if not _STREAM_RE.match(stream):
            raise SourceError(
                f"{spec}: name the stream in the path, e.g. nats://HOST:PORT/PDP_AUDIT"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"subject"})
        if unknown:
            raise SourceError(f"{spec}: unknown query parameter {unknown[0]!r} (only 'subject')")
        subjects = query.get("subject", [""])
        if len(subjects) != 1 or (subjects[0] and not _SUBJECT_RE.match(subjects[0])):
            raise SourceError(f"{spec}: give at most one subject without spaces")
        self.stream = stream
        self.subject = subjects[0]
        userinfo = parts.netloc.rpartition("@")[0]
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.server = f"nats://{userinfo + '@' if userinfo else ''}{host}:{port}"
        # The label appears in reports: never with a password in it.
        self.label = spec.replace(f":{parts.password}@", ":***@") if parts.password else spec
        self._base = f"nats://{host}:{port}/{stream}"
        self._first = 0
        self._done = 0
        self._total = 0

    def progress(self) -> tuple[int, int]:
        return self._done, self._total

    def lines(self) -> Iterator[tuple[str, bytes | None]]:
        handover: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_SIZE)
        stop = threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._pump(handover, stop)),
            name="pdp-replay-nats",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                item = handover.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, SourceError):
                        raise item
                    raise SourceError(f"{self.label}: {type(item).__name__}: {item}") from item
                seq, data = item
                self._done = seq - self._first + 1
                yield f"{self._base}#{seq}", data
        finally:
            stop.set()
            while thread.is_alive():  # unblock a pending hand-over, then let it finish
                with contextlib.suppress(queue.Empty):
                    handover.get(timeout=0.05)

    async def _pump(self, handover: queue.Queue[_Item], stop: threading.Event) -> None:
        async def put(item: _Item) -> bool:
            while not stop.is_set():
                try:
                    handover.put_nowait(item)
                    return True
                except queue.Full:
                    await asyncio.sleep(0.005)
            return False

        try:
            await self._read(put, stop)
        except Exception as exc:
            await put(exc)
        else:
            await put(None)

    async def _read(self, put: _Putter, stop: threading.Event) -> None:
        import nats
        from nats.errors import TimeoutError as NatsTimeoutError
        from nats.js.api import DeliverPolicy
        from nats.js.errors import NotFoundError

        async def on_error(exc: Exception) -> None:  # reconnects are handled by the client
            return None

        try:
            nc = await nats.connect(
                servers=[self.server],
                name="pdp-replay",
                connect_timeout=int(CONNECT_TIMEOUT_S),
                max_reconnect_attempts=3,
                reconnect_time_wait=0.5,
                error_cb=on_error,
            )
        except Exception as exc:
            raise SourceError(f"{self.label}: cannot connect to NATS: {exc}") from None
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                raise SourceError(f"{self.label}: no stream {self.stream!r}") from None
            state = info.state
            if not state.messages:
                return
            self._first, last = state.first_seq, state.last_seq
            self._total = last - self._first + 1
            subscription = await js.subscribe(
                self.subject,  # "" : no filter, the whole stream
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            if self.subject:
                # Nothing matches the filter: nothing pending and nothing delivered yet.
                # (Delivered messages may still wait in the client's buffer, so a zero
                # num_pending alone does not mean the end.)
                consumer = await subscription.consumer_info()
                delivered = consumer.delivered.consumer_seq if consumer.delivered else 0
                if not consumer.num_pending and not delivered:
                    return
            idle = 0.0
            while not stop.is_set():
                try:
                    message = await subscription.next_msg(timeout=IDLE_POLL_S)
                except (NatsTimeoutError, TimeoutError):
                    if not (await subscription.consumer_info()).num_pending:
                        return
                    idle += IDLE_POLL_S
                    if idle >= STALL_LIMIT_S:
                        raise SourceError(
                            f"{self.label}: no message delivered for {STALL_LIMIT_S:g} s"
                        ) from None
                    continue
                idle = 0.0
                metadata = message.metadata
                seq = metadata.sequence.stream
                if seq > last or not await put((seq, message.data)):
                    return
                if seq >= last or metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
