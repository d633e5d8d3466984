"""The file sink: JSON Lines, hash-chained, rotated by size and age, signed checkpoints.

Only the pipeline's writer thread calls a :class:`FileSink`. A batch is written with one
``write`` and made durable with one ``fdatasync`` (group commit). If a write fails
(ENOSPC, EIO…) the file is truncated back to the last committed line, so no torn or
orphan line is left and the chain state is unchanged; if even that fails the file is
abandoned and the next file's first line names the crash point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pdp.audit.chain import (
    CHECKPOINT_CLOSE,
    CHECKPOINT_PERIODIC,
    CHECKPOINT_ROTATE,
    GENESIS_HASH,
    KIND_CHECKPOINT,
    KIND_SEGMENT,
    ChainError,
    ChainLine,
    checkpoint_message,
    encode_body,
    list_log_files,
    log_file_name,
    parse_line,
    seal,
)
from pdp.audit.keys import PRIVATE_KEY_FILE, CheckpointSigner, load_or_create_signer
from pdp.audit.record import RECORD_VERSION
from pdp.model import format_time

log = logging.getLogger(__name__)

LOCK_FILE = ".audit.lock"
TORN_SUFFIX = ".torn"


@dataclass(frozen=True, slots=True)
class FileSinkConfig:
    """Where and how the local audit log is written (the source of truth for every sink)."""

    log_dir: Path
    # The checkpoint signing key (PEM, 0600), never inside log_dir. Default:
    # audit-signing.key beside log_dir (for pdp serve: in its state directory).
    key_file: Path | None = None
    # Also written at every checkpoint (seq, hash, signature): put it where whoever can
    # write the logs cannot, so that a log cut back or rewritten fails verify --witness.
    witness_file: Path | None = None
    max_bytes: int = 64 * 1024 * 1024  # rotate when a file reaches this size
    max_age_s: float = 24 * 3600.0  # rotate a file with records older than this
    checkpoint_every: int = 1000  # records between signed checkpoints
    checkpoint_interval_s: float = 60.0  # ... or seconds, whichever comes first
    file_mode: int = 0o640

    @property
    def key_path(self) -> Path:
        return (
            self.key_file if self.key_file is not None else self.log_dir.parent / PRIVATE_KEY_FILE
        )


class SealedLine(NamedTuple):
    """A line as written: its place in the chain and its bytes (with the newline)."""

    seq: int
    hash: str
    line: bytes


@dataclass(frozen=True, slots=True)
class LogPosition:
    """A byte offset in a log file: the end of the last complete, committed line."""

    file: str
    offset: int


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_good_line(path: Path) -> tuple[ChainLine, int, int] | None:
    """The last valid line of a file, the offset just past it, and the file size."""
    size = path.stat().st_size
    window = 64 * 1024
    with path.open("rb") as handle:
        while True:
            start = max(0, size - window)
            handle.seek(start)
            buf = handle.read(size - start)
            pos = buf.rfind(b"\n")
            while pos >= 0:
                prev = buf.rfind(b"\n", 0, pos)
                if prev < 0 and start > 0:
                    break  # the line may begin before this window
                try:
                    return parse_line(buf[prev + 1 : pos]), start + pos + 1, size
                except ChainError:
                    pos = prev
            if start == 0:
                return None
            window *= 4


def write_witness(path: Path, witness: dict[str, Any]) -> None:
    """Replaces ``path`` with ``witness`` as JSON, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, json.dumps(witness, separators=(",", ":")).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class FileSink:
    """Appends sealed lines to the current log file. Not thread-safe: one writer thread."""

    def __init__(
        self,
        config: FileSinkConfig,
        instance_id: str,
        *,
        clock: Callable[[], float] = time.time,
        signer: CheckpointSigner | None = None,
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self._clock = clock
        self._recovered = False
        self._lock_fd: int | None = None
        # Loaded (and checked: apart from the logs, 0600) at the first open if not given.
        self._signer = signer
        self._fd: int | None = None
        self._name = ""
        self._offset = 0
        self._opened_at = 0.0
        self._dirty = False
        self._seq = 0
        self._head = GENESIS_HASH
        self._prev_file: str | None = None
        self._reason = "start"
        self._crash: dict[str, Any] | None = None
        self._records_since_checkpoint = 0
        self._lines_since_checkpoint = 0
        self._records_in_file = 0
        self._last_checkpoint_at = clock()
        self._pending_witness: dict[str, Any] | None = None
        self.committed: LogPosition | None = None

    # -- state ---------------------------------------------------------------------

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last committed line."""
        return self._seq, self._head

    @property
    def dirty(self) -> bool:
        """True when lines were written but not yet synced (async mode)."""
        return self._dirty

    @property
    def current_file(self) -> str:
        return self._name

    @property
    def signer(self) -> CheckpointSigner | None:
        return self._signer

    # -- opening -------------------------------------------------------------------

    def _recover(self) -> None:
        """Finds the chain head in existing files (after a restart) and locks the dir."""
        log_dir = self.config.log_dir
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self._lock_fd is None:
            lock_fd = os.open(log_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise OSError(
                    errno.EAGAIN,
                    f"{log_dir} is locked by another audit pipeline; give each PDP its own log dir",
                ) from None
            except OSError:
                os.close(lock_fd)
                raise
            self._lock_fd = lock_fd
        if self._signer is None:
            self._signer = load_or_create_signer(self.config.key_path, log_dir=log_dir)
        quarantined: list[str] = []
        for path in reversed(list_log_files(log_dir)):
            found = last_good_line(path)
            if found is None:
                # Not one valid line: a crash while the file was being started.
                if path.stat().st_size == 0:
                    path.unlink()
                else:
                    path.rename(path.with_name(path.name + TORN_SUFFIX))
                    quarantined.append(path.name)
                continue
            line, end, size = found
            self._seq, self._head, self._prev_file = line.seq, line.hash, path.name
            # Clean only after a closing checkpoint (or one from before checkpoints had
            # reasons); a kill right after a periodic checkpoint is still a crash.
            closed = line.kind == KIND_CHECKPOINT and line.data.get("reason") in (
                CHECKPOINT_CLOSE,
                None,
            )
            if not closed or size > end or quarantined:
                self._reason = "recover"
                self._crash = {"file": path.name, "offset": end, "torn_bytes": size - end}
                if quarantined:
                    self._crash["quarantined"] = quarantined
            else:
                self._reason = "restart"
            break
        self._recovered = True

    def _open_file(self) -> None:
        if not self._recovered:
            self._recover()
        assert self._signer is not None
        first_seq = self._seq + 1
        fd = -1
        for attempt in range(100):
            name = log_file_name(first_seq, attempt)
            try:
                fd = os.open(
                    self.config.log_dir / name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    self.config.file_mode,
                )
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, f"no free log file name for seq {first_seq}")
        now = self._clock()
        segment = {
            "v": RECORD_VERSION,
            "kind": KIND_SEGMENT,
            "time": format_time(datetime.fromtimestamp(now, UTC)),
            "instance_id": self.instance_id,
            "file": name,
            "reason": self._reason,
            "prev_file": self._prev_file,
            "crash": self._crash,
            "key_id": self._signer.key_id,
            "key_fingerprint": self._signer.fingerprint,
            "public_key": self._signer.public_key_b64,
        }
        line, digest = seal(encode_body(segment), first_seq, self._head)
        try:
            _write_all(fd, line)
            os.fdatasync(fd)
            _fsync_dir(self.config.log_dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.config.log_dir / name)
            raise
        self._fd, self._name, self._offset, self._opened_at = fd, name, len(line), now
        self._seq, self._head = first_seq, digest
        self._crash = None
        self._records_in_file = 0
        self._lines_since_checkpoint += 1
        self._dirty = False
        self.committed = LogPosition(name, self._offset)
        log.info("audit log file %s opened (%s)", name, segment["reason"])

    # -- writing -------------------------------------------------------------------

    def _checkpoint_line(self, seq: int, prev_hash: str, reason: str) -> tuple[bytes, str]:
        assert self._signer is not None
        stamp = format_time(datetime.fromtimestamp(self._clock(), UTC))
        key = self._signer.key_id
        message = checkpoint_message(self.instance_id, seq, prev_hash, stamp, key, reason)
        body = {
            "v": RECORD_VERSION,
            "kind": KIND_CHECKPOINT,
            "time": stamp,
            "instance_id": self.instance_id,
            "key_id": key,
            "reason": reason,
            "sig": self._signer.sign(message),
        }
        line, digest = seal(encode_body(body), seq, prev_hash)
        self._pending_witness = {
            **body,
            "kind": "witness",
            "file": self._name,
            "seq": seq,
            "prev_hash": prev_hash,
            "hash": digest,
        }
        return line, digest

    def _witness(self) -> None:
        """Publishes the checkpoint just made durable to the witness file (atomically):
        best effort, a failure is logged and never stops the log."""
        witness, self._pending_witness = self._pending_witness, None
        path = self.config.witness_file
        if witness is None or path is None:
            return
        try:
            write_witness(path, witness)
        except OSError as exc:
            log.error("audit witness %s not written: %s", path, exc)

    def _write(self, data: bytes, durable: bool) -> None:
        assert self._fd is not None
        start = self._offset
        try:
            _write_all(self._fd, data)
            if durable:
                os.fdatasync(self._fd)
        except OSError:
            self._roll_back(start)
            raise
        self._offset += len(data)
        self._dirty = not durable

    def _roll_back(self, offset: int) -> None:
        """Removes a partly written batch; if that fails, abandons the file."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            size = -1
            with contextlib.suppress(OSError):
                size = os.fstat(self._fd).st_size
            log.error("audit log %s: cannot truncate after a failed write: %s", self._name, exc)
            self._abandon(
                "recover", {"file": self._name, "offset": offset, "torn_bytes": size - offset}
            )

    def _abandon(self, reason: str, crash: dict[str, Any] | None) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._prev_file = self._name
        self._reason = reason
        self._crash = crash

    def append(self, bodies: Sequence[bytes], *, durable: bool) -> list[SealedLine]:
        """Seals and writes ``bodies`` (from :func:`encode_body`) as one batch.

        Raises ``OSError`` when nothing was committed; the chain is then unchanged and
        the batch may be retried. ``durable`` makes the batch reach the disk (fdatasync).
        """
        if self._fd is None:
            self._open_file()
        seq, head = self._seq, self._head
        lines: list[bytes] = []
        results: list[SealedLine] = []
        for body in bodies:
            seq += 1
            line, head = seal(body, seq, head)
            lines.append(line)
            results.append(SealedLine(seq, head, line))
        checkpoint = self._records_since_checkpoint + len(bodies) >= self.config.checkpoint_every
        if checkpoint:
            seq += 1
            line, head = self._checkpoint_line(seq, head, CHECKPOINT_PERIODIC)
            lines.append(line)
        self._write(b"".join(lines), durable or checkpoint)
        self._seq, self._head = seq, head
        self._records_in_file += len(bodies)
        if checkpoint:
            self._checkpoint_done()
            self._witness()
        else:
            self._records_since_checkpoint += len(bodies)
            self._lines_since_checkpoint += len(bodies)
        self.committed = LogPosition(self._name, self._offset)
        self._rotate_if_due(self._clock())
        return results

    def _checkpoint_done(self) -> None:
        self._records_since_checkpoint = 0
        self._lines_since_checkpoint = 0
        self._last_checkpoint_at = self._clock()

    def checkpoint(self, *, force: bool = False, reason: str = CHECKPOINT_PERIODIC) -> None:
        """Writes a signed checkpoint now (durably) if any line is not yet covered."""
        if self._fd is None or (self._lines_since_checkpoint == 0 and not force):
            return
        line, digest = self._checkpoint_line(self._seq + 1, self._head, reason)
        self._write(line, durable=True)
        self._seq, self._head = self._seq + 1, digest
        self._checkpoint_done()
        self.committed = LogPosition(self._name, self._offset)
        self._witness()

    def open(self) -> None:
        """Recovers the chain head and starts a new file, unless one is open."""
        if self._fd is None:
            self._open_file()

    def probe(self) -> None:
        """Proves the log is writable again after a failure: opens a file if none is
        open, else appends a checkpoint, durably. Raises ``OSError`` if it still fails."""
        if self._fd is None:
            self._open_file()
        else:
            self.checkpoint(force=True)

    def sync(self) -> None:
        """Makes everything written so far durable (async mode calls this periodically)."""
        if self._fd is not None and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def tick(self) -> None:
        """Time-based duties: a checkpoint every ``checkpoint_interval_s``, age rotation."""
        now = self._clock()
        if (
            self._records_since_checkpoint
            and now - self._last_checkpoint_at >= self.config.checkpoint_interval_s
        ):
            self.checkpoint()
        self._rotate_if_due(now)

    def _rotate_if_due(self, now: float) -> None:
        if self._fd is None or not self._records_in_file:
            return
        if self._offset < self.config.max_bytes and now - self._opened_at < self.config.max_age_s:
            return
        try:
            self.checkpoint(reason=CHECKPOINT_ROTATE)
            self.sync()
        except OSError as exc:
            log.warning("audit log %s: rotation postponed: %s", self._name, exc)
            return
        self._abandon("rotate", None)
        try:
            self._open_file()
        except OSError as exc:
            # The records are durable in the closed file; the next append retries the open.
            log.warning("audit log rotation: cannot open the next file: %s", exc)

    def close(self) -> None:
        """Seals the current file with a closing checkpoint (always: it is what says the
        log ended cleanly), syncs it and releases the dir lock."""
        try:
            if self._fd is not None:
                self.sync()
                self.checkpoint(force=True, reason=CHECKPOINT_CLOSE)
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None
