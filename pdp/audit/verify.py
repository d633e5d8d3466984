"""Verifies audit log files: hash chain, sequence, file links and checkpoint signatures.

``verify_files`` walks the files in chain order and stops at the first bad position,
naming it as ``file:line``. It detects a modified line (hash), a deleted, truncated or
missing range (seq gap, also across rotated files), a reordered, duplicated or inserted
line (seq / prev_hash, reported as what was seen), a forged checkpoint (Ed25519
signature) and a crash marker that would discard complete, valid lines. A torn last line
(a crash during a write) is reported as a crash point, not as tampering.

What the signatures prove depends on the key. A key given by the verifier (a public key
file, a pinned fingerprint) shows the checkpoints were made by its holder; the key
recorded in the log itself proves nothing against whoever can write the log (they can
re-sign with a key of their own), which the report says (``key_pinned``). Lines after
the last checkpoint are unsigned. ``sealed``: the log ends with a closing checkpoint and
nothing after it. A witness (the latest checkpoint, published where the log's writer
cannot reach) shows the log was not cut back to an older checkpoint or rewritten before
it, even by the key's holder.

``main`` is the ``pdp audit verify`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pdp.audit.chain import (
    CHECKPOINT_CLOSE,
    CHECKPOINT_REASONS,
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
    fingerprint,
    load_public_key,
    public_key_from_base64,
    verify_signature,
)
from pdp.audit.record import RECORD_KINDS

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

_FINGERPRINT = re.compile(r"\A[0-9a-f]{64}\Z")
_WORKER_DIR = re.compile(r"\Aworker-(\d+)\Z")


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
class Witness:
    """The latest checkpoint as published outside the log (``witness_file``)."""

    instance_id: str
    seq: int
    hash: str
    prev_hash: str
    time: str
    key_id: str
    reason: str | None
    sig: str

    @classmethod
    def load(cls, path: Path) -> Witness:
        try:
            return cls.from_data(json.loads(path.read_bytes()))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_nats(cls, url: str) -> Witness:
        """``nats://HOST:PORT/STREAM/SUBJECT``: the latest checkpoint line the shipper
        published there (e.g. ``nats://nats:4222/PDP_AUDIT/pdp.audit.host-1``)."""
        from urllib.parse import urlsplit

        from pdp.audit.nats_shipper import latest_checkpoint

        parts = urlsplit(url)
        stream, _, subject = parts.path.strip("/").partition("/")
        if not stream or not subject:
            raise ValueError(f"{url}: give nats://HOST:PORT/STREAM/SUBJECT")
        try:
            data = latest_checkpoint(f"{parts.scheme}://{parts.netloc}", stream, subject)
        except Exception as exc:  # connection refused, no such stream...
            raise ValueError(
                f"{url}: cannot read the witness: {type(exc).__name__}: {exc}"
            ) from None
        if data is None:
            raise ValueError(f"{url}: no checkpoint published on {subject} in {stream}")
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: Any) -> Witness:
        try:
            return cls(
                instance_id=str(data["instance_id"]),
                seq=int(data["seq"]),
                hash=str(data["hash"]),
                prev_hash=str(data["prev_hash"]),
                time=str(data["time"]),
                key_id=str(data["key_id"]),
                reason=None if data.get("reason") is None else str(data["reason"]),
                sig=str(data["sig"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a pdp audit witness ({exc})") from None

    def message(self) -> bytes:
        return checkpoint_message(
            self.instance_id, self.seq, self.prev_hash, self.time, self.key_id, self.reason
        )


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
    # The log ends with a closing checkpoint and nothing after it (closed cleanly).
    sealed: bool = False
    last_checkpoint_reason: str | None = None
    redacted_records: int = 0  # records with arguments_redacted (replay sees masked values)
    crash_points: tuple[CrashPoint, ...] = ()
    problem: VerifyProblem | None = None
    notes: tuple[str, ...] = field(default=())
    key_fingerprint: str | None = None  # the key the checkpoints were checked with
    # True when that key came from the verifier (a key file or a pinned fingerprint);
    # False when it was taken from the log (or from beside it): then the signatures
    # prove nothing against whoever can write the log.
    key_pinned: bool = False
    witness_seq: int | None = None  # a witness was given and the log holds its checkpoint

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
        if self.key_fingerprint is not None:
            if self.key_pinned:
                out.append(f"signing key {self.key_fingerprint} (pinned)")
            else:
                out.append(
                    f"WARNING: UNPINNED key {self.key_fingerprint}: taken from the log itself "
                    "(or from beside it), so the signatures prove nothing against whoever can "
                    "write these files; pin it with --public-key or --key-fingerprint"
                )
        if self.witness_seq is not None:
            out.append(f"witness: the log holds the witnessed checkpoint at seq {self.witness_seq}")
        if self.ok and self.sealed:
            out.append("sealed: ends with a closing checkpoint, nothing after it")
        elif self.ok and self.unsigned_tail:
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


def worker_chains(directory: Path) -> list[Path]:
    """The ``worker-K`` chains of a ``pdp serve --workers`` audit base directory, by K."""
    if not directory.is_dir():
        return []
    found = [
        (int(match.group(1)), p)
        for p in directory.iterdir()
        if (match := _WORKER_DIR.match(p.name)) is not None and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


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


def _valid_lines_after(data: bytes, cut: int) -> list[int]:
    """The seqs of complete, hash-valid lines at or after byte ``cut``: a crash tears at
    most the write in progress, never lines that were whole before it."""
    seqs: list[int] = []
    for _, start, raw in _lines(data):
        if start < cut or not raw.endswith(b"\n"):
            continue
        try:
            seqs.append(parse_line(raw[:-1]).seq)
        except ChainError:
            continue
    return seqs


class _Verifier:
    def __init__(
        self,
        public_key: Ed25519PublicKey | None,
        pinned_fingerprint: str | None,
        require_genesis: bool,
    ) -> None:
        self.public_key = public_key
        self.pinned = pinned_fingerprint
        self.key_id = fingerprint(public_key)[:16] if public_key is not None else None
        self.require_genesis = require_genesis
        self.prev: ChainLine | None = None
        self.lines = self.records = self.checkpoints = self.redacted = 0
        self.first_seq: int | None = None
        self.last_signed: int | None = None
        self.last_reason: str | None = None
        self.checkpoint_hashes: dict[int, str] = {}
        self.crashes: list[CrashPoint] = []
        self.notes: list[str] = []
        self.pending: list[tuple[ChainLine, int]] = []  # look-ahead for reordered lines

    def check(self, line: ChainLine, number: int, later: Sequence[int]) -> tuple[str, str] | None:
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
        elif line.seq != prev.seq + 1:
            expected = prev.seq + 1
            seen = f"seq {line.seq} follows seq {prev.seq} (expected seq {expected})"
            if expected in later:
                return "out_of_order", f"{seen}; seq {expected} comes later: lines reordered"
            if line.seq > expected:
                return "missing", (
                    f"{seen}: seq {expected}..{line.seq - 1} missing "
                    "(lines deleted or a file truncated)"
                )
            return "out_of_order", f"{seen}: lines duplicated, inserted or reordered"
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
        elif line.kind == KIND_SEGMENT:
            return self._segment(line)
        else:
            return "unknown_kind", f"unknown line kind {line.kind!r}"
        return None

    def _segment(self, line: ChainLine) -> tuple[str, str] | None:
        """A segment names the key its file is signed with; without a key from the
        verifier, the first one recorded is used (unpinned) or checked against the pin."""
        recorded, named = line.data.get("public_key"), line.data.get("key_fingerprint")
        if not isinstance(recorded, str):
            return None  # written before segments recorded the key
        try:
            key = public_key_from_base64(recorded)
        except SigningKeyError as exc:
            return "bad_segment", f"segment public_key: {exc}"
        found = fingerprint(key)
        if named != found:
            return "bad_segment", (
                f"segment names key fingerprint {named}, but its public_key has {found}"
            )
        if self.public_key is None:
            if self.pinned is not None and found != self.pinned:
                return "wrong_key", (
                    f"the log is signed with key {found}, not the pinned {self.pinned} "
                    "(re-signed with another key?)"
                )
            self.public_key, self.key_id = key, found[:16]
        return None

    def _checkpoint(self, line: ChainLine) -> tuple[str, str] | None:
        data = line.data
        fields = (data.get("instance_id"), data.get("time"), data.get("key_id"), data.get("sig"))
        if not all(isinstance(f, str) for f in fields):
            return "bad_checkpoint", "checkpoint lacks instance_id, time, key_id or sig"
        instance_id, stamp, key, sig = (str(f) for f in fields)
        reason = data.get("reason")
        if reason is not None and reason not in CHECKPOINT_REASONS:
            return (
                "bad_checkpoint",
                f"checkpoint reason {reason!r} is not one of close, rotate, periodic",
            )
        if self.public_key is None:
            return "no_key", (
                "checkpoint, but no key to check it: none given, and no segment line before it "
                "records one (pass --public-key)"
            )
        if key != self.key_id:
            return "bad_signature", (
                f"checkpoint names key {key}, but the key used is {self.key_id} "
                "(forged checkpoint, or pass the right --public-key)"
            )
        message = checkpoint_message(instance_id, line.seq, line.prev_hash, stamp, key, reason)
        if not verify_signature(self.public_key, message, sig):
            return "bad_signature", "checkpoint signature does not verify (forged or altered)"
        self.checkpoints += 1
        self.last_signed = line.seq
        self.last_reason = reason if isinstance(reason, str) else None
        self.checkpoint_hashes[line.seq] = line.hash
        return None


def _upcoming_seqs(data: bytes, start: int, limit: int = 8) -> list[int]:
    """The seqs of the next few parseable lines from byte ``start`` (for telling a
    reordering from a deletion)."""
    seqs: list[int] = []
    for _, _start, raw in _lines(data[start:]):
        with contextlib.suppress(ChainError):
            seqs.append(parse_line(raw.rstrip(b"\n")).seq)
        if len(seqs) >= limit:
            break
    return seqs


def verify_files(
    paths: Sequence[Path],
    public_key: Ed25519PublicKey | None,
    *,
    require_genesis: bool = False,
    pinned_fingerprint: str | None = None,
    witness: Witness | None = None,
) -> VerifyReport:
    """Verifies ``paths`` (log files or directories) as one chain, in file-name order.

    ``public_key``: the key the verifier trusts (pinned); None takes the key recorded in
    the log's segment lines, which must then match ``pinned_fingerprint`` when given
    (pinned) and otherwise proves nothing (``key_pinned`` False). ``witness``: the latest
    checkpoint published outside the log; the log must hold exactly that checkpoint."""
    files = expand_paths(paths)
    if (
        public_key is not None
        and pinned_fingerprint is not None
        and fingerprint(public_key) != pinned_fingerprint
    ):
        return VerifyReport(
            ok=False,
            problem=VerifyProblem(
                "", 0, "wrong_key", "the public key given does not have the pinned fingerprint"
            ),
        )
    pinned = public_key is not None or pinned_fingerprint is not None
    v = _Verifier(public_key, pinned_fingerprint, require_genesis)
    problem: VerifyProblem | None = None
    if not files:
        shown = ", ".join(str(p) for p in paths)
        problem = VerifyProblem(
            shown, 0, "empty", f"no audit log files in {shown}: an empty log proves nothing"
        )
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
        if cut is not None:
            discarded = _valid_lines_after(data, cut)
            if discarded:
                problem = VerifyProblem(
                    str(files[index + 1]),
                    1,
                    "bad_crash_marker",
                    f"its crash marker would discard {len(discarded)} complete, valid lines "
                    f"of {name} (seq {discarded[0]}..{discarded[-1]}) from offset {cut}; a "
                    "crash only tears the write in progress (forged marker?)",
                )
                break
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
            later: Sequence[int] = ()
            if v.prev is not None and line.seq != v.prev.seq + 1:
                later = _upcoming_seqs(data, start + len(raw))
            failure = v.check(line, number, later)
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
    witness_seq: int | None = None
    if problem is None and witness is not None:
        problem = _check_witness(witness, v, last_seq, files)
        witness_seq = witness.seq if problem is None else None
    signed = v.last_signed if v.last_signed is not None else (v.first_seq or 1) - 1
    torn_end = any(not crash.recovered for crash in v.crashes)
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
        sealed=prev is not None
        and prev.kind == KIND_CHECKPOINT
        and v.last_reason == CHECKPOINT_CLOSE
        and not torn_end,
        last_checkpoint_reason=v.last_reason if v.last_signed == last_seq else None,
        redacted_records=v.redacted,
        crash_points=tuple(v.crashes),
        problem=problem,
        notes=tuple(v.notes),
        key_fingerprint=fingerprint(v.public_key) if v.public_key is not None else None,
        key_pinned=pinned and v.public_key is not None,
        witness_seq=witness_seq,
    )


def _check_witness(
    witness: Witness, v: _Verifier, last_seq: int | None, files: Sequence[Path]
) -> VerifyProblem | None:
    where = str(files[-1]) if files else ""

    def fail(code: str, message: str) -> VerifyProblem:
        return VerifyProblem(where, 0, code, message)

    if v.public_key is None or witness.key_id != v.key_id:
        return fail("witness_key", f"the witness names key {witness.key_id}, not {v.key_id}")
    if not verify_signature(v.public_key, witness.message(), witness.sig):
        return fail("witness_signature", "the witness signature does not verify (forged?)")
    if last_seq is None or witness.seq > last_seq:
        return fail(
            "truncated",
            f"the witness saw a checkpoint at seq {witness.seq}, but the log ends at seq "
            f"{last_seq} (cut back, or later files missing)",
        )
    if v.first_seq is not None and witness.seq < v.first_seq:
        return fail("witness_not_covered", f"the files start after the witnessed seq {witness.seq}")
    found = v.checkpoint_hashes.get(witness.seq)
    if found != witness.hash:
        return fail(
            "rewritten",
            f"at seq {witness.seq} the witness saw checkpoint {witness.hash[:16]}…, the log has "
            + (f"{found[:16]}…" if found else "no checkpoint")
            + " (the log was rewritten and re-signed)",
        )
    return None


def _beside_key(paths: Sequence[Path]) -> Path | None:
    """An ``audit-signing.pub`` beside the files or one level up (unpinned: for logs
    whose segment lines do not record their key)."""
    for path in paths:
        directory = path if path.is_dir() else path.parent
        for candidate in (directory / PUBLIC_KEY_FILE, directory.parent / PUBLIC_KEY_FILE):
            if candidate.exists():
                return candidate
    return None


@dataclass(frozen=True, slots=True)
class Pins:
    """What the verifier trusts: a public key file and/or a fingerprint (from the
    command line or from configuration)."""

    public_key: Path | None = None
    fingerprint: str | None = None
    source: str = "command line"


def _chains(paths: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """The chains to verify: the paths as one chain, or, for a ``--workers`` base
    directory given alone, one chain per worker."""
    if len(paths) == 1 and paths[0].is_dir() and not expand_paths(paths):
        workers = worker_chains(paths[0])
        if workers:
            return [(p.name, [p]) for p in workers]
    return [("", list(paths))]


def main(argv: Sequence[str] | None = None, *, configured: Pins | None = None) -> int:
    """``pdp audit verify [--public-key PEM | --key-fingerprint HEX] [--require-pinned]
    [--require-genesis] [--require-sealed] [--witness FILE] [--json] PATH…``

    Exit status: 0 verified (crash points are reported but pass), 1 a problem was found
    (or a requirement not met), 2 usage or I/O error.
    """
    parser = argparse.ArgumentParser(
        prog="pdp audit verify",
        description="Verify the hash chain and signed checkpoints of pdp audit log files. "
        "A --workers base directory verifies every worker-K chain in it.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="log files or directories")
    parser.add_argument(
        "--public-key",
        type=Path,
        help="the checkpoint public key to trust (PEM; pdp serve prints where it is)",
    )
    parser.add_argument(
        "--key-fingerprint",
        help="the fingerprint of the key to trust (64 hex digits, printed by pdp serve at start)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="pdp serve's YAML config: trust its audit.public_key / audit.key_fingerprint",
    )
    parser.add_argument(
        "--require-pinned",
        action="store_true",
        help="fail unless the key is given or pinned (a key from the log itself proves nothing)",
    )
    parser.add_argument(
        "--require-genesis", action="store_true", help="fail unless the files start at seq 1"
    )
    parser.add_argument(
        "--require-sealed",
        action="store_true",
        help="fail unless the log ends with a closing checkpoint and nothing after it",
    )
    parser.add_argument(
        "--witness",
        metavar="FILE|URL",
        help="the witness file pdp serve keeps (audit.witness_file), or the NATS copy "
        "(nats://HOST:PORT/STREAM/SUBJECT): fail unless the log holds that checkpoint "
        "(for a --workers base dir: FILE.worker-K per worker)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    pins = Pins(args.public_key, args.key_fingerprint)
    if pins.public_key is None and pins.fingerprint is None and configured is not None:
        pins = configured
    if args.config and configured is None:
        print(
            "error: --config is read by `pdp audit verify`, not this entry point", file=sys.stderr
        )
        return EXIT_USAGE
    if pins.fingerprint is not None:
        pins = Pins(pins.public_key, pins.fingerprint.lower().removeprefix("sha256:"), pins.source)
        if not _FINGERPRINT.match(pins.fingerprint or ""):
            print(
                "error: --key-fingerprint: give the 64 hex digits pdp serve printed",
                file=sys.stderr,
            )
            return EXIT_USAGE
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"FAIL: {', '.join(missing)}: no such file or directory (no log to verify)")
        return EXIT_INVALID
    chains = _chains(args.paths)
    code = EXIT_OK
    reports: dict[str, Any] = {}
    for name, paths in chains:
        try:
            public_key = load_public_key(pins.public_key) if pins.public_key else None
            witness = _witness(args.witness, name)
            beside: Path | None = None
            if public_key is None and not _records_key(paths):
                # Written before segment lines recorded their key: the .pub beside the
                # log (trusted only if it has the pinned fingerprint).
                beside = _beside_key(paths)
                public_key = load_public_key(beside) if beside is not None else None
            report = verify_files(
                paths,
                public_key,
                require_genesis=args.require_genesis,
                pinned_fingerprint=pins.fingerprint,
                witness=witness,
            )
            if beside is not None and pins.fingerprint is None:
                report = _unpinned(report, beside)
        except (OSError, SigningKeyError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        reports[name or "log"] = asdict(report)
        if not args.json:
            if name:
                print(f"== {name}")
            print(report.summary())
        failures = _requirements(report, args)
        for failure in failures:
            print(f"error: {(name + ': ') if name else ''}{failure}", file=sys.stderr)
        if not report.ok or failures:
            code = EXIT_INVALID
    if args.json:
        print(json.dumps(reports if len(chains) > 1 else reports[next(iter(reports))], indent=2))
    return code


def _witness(given: str | None, chain: str) -> Witness | None:
    if given is None:
        return None
    if given.startswith(("nats://", "tls://")):
        return Witness.from_nats(given)
    path = Path(given)
    return Witness.load(path.with_name(f"{path.name}.{chain}") if chain else path)


def _records_key(paths: Sequence[Path]) -> bool:
    """True when the first log file's segment line records its public key."""
    files = expand_paths(paths)
    if not files:
        return True
    with files[0].open("rb") as handle:
        first = handle.readline()
    try:
        return isinstance(parse_line(first.rstrip(b"\n")).data.get("public_key"), str)
    except ChainError:
        return True


def _unpinned(report: VerifyReport, beside: Path) -> VerifyReport:
    from dataclasses import replace

    note = f"note: key read from {beside}, beside the log (unpinned)"
    return replace(report, key_pinned=False, notes=(*report.notes, note))


def _requirements(report: VerifyReport, args: argparse.Namespace) -> list[str]:
    failures: list[str] = []
    if args.require_pinned and not report.key_pinned:
        failures.append(
            "the signing key is not pinned (--require-pinned): give --public-key or "
            "--key-fingerprint, or pin it in the configuration"
        )
    if args.require_sealed and report.ok and not report.sealed:
        if report.last_checkpoint_reason is None and report.unsigned_tail == 0:
            last = (
                "one without a reason: written by a pdp before checkpoints said close, "
                "rotate or periodic, so a clean close cannot be told from a cut"
            )
        else:
            last = report.last_checkpoint_reason or "none at the end"
        failures.append(
            "the log does not end with a closing checkpoint and nothing after it "
            f"(--require-sealed; last checkpoint: {last})"
        )
    return failures


if __name__ == "__main__":
    sys.exit(main())
