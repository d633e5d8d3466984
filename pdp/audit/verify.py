"""Verifies audit log files: hash chain, sequence, file links and checkpoint signatures.

``verify_files`` walks the files in chain order and stops at the first bad position,
naming it as ``file:line``. It detects a modified line (hash), a deleted, truncated or
missing range (seq gap, also across rotated files), a reordered, duplicated or inserted
line (seq / prev_hash), and a forged checkpoint (Ed25519 signature). A torn last line (a
crash during a write) is reported as a crash point, not as tampering: verification
passes up to it. Lines after the last checkpoint are valid but unsigned: whoever can
write the files could have rewritten or cut them, which the report says.

``main`` is the ``pdp audit verify`` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pdp.audit.chain import (
    GENESIS_HASH,
    KIND_CHECKPOINT,
    KIND_SEGMENT,
    ChainError,
    ChainLine,
    checkpoint_message,
    log_file_order,
    parse_line,
)
from pdp.audit.keys import (
    PUBLIC_KEY_FILE,
    SigningKeyError,
    key_id,
    load_public_key,
    verify_signature,
)
from pdp.audit.record import RECORD_KINDS

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    """The first bad position: ``file`` (as given) and 1-based ``line``."""

    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """Where a writer stopped mid-write. ``recovered``: a later file continues the chain."""

    file: str
    line: int
    offset: int
    torn_bytes: int
    recovered: bool

    def __str__(self) -> str:
        state = "recovered by the next file" if self.recovered else "end of the log"
        return f"{self.file}:{self.line}: crash point, {self.torn_bytes} bytes discarded ({state})"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    files: int = 0
    lines: int = 0  # valid chain lines
    records: int = 0  # decision, refusal and policy_reload lines
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_signed_seq: int | None = None
    unsigned_tail: int = 0  # lines after the last valid checkpoint
    sealed: bool = False  # the log ends with a valid checkpoint (closed cleanly)
    redacted_records: int = 0  # records with arguments_redacted (replay sees masked values)
    crash_points: tuple[CrashPoint, ...] = ()
    problem: VerifyProblem | None = None
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        out: list[str] = []
        if self.problem is not None:
            out.append(f"FAIL {self.problem}")
        for crash in self.crash_points:
            out.append(str(crash))
        seq = f"seq {self.first_seq}..{self.last_seq}" if self.first_seq is not None else "empty"
        out.append(
            f"{'OK' if self.ok else 'verified before the failure'}: {self.files} files, "
            f"{self.lines} lines ({self.records} records, {self.redacted_records} with redacted "
            f"arguments), {seq}, {self.checkpoints} checkpoints"
            + ("" if self.last_signed_seq is None else f", signed up to seq {self.last_signed_seq}")
        )
        if self.ok and not self.sealed and self.unsigned_tail:
            out.append(
                f"warning: the last {self.unsigned_tail} lines are not covered by a checkpoint "
                "(the writer is running or crashed, or the log was cut after them)"
            )
        out.extend(self.notes)
        return "\n".join(out)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, directories expanded to their log files; in chain order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in path.iterdir() if log_file_order(p.name) is not None)
        else:
            found.append(path)
    unknown = [p for p in found if log_file_order(p.name) is None]
    known = sorted((p for p in found if log_file_order(p.name) is not None), key=_order)
    return known + unknown


def _order(path: Path) -> tuple[int, int]:
    return log_file_order(path.name) or (0, 0)


def _lines(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, start offset, raw bytes incl. newline) for each line."""
    start, number = 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        number += 1
        yield number, start, data[start:end]
        start = end


def _crash_cut(next_data: bytes | None, name: str) -> int | None:
    if not next_data:
        return None
    first = next_data.split(b"\n", 1)[0]
    try:
        line = parse_line(first)
    except ChainError:
        return None
    crash = line.data.get("crash")
    if line.kind == KIND_SEGMENT and isinstance(crash, dict) and crash.get("file") == name:
        offset = crash.get("offset")
        return offset if isinstance(offset, int) else None
    return None


class _Verifier:
    def __init__(self, public_key: Ed25519PublicKey, require_genesis: bool) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)
        self.require_genesis = require_genesis
        self.prev: ChainLine | None = None
        self.lines = self.records = self.checkpoints = self.redacted = 0
        self.first_seq: int | None = None
        self.last_signed: int | None = None
        self.crashes: list[CrashPoint] = []
        self.notes: list[str] = []

    def check(self, line: ChainLine, number: int) -> tuple[str, str] | None:
        prev = self.prev
        if number == 1 and line.kind != KIND_SEGMENT:
            return (
                "missing_segment",
                "a file must start with a segment line (file cut at its start?)",
            )
        if number != 1 and line.kind == KIND_SEGMENT:
            return "unexpected_segment", "a segment line inside a file (lines inserted?)"
        if prev is None:
            if line.seq == 1 and line.prev_hash != GENESIS_HASH:
                return "chain_broken", "the first line of the log must link to the genesis hash"
            if line.seq != 1:
                if self.require_genesis:
                    return (
                        "missing",
                        f"the log starts at seq {line.seq}, not 1 (first files missing)",
                    )
                self.notes.append(
                    f"note: the files start at seq {line.seq}; earlier files were not given"
                )
        elif line.seq > prev.seq + 1:
            return "missing", (
                f"seq {prev.seq + 1}..{line.seq - 1} missing after seq {prev.seq} "
                "(lines deleted or a file truncated)"
            )
        elif line.seq <= prev.seq:
            return "out_of_order", (
                f"seq {line.seq} follows seq {prev.seq} (lines reordered, duplicated or inserted)"
            )
        elif line.prev_hash != prev.hash:
            return "chain_broken", (
                "prev_hash does not match the previous line (a line was inserted or replaced)"
            )
        if line.kind == KIND_CHECKPOINT:
            return self._checkpoint(line)
        if line.kind in RECORD_KINDS:
            self.records += 1
            if line.data.get("arguments_redacted") is True:
                self.redacted += 1
        elif line.kind != KIND_SEGMENT:
            return "unknown_kind", f"unknown line kind {line.kind!r}"
        return None

    def _checkpoint(self, line: ChainLine) -> tuple[str, str] | None:
        data = line.data
        fields = (data.get("instance_id"), data.get("time"), data.get("key_id"), data.get("sig"))
        if not all(isinstance(f, str) for f in fields):
            return "bad_checkpoint", "checkpoint lacks instance_id, time, key_id or sig"
        instance_id, stamp, key, sig = (str(f) for f in fields)
        if key != self.key_id:
            return "bad_signature", (
                f"checkpoint names key {key}, but the public key given is {self.key_id} "
                "(forged checkpoint, or pass the right --public-key)"
            )
        message = checkpoint_message(instance_id, line.seq, line.prev_hash, stamp, key)
        if not verify_signature(self.public_key, message, sig):
            return "bad_signature", "checkpoint signature does not verify (forged or altered)"
        self.checkpoints += 1
        self.last_signed = line.seq
        return None


