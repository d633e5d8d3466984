"""Where recorded decisions come from: audit log files (rotated sets) and NATS JetStream.

A SOURCE argument is one of:

* a file: read as JSON Lines (``.gz`` is decompressed), in line order;
* a directory: its audit log files in rotation order. The file sink names each file
  ``audit-<seq of its first line, 20 digits>[.<n>].jsonl``, so ordering by that
  number orders the set by the ``seq`` field of the hash chain, across rotations
  (``.jsonl.gz`` files compressed by logrotate keep their place). A directory with no
  such names is read as its ``*.jsonl[.gz]`` files sorted by name;
* ``nats://HOST:PORT/STREAM[?subject=SUBJECT]``: a JetStream stream, read with an
  ephemeral ordered consumer from its first message to the last one stored when the
  read began (see :mod:`pdp.replay.nats_source`).

Sources are read one after the other, in the order given. Memory stays bounded: lines
are streamed, a line longer than ``MAX_LINE_BYTES`` is reported and skipped, not held.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from pdp.audit.chain import log_file_order
from pdp.replay.records import ReadLine, RecordedDecision, Unreadable, read_record

MAX_LINE_BYTES = 16 * 1024 * 1024
# Decision ids remembered to drop a record stored twice (a JetStream publish repeated
# after its duplicate window); the repeats the shipper can cause lie close together.
DEDUP_WINDOW = 16384


class SourceError(Exception):
    """A source cannot be read at all (missing file, bad URL, server unreachable)."""


class Source(Protocol):
    label: str  # as given on the command line

    def lines(self) -> Iterator[tuple[str, bytes | None]]:
        """``(position, line)``; ``None`` for a line too long to hold."""
        ...

    def progress(self) -> tuple[int, int]:
        """Units done and the total (bytes or messages; total 0 when unknown)."""
        ...


def _order_key(name: str) -> tuple[int, int] | None:
    return log_file_order(name.removesuffix(".gz"))


def log_files(directory: Path) -> list[Path]:
    """The audit files of a directory in rotation order (see the module docstring)."""
    files = [p for p in directory.iterdir() if p.is_file()]
    rotated = [(key, p.name, p) for p in files if (key := _order_key(p.name)) is not None]
    if rotated:
        return [p for _, _, p in sorted(rotated)]
    return sorted(p for p in files if p.name.endswith((".jsonl", ".jsonl.gz")))


class _LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def _read_lines(handle: _LineReader) -> Iterator[bytes | None]:
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # skip the rest of the oversized line
                rest = handle.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line.rstrip(b"\r\n")


class FileSource:
    """One SOURCE argument naming a file or a directory of rotated log files."""

    def __init__(self, spec: str) -> None:
        self.label = spec
        path = Path(spec)
        if path.is_dir():
            try:
                self.files = log_files(path)
            except OSError as exc:
                raise SourceError(f"cannot list {spec}: {exc}") from None
            if not self.files:
                raise SourceError(f"{spec}: no audit log files (*.jsonl) in this directory")
        elif path.is_file():
            self.files = [path]
        else:
            raise SourceError(f"{spec}: no such file or directory")
        self._total = sum(p.stat().st_size for p in self.files)
        self._done_files = 0
        self._raw: IO[bytes] | None = None

    def progress(self) -> tuple[int, int]:
        current = 0
        if self._raw is not None:
            try:
                current = self._raw.tell()
            except (OSError, ValueError):
                current = 0
        return self._done_files + current, self._total

    def lines(self) -> Iterator[tuple[str, bytes | None]]:
        for path in self.files:
            try:
                raw = path.open("rb")
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc}") from None
            self._raw = raw
            try:
                handle: _LineReader = raw
                if path.name.endswith(".gz"):
                    handle = gzip.GzipFile(fileobj=raw, mode="rb")
                for number, line in enumerate(_read_lines(handle), start=1):
                    if line is not None and not line.strip():
                        continue  # a blank line carries nothing
                    yield f"{path}:{number}", line
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise SourceError(f"cannot read {path}: {exc}") from None
            finally:
                self._raw = None
                raw.close()
            self._done_files += path.stat().st_size


def open_source(spec: str) -> Source:
    if spec.startswith("nats://"):
        from pdp.replay.nats_source import NatsSource

        return NatsSource(spec)
    if "://" in spec:
        raise SourceError(f"{spec}: unsupported URL scheme (use nats://HOST:PORT/STREAM)")
    return FileSource(spec)


def open_sources(specs: Sequence[str]) -> list[Source]:
    """Checks every SOURCE before anything is read; raises :class:`SourceError`."""
    if not specs:
        raise SourceError("no SOURCE given (audit log files, directories or nats:// URLs)")
    return [open_source(spec) for spec in specs]


@dataclass
class ReadCounts:
    """What the reader saw besides decision records (kept by :func:`read_sources`)."""

    lines: int = 0
    duplicates: int = 0


def read_sources(sources: Iterable[Source], counts: ReadCounts | None = None) -> Iterator[ReadLine]:
    """Every line of every source, classified; repeated decision ids are dropped."""
    counts = counts if counts is not None else ReadCounts()
    seen: OrderedDict[str, None] = OrderedDict()
    for source in sources:
        for at, raw in source.lines():
            counts.lines += 1
            if raw is None:
                yield Unreadable(at, f"line longer than {MAX_LINE_BYTES} bytes")
                continue
            item = read_record(at, raw)
            if isinstance(item, RecordedDecision):
                if item.decision_id in seen:
                    counts.duplicates += 1
                    seen.move_to_end(item.decision_id)
                    continue
                seen[item.decision_id] = None
                if len(seen) > DEDUP_WINDOW:
                    seen.popitem(last=False)
            yield item


__all__ = [
    "DEDUP_WINDOW",
    "MAX_LINE_BYTES",
    "FileSource",
    "ReadCounts",
    "Source",
    "SourceError",
    "log_files",
    "open_sources",
    "read_sources",
]
