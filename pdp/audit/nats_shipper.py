"""Ships the local audit log to NATS JetStream: the log files are the outbox.

A shipper thread runs its own asyncio loop. It reads complete lines from the log files
in chain order, publishes each with ``js.publish`` (request/reply: only a PubAck means
stored) on ``<subject_prefix>.<instance_id>`` with header ``Nats-Msg-Id`` set to the
record's ``decision_id`` (``chain:<hash>`` for segment and checkpoint lines), and
advances its persisted position ``(file, offset)`` only past acknowledged lines.

While NATS is down nothing is lost: records stay in the files and are published when the
connection is back. A publish whose ack was lost is repeated with the same Msg-Id, which
JetStream discards inside the stream's ``duplicate_window`` (configurable, default 10
minutes; the ack then says ``duplicate``). An outage longer than the window can store a
record twice, so consumers should also de-duplicate on ``decision_id``.

Lines are read only up to what the writer has committed (never a batch that a failed
write could still take back); in async mode that can be before the line is fsynced.

Every line of the chain is shipped, so a consumer can verify hashes and checkpoint
signatures from the stream alone; record consumers filter on ``kind``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig
from nats.js.errors import NoStreamResponseError, NotFoundError

from pdp.audit.chain import ChainError, ChainLine, list_log_files, log_file_order, parse_line
from pdp.audit.filesink import LogPosition
from pdp.audit.record import RECORD_KINDS

log = logging.getLogger(__name__)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_SEQ = "Pdp-Audit-Seq"
HEADER_KIND = "Pdp-Audit-Kind"


@dataclass(frozen=True, slots=True)
class NatsShipperConfig:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: str = "PDP_AUDIT"
    subject_prefix: str = "pdp.audit"
    create_stream: bool = True  # create the stream, or update its window and subjects
    duplicate_window_s: float = 600.0  # must exceed the longest outage you want deduped
    stream_replicas: int = 1  # use 3 in a cluster: an R1 file store acks before fsync
    ack_timeout_s: float = 5.0
    max_inflight: int = 256  # publishes awaiting their ack at once
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    poll_interval_s: float = 0.5  # re-read the files this often even without a notify
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.5
    tls: ssl.SSLContext | None = None
    user_credentials: str | None = None
    client_name: str = "pdp-audit-shipper"
    position_file: str = ""  # default: nats-<stream>.position.json in the log dir


@dataclass(frozen=True, slots=True)
class ShipperStats:
    shipped: int  # lines acknowledged by JetStream (duplicates included)
    duplicates: int  # acks saying the stream already had this Msg-Id
    retries: int  # failed publish rounds (each retried after a backoff)
    skipped: int  # lines that are not valid chain lines (never published; see logs)
    connected: bool
    position: LogPosition | None
    last_error: str


@dataclass(frozen=True, slots=True)
class _Outgoing:
    end: LogPosition
    payload: bytes
    line: ChainLine


@functools.lru_cache(maxsize=64)  # one instance id per line shipped: compute it once
def subject_token(text: str) -> str:
    """``text`` as one NATS subject token (no dots, wildcards or spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def _instance_token(line: ChainLine) -> str:
    return subject_token(str(line.data.get("instance_id", "")))


def message_id(line: ChainLine) -> str:
    decision_id = line.data.get("decision_id")
    if line.kind in RECORD_KINDS and isinstance(decision_id, str) and decision_id:
        return decision_id
    return f"chain:{line.hash}"


class LogTail:
    """Reads complete, valid chain lines from the log files in order from a position."""

    def __init__(
        self,
        log_dir: Path,
        position: LogPosition | None,
        committed: Callable[[], LogPosition | None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self._committed = committed
        self.position = position
        self.skipped = 0
        self._cuts: dict[str, int | None] = {}

    def _files(self) -> list[str]:
        try:
            return [p.name for p in list_log_files(self.log_dir)]
        except OSError:
            return []

    def _crash_cut(self, name: str, files: list[str]) -> int | None:
        """Where the next file's segment line says this file's valid content ends."""
        if name in self._cuts:
            return self._cuts[name]
        later = [f for f in files if _order(f) > _order(name)]
        if not later:
            return None
        try:
            with (self.log_dir / later[0]).open("rb") as handle:
                first = handle.readline()
        except OSError:
            return None
        if not first.endswith(b"\n"):
            return None  # the next file is being started; look again later
        cut: int | None = None
        try:
            crash = json.loads(first).get("crash")
            if isinstance(crash, dict) and crash.get("file") == name:
                cut = int(crash["offset"])
        except (ValueError, TypeError, KeyError, AttributeError):
            cut = None
        self._cuts[name] = cut
        return cut

    def _limit(self, name: str, files: list[str], size: int) -> int:
        committed = self._committed() if self._committed is not None else None
        limit = size
        if committed is not None:
            if _order(name) == _order(committed.file):
                limit = min(size, committed.offset)
            elif _order(name) > _order(committed.file):
                limit = 0
        cut = self._crash_cut(name, files)
        return limit if cut is None else min(limit, cut)

    def read(self, max_lines: int, max_bytes: int = 1 << 20) -> list[_Outgoing]:
        out: list[_Outgoing] = []
        files = self._files()
        while len(out) < max_lines:
            if self.position is None or self.position.file not in files:
                start = self._first_after(files)
                if start is None:
                    break
                self.position = LogPosition(start, 0)
            name, offset = self.position.file, self.position.offset
            path = self.log_dir / name
            try:
                size = path.stat().st_size
                limit = self._limit(name, files, size)
                data = b""
                if offset < limit:
                    with path.open("rb") as handle:
                        handle.seek(offset)
                        data = handle.read(min(limit - offset, max_bytes))
            except OSError as exc:
                log.warning("audit shipper cannot read %s: %s", path, exc)
                break
            end = data.rfind(b"\n")
            if end >= 0:
                for raw in data[: end + 1].splitlines(keepends=True):
                    offset += len(raw)
                    try:
                        line = parse_line(raw.rstrip(b"\n"), strict=False)
                    except ChainError as exc:
                        self.skipped += 1
                        log.error("audit shipper skips %s at offset %d: %s", name, offset, exc)
                        continue
                    out.append(_Outgoing(LogPosition(name, offset), raw.rstrip(b"\n"), line))
                    if len(out) >= max_lines:
                        break
                self.position = LogPosition(name, offset)
                continue
            # Nothing complete left here. Move on only once a later file exists (this one
            # is then closed), re-reading it first in case lines arrived in between.
            files = self._files()
            later = [f for f in files if _order(f) > _order(name)]
            if not later:
                break
            try:
                grown = self._limit(name, files, path.stat().st_size) - offset > len(data)
            except OSError:
                grown = False
            if grown:
                continue
            self.position = LogPosition(later[0], 0)
        return out

    def _first_after(self, files: list[str]) -> str | None:
        if not files:
            return None
        if self.position is None:
            return files[0]
        # The recorded file is gone (retention): continue with the next one.
        later = [f for f in files if _order(f) > _order(self.position.file)]
        if later:
            log.warning(
                "audit shipper: %s no longer exists; continuing at %s", self.position.file, later[0]
            )
            return later[0]
        return None


def _order(name: str) -> tuple[int, int]:
    return log_file_order(name) or (0, 0)


class NatsShipper:
    """Publishes the audit log to JetStream from a background thread."""

    def __init__(
        self,
        log_dir: Path,
        position_dir: Path,
        config: NatsShipperConfig | None = None,
        *,
        committed: Callable[[], LogPosition | None] | None = None,
    ) -> None:
        self.config = config or NatsShipperConfig()
        self.log_dir = log_dir
        name = (
            self.config.position_file or f"nats-{subject_token(self.config.stream)}.position.json"
        )
        self._position_path = position_dir / name
        self._tail = LogTail(log_dir, self._load_position(), committed)
        self._acked = self._tail.position
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._generation = 0  # bumped by notify()
        self._idle_generation = -1  # generation at which the tail was last found empty
        self._shipped = self._duplicates = self._retries = 0
        self._connected = False
        self._last_error = ""

    # -- control -------------------------------------------------------------------

    def start(self) -> NatsShipper:
        self._thread = threading.Thread(target=self._thread_main, name="audit-nats", daemon=True)
        self._thread.start()
        return self

    def notify(self, position: LogPosition | None = None) -> None:
        """New lines were committed (called from the writer thread; never blocks)."""
        with self._cond:
            self._generation += 1
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wake.set)

    def wait_caught_up(self, timeout: float) -> bool:
        """Waits until every line committed before this call has been acknowledged."""
        self.notify()
        with self._cond:
            target = self._generation
            return self._cond.wait_for(lambda: self._idle_generation >= target, timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Ships what it can within ``timeout``, then disconnects. True if caught up."""
        caught_up = self.wait_caught_up(timeout) if self._thread is not None else False
        self._stopping = True
        self._stop_deadline = time.monotonic()
        self.notify()
        if self._thread is not None:
            self._thread.join(self.config.ack_timeout_s + 2.0)
        return caught_up

    def stats(self) -> ShipperStats:
        return ShipperStats(
            shipped=self._shipped,
            duplicates=self._duplicates,
            retries=self._retries,
            skipped=self._tail.skipped,
            connected=self._connected,
            position=self._acked,
            last_error=self._last_error,
        )

    # -- position ------------------------------------------------------------------

    def _load_position(self) -> LogPosition | None:
        try:
            data = json.loads(self._position_path.read_text())
            return LogPosition(str(data["file"]), int(data["offset"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Starting over re-publishes old lines: JetStream (within the window) and
            # consumers (by decision_id) de-duplicate them.
            log.error(
                "audit shipper position %s unreadable (%s); starting over", self._position_path, exc
            )
            return None

    def _save_position(self, position: LogPosition) -> None:
        tmp = self._position_path.with_name(self._position_path.name + ".tmp")
        tmp.write_text(json.dumps({"file": position.file, "offset": position.offset}))
        os.replace(tmp, self._position_path)

    # -- the loop ------------------------------------------------------------------

    def _thread_main(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        delay = self.config.backoff_initial_s
        nc: NatsClient | None = None
        js: JetStreamContext | None = None
        stream_ready = False
        try:
            while not self._stopping:
                try:
                    if nc is None or js is None or nc.is_closed:
                        nc = await self._connect()
                        # One context per connection: it subscribes once for its acks.
                        js = nc.jetstream(timeout=self.config.ack_timeout_s)
                        stream_ready = False
                    if not stream_ready:
                        await self._ensure_stream(js)
                        stream_ready = True
                    await self._pump(js)
                    delay = self.config.backoff_initial_s
                except Exception as exc:  # every failure is retried; the files keep the data
                    self._retries += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("audit shipper: %s; retrying in %.2fs", self._last_error, delay)
                    self._tail.position = self._acked  # re-read what was not acknowledged
                    if isinstance(exc, NotFoundError | NoStreamResponseError):
                        stream_ready = False
                    await self._sleep(delay)
                    delay = min(delay * 2, self.config.backoff_max_s)
        finally:
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2.0)
            self._connected = False

    async def _sleep(self, delay: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested(), delay)

    async def _stop_requested(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.05)

    async def _connect(self) -> NatsClient:
        async def on_disconnect() -> None:
            self._connected = False
            log.warning("audit shipper disconnected from NATS")

        async def on_reconnect() -> None:
            self._connected = True
            log.info("audit shipper reconnected to NATS")

        async def on_error(exc: Exception) -> None:
            log.debug("audit shipper NATS error: %s", exc)

        nc = await nats.connect(
            servers=list(self.config.servers),
            name=self.config.client_name,
            connect_timeout=int(max(1, self.config.connect_timeout_s)),
            reconnect_time_wait=int(max(0, self.config.reconnect_wait_s)) or 1,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            tls=self.config.tls,
            user_credentials=self.config.user_credentials,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        self._connected = True
        return nc

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        if not self.config.create_stream:
            return
        name = self.config.stream
        subjects = [f"{self.config.subject_prefix}.>"]
        window = self.config.duplicate_window_s
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=subjects,
                    duplicate_window=window,
                    storage=StorageType.FILE,
                    num_replicas=self.config.stream_replicas,
                )
            )
            log.info("audit shipper created stream %s", name)
            return
        config = info.config
        have = list(config.subjects or [])
        if config.duplicate_window != window or not set(subjects) <= set(have):
            await js.update_stream(
                config, subjects=sorted({*have, *subjects}), duplicate_window=window
            )
            log.info("audit shipper updated stream %s", name)

    async def _pump(self, js: JetStreamContext) -> None:
        assert self._wake is not None
        subject_prefix = self.config.subject_prefix
        while True:
            with self._cond:
                generation = self._generation
            self._wake.clear()
            batch = self._tail.read(self.config.max_inflight)
            if not batch:
                with self._cond:
                    self._idle_generation = generation
                    self._cond.notify_all()
                if self._stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)
                continue
            # publish_async: one ack future per line, no task and no timer each (cheaper
            # than gathering js.publish calls); one timeout for the whole batch.
            pending: list[asyncio.Future[PubAck]] = []
            try:
                for item in batch:
                    ack = await js.publish_async(
                        f"{subject_prefix}.{_instance_token(item.line)}",
                        item.payload,
                        headers={
                            HEADER_MSG_ID: message_id(item.line),
                            HEADER_SEQ: str(item.line.seq),
                            HEADER_KIND: item.line.kind,
                        },
                    )
                    pending.append(ack)
            except BaseException:
                for ack in pending:
                    ack.cancel()  # frees the slots; these lines are published again
                raise
            _, late = await asyncio.wait(pending, timeout=self.config.ack_timeout_s)
            for future in late:
                future.cancel()  # releases its slot; the line is published again
            acked = 0
            for future in pending:
                if future.cancelled() or future.exception() is not None:
                    break
                acked += 1
                if future.result().duplicate:
                    self._duplicates += 1
            if acked:
                self._acked = batch[acked - 1].end
                self._shipped += acked
                self._save_position(self._acked)
            if acked < len(batch):
                failed = pending[acked]
                if failed.cancelled():
                    raise TimeoutError(f"no JetStream ack within {self.config.ack_timeout_s:g} s")
                error = failed.exception()
                raise error if error is not None else RuntimeError("publish failed")
            if self._stopping and time.monotonic() > self._stop_deadline:
                return


def latest_checkpoint(
    url: str, stream: str, subject: str, *, scan: int = 100_000, timeout: float = 5.0
) -> dict[str, Any] | None:
    """The latest checkpoint line published to ``subject`` of ``stream`` (decoded JSON,
    hash-checked), or None if the last ``scan`` messages hold none: the NATS copy of the
    witness, for ``pdp audit verify --witness nats://…``. It may lag the log (the shipper
    publishes after the write), never lead it."""

    async def find() -> dict[str, Any] | None:
        client = await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=0)
        try:
            js = client.jetstream(timeout=timeout)
            info = await js.stream_info(stream)
            seq = info.state.last_seq
            first = max(info.state.first_seq, seq - scan + 1)
            while seq >= first and seq > 0:
                try:
                    message = await js.get_msg(stream, seq)
                except NotFoundError:  # deleted or expired
                    seq -= 1
                    continue
                seq -= 1
                kind = (message.headers or {}).get(HEADER_KIND)
                if message.subject != subject or kind != "checkpoint" or message.data is None:
                    continue
                try:
                    line = parse_line(message.data)
                except ChainError:
                    continue  # not a valid line: verify's own check of the log decides
                return {**line.data, "hash": line.hash}
            return None
        finally:
            await client.close()

    return asyncio.run(find())