def verify_files(
    paths: Sequence[Path], public_key: Ed25519PublicKey, *, require_genesis: bool = False
) -> VerifyReport:
    """Verifies ``paths`` (log files or directories) as one chain, in file-name order."""
    files = expand_paths(paths)
    v = _Verifier(public_key, require_genesis)
    problem: VerifyProblem | None = None
    contents: dict[int, bytes] = {}

    def read(index: int) -> bytes | None:
        if index >= len(files):
            return None
        if index not in contents:
            contents[index] = files[index].read_bytes()
        return contents[index]

    for index, path in enumerate(files):
        data = read(index)
        assert data is not None
        contents.pop(index - 1, None)
        name, shown = path.name, str(path)
        last_file = index == len(files) - 1
        cut = _crash_cut(read(index + 1), name)
        for number, start, raw in _lines(data):
            if cut is not None and start >= cut:
                v.crashes.append(CrashPoint(shown, number, start, len(data) - start, True))
                break
            complete = raw.endswith(b"\n")
            body = raw[:-1] if complete else raw
            at_end = start + len(raw) == len(data)
            if at_end and (not complete or not body.strip(b"\x00")):
                if last_file:
                    v.crashes.append(CrashPoint(shown, number, start, len(raw), False))
                    break
                problem = VerifyProblem(
                    shown,
                    number,
                    "torn_line",
                    "incomplete last line, and the next file does not record a crash here",
                )
                break
            try:
                line = parse_line(body)
            except ChainError as exc:
                problem = VerifyProblem(shown, number, exc.code, str(exc))
                break
            failure = v.check(line, number)
            if failure is not None:
                problem = VerifyProblem(shown, number, *failure)
                break
            if v.first_seq is None:
                v.first_seq = line.seq
            v.prev = line
            v.lines += 1
        else:
            if not data and last_file:
                v.crashes.append(CrashPoint(shown, 1, 0, 0, False))
            elif not data:
                problem = VerifyProblem(shown, 1, "empty_file", "the file is empty")
        if problem is not None:
            break
    prev = v.prev
    last_seq = prev.seq if prev is not None else None
    signed = v.last_signed if v.last_signed is not None else (v.first_seq or 1) - 1
    return VerifyReport(
        ok=problem is None,
        files=len(files),
        lines=v.lines,
        records=v.records,
        first_seq=v.first_seq,
        last_seq=last_seq,
        checkpoints=v.checkpoints,
        last_signed_seq=v.last_signed,
        unsigned_tail=0 if last_seq is None else last_seq - signed,
        sealed=prev is not None and prev.kind == KIND_CHECKPOINT,
        redacted_records=v.redacted,
        crash_points=tuple(v.crashes),
        problem=problem,
        notes=tuple(v.notes),
    )


def _default_public_key(paths: Sequence[Path]) -> Path | None:
    for path in paths:
        directory = path if path.is_dir() else path.parent
        candidate = directory / PUBLIC_KEY_FILE
        if candidate.exists():
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``pdp audit verify [--public-key PEM] [--require-genesis] [--require-sealed] [--json] PATH…``

    Exit status: 0 verified (crash points are reported but pass), 1 a problem was found,
    2 usage or I/O error.
    """
    parser = argparse.ArgumentParser(
        prog="pdp audit verify",
        description="Verify the hash chain and signed checkpoints of pdp audit log files.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="log files or directories")
    parser.add_argument(
        "--public-key",
        type=Path,
        help=f"checkpoint public key (default: {PUBLIC_KEY_FILE} beside the files)",
    )
    parser.add_argument(
        "--require-genesis", action="store_true", help="fail unless the files start at seq 1"
    )
    parser.add_argument(
        "--require-sealed",
        action="store_true",
        help="fail unless the log ends with a checkpoint (closed cleanly)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    key_path = args.public_key or _default_public_key(args.paths)
    if key_path is None:
        print(f"error: no {PUBLIC_KEY_FILE} beside the files; pass --public-key", file=sys.stderr)
        return EXIT_USAGE
    try:
        public_key = load_public_key(key_path)
        report = verify_files(args.paths, public_key, require_genesis=args.require_genesis)
    except (OSError, SigningKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(report.summary())
    if not report.ok:
        return EXIT_INVALID
    if args.require_sealed and not report.sealed:
        print("error: the log does not end with a checkpoint", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
