"""The audit pipeline: request threads submit records, one writer thread makes them durable.

``sync`` mode: a decision is returned only after its record is on disk. The writer takes
everything queued (lingering up to ``sync_linger_s`` after the first record, so that calls
decided a moment apart share it), writes it as one batch and calls ``fdatasync`` once
(group commit); submitters wait on their :class:`Ticket` (or :class:`Commit`). ``async``
mode: submit only queues; the writer syncs every ``async_flush_interval_s``.

The decision path does as little as it can. :meth:`AuditPipeline.submit_all` queues what
a record is made from (the service's decision events) and the writer thread builds,
redacts, encodes and hashes the records, many per wake-up: in async mode submitters do
not wake the writer for every record; it lingers ``async_linger_s`` after the first one
(or until ``async_wake_records`` are waiting) and takes them all at once.

Nothing is dropped silently. A full queue, a failing sink or a closed pipeline makes
:meth:`AuditPipeline.submit` return a ticket that is not accepted, counted as
``rejected``; :meth:`AuditPipeline.guard` then turns the decision into a deny with reason
``audit_unavailable`` unless the pipeline is configured ``fail_open``. In sync mode a
failed write fails its tickets (counted ``failed``); in async mode the writer keeps the
batch and retries it with backoff (``retried``) while new submits are rejected. A record
the writer cannot build (a bug) is logged and counted ``failed``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pdp.audit.chain import encode_body, encode_record
from pdp.audit.filesink import FileSink, LogPosition, SealedLine
from pdp.audit.record import RECORD_KINDS, audit_unavailable
from pdp.model import Decision

log = logging.getLogger(__name__)


class DeliveryMode(StrEnum):
    SYNC = "sync"
    ASYNC = "async"


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    mode: DeliveryMode = DeliveryMode.SYNC
    queue_size: int = 8192  # records waiting for the writer; beyond this submit is rejected
    max_batch: int = 1024  # records per write/fdatasync
    fail_open: bool = False  # True: decisions stand even when their record is not durable
    sync_timeout_s: float = 2.0  # how long guard() waits for durability in sync mode
    async_flush_interval_s: float = 0.2  # fdatasync period in async mode
    # Async mode: the writer waits this long after the first queued record before it
    # writes, so that one wake-up takes many records; sooner once async_wake_records
    # (default: a quarter of queue_size, at most max_batch) are waiting.
    async_linger_s: float = 0.05
    # Sync mode: the writer waits up to this long after the first queued record, so that
    # calls decided a moment apart share one write and one fdatasync (sooner once
    # async_wake_records are waiting, at a flush or at close). An answer waits this much
    # longer at most; fewer, larger group commits cost less CPU per decision (bench/README.md).
    sync_linger_s: float = 0.003
    async_wake_records: int = 0
    retry_initial_s: float = 0.05  # async mode: first retry delay after a write error
    retry_max_s: float = 2.0
    listener_queue_size: int = 1024  # per listener; a listener that falls behind is dropped
    tick_s: float = 0.5  # how often time-based checkpoints and rotation are considered


@dataclass(frozen=True, slots=True)
class AuditStats:
    written: int  # records committed to the log
    retried: int  # record write attempts repeated after an error (async mode)
    failed: int  # records accepted but never written (sync write error, shutdown, unbuildable)
    rejected: int  # records refused at submit (queue full, sink failing, closed)
    queued: int
    batches: int  # writes to the log (in sync mode each with one fdatasync)
    wakeups: int  # turns of the writer loop (records are taken many per turn)
    listeners_dropped: int
    healthy: bool
    last_error: str


class _Waiter:
    """A latch the writer opens once: a lock held from creation until then.

    Cheaper than a ``threading.Event`` (no Condition behind it); several threads may
    wait, each acquiring and releasing the open lock in turn.
    """

    __slots__ = ("_done", "_gate", "_on_settled")

    def __init__(self, pending: bool, on_settled: Callable[[], None] | None = None) -> None:
        self._done = not pending
        self._gate = threading.Lock()
        # Called once, by whoever opens the latch (usually the writer thread; it must not
        # block), for a waiter on an event loop that cannot block in wait().
        self._on_settled = on_settled
        if pending:
            self._gate.acquire()

    @property
    def done(self) -> bool:
        return self._done

    def _wait_done(self, timeout: float | None) -> bool:
        if self._done:
            return True
        if timeout is None:
            acquired = self._gate.acquire()
        elif timeout <= 0:
            acquired = self._gate.acquire(False)
        else:
            acquired = self._gate.acquire(True, timeout)
        if acquired:
            self._gate.release()
        return self._done

    def _open(self) -> None:
        self._done = True
        self._gate.release()
        if self._on_settled is not None:
            try:
                self._on_settled()
            except Exception:
                log.exception("audit settle callback failed")

    def _settle(self, index: int, ok: bool, error: str, seq: int | None) -> None:
        raise NotImplementedError


class Ticket(_Waiter):
    """The fate of one submitted record."""

    __slots__ = ("_ok", "accepted", "decision_id", "error", "seq")

    def __init__(self, decision_id: str, accepted: bool, error: str = "") -> None:
        super().__init__(pending=accepted)
        self.decision_id = decision_id
        self.accepted = accepted
        self.error = error
        self.seq: int | None = None
        self._ok = False

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the record is written (durably, in sync mode); True if it was."""
        return self._wait_done(timeout) and self._ok

    def _settle(self, index: int, ok: bool, error: str, seq: int | None) -> None:
        self._ok, self.error, self.seq = ok, error, seq
        self._open()


