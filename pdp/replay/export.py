"""``pdp audit export``: audit logs to a SIEM, as OCSF events or as the JSON Lines they are.

Sources are read as replay reads them (files, directories of rotated logs, ``nats://``
streams; see :mod:`pdp.replay.sources`). ``--format jsonl`` copies every line through
unchanged (chain lines included, so the copy still verifies); ``--format ocsf`` writes
one OCSF event per decision and refusal (:mod:`pdp.audit.ocsf`) and counts what it
leaves out. ``--follow`` keeps reading a live log file or directory: new lines as they
are completed, and the next file when the log rotates (a partly written last line is
held back until its newline arrives).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pdp.audit.ocsf import NotExportable, to_ocsf
from pdp.replay.sources import MAX_LINE_BYTES, SourceError, log_files, open_sources

FORMATS = ("ocsf", "jsonl")
FOLLOW_POLL_S = 0.2


@dataclass
class ExportCounts:
    exported: int = 0
    left_out: Counter[str] = field(default_factory=Counter)  # by why

    def summary(self) -> str:
        parts = [f"exported {self.exported} line(s)"]
        if self.left_out:
            detail = ", ".join(f"{n} {why}" for why, n in sorted(self.left_out.items()))
            parts.append(f"left out: {detail}")
        return "; ".join(parts)


def export_line(raw: bytes, fmt: str, counts: ExportCounts) -> bytes | None:
    """The exported form of one audit line, or ``None`` when it is left out."""
    if fmt == "jsonl":
        counts.exported += 1
        return raw
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        counts.left_out["unreadable"] += 1
        return None
    if not isinstance(record, dict):
        counts.left_out["unreadable"] += 1
        return None
    try:
        event = to_ocsf(record)
    except NotExportable:
        kind = record.get("kind")
        counts.left_out[f"{kind} lines" if isinstance(kind, str) else "unreadable"] += 1
        return None
    counts.exported += 1
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def follow_lines(
    spec: str, *, stop: Callable[[], bool], poll_s: float = FOLLOW_POLL_S
) -> Iterator[tuple[str, bytes | None]]:
    """Every complete line of a log file or directory, then new ones as they arrive,
    until ``stop()`` is true. In a directory, the next file in rotation order is read
    once the current one has nothing more and a later one exists."""
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or directory")
    if path.is_dir():

        def files() -> list[Path]:
            try:
                return log_files(path)
            except OSError as exc:
                raise SourceError(f"cannot list {spec}: {exc}") from None
    elif spec.endswith(".gz"):
        raise SourceError(f"{spec}: a compressed file does not grow; read it without --follow")
    else:

        def files() -> list[Path]:
            return [path]

    current: Path | None = None
    offset = 0
    number = 0
    pending = b""
    while True:
        listed = files()
        if current is None:
            if not listed:
                if stop():
                    return
                time.sleep(poll_s)
                continue
            current = listed[0]
        try:
            with current.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(1 << 20)
        except FileNotFoundError:
            chunk = b""  # removed after being read (retention): move on below
        except OSError as exc:
            raise SourceError(f"cannot read {current}: {exc}") from None
        if chunk:
            offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                number += 1
                if line.strip():
                    yield f"{current}:{number}", line.rstrip(b"\r")
            if len(pending) > MAX_LINE_BYTES:
                number += 1
                yield f"{current}:{number}", None
                pending = b""
            continue
        later = listed[listed.index(current) + 1 :] if current in listed else []
        if later and not pending:
            current, offset, number = later[0], 0, 0
            continue
        if stop():
            return
        time.sleep(poll_s)


def run_export(
    specs: Sequence[str],
    fmt: str,
    out: IO[bytes],
    *,
    follow: bool = False,
    stop: Callable[[], bool] = lambda: False,
    err: IO[str] = sys.stderr,
) -> int:
    """Writes the export of ``specs`` to ``out``; returns an exit code (2: unreadable)."""
    if fmt not in FORMATS:
        print(f"pdp: --format must be one of {', '.join(FORMATS)}", file=err)
        return 2
    counts = ExportCounts()
    try:
        if follow:
            if len(specs) != 1 or specs[0].startswith("nats://"):
                print("pdp: --follow takes one log file or directory", file=err)
                return 2
            lines = follow_lines(specs[0], stop=stop)
        else:
            lines = (item for source in open_sources(specs) for item in source.lines())
        for at, raw in lines:
            if raw is None:
                counts.left_out["too long"] += 1
                print(f"pdp: {at}: line longer than {MAX_LINE_BYTES} bytes, left out", file=err)
                continue
            exported = export_line(raw, fmt, counts)
            if exported is not None:
                out.write(exported + b"\n")
                if follow:
                    out.flush()
    except SourceError as exc:
        print(f"pdp: {exc}", file=err)
        return 2
    except BrokenPipeError:
        return 0
    out.flush()
    print(f"pdp: {counts.summary()}", file=err)
    return 0
