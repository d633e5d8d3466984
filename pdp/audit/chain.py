"""The hash chain every audit line belongs to, and how log files are named.

A line is one JSON object on one line. The writer appends three members to the record's
own JSON: ``seq`` (monotonic, +1 per line across all files), ``prev_hash`` (the ``hash``
of the line before, 64 zeros for the first line ever) and last ``hash``: the SHA-256
(hex) of the exact line bytes without the ``,"hash":"…"`` member, i.e. of
``line[: line.rindex(',"hash":"')] + "}"``. Hashing bytes rather than re-encoded JSON means
any verifier, in any language, needs no canonical JSON form, and any edit shows.

Besides records (``decision``, ``refusal``) the chain holds ``segment`` lines (first line
of each file: why it was opened, previous file, crash point) and signed ``checkpoint``
lines. Files are named ``audit-<first seq, 20 digits>[.<n>].jsonl`` so they sort in order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdp.audit.record import RECORD_VERSION

GENESIS_HASH = "0" * 64
KIND_SEGMENT = "segment"
KIND_CHECKPOINT = "checkpoint"
CHAIN_FIELDS = frozenset({"seq", "prev_hash", "hash"})

_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}\Z')
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_FILE_RE = re.compile(r"\Aaudit-(\d{20})(?:\.(\d{1,4}))?\.jsonl\Z")


class ChainError(ValueError):
    """A line is not a valid chain line. ``code`` is a stable short name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ChainLine:
    seq: int
    prev_hash: str
    hash: str
    kind: str
    data: dict[str, Any]


def encode_body(record: dict[str, Any]) -> bytes:
    """The record's JSON text (UTF-8, compact), without chain members; ends with ``}``."""
    if not record:
        raise ValueError("an audit record cannot be empty")
    clash = CHAIN_FIELDS.intersection(record)
    if clash:
        raise ValueError(f"record must not set chain fields: {sorted(clash)}")
    return _encode(record, tree=False)


# Built once (json.dumps with options builds a new encoder at every call). Records from
# pdp.audit.record are fresh trees (the redactor copies every argument), so the writer's
# encoder skips the check for reference cycles.
_OPTIONS: dict[str, Any] = {"separators": (",", ":"), "allow_nan": False}
_ENCODE = json.JSONEncoder(ensure_ascii=False, **_OPTIONS).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, **_OPTIONS).encode
_ENCODE_TREE = json.JSONEncoder(ensure_ascii=False, check_circular=False, **_OPTIONS).encode
_ENCODE_TREE_ASCII = json.JSONEncoder(ensure_ascii=True, check_circular=False, **_OPTIONS).encode


def _encode(record: dict[str, Any], tree: bool) -> bytes:
    try:
        return (_ENCODE_TREE if tree else _ENCODE)(record).encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8: fall back to \\u escapes for this record.
        return (_ENCODE_TREE_ASCII if tree else _ENCODE_ASCII)(record).encode("ascii")


def encode_record(record: dict[str, Any]) -> bytes:
    """:func:`encode_body` for a record built by ``pdp.audit.record`` (never empty, no
    chain fields, no reference cycles), without those checks. Raises ``TypeError`` or
    ``ValueError`` for values JSON cannot hold (NaN, infinities, non-JSON types)."""
    return _encode(record, tree=True)


def seal(body: bytes, seq: int, prev_hash: str) -> tuple[bytes, str]:
    """The full line (with trailing newline) for ``body`` at ``seq``, and its hash."""
    pre = b'%s,"seq":%d,"prev_hash":"%s"}' % (body[:-1], seq, prev_hash.encode("ascii"))
    digest = hashlib.sha256(pre).hexdigest()
    return b'%s,"hash":"%s"}\n' % (pre[:-1], digest.encode("ascii")), digest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ChainError("malformed", f"duplicate member {key!r}")
        out[key] = value
    return out


def parse_line(raw: bytes, *, strict: bool = True) -> ChainLine:
    """Checks one line (without its newline) and returns it; raises :class:`ChainError`.

    ``strict=False`` skips the check for duplicate members (a line someone wrote with a
    valid hash but two ``decision`` members, say), which costs a Python call per JSON
    object: for the NATS shipper, which re-reads lines this process has just written
    and only needs them whole and hash-correct; ``pdp audit verify`` is strict.
    """
    tail = _TAIL.search(raw)
    if tail is None:
        raise ChainError("malformed", "line does not end with a hash member")
    claimed = tail.group(1).decode("ascii")
    if hashlib.sha256(raw[: tail.start()] + b"}").hexdigest() != claimed:
        raise ChainError("hash_mismatch", "line content does not match its hash (modified)")
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates) if strict else json.loads(raw)
    except ChainError:
        raise
    except ValueError as exc:
        raise ChainError("malformed", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ChainError("malformed", "not a JSON object")
    seq, prev_hash, kind = data.get("seq"), data.get("prev_hash"), data.get("kind")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ChainError("malformed", "seq is not a positive integer")
    if not isinstance(prev_hash, str) or not _HEX64.match(prev_hash):
        raise ChainError("malformed", "prev_hash is not 64 hex digits")
    if data.get("hash") != claimed:
        raise ChainError("malformed", "hash member is not the last member")
    if not isinstance(kind, str):
        raise ChainError("malformed", "kind is missing")
    return ChainLine(seq=seq, prev_hash=prev_hash, hash=claimed, kind=kind, data=data)


CHECKPOINT_CLOSE = "close"  # the writer stopped cleanly: nothing may follow it
CHECKPOINT_ROTATE = "rotate"  # the file ends here; the chain goes on in the next one
CHECKPOINT_PERIODIC = "periodic"  # every checkpoint_every records or interval
CHECKPOINT_REASONS = frozenset({CHECKPOINT_CLOSE, CHECKPOINT_ROTATE, CHECKPOINT_PERIODIC})


def checkpoint_message(
    instance_id: str, seq: int, prev_hash: str, time: str, key: str, reason: str | None = None
) -> bytes:
    """The exact bytes a checkpoint signs. ``prev_hash`` is the chain head it covers.
    ``reason`` (close, rotate, periodic) is signed too, so a periodic checkpoint cannot
    be passed off as a closing one; checkpoints written before reasons existed have none."""
    text = f"{RECORD_VERSION}|checkpoint|{instance_id}|{seq}|{prev_hash}|{time}|{key}"
    return (text if reason is None else f"{text}|{reason}").encode()


def log_file_name(first_seq: int, attempt: int = 0) -> str:
    suffix = f".{attempt}" if attempt else ""
    return f"audit-{first_seq:020d}{suffix}.jsonl"


def log_file_order(name: str) -> tuple[int, int] | None:
    """Sort key of a log file name, or ``None`` when the name is not a log file."""
    match = _FILE_RE.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def list_log_files(directory: Path) -> list[Path]:
    """The log files in ``directory``, oldest first."""
    found = [
        (order, p)
        for p in directory.iterdir()
        if (order := log_file_order(p.name)) is not None and p.is_file()
    ]
    return [p for _, p in sorted(found)]