class Commit(_Waiter):
    """The fate of records submitted together with :meth:`AuditPipeline.submit_all`.

    Either all of them were queued (``accepted``) or none, except entries ``refused``
    alone because they could not be encoded. ``flags`` says, per record, whether it has
    been written (durably, in sync mode) so far.
    """

    __slots__ = ("_flags", "_pending", "accepted", "error", "refused")

    def __init__(self, count: int, on_settled: Callable[[], None] | None = None) -> None:
        super().__init__(pending=count > 0, on_settled=on_settled)
        self.accepted = True
        self.error = ""
        self.refused: list[int] = []  # indexes of entries that were never queued
        self._flags = [False] * count
        self._pending = count

    @property
    def flags(self) -> list[bool]:
        return list(self._flags)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until every record is settled; True if all of them were written."""
        return self._wait_done(timeout) and all(self._flags)

    def _refuse(self, index: int, error: str) -> None:
        """Before queueing: this entry will not be written."""
        self.error = error
        self.refused.append(index)
        self._pending -= 1
        if self._pending == 0:
            self._open()

    def _reject(self, error: str) -> None:
        """Before queueing: none of the entries will be written."""
        self.accepted, self.error = False, error
        if self._pending:
            self._pending = 0
            self._open()

    def _settle(self, index: int, ok: bool, error: str, seq: int | None) -> None:
        # Only the writer thread settles, so the counter needs no lock.
        self._flags[index] = ok
        if not ok:
            self.error = error
        self._pending -= 1
        if self._pending == 0:
            self._open()


_LINGER, _IDLE = 1, 2  # AuditPipeline._writer_waits

# A queued record: who waits for it, its index there, then either its encoded body (and
# None) or what ``render`` turns into the record on the writer thread; and whether it is
# a record (decision, refusal) that listeners get.
_Item = tuple[_Waiter, int, Any, Callable[[Any], dict[str, Any]] | None, bool]


class AuditListener:
    """An in-process subscriber fed from its own bounded queue and thread.

    ``callback`` receives each committed record (decoded JSON, chain fields included).
    If the callback falls ``max_pending`` records behind, the listener is disconnected
    (``connected`` becomes False); it never slows the writer.
    """

    def __init__(self, callback: Callable[[dict[str, Any]], None], max_pending: int) -> None:
        self._callback = callback
        self._max = max_pending
        self._queue: deque[bytes | None] = deque()
        self._cond = threading.Condition()
        self.connected = True
        self.dropped = False
        self._thread = threading.Thread(target=self._run, name="audit-listener", daemon=True)
        self._thread.start()

    def offer(self, line: bytes) -> bool:
        """Non-blocking; False (and disconnects) when the listener is too far behind."""
        return self.offer_all((line,))

    def offer_all(self, lines: Sequence[bytes]) -> bool:
        """Like :meth:`offer` for several lines, with one wake-up."""
        with self._cond:
            if not self.connected:
                return False
            if len(self._queue) + len(lines) > self._max:
                self.connected, self.dropped = False, True
                self._queue.clear()
                self._queue.append(None)
                self._cond.notify()
                return False
            self._queue.extend(lines)
            self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self.connected = False
            self._queue.append(None)
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                line = self._queue.popleft()
            if line is None:
                return
            try:
                self._callback(json.loads(line))
            except Exception:
                log.exception("audit listener callback failed")


class AuditPipeline:
    """Accepts audit records from any thread and writes them through one :class:`FileSink`."""

    def __init__(self, sink: FileSink, config: PipelineConfig | None = None) -> None:
        self.sink = sink
        self.config = config or PipelineConfig()
        self._durable = self.config.mode is DeliveryMode.SYNC
        self._wake_at = self.config.async_wake_records or max(
            1, min(self.config.max_batch, self.config.queue_size // 4)
        )
        self._help_at = max(1, self.config.queue_size // 2)
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[_Item] = deque()
        # monotonic time the queue last went from empty to non-empty (None: empty); an
        # upper bound on how long its oldest record has waited, for the lag gauge.
        self._waiting_since: float | None = None
        # How the writer waits on _cond: 0 busy, _LINGER (notify only once _wake_at
        # records wait), _IDLE (queue empty: notify for the first record).
        self._writer_waits = 0
        self._kicked = False  # flush(): write and sync now, without lingering
        self._flushes: list[tuple[int, threading.Event]] = []
        self._submitted = 0  # items handed to the writer (for flush)
        self._finished = 0  # items the writer is done with
        self._closing = False
        self._close_deadline = float("inf")
        self._failing = False
        self._last_error = ""
        self._written = self._retried = self._failed = self._rejected = 0
        self._batches = self._wakeups = 0
        self._listeners: list[AuditListener] = []
        self._listeners_dropped = 0
        self._lost_at_close = 0
        self._commit_hooks: list[Callable[[LogPosition], None]] = []
        self._started = threading.Event()
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()
        # Open the log now, so a bad log dir shows in `healthy` before the first request.
        self._started.wait(5.0)

    # -- public API ----------------------------------------------------------------

    @property
    def mode(self) -> DeliveryMode:
        return self.config.mode

    @property
    def fail_open(self) -> bool:
        return self.config.fail_open

    @property
    def healthy(self) -> bool:
        """False while the sink is failing, after close, or if the writer died."""
        return not self._failing and not self._closing and self._writer.is_alive()

    @property
    def last_error(self) -> str:
        return self._last_error

    def submit(self, record: Mapping[str, Any]) -> Ticket:
        """Queues ``record`` (from ``build_*_record``); never blocks on I/O."""
        decision_id = str(record.get("decision_id", ""))
        try:
            body = encode_body(dict(record))
        except (TypeError, ValueError) as exc:
            log.error("audit record %s cannot be encoded: %s", decision_id, exc)
            return self._reject(decision_id, f"record cannot be encoded: {exc}")
        is_record = record.get("kind") in RECORD_KINDS
        with self._cond:
            error = self._refusal(1)
            if not error:
                ticket = Ticket(decision_id, accepted=True)
                self._queue([(ticket, 0, body, None, is_record)])
                return ticket
            self._rejected += 1
        return Ticket(decision_id, accepted=False, error=error)

    def submit_all(
        self,
        entries: Sequence[Any],
        render: Callable[[Any], dict[str, Any]],
        *,
        build_here: bool = True,
        on_settled: Callable[[], None] | None = None,
    ) -> Commit:
        """Queues several records at once, in order, all or none; never blocks on I/O.

        ``on_settled`` is called once every record is settled (written, durably in sync
        mode, or failed), from the writer thread, or at once from here when none was
        queued: a waiter on an event loop schedules itself from it instead of blocking.

        An entry that is a ``dict`` is a record (from ``build_*_record``), encoded here;
        one that cannot be encoded is refused alone (its flag is False). Any other entry
        is kept as is and ``render(entry)`` builds its decision or refusal record on the
        writer thread: the caller must not change it afterwards. A record that cannot be
        built there is logged and counted ``failed``. ``build_here=False`` says the
        caller's thread must never build records (an event loop): the backpressure below
        then does not apply and a full queue refuses.
        """
        commit = Commit(len(entries), on_settled)
        if not entries:
            if on_settled is not None:
                on_settled()
            return commit
        items: list[_Item] = []
        refused = 0
        # Backpressure: when the writer falls behind, submitters build their records
        # themselves (as they would without deferral), which also slows them down.
        build_here = build_here and len(self._items) >= self._help_at
        for index, entry in enumerate(entries):
            if type(entry) is dict or build_here:
                try:
                    record = entry if type(entry) is dict else render(entry)
                    body = encode_body(record)
                except Exception as exc:  # TypeError, ValueError: not JSON; others: a bug
                    log.error("audit record cannot be encoded: %s: %s", type(exc).__name__, exc)
                    commit._refuse(index, f"record cannot be encoded: {exc}")
                    refused += 1
                    continue
                items.append((commit, index, body, None, record.get("kind") in RECORD_KINDS))
            else:
                items.append((commit, index, entry, render, True))
        with self._cond:
            self._rejected += refused
            if not items:
                return commit
            error = self._refusal(len(items))
            if not error:
                self._queue(items)
                return commit
            self._rejected += len(items)
        commit._reject(error)
        return commit

    def _refusal(self, count: int) -> str:
        """Why ``count`` more records cannot be queued now ("" if they can). Under _cond."""
        if self._closing:
            return "audit pipeline is closed"
        if self._failing and not self._durable and not self.config.fail_open:
            return f"audit sink failing: {self._last_error}"
        if len(self._items) + count > self.config.queue_size:
            return "audit queue full"
        return ""

    def _queue(self, items: list[_Item]) -> None:
        """Under _cond. Wakes the writer only when it has something to do now: in sync
        mode always; in async mode for the first record after an idle spell (it then
        lingers) and when enough are waiting. Under steady load nobody notifies: the
        writer wakes once per ``async_linger_s`` and takes everything."""
        queue = self._items
        if not queue:
            self._waiting_since = time.monotonic()
        queue.extend(items)
        self._submitted += len(items)
        waits = self._writer_waits
        if waits and (waits == _IDLE or len(queue) >= self._wake_at):
            self._writer_waits = 0
            self._cond.notify()

    def _reject(self, decision_id: str, error: str) -> Ticket:
        with self._cond:
            self._rejected += 1
        return Ticket(decision_id, accepted=False, error=error)

    def guard(self, decision: Decision, ticket: Ticket, timeout: float | None = None) -> Decision:
        """The decision to return to the caller, given what became of its audit record.

        Sync mode waits (up to ``timeout`` or ``sync_timeout_s``) for durability; async
        mode only requires the record to have been accepted. A record that did not make
        it yields a deny with reason ``audit_unavailable`` (fail closed) unless
        ``fail_open``.
        """
        if self.mode is DeliveryMode.SYNC:
            wait = self.config.sync_timeout_s if timeout is None else timeout
            ok = ticket.wait(wait)
        else:
            ok = ticket.accepted
        if ok:
            return decision
        reason = ticket.error or "timed out waiting for the audit log"
        if self.fail_open:
            log.warning("audit record %s not durable (fail open): %s", ticket.decision_id, reason)
            return decision
        log.warning("audit record %s not durable, denying: %s", ticket.decision_id, reason)
        return audit_unavailable(decision)

    def add_listener(
        self, callback: Callable[[dict[str, Any]], None], *, max_pending: int | None = None
    ) -> AuditListener:
        """Calls ``callback`` with every record after it is committed, off the write path."""
        listener = AuditListener(callback, max_pending or self.config.listener_queue_size)
        with self._cond:
            self._listeners = [*self._listeners, listener]
        return listener

    def add_commit_hook(self, hook: Callable[[LogPosition], None]) -> None:
        """Calls ``hook`` (from the writer thread; it must not block) after each commit."""
        self._commit_hooks = [*self._commit_hooks, hook]

    def stats(self) -> AuditStats:
        with self._cond:
            queued = len(self._items)
            rejected = self._rejected
        return AuditStats(
            written=self._written,
            retried=self._retried,
            failed=self._failed,
            rejected=rejected,
            queued=queued,
            batches=self._batches,
            wakeups=self._wakeups,
            listeners_dropped=self._listeners_dropped,
            healthy=self.healthy,
            last_error=self._last_error,
        )

    def queue_lag(self) -> float:
        """Seconds since the queue was last empty (0 when empty): how long its oldest
        record has waited at most. Overstates rather than hides a writer falling behind."""
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every record submitted so far is written and synced (or failed)."""
        done = threading.Event()
        with self._cond:
            if self._finished >= self._submitted and not self._items:
                done.set()
            else:
                self._flushes.append((self._submitted, done))
                self._kicked = True
                self._cond.notify()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Writes what is queued, seals the log with a checkpoint and stops.

        Returns False if records could not be written before ``timeout`` (they are
        counted as failed and logged).
        """
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
            self._cond.notify()
        self._writer.join(timeout + 1.0)
        for listener in self._listeners:
            listener.close()
        drained = self._finished >= self._submitted and not self._lost_at_close
        return drained and not self._writer.is_alive()

    def __enter__(self) -> AuditPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.exception("audit writer thread crashed; the pipeline is now unhealthy")
            self._failing = True
            self._last_error = "audit writer crashed"
            with self._cond:
                items, self._items = list(self._items), deque()
            self._fail(items, "audit writer crashed")
            raise
        finally:
            self._started.set()
            self._resolve_flushes()

    def _take(self, next_due: float) -> tuple[list[_Item], bool]:
        """Waits until there is work, then takes up to ``max_batch`` queued records.

        Sync mode: as soon as anything is queued. Async mode: ``async_linger_s`` after
        the first record was seen, or once ``_wake_at`` are waiting, or while a flush
        waits. Either way no later than ``next_due`` (periodic duties), at a flush or at
        close.
        """
        config = self.config
        first_seen = 0.0
        with self._cond:
            while not self._closing and not self._kicked:
                now = time.monotonic()
                if self._items:
                    linger = config.sync_linger_s if self._durable else config.async_linger_s
                    if linger <= 0 or len(self._items) >= self._wake_at or self._flushes:
                        break
                    if not first_seen:
                        first_seen = now
                    until = min(first_seen + linger, next_due)
                    waits = _LINGER
                else:
                    first_seen = 0.0
                    until = next_due
                    waits = _IDLE
                if until <= now:
                    break
                self._writer_waits = waits
                self._cond.wait(until - now)
                self._writer_waits = 0
            self._kicked = False
            count = min(len(self._items), config.max_batch)
            popleft = self._items.popleft
            taken = [popleft() for _ in range(count)]
            if not self._items:
                self._waiting_since = None
            return taken, self._closing

    def _loop(self) -> None:
        config = self.config
        durable = self._durable
        last_tick = last_sync = time.monotonic()
        probe_delay = config.retry_initial_s
        next_probe = last_tick + probe_delay
        self._duty(self.sink.open)
        self._started.set()
        while True:
            next_due = last_tick + config.tick_s
            if not durable:  # sync mode syncs every batch; last_sync stays put
                next_due = min(next_due, last_sync + config.async_flush_interval_s)
            if self._failing:
                next_due = min(next_due, next_probe)
            batch, closing = self._take(next_due)
            self._wakeups += 1
            if batch:
                self._write(batch, durable)
                self._resolve_flushes()
            now = time.monotonic()
            if not durable and (now - last_sync >= config.async_flush_interval_s or self._flushes):
                last_sync = now
                self._duty(self.sink.sync)
                self._resolve_flushes()
            if now - last_tick >= config.tick_s:
                last_tick = now
                self._duty(self.sink.tick)
            if self._failing and not batch and now >= next_probe and not closing:
                # Nothing to write, but a health check must see the log recover.
                probe_delay = min(probe_delay * 2, config.retry_max_s)
                next_probe = now + probe_delay
                if self._duty(self.sink.probe):
                    log.warning("audit log writable again")
                    self._failing = False
            elif not self._failing:
                probe_delay, next_probe = config.retry_initial_s, now + config.retry_initial_s
            if closing and not batch:
                with self._cond:
                    if self._items:
                        continue
                try:
                    self.sink.close()
                except OSError as exc:
                    self._note_error(f"closing the audit log: {exc}")
                return

    def _duty(self, action: Callable[[], None]) -> bool:
        try:
            action()
        except OSError as exc:
            self._note_error(f"{type(exc).__name__}: {exc}")
            return False
        self._after_commit()
        return True

    def _note_error(self, error: str) -> None:
        if not self._failing or error != self._last_error:
            log.error("audit log write failed: %s", error)
        self._failing, self._last_error = True, error

    def _render(self, batch: list[_Item]) -> tuple[list[_Item], list[bytes]]:
        """The batch's encoded bodies, building the records submitted unbuilt; a record
        that cannot be built fails alone."""
        kept: list[_Item] = []
        bodies: list[bytes] = []
        for item in batch:
            render = item[3]
            if render is None:
                bodies.append(item[2])
            else:
                try:
                    bodies.append(encode_record(render(item[2])))
                except Exception as exc:
                    log.exception("audit record cannot be built; it is not written")
                    self._fail([item], f"record cannot be built: {type(exc).__name__}: {exc}")
                    continue
            kept.append(item)
        return kept, bodies

    def _write(self, batch: list[_Item], durable: bool) -> None:
        batch, bodies = self._render(batch)
        if not batch:
            return
        delay = self.config.retry_initial_s
        while True:
            try:
                sealed = self.sink.append(bodies, durable=durable)
            except OSError as exc:
                self._note_error(f"{type(exc).__name__}: {exc}")
                if durable or time.monotonic() + delay > self._close_deadline:
                    # Sync mode: the submitters are told now and deny; never written later.
                    self._fail(batch, self._last_error)
                    return
                self._retried += len(batch)
                self._sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            break
        if self._failing:
            log.warning("audit log writable again")
        self._failing = False
        self._written += len(batch)
        self._finished += len(batch)
        self._batches += 1
        for (waiter, index, _, _, _), line in zip(batch, sealed, strict=True):
            waiter._settle(index, True, "", line.seq)
        self._publish(batch, sealed)
        self._after_commit()

    def _sleep(self, delay: float) -> None:
        """Waits ``delay`` seconds, or less if close() sets a nearer deadline."""
        until = time.monotonic() + delay
        with self._cond:
            while (left := min(until, self._close_deadline) - time.monotonic()) > 0:
                self._cond.wait(left)

    def _fail(self, batch: list[_Item], error: str) -> None:
        self._failed += len(batch)
        self._finished += len(batch)
        for waiter, index, _, _, _ in batch:
            waiter._settle(index, False, error, None)
        if self._closing and batch:
            self._lost_at_close += len(batch)
            log.error("%d audit records could not be written before shutdown", len(batch))

    def _publish(self, batch: list[_Item], sealed: list[SealedLine]) -> None:
        listeners = self._listeners
        if not listeners:
            return
        lines = [line.line for item, line in zip(batch, sealed, strict=True) if item[4]]
        if not lines:
            return
        for listener in listeners:
            if not listener.offer_all(lines) and listener.dropped:
                self._drop_listener(listener)

    def _drop_listener(self, listener: AuditListener) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners = [x for x in self._listeners if x is not listener]
                self._listeners_dropped += 1
                log.warning("audit listener disconnected: it fell behind")

    def _after_commit(self) -> None:
        position = self.sink.committed
        if position is None:
            return
        for hook in self._commit_hooks:
            try:
                hook(position)
            except Exception:
                log.exception("audit commit hook failed")

    def _resolve_flushes(self) -> None:
        with self._cond:
            if not self._flushes:
                return
            unsynced = self.mode is DeliveryMode.ASYNC and self.sink.dirty
            keep: list[tuple[int, threading.Event]] = []
            for target, event in self._flushes:
                if self._finished >= target and not unsynced:
                    event.set()
                else:
                    keep.append((target, event))
            self._flushes = keep
